"""Activations against jax.nn, at ordinary and extreme inputs; kink conventions pinned."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import activations as A

ORDINARY = jnp.linspace(-6.0, 6.0, 241)
EXTREME = jnp.array([-1e4, -1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0, 1e4])

PAIRS = [
    ("relu", A.relu, jax.nn.relu),
    ("leaky_relu", A.leaky_relu, jax.nn.leaky_relu),
    ("elu", A.elu, jax.nn.elu),
    ("gelu_exact", A.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    ("gelu_tanh", lambda x: A.gelu(x, approximate=True), lambda x: jax.nn.gelu(x, approximate=True)),
    ("sigmoid", A.sigmoid, jax.nn.sigmoid),
    ("tanh", A.tanh, jnp.tanh),
    ("softplus", A.softplus, jax.nn.softplus),
    ("silu", A.silu, jax.nn.silu),
    ("softmax", A.softmax, jax.nn.softmax),
    ("log_softmax", A.log_softmax, jax.nn.log_softmax),
    ("identity", A.identity, lambda x: x),
]


def test_every_activation_is_tested():
    tested = {name.split("_exact")[0].split("_tanh")[0] for name, _, _ in PAIRS}
    rules = {n for n in A.__all__ if n.endswith(("_grad", "_vjp"))} | {"GRADIENTS"}
    assert set(A.__all__) - rules == tested
    assert set(A.GRADIENTS) == {getattr(A, n) for n in tested}, "every activation needs a rule in GRADIENTS"


@pytest.mark.parametrize("name,ours,ref", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_hand_rule_matches_jax_vjp(name, ours, ref, dtype, rtol):
    base = A.gelu if name.startswith("gelu") else getattr(A, name)
    kwargs = {"approximate": True} if name == "gelu_tanh" else {}
    with jax.enable_x64(dtype == "float64"):
        x = (jax.random.normal(jax.random.key(1), (4, 7)) * 3 + 0.01).astype(dtype)
        y_bar = jax.random.normal(jax.random.key(2), (4, 7)).astype(dtype)
        expected = jax.vjp(lambda x: base(x, **kwargs), x)[1](y_bar)[0]
        got = A.GRADIENTS[base](x, y_bar, **kwargs)
        assert got.dtype == x.dtype
        err = float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected))
        assert err <= rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("name,ours,ref", PAIRS, ids=[p[0] for p in PAIRS])
def test_values_match_jax_nn(name, ours, ref):
    for x in (ORDINARY, EXTREME):
        np.testing.assert_allclose(ours(x), ref(x), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("name,ours,ref", PAIRS, ids=[p[0] for p in PAIRS])
def test_finite_values_and_gradients_at_extremes(name, ours, ref):
    del ref
    y = ours(EXTREME)
    assert np.all(np.isfinite(y)), f"{name} overflows: {y}"
    g = jax.grad(lambda x: jnp.sum(ours(x)))(EXTREME)
    assert np.all(np.isfinite(g)), f"{name}'s gradient is not finite at extremes: {g}"


@pytest.mark.parametrize("name,ours,ref", [p for p in PAIRS if p[0] not in ("softmax", "log_softmax")], ids=lambda p: p if isinstance(p, str) else "")
def test_gradients_match_jax_nn_in_float64(name, ours, ref):
    with jax.enable_x64(True):
        x = jnp.linspace(-5.0, 5.0, 101, dtype=jnp.float64) + 0.013  # avoid the kink at 0
        ours_g = jax.vmap(jax.grad(ours))(x)
        ref_g = jax.vmap(jax.grad(ref))(x)
        np.testing.assert_allclose(ours_g, ref_g, rtol=1e-12, atol=1e-12)


def test_relu_derivative_at_zero_is_zero():
    assert float(jax.grad(A.relu)(0.0)) == 0.0
    assert float(A.relu_grad(jnp.float32(0.0))) == 0.0


def test_leaky_relu_derivative_at_zero_is_the_slope():
    assert float(jax.grad(lambda x: A.leaky_relu(x, 0.2))(0.0)) == pytest.approx(0.2)
    assert float(A.leaky_relu_grad(jnp.float32(0.0), 0.2)) == pytest.approx(0.2)


def test_sigmoid_saturates_exactly():
    assert float(A.sigmoid(jnp.float32(-1000.0))) == 0.0
    assert float(A.sigmoid(jnp.float32(1000.0))) == 1.0
    assert float(A.sigmoid(jnp.float32(0.0))) == 0.5


def test_log_softmax_is_stable_for_huge_logits():
    x = jnp.array([[1000.0, 0.0, -1000.0], [1e30, 1e30, 0.0]])
    y = A.log_softmax(x)
    np.testing.assert_allclose(y[0], [0.0, -1000.0, -2000.0], rtol=1e-6)
    np.testing.assert_allclose(y[1, :2], [-np.log(2.0)] * 2, rtol=1e-6)
    np.testing.assert_allclose(A.softmax(x).sum(axis=-1), 1.0, rtol=1e-6)


def test_softmax_along_another_axis():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    np.testing.assert_allclose(A.softmax(x, axis=0), jax.nn.softmax(x, axis=0), rtol=1e-6)
    np.testing.assert_allclose(A.softmax(x, axis=0).sum(axis=0), 1.0, rtol=1e-6)


def test_log_softmax_with_minus_infinity_entries():
    x = jnp.array([0.0, -jnp.inf, 1.0])
    y = A.log_softmax(x)
    assert y[1] == -jnp.inf and np.all(np.isfinite(np.asarray(y)[[0, 2]]))
    np.testing.assert_allclose(jnp.exp(y).sum(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("fn", [f for f in A.GRADIENTS if f not in (A.softmax, A.log_softmax)], ids=lambda f: f.__name__)
def test_autodiff_and_the_hand_rule_agree_at_zero(fn):
    """At a kink both must state the same convention (elu's autodiff once gave alpha / 2 there, its rule alpha)."""
    x = jnp.zeros((3,), jnp.float32)
    auto = jax.grad(lambda v: jnp.sum(fn(v)))(x)
    hand = A.GRADIENTS[fn](x, jnp.ones_like(x))
    np.testing.assert_allclose(auto, hand, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# Exact GELU in the tails, against a float64 reference (math.erfc, not JAX)
# ---------------------------------------------------------------------------

TAIL_X = np.linspace(-10.0, 5.0, 601)


def _gelu_reference(x):
    return x * 0.5 * math.erfc(-x / math.sqrt(2.0))


def _gelu_grad_reference(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0)) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want) / np.maximum(np.abs(want), np.finfo(np.float32).tiny)


def test_exact_gelu_keeps_float32_relative_accuracy_in_the_tails():
    """gelu(x) for x in [-10, 5] within 1e-5 relative of a float64 reference; the erf form it
    replaced was 100% wrong below x = -6 (it returned 0) and off by more than 1e-3 at x = -4."""
    x = jnp.asarray(TAIL_X, jnp.float32)
    want = np.array([_gelu_reference(float(v)) for v in np.asarray(x, np.float64)])
    err = _relative_error(A.gelu(x), want)
    assert err.max() < 1e-5, f"worst relative error {err.max():.2e} at x = {float(x[np.argmax(err)])}"
    erf_form = 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))  # the old formula, to show the test can fail
    assert _relative_error(erf_form, want).max() > 0.5
    np.testing.assert_allclose(A.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-5, atol=0)  # both accurate


def test_exact_gelu_gradient_accurate_in_the_tails_hand_rule_and_autodiff():
    """gelu_grad and jax.grad(gelu) within 1e-4 relative of the float64 derivative on [-10, 5],
    away from the derivative's root near x = -0.7518 (there: absolute 1e-6)."""
    x = jnp.asarray(TAIL_X, jnp.float32)
    want = np.array([_gelu_grad_reference(float(v)) for v in np.asarray(x, np.float64)])
    away = np.abs(np.asarray(x) + 0.7518) > 0.05
    for name, got in (("gelu_grad", A.gelu_grad(x)), ("jax.grad(gelu)", jax.vmap(jax.grad(A.gelu))(x))):
        got = np.asarray(got, np.float64)
        err = _relative_error(got[away], want[away])
        assert err.max() < 1e-4, f"{name}: worst relative error {err.max():.2e} at x = {float(np.asarray(x)[away][np.argmax(err)])}"
        assert np.abs(got[~away] - want[~away]).max() < 1e-6, name


def test_leaky_relu_kink_convention_differs_from_jax_nn():
    """Ours: derivative negative_slope at 0 (left slope); jax.nn.leaky_relu: 1. Values agree."""
    zero = jnp.asarray(0.0)
    assert float(jax.grad(A.leaky_relu)(zero, 0.1)) == pytest.approx(0.1)
    assert float(A.leaky_relu_grad(zero, 0.1)) == pytest.approx(0.1)
    assert float(jax.grad(jax.nn.leaky_relu)(zero, 0.1)) == 1.0  # jax.nn's side of the kink
    x = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_array_equal(A.leaky_relu(x, 0.1), jax.nn.leaky_relu(x, 0.1))
