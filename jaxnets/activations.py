"""Activation functions, written out so their numerics are visible.

Every function is elementwise except ``softmax`` and ``log_softmax``, which
normalise along ``axis``. Each one is stable for extreme inputs: no overflow
in ``exp``, no ``nan`` in values or gradients for finite inputs of any size.

Conventions at kinks (pinned by tests): ``relu'(0) = 0`` and
``leaky_relu'(0) = negative_slope``, the same as ``jax.nn``.

The hand-derived derivative of each function will sit directly below it
(see the issue on hand-derived backprop).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "relu",
    "leaky_relu",
    "elu",
    "gelu",
    "sigmoid",
    "tanh",
    "softplus",
    "silu",
    "softmax",
    "log_softmax",
    "identity",
]


def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit, ``max(x, 0)``.

    Written as ``where(x > 0, x, 0)`` so that the derivative at 0 is 0.
    """
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise (derivative at 0: ``negative_slope``)."""
    return jnp.where(x > 0, x, negative_slope * x)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """Exponential linear unit: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    ``expm1`` is evaluated on ``min(x, 0)`` so the unused branch cannot
    overflow (an ``inf`` there would turn the gradient into ``nan``).
    """
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """Gaussian error linear unit, ``x * Phi(x)`` with ``Phi`` the standard normal CDF.

    Args:
      x: any shape.
      approximate: ``False`` (default, as in PyTorch) uses the exact
        ``Phi(x) = (1 + erf(x / sqrt 2)) / 2``; ``True`` uses the tanh
        approximation ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``
        (``jax.nn.gelu``'s default).
    """
    if approximate:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    return 0.5 * x * (1.0 + lax.erf(x / math.sqrt(2.0)))


def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic function ``1 / (1 + exp(-x))``, without overflow.

    With ``z = exp(-|x|)`` (always in (0, 1]): ``1 / (1 + z)`` for ``x >= 0``
    and ``z / (1 + z)`` for ``x < 0``. Neither branch can overflow.
    """
    z = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def tanh(x: jax.Array) -> jax.Array:
    """Hyperbolic tangent."""
    return jnp.tanh(x)


def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + exp(x))`` computed as ``max(x, 0) + log1p(exp(-|x|))``."""
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def silu(x: jax.Array) -> jax.Array:
    """Sigmoid linear unit (swish), ``x * sigmoid(x)``."""
    return x * sigmoid(x)


def _stable_max(x: jax.Array, axis: int) -> jax.Array:
    # The shift only changes rounding, never the value, so no gradient flows
    # through it; an all -inf row gets shift 0 instead of nan.
    m = jnp.max(x, axis=axis, keepdims=True)
    return lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x - logsumexp(x)`` along ``axis``, with the max subtracted first."""
    shifted = x - _stable_max(x, axis)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis``, with the max subtracted first."""
    unnormalised = jnp.exp(x - _stable_max(x, axis))
    return unnormalised / jnp.sum(unnormalised, axis=axis, keepdims=True)


def identity(x: jax.Array) -> jax.Array:
    """Returns ``x`` unchanged (a linear output layer)."""
    return x
