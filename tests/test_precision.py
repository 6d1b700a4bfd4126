"""Precision policies: layers compute in bfloat16/float16 with float32 master weights; hand rules agree
with autodiff at each dtype's tolerance, against the float64 truth."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import backprop, gradcheck, losses, precision
from layer_cases import CASES as LAYER_CASES

CE = losses.softmax_cross_entropy_with_integer_labels


def _dtype_probe(name, expected):
    """A layer that refuses to run unless its input arrives in ``expected``: shows where the policy casts."""

    def apply(params, x):
        if x.dtype != jnp.dtype(expected):
            raise TypeError(f"{name} got {x.dtype}, expected {expected}")
        return x * params["s"].astype(x.dtype)

    return L.define_layer(name, lambda key, shape: {"s": jnp.ones(shape[-1:])}, apply,
                          backward=lambda p, x, y_bar: ({"s": jnp.sum(y_bar * x, axis=0)}, y_bar * p["s"]),
                          output_shape=lambda shape: shape)


def test_policy_names_and_errors():
    assert precision.get_policy("bfloat16").compute_dtype == jnp.bfloat16
    assert precision.get_policy("float16").param_dtype == jnp.float32
    with pytest.raises(ValueError, match=r"policy must be a Policy or one of \['bfloat16', 'float16', 'float32'\], got 'fp8'"):
        precision.get_policy("fp8")
    with pytest.raises(ValueError, match=r"policy must be a floating dtype .*cannot compute in int32"):
        precision.get_policy("int32")
    with pytest.raises(ValueError, match=r"compute_dtype must be a floating dtype"):
        precision.Policy(compute_dtype=jnp.int8)


def test_each_layer_computes_in_its_dtype_and_the_output_is_float32(key):
    model = L.serial(_dtype_probe("first", "bfloat16"), L.Dense(8), L.LayerNorm(), L.Relu(), _dtype_probe("last", "float32"))
    mixed = precision.with_policy(model, "bfloat16", overrides={"last_0": "float32"})
    _, params = mixed.init(key, (-1, 4))
    y = mixed.apply(params, jax.random.normal(key, (3, 4)))
    assert y.dtype == jnp.float32
    # LayerNorm is float32 by default: a probe after it, without the override, sees float32 too
    probe_after_norm = L.serial(L.Dense(8), L.LayerNorm(), _dtype_probe("after", "float32"))
    _, p = probe_after_norm.init(key, (-1, 4))
    precision.with_policy(probe_after_norm, "float16", float32=()).init(key, (-1, 4))
    with pytest.raises(TypeError, match="after got float16, expected float32"):
        precision.with_policy(probe_after_norm, "float16", float32=()).apply(p, jnp.ones((2, 4)))


def test_bfloat16_forward_is_close_to_float32(key):
    model = L.serial(L.Dense(32), L.Gelu(), L.residual(L.LayerNorm(), L.Dense(32), L.Tanh()), L.Dense(10))
    _, params = model.init(key, (-1, 16))
    x = jax.random.normal(key, (8, 16))
    full = model.apply(params, x)
    for name, unit in (("bfloat16", 2.0 ** -8), ("float16", 2.0 ** -11)):
        low = precision.with_policy(model, name).apply(params, x)
        err = float(jnp.linalg.norm(low - full) / jnp.linalg.norm(full))
        assert 0 < err < 16 * unit, f"{name}: relative error {err}"


def test_hand_rules_under_a_policy_match_autodiff_and_keep_float32_gradients(key):
    model = L.serial(L.Dense(16), L.BatchNorm(), L.Relu(), L.Dropout(0.2), L.Dense(16), L.Silu(), L.Dense(5))
    mixed = precision.with_policy(model, "bfloat16")
    _, params, state = mixed.init_with_state(key, (-1, 12))
    x, y = jax.random.normal(key, (16, 12)), jnp.arange(16) % 5
    k = jax.random.key(7)
    hand = backprop.grad(mixed, CE)(params, x, y, state=state, key=k)
    auto = jax.grad(lambda p: CE(mixed.apply_with_state(p, state, x, key=k, train=True)[0], y))(params)
    truth = jax.grad(lambda p: CE(model.apply_with_state(p, state, x, key=k, train=True)[0], y))(params)
    rtol, _ = gradcheck.dtype_tolerance("bfloat16", x.size)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves((hand, auto)))
    # relative to the whole gradient: the bias before BatchNorm has a gradient that is 0 analytically,
    # and in bfloat16 rounding noise, so a per-leaf relative error means nothing there
    flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(tree)])  # noqa: E731
    h, a, t = flat(hand), flat(auto), flat(truth)
    assert float(jnp.linalg.norm(h - a) / jnp.linalg.norm(a)) <= rtol
    assert float(jnp.linalg.norm(h - t) / jnp.linalg.norm(t)) <= rtol
    assert float(jnp.linalg.norm(a - t) / jnp.linalg.norm(t)) <= rtol


def test_hand_gradients_train_under_a_policy(key):
    model = precision.with_policy(L.serial(L.Dense(8), L.Tanh(), L.Dense(3)), "bfloat16")
    hand = backprop.hand_gradients(model)
    _, params = model.init(key, (-1, 4))
    x, y = jax.random.normal(key, (6, 4)), jnp.arange(6) % 3
    g_hand = jax.jit(jax.grad(lambda p: CE(hand.apply(p, x), y)))(params)
    g_auto = jax.jit(jax.grad(lambda p: CE(model.apply(p, x), y)))(params)
    for h, a in zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(h, a, rtol=0.05, atol=1e-3)


def test_reduced_precision_params_are_refused(key):
    mixed = precision.with_policy(L.serial(L.Dense(4), L.Dense(2)), "bfloat16")
    _, params = mixed.init(key, (-1, 3))
    low = precision.cast_floating(params, jnp.bfloat16)
    with pytest.raises(ValueError, match=r"keeps params in float32 \(master weights\), but params dense_0/b is bfloat16"):
        mixed.apply(low, jnp.ones((2, 3)))


BF16_CASES = [c for c in LAYER_CASES if c.kind == "float"]


@pytest.mark.sweep
@pytest.mark.parametrize("case", BF16_CASES, ids=[c.name for c in BF16_CASES])
def test_every_layer_rule_in_bfloat16_is_within_the_derived_tolerance(case):
    shape = case.shapes[0]
    report = gradcheck.check_layer(case.make(), shape, dtypes=("bfloat16",), finite_differences=False,
                                   train=case.modes[-1])
    assert report.passed, f"{case.name}:\n{report}"


# --- loss scaling ---------------------------------------------------------------------------------------------------

from jaxnets import data as jdata, optim, per_example, train  # noqa: E402


def _grads(value):
    return {"w": jnp.full((3,), value, jnp.float32), "b": jnp.float32(value)}


def test_dynamic_loss_scale_follows_its_schedule_and_skips_overflowing_steps():
    inner = optim.sgd(0.5, momentum=0.9)
    scaled = precision.loss_scaling(inner, "dynamic", init_scale=8.0, growth_interval=2, min_scale=2.0, max_scale=32.0)
    params = _grads(1.0)
    state, plain = scaled.init(params), inner.init(params)
    # finite, finite (grow), inf (skip, halve), nan (skip, halve), inf (skip, at min), finite, finite (grow)...
    sequence = [1.0, 2.0, np.inf, np.nan, np.inf, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    scale, good, skipped, scales = 8.0, 0, 0, []
    for g in sequence:
        updates, state = scaled.update(jax.tree_util.tree_map(lambda a: a * state.scale, _grads(g)), state, params)
        if np.isfinite(g):
            want, plain = inner.update(_grads(g), plain, params)
            for u, w in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(want)):
                np.testing.assert_array_equal(u, w)  # S a power of two: unscaling is exact
            good += 1
            if good >= 2:
                scale, good = min(scale * 2, 32.0), 0
        else:
            assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree_util.tree_leaves(updates))
            scale, good, skipped = max(scale / 2, 2.0), 0, skipped + 1
        scales.append(float(state.scale))
        assert (float(state.scale), int(state.good_steps), int(state.skipped)) == (scale, good, skipped)
        for a, b in zip(jax.tree_util.tree_leaves(state.inner_state), jax.tree_util.tree_leaves(plain)):
            np.testing.assert_array_equal(a, b)  # a skipped step leaves the momentum as it was
    assert scales == [8.0, 16.0, 8.0, 4.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0, 16.0]


def test_static_loss_scale_keeps_its_scale_and_counts_skips():
    scaled = precision.loss_scaling(optim.sgd(0.1), 128.0)
    params = _grads(1.0)
    state = scaled.init(params)
    for g in (1.0, np.inf, 2.0):
        _, state = scaled.update(jax.tree_util.tree_map(lambda a: a * 128.0, _grads(g)), state, params)
    assert (float(state.scale), int(state.skipped)) == (128.0, 1)
    opt = optim.sgd(0.1)
    assert precision.loss_scaling(opt, None) is opt


@pytest.mark.standard_promotion("optax's adamw mixes its int32 count with floats")
def test_a_scaled_step_equals_the_unscaled_step_for_any_optax_optimizer(key):
    """float32 compute, S = 2**15: scaling the loss and unscaling the gradients is exact, so every step is equal."""
    model = L.serial(L.Dense(16), L.Relu(), L.Dropout(0.1), L.Dense(4))
    objective = train.objective_from_loss(model, CE)
    x, y = jax.random.normal(key, (32, 6)), jnp.arange(32) % 4
    for optimizer in (optax.adamw(1e-2), optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.1, momentum=0.9))):
        plain = train.init_train_state(model, optimizer, (-1, 6), seed=1)
        scaled_opt = precision.loss_scaling(optimizer)
        scaled = train.TrainState.create(jax.tree_util.tree_map(jnp.copy, plain.params), scaled_opt, key=jnp.copy(plain.key))
        step, scaled_step = train.make_step(objective, optimizer), train.make_step(objective, scaled_opt)
        for _ in range(5):
            plain, m = step(plain, (x, y))
            scaled, ms = scaled_step(scaled, (x, y))
            np.testing.assert_allclose(ms["loss"], m["loss"], rtol=1e-6)
            assert (float(ms["skipped_steps"]), float(ms["loss_scale"])) == (0.0, 2.0 ** 15)
        for a, b in zip(jax.tree_util.tree_leaves(scaled.params), jax.tree_util.tree_leaves(plain.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


import optax  # noqa: E402

SMALL_DIGITS = jdata.load_digits()


@pytest.mark.slow  # whole fits: CI's first step runs them, the floor step skips them
def test_float16_fit_with_dynamic_scaling_counts_its_skips_and_is_no_divergence():
    """A scale of 2**24 overflows float16's cotangents: those steps are skipped and counted, the scale halves, and
    fit's non-finite guard (on_nonfinite='raise') does not stop: the loss and params stayed finite."""
    model = L.serial(L.Dense(32), L.Relu(), L.Dense(10))
    opt = precision.loss_scaling(optim.adam(1e-3), "dynamic", init_scale=2.0 ** 24, max_scale=2.0 ** 24)
    state, history = train.fit(model, CE, opt, SMALL_DIGITS, epochs=3, batch_size=64, seed=0, precision="float16",
                               loss_scale=None, progress=False)
    skipped = history["skipped_steps"]
    assert skipped[0] >= 1 and skipped == [float(int(s)) for s in skipped]
    assert int(state.opt_state.skipped) == sum(skipped)
    assert history["loss_scale"][0] == 2.0 ** 24 / 2 ** skipped[0]  # halved once per skipped step, none grown yet
    assert history["test_accuracy"][-1] > history["test_accuracy"][0] + 0.1  # it learns


@pytest.mark.slow  # whole fits: CI's first step runs them, the floor step skips them
def test_float16_fit_defaults_to_dynamic_scaling_and_matches_float32_closely():
    model = L.serial(L.Dense(32), L.Relu(), L.Dense(10))
    s32, h32 = train.fit(model, CE, optim.adam(1e-3), SMALL_DIGITS, epochs=3, seed=0, progress=False)
    s16, h16 = train.fit(model, CE, optim.adam(1e-3), SMALL_DIGITS, epochs=3, seed=0, precision="float16", progress=False)
    assert isinstance(s16.opt_state, precision.LossScaleState) and h16["skipped_steps"] == [0.0, 0.0, 0.0]
    assert h16["loss_scale"] == [2.0 ** 15] * 3
    w32, w16 = s32.params["dense_0"]["w"], s16.params["dense_0"]["w"]
    assert w16.dtype == jnp.float32 and 0 < float(jnp.abs(w16 - w32).max()) < 0.05
    assert abs(h16["test_accuracy"][-1] - h32["test_accuracy"][-1]) < 0.05
    _, hb = train.fit(model, CE, optim.adam(1e-3), SMALL_DIGITS, epochs=3, seed=0, precision="bfloat16", progress=False)
    assert "skipped_steps" not in hb  # bfloat16 has float32's range: no scaling by default


def test_float16_without_scaling_warns_naming_the_layers_whose_gradients_underflow():
    model = L.serial(L.Dense(16), L.Relu(), L.Dense(10))
    tiny = lambda outputs, y: CE(outputs, y) * 1e-6  # noqa: E731  cotangents ~1e-8: below float16's subnormals
    with pytest.warns(RuntimeWarning, match=r"gradients of dense_0 \(b 100%, w 100%\), dense_1 \(b 100%, w 100%\) "
                                            r"underflow to zero"):
        train.fit(model, tiny, optim.adam(1e-3), SMALL_DIGITS, epochs=1, seed=0, precision="float16", loss_scale=None,
                  progress=False)
    x, y = SMALL_DIGITS.x_train[:64], SMALL_DIGITS.y_train[:64]
    _, params = model.init(jax.random.key(0), (-1, 64))
    assert precision.underflowing_layers(model, CE, params, x, y) == {}  # a normal loss does not underflow
    found = precision.underflowing_layers(model, tiny, params, x, y)
    assert set(found) == {"dense_0/w", "dense_0/b", "dense_1/w", "dense_1/b"}


def test_loss_scaling_errors_name_what_is_wrong(key):
    model = L.serial(L.Dense(4), L.Dense(3))
    objective = train.objective_from_loss(model, CE)
    nested = optax.chain(precision.loss_scaling(optim.sgd(0.1)), optim.sgd(0.1))
    state = train.init_train_state(model, nested, (-1, 2), seed=0)
    with pytest.raises(TypeError, match="loss_scaling must wrap the whole optimizer"):
        train.make_step(objective, nested)(state, (jnp.ones((2, 2)), jnp.array([0, 1])))
    scaled = precision.loss_scaling(optim.sgd(0.1))
    state = train.init_train_state(model, scaled, (-1, 2), seed=0)
    with pytest.raises(TypeError, match=r"dp_gradient\(l2_norm_clip=1.0, noise_multiplier=1.0\) is not linear in the loss"):
        train.make_step(objective, scaled, gradient=per_example.dp_gradient(1.0, 1.0))(state, (jnp.ones((2, 2)), jnp.array([0, 1])))
    fresh = train.init_train_state(model, optim.sgd(0.1), (-1, 2), seed=0)
    pair = (np.ones((8, 2), np.float32), np.arange(8) % 3)
    with pytest.raises(ValueError, match=r"state.opt_state was made without loss scaling, but this fit scales the loss"):
        train.fit(model, CE, optim.sgd(0.1), pair, state=fresh, precision="float16", epochs=1, batch_size=4, progress=False)
    with pytest.raises(TypeError, match="precision= goes with loss"):
        train.fit(model, optimizer=optim.sgd(0.1), data=pair, objective=lambda p, b, k, s: 0.0, state=fresh,
                  precision="bfloat16", epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="optimizer is already wrapped in precision.loss_scaling"):
        train.fit(model, CE, scaled, pair, precision="float16", loss_scale="dynamic", epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"scale must be 'dynamic', a positive number \(static\) or None, got 'fast'"):
        precision.loss_scaling(optim.sgd(0.1), "fast")
    with pytest.raises(ValueError, match=r"backoff_factor must be in \(0, 1\), got 2.0"):
        precision.loss_scaling(optim.sgd(0.1), backoff_factor=2.0)
    with pytest.raises(TypeError, match="loss_scale must be 'auto', 'dynamic', a positive number or None"):
        train.fit(model, CE, optim.sgd(0.1), pair, loss_scale=[2.0], epochs=1, batch_size=4, progress=False)


@pytest.mark.standard_promotion("optax.masked runs optax's own transforms")
def test_float16_scaling_takes_optimizers_that_need_the_params_structure():
    """fit learns whether an optimizer is wrapped without calling its init on made-up params (masked needs real ones)."""
    model = L.serial(L.Dense(16), L.Relu(), L.Dense(10))
    masked = optax.masked(optax.adam(1e-3), lambda params: {k: {"w": True, "b": False} for k in params})
    state, history = train.fit(model, CE, masked, SMALL_DIGITS, epochs=1, seed=0, precision="float16", progress=False)
    assert isinstance(state.opt_state, precision.LossScaleState) and len(history["skipped_steps"]) == 1
    wrapped = precision.loss_scaling(optim.adam(1e-3), 1024.0)
    _, history = train.fit(model, CE, wrapped, SMALL_DIGITS, epochs=1, seed=0, precision="float16", progress=False)
    assert history["loss_scale"] == [1024.0]  # "auto" keeps an optimizer's own scale


def test_an_epoch_whose_every_step_is_skipped_is_a_divergence():
    """Gradients that are NaN whatever the scale (here sqrt at 0, with a finite loss) are not an overflow: every step
    is skipped, and fit's guard stops there instead of training on with frozen params."""
    model = L.serial(L.Dense(16), L.Lambda(lambda x: x + jnp.sqrt(0.0 * x * x), name="sqrt_at_zero"), L.Dense(10))
    with pytest.raises(train.NonFiniteError, match=r"every step of that epoch had non-finite gradients") as caught:
        train.fit(model, CE, precision.loss_scaling(optim.adam(1e-3)), SMALL_DIGITS, epochs=3, seed=0, progress=False)
    assert caught.value.epoch == 1 and caught.value.history["epoch"] == []
    _, history = train.fit(model, CE, precision.loss_scaling(optim.adam(1e-3)), SMALL_DIGITS, epochs=1, seed=0,
                           on_nonfinite="ignore", progress=False)
    assert history["skipped_steps"] == [23.0] and history["loss_scale"] == [1.0]  # 23 halvings from 2**15, floored


@pytest.mark.slow  # whole fits: CI's first step runs them, the floor step skips them
def test_a_loss_scaled_run_resumes_exactly_from_its_checkpoint(tmp_path):
    model = L.serial(L.Dense(16), L.Relu(), L.Dense(10))
    opt = precision.loss_scaling(optim.adam(1e-3), "dynamic", init_scale=2.0 ** 20, max_scale=2.0 ** 20)
    kw = dict(seed=0, precision="float16", loss_scale=None, progress=False)
    straight, h_straight = train.fit(model, CE, opt, SMALL_DIGITS, epochs=3, **kw)
    train.fit(model, CE, opt, SMALL_DIGITS, epochs=2, checkpoint_dir=str(tmp_path), **kw)
    resumed, h_resumed = train.fit(model, CE, opt, SMALL_DIGITS, epochs=3, checkpoint_dir=str(tmp_path), **kw)
    assert isinstance(resumed.opt_state, precision.LossScaleState)
    assert (float(resumed.opt_state.scale), int(resumed.opt_state.skipped)) == (
        float(straight.opt_state.scale), int(straight.opt_state.skipped))
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(straight.params)):
        np.testing.assert_array_equal(a, b)
    assert h_resumed["skipped_steps"] == h_straight["skipped_steps"]
