"""Initializers: sample variances against the closed-form fans, orthogonality, constants."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import initializers as I

# (initializer factory, scale, fan mode) as the module docstring states them.
VARIANCE_SCALING = {
    "glorot_normal": (I.glorot_normal, 1.0, "avg"),
    "glorot_uniform": (I.glorot_uniform, 1.0, "avg"),
    "he_normal": (I.he_normal, 2.0, "in"),
    "he_uniform": (I.he_uniform, 2.0, "in"),
    "lecun_normal": (I.lecun_normal, 1.0, "in"),
    "lecun_uniform": (I.lecun_uniform, 1.0, "in"),
}

# dense (in, out) and conv (kh, kw, in, out) kernels
SHAPES = [(400, 300), (5, 5, 16, 32)]


def test_every_initializer_is_tested():
    covered = set(VARIANCE_SCALING) | {"normal", "uniform", "orthogonal", "zeros", "ones", "Initializer"}
    assert set(I.__all__) == covered


@pytest.mark.parametrize("name", sorted(VARIANCE_SCALING))
@pytest.mark.parametrize("shape", SHAPES)
def test_variance_matches_the_fan_formula(name, shape, key):
    factory, scale, mode = VARIANCE_SCALING[name]
    receptive = int(np.prod(shape[:-2]))
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    n = {"in": fan_in, "avg": (fan_in + fan_out) / 2}[mode]
    w = np.asarray(factory()(key, shape, jnp.float32))
    assert w.shape == shape and w.dtype == np.float32
    # 120,000+ samples: the sample variance is within 2% of the target.
    assert w.var() == pytest.approx(scale / n, rel=0.03)
    assert abs(w.mean()) < 3 * np.sqrt(scale / n / w.size) + 1e-6
    if name.endswith("uniform"):
        assert np.abs(w).max() <= np.sqrt(3 * scale / n) + 1e-6


def test_normal_and_uniform(key):
    w = np.asarray(I.normal(0.5)(key, (300, 300)))
    assert w.std() == pytest.approx(0.5, rel=0.02)
    u = np.asarray(I.uniform(0.2)(key, (300, 300)))
    assert u.min() >= 0.0 and u.max() <= 0.2 and u.mean() == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 3, 8, 16)])
def test_orthogonal(shape, key):
    w = np.asarray(I.orthogonal(2.0)(key, shape)).reshape(-1, shape[-1])
    small = min(w.shape)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-4)


def test_constants(key):
    np.testing.assert_array_equal(I.zeros(key, (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(I.ones(key, (4,)), np.ones(4))
    assert I.zeros(key, (2,), jnp.bfloat16).dtype == jnp.bfloat16


def test_bad_arguments():
    with pytest.raises(ValueError, match="stddev must be finite and > 0, got -1.0"):
        I.normal(-1.0)
    with pytest.raises(ValueError, match="scale must be finite and > 0, got 0.0"):
        I.orthogonal(0.0)
