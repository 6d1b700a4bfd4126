"""Activation functions, written out so their numerics are visible.

Every function is elementwise except ``softmax`` and ``log_softmax``, which
normalise along ``axis``. Every function takes a real floating array (any
shape; float16, bfloat16, float32, float64) or a Python number: a complex,
bool or integer array raises a ``TypeError`` naming ``x``, as does anything
that is not an array, and ``axis`` must be an int in range for ``x``'s rank.
The checks read dtypes and shapes only, so they cost nothing under ``jit``.
Each one is stable for extreme inputs: no overflow
in ``exp``, no ``nan`` in values or gradients for finite inputs of any size.

Conventions at kinks (pinned by tests): ``relu'(0) = 0`` (as ``jax.nn.relu``)
and ``leaky_relu'(0) = negative_slope``, the left-hand slope, which is *not*
``jax.nn.leaky_relu``'s convention: it selects ``x`` for ``x >= 0``, so its
derivative at 0 is 1 (PyTorch's ``leaky_relu`` gives ``negative_slope`` at 0,
as jaxnets does).

Each function's hand-derived derivative sits directly below it:
``<name>_grad(x)`` (the elementwise derivative ``f'(x)``), or for the two
normalising functions ``<name>_vjp(x, y_bar)`` (the cotangent of ``x``
given the cotangent ``y_bar`` of the output). Each activation carries its
rule as ``fn.backward(x, y_bar, **kwargs) -> x_bar`` (the convention shared
with layers and losses); ``GRADIENTS`` maps each activation to it.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks

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
    "relu_grad",
    "leaky_relu_grad",
    "elu_grad",
    "gelu_grad",
    "sigmoid_grad",
    "tanh_grad",
    "softplus_grad",
    "silu_grad",
    "softmax_vjp",
    "log_softmax_vjp",
    "identity_grad",
    "GRADIENTS",
]


def relu(x: jax.Array) -> jax.Array:
    """Rectified linear unit, ``max(x, 0)``.

    ``jax.nn.relu``: one ``max`` per element, with a custom JVP that makes the
    derivative at 0 equal to 0 (plain ``jnp.maximum`` would split it, 1/2 and
    1/2, between its arguments).
    """
    x = _checks.float_array(x, "x")
    return jax.nn.relu(x)


def relu_grad(x: jax.Array) -> jax.Array:
    """``relu'(x) = 1`` for ``x > 0``, else 0 (0 at the kink ``x = 0``)."""
    x = _checks.float_array(x, "x")
    return (x > 0).astype(x.dtype)


def leaky_relu(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise.

    The derivative at the kink ``x = 0`` is ``negative_slope`` (the left-hand
    slope; autodiff and :func:`leaky_relu_grad` agree). ``jax.nn.leaky_relu``
    uses the other side (``where(x >= 0, x, ...)``: derivative 1 at 0);
    PyTorch uses this one. The values agree everywhere.
    """
    x = _checks.float_array(x, "x")
    _checks.real_number(negative_slope, "negative_slope")
    return jnp.where(x > 0, x, negative_slope * x)


def leaky_relu_grad(x: jax.Array, negative_slope: float = 0.01) -> jax.Array:
    """1 for ``x > 0``, else ``negative_slope`` (including at ``x = 0``)."""
    x = _checks.float_array(x, "x")
    _checks.real_number(negative_slope, "negative_slope")
    return jnp.where(x > 0, jnp.ones_like(x), jnp.full_like(x, negative_slope))


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """Exponential linear unit: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise.

    ``expm1`` is evaluated on ``where(x > 0, 0, x)`` so the unused branch
    cannot overflow (an ``inf`` there would turn the gradient into ``nan``).
    Not on ``min(x, 0)``: at ``x = 0`` autodiff would split ``min``'s
    derivative in halves and give ``alpha / 2`` instead of the left limit
    ``alpha`` that :func:`elu_grad` states.
    """
    x = _checks.float_array(x, "x")
    _checks.real_number(alpha, "alpha")
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.where(x > 0, jnp.zeros_like(x), x)))


def elu_grad(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """1 for ``x > 0``, else ``alpha exp(x)`` (``alpha`` at 0, the left limit)."""
    x = _checks.float_array(x, "x")
    _checks.real_number(alpha, "alpha")
    return jnp.where(x > 0, jnp.ones_like(x), alpha * jnp.exp(jnp.minimum(x, 0)))


def _approximate_flag(approximate) -> None:
    if not isinstance(approximate, (bool, np.bool_)):
        raise TypeError(f"approximate must be True or False, got {approximate!r}")


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """Gaussian error linear unit, ``x * Phi(x)`` with ``Phi`` the standard normal CDF.

    Args:
      x: any shape.
      approximate: ``False`` (default, as in PyTorch) uses the exact
        ``Phi(x) = erfc(-x / sqrt 2) / 2`` (equal to ``(1 + erf(x / sqrt 2)) / 2``,
        but without the cancellation of ``1 + erf`` that leaves no correct
        digit below ``x = -3`` in float32 and exactly 0 below ``x = -6``: the
        ``erfc`` form keeps float32's relative accuracy down to ``x = -10`` and
        beyond, as ``jax.nn.gelu(approximate=False)`` does); ``True`` uses the tanh
        approximation ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``
        (``jax.nn.gelu``'s default).
    """
    x = _checks.float_array(x, "x")
    _approximate_flag(approximate)
    if approximate:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    return 0.5 * x * lax.erfc(-x / math.sqrt(2.0))


def gelu_grad(x: jax.Array, approximate: bool = False) -> jax.Array:
    """``d/dx [x Phi(x)] = Phi(x) + x phi(x)`` with ``phi`` the standard normal density.

    Exact form: ``Phi`` from ``erfc`` as in :func:`gelu`, so the rule keeps its
    relative accuracy in the left tail (where ``Phi(x)`` and ``x phi(x)`` are
    tiny, and ``1 + erf`` would round ``Phi`` to 0). Tanh form: with ``u = c (x + a x^3)``, ``c = sqrt(2/pi)``, ``a = 0.044715``,
    ``t = tanh(u)``: ``(1 + t) / 2 + x (1 - t^2) c (1 + 3 a x^2) / 2``.
    """
    x = _checks.float_array(x, "x")
    _approximate_flag(approximate)
    if approximate:
        c = math.sqrt(2.0 / math.pi)
        t = jnp.tanh(c * (x + 0.044715 * x**3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
    cdf = 0.5 * lax.erfc(-x / math.sqrt(2.0))
    pdf = jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic function ``1 / (1 + exp(-x))``, without overflow.

    With ``z = exp(-|x|)`` (always in (0, 1]): ``1 / (1 + z)`` for ``x >= 0``
    and ``z / (1 + z)`` for ``x < 0``. Neither branch can overflow.
    """
    x = _checks.float_array(x, "x")
    z = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def sigmoid_grad(x: jax.Array) -> jax.Array:
    """``sigmoid'(x) = s (1 - s)`` with ``s = sigmoid(x)``."""
    x = _checks.float_array(x, "x")
    s = sigmoid(x)
    return s * (1.0 - s)


def tanh(x: jax.Array) -> jax.Array:
    """Hyperbolic tangent."""
    x = _checks.float_array(x, "x")
    return jnp.tanh(x)


def tanh_grad(x: jax.Array) -> jax.Array:
    """``tanh'(x) = 1 - tanh(x)^2``."""
    x = _checks.float_array(x, "x")
    t = jnp.tanh(x)
    return 1.0 - t * t


def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + exp(x))``, computed stably as ``logaddexp(x, 0)``.

    Not as ``max(x, 0) + log1p(exp(-|x|))``: equal in value, but autodiff
    through ``max`` and ``|x|`` at exactly ``x = 0`` gives 0 instead of
    ``sigmoid(0) = 1/2`` (a test pins autodiff against :func:`softplus_grad` at 0).
    """
    x = _checks.float_array(x, "x")
    return jnp.logaddexp(x, jnp.zeros_like(x))


def softplus_grad(x: jax.Array) -> jax.Array:
    """``softplus'(x) = sigmoid(x)``."""
    x = _checks.float_array(x, "x")
    return sigmoid(x)


def silu(x: jax.Array) -> jax.Array:
    """Sigmoid linear unit (swish), ``x * sigmoid(x)``."""
    x = _checks.float_array(x, "x")
    return x * sigmoid(x)


def silu_grad(x: jax.Array) -> jax.Array:
    """``d/dx [x s(x)] = s + x s (1 - s) = s (1 + x (1 - s))``."""
    x = _checks.float_array(x, "x")
    s = sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _stable_max(x: jax.Array, axis: int) -> jax.Array:
    # The shift only changes rounding, never the value, so no gradient flows
    # through it; an all -inf row gets shift 0 instead of nan.
    m = jnp.max(x, axis=axis, keepdims=True)
    return lax.stop_gradient(jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m)))


def _cotangent_shape(x, y_bar) -> None:
    if jnp.shape(y_bar) != jnp.shape(x):
        raise ValueError(f"y_bar must have the shape of x, {tuple(jnp.shape(x))}, got {tuple(jnp.shape(y_bar))}")


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x - logsumexp(x)`` along ``axis``, with the max subtracted first."""
    x = _checks.float_array(x, "x")
    axis = _checks.axis_index(axis, jnp.ndim(x))
    shifted = x - _stable_max(x, axis)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_vjp(x: jax.Array, y_bar: jax.Array, axis: int = -1) -> jax.Array:
    """Cotangent of ``x`` for ``y = log_softmax(x)``: ``y_bar - softmax(x) sum(y_bar)``.

    The Jacobian is ``I - 1 softmax(x)^T`` along ``axis``, so
    ``x_bar = J^T y_bar = y_bar - softmax(x) * sum_j y_bar_j``.
    """
    x = _checks.float_array(x, "x")
    y_bar = _checks.float_array(y_bar, "y_bar")
    axis = _checks.axis_index(axis, jnp.ndim(x))
    _cotangent_shape(x, y_bar)
    return y_bar - softmax(x, axis) * jnp.sum(y_bar, axis=axis, keepdims=True)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(x_i) / sum_j exp(x_j)`` along ``axis``, with the max subtracted first."""
    x = _checks.float_array(x, "x")
    axis = _checks.axis_index(axis, jnp.ndim(x))
    unnormalised = jnp.exp(x - _stable_max(x, axis))
    return unnormalised / jnp.sum(unnormalised, axis=axis, keepdims=True)


def softmax_vjp(x: jax.Array, y_bar: jax.Array, axis: int = -1) -> jax.Array:
    """Cotangent of ``x`` for ``s = softmax(x)``: ``s * (y_bar - sum(y_bar s))``.

    The Jacobian is ``diag(s) - s s^T`` (symmetric) along ``axis``, so
    ``x_bar = s * y_bar - s (s . y_bar)``.
    """
    x = _checks.float_array(x, "x")
    y_bar = _checks.float_array(y_bar, "y_bar")
    axis = _checks.axis_index(axis, jnp.ndim(x))
    _cotangent_shape(x, y_bar)
    s = softmax(x, axis)
    return s * (y_bar - jnp.sum(y_bar * s, axis=axis, keepdims=True))


def identity(x: jax.Array) -> jax.Array:
    """Returns ``x`` unchanged (a linear output layer)."""
    x = _checks.float_array(x, "x")
    return x


def identity_grad(x: jax.Array) -> jax.Array:
    """1 everywhere."""
    x = _checks.float_array(x, "x")
    return jnp.ones_like(x)


def _from_derivative(derivative):
    def vjp(x, y_bar, **kwargs):
        y_bar = _checks.float_array(y_bar, "y_bar")
        return y_bar * derivative(x, **kwargs)

    return vjp


# activation -> its hand-derived rule as a vjp (x, y_bar, **kwargs) -> x_bar
GRADIENTS: dict[Callable[..., jax.Array], Callable[..., jax.Array]] = {
    relu: _from_derivative(relu_grad),
    leaky_relu: _from_derivative(leaky_relu_grad),
    elu: _from_derivative(elu_grad),
    gelu: _from_derivative(gelu_grad),
    sigmoid: _from_derivative(sigmoid_grad),
    tanh: _from_derivative(tanh_grad),
    softplus: _from_derivative(softplus_grad),
    silu: _from_derivative(silu_grad),
    softmax: softmax_vjp,
    log_softmax: log_softmax_vjp,
    identity: _from_derivative(identity_grad),
}

# The one convention of hand rules (layers, activations, losses): the rule is
# the function's ``backward``, taking its arguments and then the output's
# cotangent: ``relu.backward(x, y_bar) -> x_bar``.
for _fn, _rule in GRADIENTS.items():
    _fn.backward = _rule
