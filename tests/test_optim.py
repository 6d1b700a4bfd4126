"""Hand-written optimizers against their optax twins, step by step, and as drop-in replacements."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnets import optim

STANDARD_PROMOTION_REASON = "the optax twins mix their int32 count with floats in bias correction"

# name -> (kwargs for both libraries, learning rate that converges on the quadratic and Rosenbrock, steps)
UNDER_TEST = {
    "sgd": dict(learning_rate=1e-3),
    "sgd_momentum": dict(learning_rate=1e-3, momentum=0.9),
    "sgd_nesterov": dict(learning_rate=1e-3, momentum=0.9, nesterov=True),
    "adagrad": dict(learning_rate=0.1),
    "rmsprop": dict(learning_rate=1e-3),
    "rmsprop_all_options": dict(learning_rate=1e-3, decay=0.95, eps=1e-6, initial_scale=0.1, eps_in_sqrt=False,
                                centered=True, momentum=0.9, nesterov=True, bias_correction=True),
    "adam": dict(learning_rate=1e-2),
    "adam_eps_root_nesterov": dict(learning_rate=1e-2, eps_root=1e-8, nesterov=True),
    "adamw": dict(learning_rate=1e-2, weight_decay=0.05),
    "adamax": dict(learning_rate=1e-2),
    "nadam": dict(learning_rate=1e-2),
    "amsgrad": dict(learning_rate=1e-2),
    "amsgrad_paper": dict(learning_rate=1e-2, bias_correction_mu=False, bias_correction_nu=False),
    "lion": dict(learning_rate=1e-3),
}
CASES = sorted(UNDER_TEST)


def build(case, lib):
    name = case.split("_")[0]
    return getattr(lib, name)(**UNDER_TEST[case])


def test_every_optimizer_is_in_the_table():
    tested = {case.split("_")[0] for case in UNDER_TEST}
    assert tested == set(optim.OPTIMIZERS)
    public_builders = {n for n in optim.__all__ if n.islower() and n not in {"compare", "quadratic_problem", "rosenbrock_problem"}}
    assert public_builders == set(optim.OPTIMIZERS), "add new optimizers to OPTIMIZERS and to UNDER_TEST"


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_same_arguments_and_defaults_as_optax(name):
    ours = inspect.signature(getattr(optim, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    assert list(ours) == list(theirs)
    for arg in theirs:
        assert ours[arg].default == theirs[arg].default, f"{name}({arg}=...) default differs from optax"
        assert ours[arg].kind == theirs[arg].kind


def nested_problem(dtype):
    """A pytree with a dict, a list, a scalar and a matrix; a smooth non-quadratic loss."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3), "inner": [jnp.asarray(0.5, dtype), {"b": jnp.ones(3, dtype)}]}

    def loss(p):
        return jnp.sum(jnp.sin(p["w"]) ** 2) + (p["inner"][0] - 2.0) ** 2 + jnp.sum(jnp.cosh(p["inner"][1]["b"] * 0.5))

    return optim.Problem(params, loss, lambda p, step: jax.grad(loss)(p), None)


PROBLEMS = {
    "quadratic": lambda dtype: optim.quadratic_problem(12, dtype=dtype),
    "rosenbrock": lambda dtype: optim.rosenbrock_problem(dtype=dtype),
    "nested": nested_problem,
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", CASES)
def test_trajectory_equals_optax_float32(case, problem):
    p = PROBLEMS[problem](jnp.float32)
    result = optim.compare(build(case, optim), build(case, optax), p.params, p.grad_fn, steps=250)
    assert np.all(np.isfinite(result.max_rel)), f"{case} diverged on {problem}: {result}"
    assert result.worst_rel <= 1e-6, f"{case} on {problem}: {result}"


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", CASES)
def test_trajectory_equals_optax_float64(case, problem):
    with jax.enable_x64(True):
        p = PROBLEMS[problem](jnp.float64)
        result = optim.compare(build(case, optim), build(case, optax), p.params, p.grad_fn, steps=250)
        assert jax.tree_util.tree_leaves(result.params)[0].dtype == jnp.float64
    assert np.all(np.isfinite(result.max_rel)), f"{case} diverged on {problem}: {result}"
    assert result.worst_rel <= 1e-12, f"{case} on {problem}: {result}"


# name -> ((lr, extra kwargs) on the quadratic, (lr, extra kwargs) on Rosenbrock); 5,000 steps each.
# Chosen from a sweep over lr in {3e-4, 1e-3, ..., 0.3}. Plain SGD cannot solve Rosenbrock's
# curved valley in that budget at any stable rate, so it gets momentum there.
CONVERGENCE = {
    "sgd": ((0.03, {}), (1e-3, {"momentum": 0.9})),
    "adagrad": ((0.3, {}), (0.3, {})),
    "rmsprop": ((0.01, {}), (3e-3, {})),
    "adam": ((0.03, {}), (0.03, {})),
    "adamw": ((0.03, {"weight_decay": 0.0}), (0.03, {"weight_decay": 0.0})),
    "adamax": ((0.03, {}), (0.03, {})),
    "nadam": ((0.03, {}), (0.01, {})),
    "amsgrad": ((0.3, {}), (0.3, {})),
    "lion": ((1e-3, {"weight_decay": 0.0}), (1e-3, {"weight_decay": 0.0})),
}


@pytest.mark.parametrize("name", sorted(CONVERGENCE))
def test_converges_on_quadratic_and_rosenbrock(name):
    (lr_q, kw_q), (lr_r, kw_r) = CONVERGENCE[name]
    for problem, lr, kw, tol in ((optim.quadratic_problem(8), lr_q, kw_q, 1e-2), (optim.rosenbrock_problem(), lr_r, kw_r, 5e-2)):
        opt = getattr(optim, name)(lr, **kw)

        def body(i, carry):
            params, state = carry
            updates, state = opt.update(jax.grad(problem.loss)(params), state, params)
            return optax.apply_updates(params, updates), state

        final = jax.jit(lambda p: jax.lax.fori_loop(0, 5000, body, (p, opt.init(p)))[0])(problem.params)
        leaves = zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(problem.solution))
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves)
        assert err < tol, f"{name} did not converge: distance {err:.3g} from the minimum"


@pytest.mark.parametrize("case", CASES)
def test_jit_equals_eager_and_compiles_once(case):
    p = optim.quadratic_problem(5)
    opt = build(case, optim)
    traces = []

    def update(g, s, params):
        traces.append(1)
        return opt.update(g, s, params)

    jitted = jax.jit(update)
    eager_params, jit_params = p.params, p.params
    eager_state, jit_state = opt.init(p.params), opt.init(p.params)
    for step in range(3):
        g = p.grad_fn(eager_params, step)
        u, eager_state = opt.update(g, eager_state, eager_params)
        eager_params = optax.apply_updates(eager_params, u)
        u, jit_state = jitted(p.grad_fn(jit_params, step), jit_state, jit_params)
        jit_params = optax.apply_updates(jit_params, u)
    np.testing.assert_allclose(eager_params["x"], jit_params["x"], rtol=1e-6)
    assert len(traces) == 1, "the update recompiled on a later step"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_updates_keep_the_gradient_dtype(case, dtype):
    params = {"a": jnp.ones((3,), dtype), "b": jnp.full((2, 2), 0.5, dtype)}
    grads = jax.tree_util.tree_map(lambda p: (p * 0.1).astype(dtype), params)
    opt = build(case, optim)
    state = opt.init(params)
    for _ in range(2):
        updates, state = opt.update(grads, state, params)
        assert all(u.dtype == dtype for u in jax.tree_util.tree_leaves(updates))
    ref_updates, _ = build(case, optax).update(grads, build(case, optax).init(params), params)
    ours_first, _ = opt.update(grads, opt.init(params), params)
    for a, b in zip(jax.tree_util.tree_leaves(ours_first), jax.tree_util.tree_leaves(ref_updates)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_complex_parameters_as_optax(case):
    target = jnp.array([1.0 + 2.0j, -0.5 + 0.5j, 3.0 - 1.0j], jnp.complex64)

    def loss(p):
        return jnp.sum(jnp.abs(p["z"] - target) ** 2)

    grad_fn = lambda p, step: jax.tree_util.tree_map(jnp.conj, jax.grad(loss)(p))  # noqa: E731
    params = {"z": jnp.zeros(3, jnp.complex64)}
    result = optim.compare(build(case, optim), build(case, optax), params, grad_fn, steps=100)
    assert result.params["z"].dtype == jnp.complex64
    assert result.worst_rel <= 1e-6, f"{case}: {result}"


@pytest.mark.parametrize("case", CASES)
def test_scalar_params(case):
    opt, ref = build(case, optim), build(case, optax)
    result = optim.compare(opt, ref, jnp.asarray(3.0), lambda p, step: 2.0 * p, steps=50)
    assert result.worst_rel <= 1e-6


@pytest.mark.parametrize("case", CASES)
def test_extra_keyword_arguments_are_accepted(case):
    p = optim.quadratic_problem(4)
    opt = build(case, optim)
    state = opt.init(p.params)
    g = p.grad_fn(p.params, 0)
    a, _ = opt.update(g, state, p.params, value=jnp.asarray(1.0), grad=g, anything="else")
    b, _ = opt.update(g, state, p.params)
    np.testing.assert_array_equal(a["x"], b["x"])


def test_inside_chain_multisteps_and_inject_hyperparams():
    p = optim.quadratic_problem(6)
    pairs = [
        (optax.chain(optax.clip_by_global_norm(1.0), optim.adam(1e-2)), optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))),
        (optax.MultiSteps(optim.adamw(1e-2), every_k_schedule=3), optax.MultiSteps(optax.adamw(1e-2), every_k_schedule=3)),
        (optax.inject_hyperparams(optim.rmsprop)(learning_rate=1e-2, momentum=0.5),
         optax.inject_hyperparams(optax.rmsprop)(learning_rate=1e-2, momentum=0.5)),
        (optax.inject_hyperparams(optim.sgd)(learning_rate=optax.exponential_decay(0.1, 10, 0.5), momentum=0.9),
         optax.inject_hyperparams(optax.sgd)(learning_rate=optax.exponential_decay(0.1, 10, 0.5), momentum=0.9)),
    ]
    for ours, theirs in pairs:
        result = optim.compare(ours, theirs, p.params, p.grad_fn, steps=60)
        assert result.worst_rel <= 1e-6, result


def test_inject_hyperparams_can_change_the_learning_rate():
    opt = optax.inject_hyperparams(optim.adam)(learning_rate=0.1)
    params = {"x": jnp.ones(3)}
    state = opt.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0)
    updates, _ = opt.update({"x": jnp.ones(3)}, state, params)
    np.testing.assert_array_equal(updates["x"], 0.0)


@pytest.mark.parametrize("case", CASES)
def test_schedules_match_optax(case):
    kwargs = dict(UNDER_TEST[case], learning_rate=optax.warmup_cosine_decay_schedule(0.0, 0.02, 10, 100))
    name = case.split("_")[0]
    p = optim.quadratic_problem(6)
    result = optim.compare(getattr(optim, name)(**kwargs), getattr(optax, name)(**kwargs), p.params, p.grad_fn, steps=100)
    assert result.worst_rel <= 1e-6, result


def test_weight_decay_schedule_and_mask_match_optax():
    p = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    mask = {"w": True, "b": False}
    grad_fn = lambda params, step: jax.tree_util.tree_map(lambda x: 0.1 * x, params)  # noqa: E731
    wd = optax.linear_schedule(0.0, 0.1, 20)
    for name in ("adamw", "lion"):
        for m in (mask, lambda params: jax.tree_util.tree_map(lambda x: x.ndim > 1, params)):
            result = optim.compare(getattr(optim, name)(1e-2, weight_decay=wd, mask=m), getattr(optax, name)(1e-2, weight_decay=wd, mask=m), p, grad_fn, 40)
            assert result.worst_rel <= 1e-6, f"{name}: {result}"
    # The mask is honoured: with zero gradients, only w decays.
    opt = optim.adamw(0.1, weight_decay=0.5, mask=mask)
    updates, _ = opt.update(jax.tree_util.tree_map(jnp.zeros_like, p), opt.init(p), p)
    np.testing.assert_allclose(updates["w"], -0.05)
    np.testing.assert_array_equal(updates["b"], 0.0)


def test_vmap_over_a_population_of_params():
    opt = optim.adam(1e-2)
    params = {"x": jnp.stack([jnp.ones(4) * i for i in range(3)])}  # 3 independent models
    grads = jax.tree_util.tree_map(lambda x: 2.0 * x, params)
    updates, _ = jax.vmap(opt.update)(grads, jax.vmap(opt.init)(params), params)
    for i in range(3):
        single = {"x": params["x"][i]}
        u, _ = opt.update({"x": grads["x"][i]}, opt.init(single), single)
        np.testing.assert_allclose(updates["x"][i], u["x"], rtol=1e-6)


def test_inside_lax_scan():
    p = optim.quadratic_problem(5)
    opt = optim.lion(1e-3)

    def body(carry, _):
        params, state = carry
        updates, state = opt.update(p.grad_fn(params, 0), state, params)
        return (optax.apply_updates(params, updates), state), None

    (final, state), _ = jax.lax.scan(body, (p.params, opt.init(p.params)), None, length=20)
    assert int(state.count) == 20 and float(p.loss(final)) < float(p.loss(p.params))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_non_positive_learning_rate(name):
    for lr in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match=r"learning_rate must be a finite number > 0 or a schedule, got"):
            getattr(optim, name)(lr)
    with pytest.raises(TypeError, match="learning_rate must be a scalar number, got 'fast'"):
        getattr(optim, name)("fast")


@pytest.mark.parametrize("name,arg", [("adam", "b1"), ("adam", "b2"), ("adamw", "b1"), ("nadam", "b2"), ("adamax", "b1"),
                                      ("amsgrad", "b2"), ("lion", "b1"), ("lion", "b2"), ("rmsprop", "decay"), ("sgd", "momentum"),
                                      ("rmsprop", "momentum")])
def test_decay_rates_outside_the_unit_interval(name, arg):
    for value in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"{arg} must be in \[0, 1\), got {value}"):
            getattr(optim, name)(1e-3, **{arg: value})


@pytest.mark.parametrize("name,arg", [("adam", "eps"), ("adam", "eps_root"), ("adagrad", "eps"), ("adagrad", "initial_accumulator_value"),
                                      ("rmsprop", "eps"), ("rmsprop", "initial_scale"), ("adamw", "weight_decay"), ("lion", "weight_decay")])
def test_negative_eps_and_weight_decay(name, arg):
    with pytest.raises(ValueError, match=rf"{arg} must be a finite number >= 0, got -0.1"):
        getattr(optim, name)(1e-3, **{arg: -0.1})


def test_mask_structure_mismatch_is_caught_at_init():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    opt = optim.adamw(1e-3, mask={"w": True, "bias": False})
    with pytest.raises(ValueError, match=r"mask must have the structure of params \(or a prefix of it\) with bool leaves:\n  mask: .*\n  params: "):
        opt.init(params)


def test_grads_structure_mismatch_prints_both_structures():
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    opt = optim.adam(1e-3)
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"grads must have the structure of the first moment mu:\n  grads: PyTreeDef\(\{'w': \*\}\)\n  first moment mu: PyTreeDef\(\{'b': \*, 'w': \*\}\)"):
        opt.update({"w": jnp.ones(3)}, state, params)


def test_weight_decay_needs_params():
    opt = optim.adamw(1e-3)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"needs params: call update\(grads, state, params\)"):
        opt.update(params, opt.init(params))


# ---------------------------------------------------------------------------
# State fields named as optax names them
# ---------------------------------------------------------------------------


def _field_names(state):
    """Every NamedTuple field name anywhere in an optimizer state (optax nests states in tuples)."""
    names = set()

    def walk(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            names.update(node._fields)
        if isinstance(node, (tuple, list)):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)

    walk(state)
    return names


@pytest.mark.parametrize("case", CASES)
def test_state_fields_read_and_set_by_optax_names(case):
    """``optax.tree.get(state, name)`` gives the same values on our state as on optax's, for every
    field name optax's state has; ``optax.tree.set`` writes them."""
    p = optim.quadratic_problem(4)
    ours, theirs = build(case, optim), build(case, optax)
    s, s_ref = ours.init(p.params), theirs.init(p.params)
    for step in range(3):
        g = p.grad_fn(p.params, step)
        _, s = ours.update(g, s, p.params)
        _, s_ref = theirs.update(g, s_ref, p.params)
    names = {n for n in _field_names(s_ref) if optax.tree.get(s_ref, n) is not None}
    assert names or case == "sgd", f"optax's {case} state has no named fields"  # plain SGD: EmptyState
    for name in sorted(names):
        expected = optax.tree.get(s_ref, name)
        got = optax.tree.get(s, name)
        assert got is not None, f"{case}: our state has no field {name!r} (optax's has); ours: {type(s).__name__}{s._fields}"
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
        zeroed = optax.tree.set(s, **{name: jax.tree_util.tree_map(jnp.zeros_like, got)})
        assert all(float(jnp.max(jnp.abs(leaf))) == 0 for leaf in jax.tree_util.tree_leaves(optax.tree.get(zeroed, name)))


# ---------------------------------------------------------------------------
# Low-precision state (mu_dtype, accumulator_dtype) rounds as optax rounds it
# ---------------------------------------------------------------------------

STATE_DTYPE_CASES = {
    "sgd_momentum": lambda lib, dt: lib.sgd(1e-2, momentum=0.9, accumulator_dtype=dt),
    "sgd_nesterov": lambda lib, dt: lib.sgd(1e-2, momentum=0.9, nesterov=True, accumulator_dtype=dt),
    "adam": lambda lib, dt: lib.adam(1e-2, mu_dtype=dt),
    "adamw": lambda lib, dt: lib.adamw(1e-2, mu_dtype=dt, weight_decay=0.1),
    "nadam": lambda lib, dt: lib.nadam(1e-2, mu_dtype=dt),
    "amsgrad": lambda lib, dt: lib.amsgrad(1e-2, mu_dtype=dt),
    "lion": lambda lib, dt: lib.lion(1e-3, mu_dtype=dt),
}


def assert_close_f32(a, b, message):
    """Equal to float32 rounding (relative 1e-6 of the leaf's largest entry), far below one bfloat16
    rounding (2**-8 relative): float32 sums that nearly cancel (adamw's decay) may differ in the last bit."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(np.max(np.abs(b), initial=0.0)), err_msg=message)


@pytest.mark.parametrize("state_dtype", [jnp.bfloat16, jnp.float32, None], ids=["bf16", "f32", "none"])
@pytest.mark.parametrize("params_dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("case", sorted(STATE_DTYPE_CASES))
def test_low_precision_state_matches_optax_step_by_step(case, params_dtype, state_dtype):
    """Every update and every state leaf equals optax's at each of 30 steps, in every mix of
    bfloat16/float32 params and state (the rtol is far below one bfloat16 rounding, 2**-8)."""
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(8, 16)), params_dtype), "b": jnp.asarray(rng.normal(size=(16,)), params_dtype)}
    ours, theirs = STATE_DTYPE_CASES[case](optim, state_dtype), STATE_DTYPE_CASES[case](optax, state_dtype)
    s, s_ref = ours.init(params), theirs.init(params)
    step, step_ref = jax.jit(ours.update), jax.jit(theirs.update)
    for t in range(30):
        grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        u, s = step(grads, s, params)
        with jax.numpy_dtype_promotion("standard"):
            u_ref, s_ref = step_ref(grads, s_ref, params)
        for name in ("mu", "nu", "nu_max", "trace"):
            got, want = optax.tree.get(s, name), optax.tree.get(s_ref, name)
            if want is None:
                continue
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
                assert a.dtype == b.dtype, f"{case} step {t + 1}: state {name} is {a.dtype}, optax's {b.dtype}"
                assert_close_f32(a, b, f"{case}: state {name} differs from optax at step {t + 1}")
        for a, b in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(u_ref)):
            assert a.dtype == b.dtype
            assert_close_f32(a, b, f"{case}: update differs from optax at step {t + 1}")
