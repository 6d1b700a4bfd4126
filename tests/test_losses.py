"""Losses against optax (averaged over the batch), extreme logits, and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnets import losses as Lo


@pytest.fixture
def logits():
    return jax.random.normal(jax.random.key(0), (16, 5)) * 3.0


@pytest.fixture
def labels():
    return jax.random.randint(jax.random.key(1), (16,), 0, 5)


def test_every_loss_is_tested():
    tested = {
        "mean_squared_error", "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels",
        "binary_cross_entropy_with_logits", "huber", "hinge", "accuracy",
    }
    assert {n for n in Lo.__all__ if not n.endswith("_grad")} == tested
    for name in tested - {"accuracy"}:
        assert getattr(getattr(Lo, name), "grad", None) is getattr(Lo, f"{name}_grad"), f"{name} needs a .grad rule"


def _loss_cases(dtype):
    k = jax.random.split(jax.random.key(11), 4)
    z = (jax.random.normal(k[0], (6, 5)) * 3).astype(dtype)
    labels = jax.random.randint(k[1], (6,), 0, 5)
    probs = jax.nn.softmax(jax.random.normal(k[2], (6, 5))).astype(dtype)
    signs = jnp.where(jax.random.bernoulli(k[3], 0.5, (6, 5)), 1.0, -1.0).astype(dtype)
    return {
        "mean_squared_error": (z, probs),
        "softmax_cross_entropy": (z, probs * 1.5),  # rows that do not sum to 1 exercise the general form
        "softmax_cross_entropy_with_integer_labels": (z, labels),
        "binary_cross_entropy_with_logits": (z, probs),
        "huber": (z, probs),
        "hinge": (z, signs),
    }


@pytest.mark.parametrize("name", sorted(_loss_cases(jnp.float32)))
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_hand_gradient_matches_jax_grad(name, dtype, rtol):
    with jax.enable_x64(dtype == "float64"):
        args = _loss_cases(jnp.dtype(dtype))[name]
        loss = getattr(Lo, name)
        expected = jax.grad(loss)(*args)
        got = loss.grad(*args)
        assert got.dtype == args[0].dtype
        assert float(jnp.linalg.norm(got - expected) / jnp.linalg.norm(expected)) <= rtol


def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot():
    z = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    y = jnp.array([0, 2])
    expected = (jax.nn.softmax(z) - jax.nn.one_hot(y, 3)) / 2
    np.testing.assert_allclose(Lo.softmax_cross_entropy_with_integer_labels_grad(z, y), expected, rtol=1e-6)


def test_hinge_gradient_is_zero_at_the_margin():
    s, t = jnp.array([1.0, -1.0, 0.5]), jnp.array([1.0, -1.0, 1.0])  # margins 0, 0, 0.5
    np.testing.assert_array_equal(Lo.hinge_grad(s, t), jnp.array([0.0, 0.0, -1.0 / 3]))
    np.testing.assert_array_equal(jax.grad(Lo.hinge)(s, t), Lo.hinge_grad(s, t))


def test_mean_squared_error():
    p, t = jax.random.normal(jax.random.key(2), (2, 8, 3))
    np.testing.assert_allclose(Lo.mean_squared_error(p, t), jnp.mean(optax.squared_error(p, t)), rtol=1e-6)
    np.testing.assert_allclose(Lo.mean_squared_error(p, t), np.mean((np.asarray(p) - np.asarray(t)) ** 2), rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_softmax_cross_entropy_integer_labels(logits, labels, scale):
    z = logits * scale
    ref = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(z, labels))
    np.testing.assert_allclose(Lo.softmax_cross_entropy_with_integer_labels(z, labels), ref, rtol=1e-6)
    assert np.isfinite(float(jax.grad(Lo.softmax_cross_entropy_with_integer_labels)(z, labels).sum()))


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_softmax_cross_entropy_one_hot_and_probabilities(logits, labels, scale):
    z = logits * scale
    one_hot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(Lo.softmax_cross_entropy(z, one_hot), Lo.softmax_cross_entropy_with_integer_labels(z, labels), rtol=1e-6)
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(3), (16, 5)))
    np.testing.assert_allclose(Lo.softmax_cross_entropy(z, probs), jnp.mean(optax.softmax_cross_entropy(z, probs)), rtol=1e-6)


def test_cross_entropy_of_a_certain_right_answer_is_zero():
    z = jnp.array([[1000.0, -1000.0]])
    assert float(Lo.softmax_cross_entropy_with_integer_labels(z, jnp.array([0]))) == 0.0
    np.testing.assert_allclose(Lo.softmax_cross_entropy_with_integer_labels(z, jnp.array([1])), 2000.0, rtol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e4])
def test_binary_cross_entropy_with_logits(scale):
    z = jax.random.normal(jax.random.key(4), (32,)) * scale
    t = jax.random.bernoulli(jax.random.key(5), 0.5, (32,)).astype(jnp.float32)
    ref = jnp.mean(optax.sigmoid_binary_cross_entropy(z, t))
    np.testing.assert_allclose(Lo.binary_cross_entropy_with_logits(z, t), ref, rtol=1e-6)
    assert np.all(np.isfinite(jax.grad(Lo.binary_cross_entropy_with_logits)(z, t)))


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber(delta):
    p, t = jax.random.normal(jax.random.key(6), (2, 64)) * 3.0
    np.testing.assert_allclose(Lo.huber(p, t, delta), jnp.mean(optax.huber_loss(p, t, delta=delta)), rtol=1e-6)


def test_hinge():
    s = jax.random.normal(jax.random.key(7), (64,)) * 2.0
    t = jnp.where(jax.random.bernoulli(jax.random.key(8), 0.5, (64,)), 1.0, -1.0)
    np.testing.assert_allclose(Lo.hinge(s, t), jnp.mean(optax.hinge_loss(s, t)), rtol=1e-6)


def test_accuracy(logits, labels):
    expected = np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels))
    np.testing.assert_allclose(Lo.accuracy(logits, labels), expected, rtol=1e-6)


def test_losses_under_jit(logits, labels):
    f = jax.jit(Lo.softmax_cross_entropy_with_integer_labels)
    np.testing.assert_allclose(f(logits, labels), Lo.softmax_cross_entropy_with_integer_labels(logits, labels), rtol=1e-6)


def test_errors(logits, labels):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) for 5 classes, got values in \[-1, 4\]"):
        Lo.softmax_cross_entropy_with_integer_labels(logits, labels.at[0].set(-1))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) for 5 classes, got values in \[0, 5\]"):
        Lo.accuracy(logits, labels.at[3].set(5))
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float32"):
        Lo.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"logits \(16, 5\) needs labels \(16,\), got \(16, 1\)"):
        Lo.softmax_cross_entropy_with_integer_labels(logits, labels[:, None])
    with pytest.raises(ValueError, match=r"predictions and targets must have the same shape, got \(4,\) and \(4, 1\)"):
        Lo.mean_squared_error(jnp.ones(4), jnp.ones((4, 1)))
    with pytest.raises(ValueError, match="delta must be finite and > 0, got 0.0"):
        Lo.huber(jnp.ones(3), jnp.ones(3), delta=0.0)
    with pytest.raises(TypeError, match="logits must be an array, got list"):
        Lo.softmax_cross_entropy(logits.tolist(), logits)


def test_binary_cross_entropy_refuses_targets_outside_the_unit_interval():
    logits = jnp.zeros(4)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\], got -0.5 at index 2 \(2 of 4 entries outside\)"):
        Lo.binary_cross_entropy_with_logits(logits, jnp.array([0.0, 1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\], got nan at index 0"):
        Lo.binary_cross_entropy_with_logits(logits, jnp.array([np.nan, 1.0, 0.5, 0.0]))
    # Under jit the values are unknown: no check, no error (fit and evaluate check data before tracing).
    jax.jit(Lo.binary_cross_entropy_with_logits)(logits, jnp.array([0.0, 1.0, 0.5, 0.25]))


def test_int64_labels_beyond_int32_are_refused_with_their_true_value():
    """2**31 + 1 would wrap to -2**31 + 1 in int32 (and 2**32 + 1 to 1, a valid class): the check
    reads the int64 values before any cast."""
    logits = jnp.zeros((3, 4))
    for big in (2**31 + 1, 2**32 + 1):
        labels = np.array([0, big, 1], np.int64)
        with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\) for 4 classes, got values in \[0, {big}\]"):
            Lo.softmax_cross_entropy_with_integer_labels(logits, labels)
        with pytest.raises(ValueError, match=rf"got values in \[0, {big}\]"):
            Lo.accuracy(logits, labels)
