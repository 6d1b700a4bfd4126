"""optax's own alias tests, run with jaxnets' optimizers in place of optax's.

Each test below mirrors one test of ``optax/_src/alias_test.py`` (optax
0.2.8, ``AliasTest``; named in each docstring) over the rows of its
``_OPTIMIZERS_UNDER_TEST`` that jaxnets implements, with the same
hyperparameters, targets, dtypes, tolerances and skips. Every case runs
twice: with optax's optimizer (the reference: the mirror is faithful only
if optax passes it here too) and with jaxnets' twin, which must pass every
case optax passes.

Differences from optax's file, none of which loosens a check: the 10,000
optimisation steps run inside one ``lax.fori_loop`` instead of a Python loop
of jitted steps, and "does not recompile" is checked with
``chex.assert_max_traces`` instead of compilation logs. jaxnets' optimizers
run under strict dtype promotion (the conftest default); optax's under
standard promotion, which optax needs.
"""

import contextlib

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxnets import optim

# The rows of optax's _OPTIMIZERS_UNDER_TEST whose optimizer jaxnets implements, verbatim.
OPTIMIZERS_UNDER_TEST = (
    ("adagrad", {"learning_rate": 1.0}),
    ("adam", {"learning_rate": 1e-1}),
    ("adamax", {"learning_rate": 1e-1}),
    ("adamw", {"learning_rate": 1e-1}),
    ("amsgrad", {"learning_rate": 1e-1}),
    ("lion", {"learning_rate": 1e-2, "weight_decay": 1e-4}),
    ("nadam", {"learning_rate": 1e-2}),
    ("rmsprop", {"learning_rate": 5e-3}),
    ("rmsprop", {"learning_rate": 5e-3, "momentum": 0.9}),
    ("sgd", {"learning_rate": 1e-3, "momentum": 0.9}),
)
# optax's skip list for complex parameters, restricted to jaxnets' optimizers.
NO_COMPLEX = {"lion"}
LIBS = {"optax": optax, "jaxnets": optim}


def _case_id(row):
    name, kwargs = row
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items() if k != "learning_rate")


CASES = [pytest.param(name, kwargs, id=_case_id((name, kwargs))) for name, kwargs in OPTIMIZERS_UNDER_TEST]
LIB = pytest.mark.parametrize("lib", sorted(LIBS))


def promotion(lib):
    """optax's transforms mix int32 counts with floats and need standard promotion; ours run strict."""
    return jax.numpy_dtype_promotion("standard") if lib == "optax" else contextlib.nullcontext()


def abs_sq(x):
    return (x.conj() * x).real


def setup_parabola(dtype):
    """optax alias_test._setup_parabola."""
    initial = jnp.array([-1.0, 10.0, 1.0], dtype=dtype)
    final = jnp.array([1.0, -1.0, 1.0], dtype=dtype)
    if jnp.iscomplexobj(initial):
        final = final * jnp.asarray(1 + 1j, dtype)
    return initial, final, lambda p: jnp.sum(abs_sq(p - final))


def setup_rosenbrock(dtype):
    """optax alias_test._setup_rosenbrock."""
    a, b = 1.0, 100.0
    if jnp.issubdtype(dtype, jnp.complexfloating):
        a *= 1 + 1j
    initial = jnp.array([0.0, 0.0], dtype=dtype)
    final = jnp.array([a, a**2], dtype=dtype)
    return initial, final, lambda p: abs_sq(a - p[0]) + b * abs_sq(p[1] - p[0] ** 2)


TARGETS = {"parabola": setup_parabola, "rosenbrock": setup_rosenbrock}


def conj_grad(objective, params):
    # Complex gradients are conjugated before being added to parameters, as in optax's test.
    return jax.tree_util.tree_map(jnp.conj, jax.grad(objective)(params))


@LIB
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["float32", "complex64"])
@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("name,kwargs", CASES)
def test_optimization(name, kwargs, target, dtype, lib):
    """AliasTest.test_optimization: 10,000 steps reach the minimum within rtol = atol = 3e-2;
    optax.tree.map_params works on the state; the step does not recompile."""
    if name in NO_COMPLEX and jnp.issubdtype(dtype, jnp.complexfloating):
        pytest.skip(f"{name} does not support complex parameters (skipped by optax's test too)")
    opt = getattr(LIBS[lib], name)(**kwargs)
    initial, final, objective = TARGETS[target](dtype)

    def step(params, state):
        updates, state = opt.update(conj_grad(objective, params), state, params)
        return optax.apply_updates(params, updates), state

    with promotion(lib):
        state = opt.init(initial)
        state = optax.tree.map_params(opt, lambda v: v, state)  # a no-op change: tree_map_params works
        params, _ = jax.jit(lambda p, s: jax.lax.fori_loop(0, 10_000, lambda _, c: step(*c), (p, s)))(initial, state)
        chex.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)

        chex.clear_trace_counter()  # the counter is keyed by the function's code, shared across parameters
        traced = jax.jit(chex.assert_max_traces(step, n=1))
        p, s = traced(initial, opt.init(initial))
        traced(p, s)  # a second call must reuse the compiled step


@LIB
@pytest.mark.parametrize("name,kwargs", CASES)
def test_optimizers_accept_extra_args(name, kwargs, lib):
    """AliasTest.test_optimizers_accept_extra_args: update takes unexpected keyword arguments, under jit."""
    opt = getattr(LIBS[lib], name)(**kwargs)
    params, _, objective = setup_rosenbrock(jnp.float32)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(objective)(params), state, params,
                                    unexpected_extra_args_your_optimizer_doesnt_expect=1)
        return optax.apply_updates(params, updates), state

    with promotion(lib):
        state = opt.init(params)
        for _ in range(2):
            params, state = step(params, state)
    assert bool(jnp.all(jnp.isfinite(params)))


@LIB
@pytest.mark.parametrize("name,kwargs", CASES)
def test_optimizers_can_be_wrapped_in_inject_hyperparams(name, kwargs, lib):
    """AliasTest.test_optimizers_can_be_wrapped_in_inject_hyperparams: same updates (rtol 1e-3) and
    states (rtol 1e-4) with and without inject_hyperparams."""
    factory = getattr(LIBS[lib], name)
    opt, opt_inject = factory(**kwargs), optax.inject_hyperparams(factory)(**kwargs)
    params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    with promotion(lib):
        updates, new_state = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
        updates_inject, new_state_inject = jax.jit(opt_inject.update)(grads, jax.jit(opt_inject.init)(params), params)
    chex.assert_trees_all_close(updates_inject, updates, rtol=1e-3)
    chex.assert_trees_all_close(new_state_inject.inner_state, new_state, rtol=1e-4)


EXPLICIT_DTYPE = {
    "sgd_mom": (lambda lib, dt: lib.sgd(0.1, momentum=0.9, accumulator_dtype=dt), "trace"),
    "adam": (lambda lib, dt: lib.adam(0.1, mu_dtype=dt), "mu"),
    "adamw": (lambda lib, dt: lib.adamw(0.1, mu_dtype=dt), "mu"),
}
DTYPE_NAMES = ["bfloat16", "float32", "complex64", None]


@LIB
@pytest.mark.parametrize("opt_name", sorted(EXPLICIT_DTYPE))
@pytest.mark.parametrize("state_dtype", DTYPE_NAMES, ids=str)
@pytest.mark.parametrize("params_dtype", DTYPE_NAMES, ids=str)
def test_explicit_dtype(params_dtype, state_dtype, opt_name, lib):
    """AliasTest.test_explicit_dtype: the state field optax names (``trace``, ``mu``), read with
    optax.tree.get, has the requested dtype (the params' dtype by default)."""
    make, field = EXPLICIT_DTYPE[opt_name]
    opt = make(LIBS[lib], state_dtype)
    params_dtype = jax.dtypes.canonicalize_dtype(params_dtype)
    state = opt.init(jnp.array([0.0, 0.0], dtype=params_dtype))
    expected = params_dtype if state_dtype is None else jax.dtypes.canonicalize_dtype(state_dtype)
    assert optax.tree.get(state, field).dtype == expected


@LIB
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_preserve_dtype(name, kwargs, dtype, lib):
    """AliasTest.test_preserve_dtype: jitted updates have the gradients' dtype."""
    opt = getattr(LIBS[lib], name)(**kwargs)
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    with promotion(lib):
        updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    assert updates.dtype == grads.dtype


@LIB
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_state_shape_dtype_shard_stability(name, kwargs, dtype, lib):
    """AliasTest.test_state_shape_dtype_shard_stability: an update inside ``lax.cond`` beside the
    identity branch traces, so the new state has the old one's structure, shapes and dtypes, and
    params keep their dtype over two steps."""
    if name in NO_COMPLEX and dtype.startswith("complex"):
        pytest.skip(f"{name} does not support complex parameters (skipped by optax's test too)")
    with jax.enable_x64(dtype in ("float64", "complex128")), promotion(lib):
        dtype = jnp.dtype(dtype)
        opt = getattr(LIBS[lib], name)(**kwargs)
        initial, _, objective = setup_parabola(dtype)

        @jax.jit
        def step(params, state):
            updates = conj_grad(objective, params)
            cond = jax.random.randint(jax.random.key(0), (), 0, 2) == 0  # defeats constant folding
            updates, state = jax.lax.cond(cond, lambda: opt.update(updates, state, params), lambda: (params, state))
            return optax.apply_updates(params, updates), state

        params, state = initial, opt.init(initial)
        for _ in range(2):
            params, new_state = step(params, state)
            assert jax.tree_util.tree_leaves(params)[0].dtype == dtype
            chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
            state = new_state


@LIB
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_gradient_accumulation(name, kwargs, dtype, lib):
    """AliasTest.test_gradient_accumulation: inside optax.MultiSteps(every_k_schedule=4) the first
    update is exactly zero."""
    opt = optax.MultiSteps(getattr(LIBS[lib], name)(**kwargs), every_k_schedule=4)
    params = jnp.array([1.0, 2.0], dtype=jnp.dtype(dtype))
    grads = jax.grad(lambda x: jnp.sum(x**2))(params)
    with promotion("optax"):  # MultiSteps is optax's code, for either optimizer
        updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    chex.assert_trees_all_equal(updates, jnp.zeros_like(grads))


def test_every_jaxnets_optimizer_is_under_test_where_optax_tests_it():
    """The mirror covers every jaxnets optimizer that optax's _OPTIMIZERS_UNDER_TEST lists
    (all but sgd without momentum, which optax's table does not list either)."""
    assert {name for name, _ in OPTIMIZERS_UNDER_TEST} == set(optim.OPTIMIZERS)
