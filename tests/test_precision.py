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


@pytest.mark.parametrize("case", BF16_CASES, ids=[c.name for c in BF16_CASES])
def test_every_layer_rule_in_bfloat16_is_within_the_derived_tolerance(case):
    shape = case.shapes[0]
    report = gradcheck.check_layer(case.make(), shape, dtypes=("bfloat16",), finite_differences=False,
                                   train=case.modes[-1])
    assert report.passed, f"{case.name}:\n{report}"
