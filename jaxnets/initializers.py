"""Weight initializers.

An initializer is a function ``init(key, shape, dtype) -> array``, the same
contract as ``jax.nn.initializers`` (the key must be a ``jax.random`` key: an
integer seed raises a TypeError telling to use ``jax.random.key(0)``), so either library's initializers can be
passed to any jaxnets layer. Sampling is delegated to ``jax.nn.initializers``
(a well-tested implementation); this module states the math.

Fan-in and fan-out follow the kernel layouts jaxnets uses: a dense kernel is
``(in_features, out_features)``; a convolution kernel is
``(*window, in_channels, out_channels)``, so ``fan_in = prod(window) *
in_channels`` and ``fan_out = prod(window) * out_channels``.

Variance scaling draws weights with variance ``scale / n`` where ``n`` is the
fan-in, the fan-out, or their average:

=================  ======  ============  ======================
initializer        scale   n             reference
=================  ======  ============  ======================
``glorot_*``       1       (in + out)/2  Glorot & Bengio, 2010
``he_*``           2       in            He et al., 2015
``lecun_*``        1       in            LeCun et al., 1998
=================  ======  ============  ======================

``*_normal`` draws from a normal truncated at two standard deviations
(rescaled so the variance is exactly ``scale / n``); ``*_uniform`` from
``U(-sqrt(3 scale / n), sqrt(3 scale / n))``.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxnets import _checks

Initializer = Callable[..., jax.Array]

__all__ = [
    "Initializer",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "uniform",
    "zeros",
    "ones",
    "orthogonal",
]

def _shape(shape) -> tuple[int, ...]:
    """A concrete array shape: a tuple (or list) of ints >= 0 (an int alone is one axis)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)) or any(
            isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        raise TypeError(f"shape must be a tuple of ints >= 0 (a concrete array shape, no -1), got {shape!r}")
    return tuple(int(d) for d in shape)


def _keyed(init: Initializer) -> Initializer:
    """``init`` with its arguments checked first: an int seed gets jaxnets' TypeError, not JAX's PRNG message;
    a shape that is no shape and a dtype that is not a floating dtype get theirs."""

    def checked(key, shape, dtype=jnp.float32):
        key = _checks.prng_key(key, "key")
        return init(key, _shape(shape), _checks.dtype_like(dtype, "dtype", floating_only=True))

    checked.__name__ = getattr(init, "__name__", "initializer")
    checked.__doc__ = init.__doc__
    return checked


def _vs(scale: float, mode: Literal["fan_in", "fan_avg"], distribution: Literal["truncated_normal", "uniform"]) -> Initializer:
    return _keyed(jax.nn.initializers.variance_scaling(scale, mode, distribution))


def glorot_normal() -> Initializer:
    """Truncated normal with variance ``2 / (fan_in + fan_out)`` (Xavier normal)."""
    return _vs(1.0, "fan_avg", "truncated_normal")


def glorot_uniform() -> Initializer:
    """``U(-a, a)`` with ``a = sqrt(6 / (fan_in + fan_out))`` (Xavier uniform)."""
    return _vs(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    """Truncated normal with variance ``2 / fan_in``: keeps ReLU activations' scale."""
    return _vs(2.0, "fan_in", "truncated_normal")


def he_uniform() -> Initializer:
    """``U(-a, a)`` with ``a = sqrt(6 / fan_in)``."""
    return _vs(2.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """Truncated normal with variance ``1 / fan_in``: the default for dense and conv kernels."""
    return _vs(1.0, "fan_in", "truncated_normal")


def lecun_uniform() -> Initializer:
    """``U(-a, a)`` with ``a = sqrt(3 / fan_in)``."""
    return _vs(1.0, "fan_in", "uniform")


def normal(stddev: float = 1e-2) -> Initializer:
    """``N(0, stddev^2)``, independent of the shape."""
    return _keyed(jax.nn.initializers.normal(_checks.positive_float(stddev, "stddev")))


def uniform(scale: float = 1e-2) -> Initializer:
    """``U(0, scale)``, as ``jax.nn.initializers.uniform``."""
    return _keyed(jax.nn.initializers.uniform(_checks.positive_float(scale, "scale")))


def orthogonal(scale: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times ``scale`` (Saxe et al., 2014).

    The last axis is the output; all other axes are flattened into the input,
    so ``W.T @ W = scale^2 I`` (or ``W @ W.T``, whichever is smaller).
    """
    return _keyed(jax.nn.initializers.orthogonal(_checks.positive_float(scale, "scale")))


def zeros(key: jax.Array, shape: int | Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All zeros (the default for biases). Takes a key only to share the contract (it is checked all the same).
    Any numeric dtype (an integer counter is all zeros too)."""
    _checks.prng_key(key, "key")
    return jnp.zeros(_shape(shape), _checks.dtype_like(dtype, "dtype"))


def ones(key: jax.Array, shape: int | Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All ones (the default for normalisation scales)."""
    _checks.prng_key(key, "key")
    return jnp.ones(_shape(shape), _checks.dtype_like(dtype, "dtype"))
