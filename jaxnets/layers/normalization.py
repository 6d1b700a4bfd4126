"""Normalisation: LayerNorm (per example, over features) and BatchNorm (per channel, over the batch).

Both compute ``x_hat = (x - mean) / sqrt(var + eps)`` and ``y = x_hat * scale + bias``;
they differ in the axes of the statistics, and BatchNorm keeps running
statistics as explicit state. The forward pieces and the rule are shared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnets import _checks
from jaxnets.layers import _util, core, incremental
from jaxnets.layers.core import Layer

__all__ = ["LayerNorm", "BatchNorm"]


def _statistics(x: jax.Array, axes: tuple, keepdims: bool) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance of ``x`` over ``axes``."""
    mean = jnp.mean(x, axis=axes, keepdims=keepdims)
    centred = x - (mean if keepdims else jnp.expand_dims(mean, axes))
    return mean, jnp.mean(jnp.square(centred), axis=axes, keepdims=keepdims)


def _params(features: int, use_scale: bool, use_bias: bool) -> dict:
    params = {}
    if use_scale:
        params["scale"] = jnp.ones((features,), jnp.float32)
    if use_bias:
        params["bias"] = jnp.zeros((features,), jnp.float32)
    return params


def _normalise(params, x, mean, var, eps, use_scale, use_bias, spec):
    """``y = (x - mean) / sqrt(var + eps) * scale + bias``.

    With per-feature statistics (BatchNorm's, shape ``(C,)``) the scale is
    folded into the per-feature factor first, ``(x - mean) * (r scale)``, so
    that the full-size tensor takes one product, not two (and its autodiff
    gradient one pass fewer): the ResNet of ``experiments/benchmarks/resnet.py``
    trains about 10% faster per step on CPU.
    """
    r = lax.rsqrt(var + eps)
    if use_scale and jnp.ndim(mean) == 1:
        y = (x - mean) * (r * _util.entry(params, "scale", "params", spec))
    else:
        y = (x - mean) * r
        if use_scale:
            y = y * _util.entry(params, "scale", "params", spec)
    if use_bias:
        y = y + _util.entry(params, "bias", "params", spec)
    return y


def _normalise_backward(params, x, y_bar, mean, var, eps, axes, use_scale, use_bias, spec, batch_stats):
    """The rule shared by LayerNorm and BatchNorm.

    ``x_hat = (x - mu) r`` with ``r = 1 / sqrt(var + eps)``, ``y = x_hat gamma + beta``.
    ``gamma_bar = sum(y_bar x_hat)``, ``beta_bar = sum(y_bar)`` over the axes
    that gamma is shared across; with ``g = y_bar gamma``, when ``mu`` and
    ``var`` are the statistics of ``x`` itself over ``axes`` (N entries):

        x_bar = r (g - mean(g) - x_hat mean(g x_hat))

    (the two subtracted terms are the paths through ``mu`` and through
    ``var``). With fixed statistics (BatchNorm in evaluation) ``x_bar = r g``.
    """
    r = lax.rsqrt(var + eps)
    x_hat = (x - mean) * r
    grads = {}
    g = y_bar
    if use_scale:
        grads["scale"] = _util.sum_leading(y_bar * x_hat)
        g = y_bar * _util.entry(params, "scale", "params", spec)
    if use_bias:
        grads["bias"] = _util.sum_leading(y_bar)
    if not batch_stats:
        return grads, g * r
    g_mean = jnp.mean(g, axis=axes, keepdims=True)
    gx_mean = jnp.mean(g * x_hat, axis=axes, keepdims=True)
    return grads, r * (g - g_mean - x_hat * gx_mean)


def LayerNorm(*, eps: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:
    """Normalises each example over its last axis, then scales and shifts.

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias``, with the mean
    and (biased) variance over the last axis of each example.

    Defaults beside other libraries: ``eps=1e-5`` as PyTorch's ``LayerNorm``
    and Haiku; flax.linen's ``LayerNorm`` uses ``epsilon=1e-6``.

    Shapes: x ``(..., features)``; params ``{"scale": (features,), "bias": (features,)}``.
    """
    eps = _checks.positive_float(eps, "eps")
    spec = f"LayerNorm(eps={eps})"

    def init(key, input_shape):
        del key
        _util.check_rank(input_shape, spec)
        return input_shape, _params(_util.check_last_dim(input_shape, spec), use_scale, use_bias)

    def apply(params, x, *, key=None, train=False):
        del key, train
        _util.check_input(x, spec)
        mean, var = _statistics(x, (-1,), keepdims=True)
        return _normalise(params, x, mean, var, eps, use_scale, use_bias, spec)

    def backward(params, x, y_bar, *, key=None, train=False):
        """See :func:`_normalise_backward`, with statistics over the last axis."""
        del key, train
        mean, var = _statistics(x, (-1,), keepdims=True)
        return _normalise_backward(params, x, y_bar, mean, var, eps, (-1,), use_scale, use_bias, spec, True)

    return incremental.positionwise(core.build_stateless("layer_norm", spec, init, apply, backward))


def BatchNorm(*, momentum: float = 0.99, eps: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:
    """Normalises each channel over the batch (and spatial axes), with running statistics.

    In training: ``y = (x - mu_B) / sqrt(var_B + eps) * scale + bias`` with the
    mean and biased variance over every axis but the last, and the running
    statistics move towards them:
    ``mean <- momentum * mean + (1 - momentum) * mu_B`` (same for ``var``).
    In evaluation the running statistics replace the batch ones.

    ``momentum`` weights the *old* value (flax's and Keras's convention);
    PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here. The running variance
    is the biased batch variance (as flax; PyTorch keeps the unbiased one).
    With ``momentum=0.99`` the running statistics need a few hundred steps to
    forget their initial values (mean 0, variance 1): after ``n`` steps the
    initial value still weighs ``0.99**n`` (0.37 after 100). For short runs
    evaluated with running statistics, use ``momentum=0.9``.

    Params ``{"scale": (C,), "bias": (C,)}``; state ``{"mean": (C,), "var": (C,)}``.
    Use ``init_with_state`` / ``apply_with_state``.
    """
    momentum = _checks.in_unit_interval(momentum, "momentum")
    eps = _checks.positive_float(eps, "eps")
    spec = f"BatchNorm(momentum={momentum}, eps={eps})"

    def init_with_state(key, input_shape):
        del key
        _util.check_rank(input_shape, spec, min_rank=2)
        c = _util.check_last_dim(input_shape, spec)
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return input_shape, _params(c, use_scale, use_bias), state

    def running(state, x):
        """The running statistics, in ``x``'s dtype."""
        if not state:
            raise ValueError(
                f"{spec} keeps running statistics as state: build with init_with_state and call "
                f"apply_with_state(params, state, x, train=...) (got no state)"
            )
        mean = _util.entry(state, "mean", "state", spec)
        if x.shape[-1] != mean.shape[0]:
            raise ValueError(f"{spec} expects {mean.shape[0]} channels (last axis), got x of shape {tuple(x.shape)}")
        return mean, _util.entry(state, "var", "state", spec)

    def apply_with_state(params, state, x, *, key=None, train=False):
        del key
        _util.check_input(x, spec, min_rank=2)
        running_mean, running_var = running(state, x)
        if train:
            mean, var = _statistics(x, tuple(range(x.ndim - 1)), keepdims=False)
            new_state = {
                "mean": momentum * running_mean + (1.0 - momentum) * mean.astype(running_mean.dtype),
                "var": momentum * running_var + (1.0 - momentum) * var.astype(running_var.dtype),
            }
        else:
            mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
            new_state = state
        return _normalise(params, x, mean, var, eps, use_scale, use_bias, spec), new_state

    def backward(params, state, x, y_bar, *, key=None, train=False):
        """See :func:`_normalise_backward`: batch statistics over every axis but the
        last in training (gradients flow through them), running statistics
        (constants) in evaluation. The state gets no cotangent."""
        del key
        axes = tuple(range(x.ndim - 1))
        if train:
            mean, var = _statistics(x, axes, keepdims=False)
        else:
            mean, var = (s.astype(x.dtype) for s in running(state, x))
        return _normalise_backward(params, x, y_bar, mean, var, eps, axes, use_scale, use_bias, spec, train)

    return core.build("batch_norm", spec, init_with_state, apply_with_state, backward)
