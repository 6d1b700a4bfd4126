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


def _batch_statistics(x: jax.Array, axes: tuple, shift: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance of ``x`` over ``axes`` in one pass, shifted by ``shift``.

    With ``d = x - shift``: ``mean = shift + mean(d)`` and
    ``var = mean(d**2) - mean(d)**2``. Both reductions read ``x`` once (XLA
    fuses them), where the two-pass form reads it again for the centred
    squares. The one-pass form loses float precision when the
    mean is large beside the standard deviation (flax's "fast variance" is
    the unshifted form); the shift, BatchNorm's running mean (a constant to
    the gradient), keeps ``mean(d)`` near zero once the running statistics
    have followed the data. The variance is clipped at zero against rounding.
    """
    shift = lax.stop_gradient(shift.astype(x.dtype))
    d = x - shift
    m = jnp.mean(d, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(d), axis=axes) - jnp.square(m), 0.0)
    return m + shift, var


def _train_normalise_impl(x: jax.Array, scale: jax.Array, bias: jax.Array, shift: jax.Array,
                          eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchNorm in training: ``(y, mean, var)``, with the batch statistics of ``x``.

    The derivative is the closed form of :func:`_normalise_backward` (as cuDNN
    and PyTorch take it), not autodiff's trace of the forward: two reductions
    of ``y_bar`` and one element-wise pass, which XLA fuses where the traced
    derivative of the statistics keeps full-size intermediates alive (XLA's
    count of bytes accessed by the ResNet step of
    ``experiments/benchmarks/resnet.py``: 0.60 GB, against 0.71 traced).
    Reverse mode only (a ``jax.custom_vjp``): forward mode (``jax.jvp``,
    ``jax.jacfwd``) through BatchNorm in training raises. The tests check this
    derivative against ``jax.grad`` of the plain two-pass formula, and the
    layer's hand rule against finite differences.
    """
    mean, var = _batch_statistics(x, tuple(range(x.ndim - 1)), shift)
    return (x - mean) * (lax.rsqrt(var + eps) * scale) + bias, mean, var


_train_normalise = jax.custom_vjp(_train_normalise_impl, nondiff_argnums=(4,))


def _train_normalise_fwd(x, scale, bias, shift, eps):
    y, mean, var = _train_normalise(x, scale, bias, shift, eps)
    return (y, mean, var), (x, scale, bias, mean, var)


def _train_normalise_bwd(eps, residuals, cotangents):
    """With ``x_hat = (x - mean) r``, ``r = 1 / sqrt(var + eps)`` and sums over the N rows:
    ``scale_bar = sum(y_bar x_hat)``, ``bias_bar = sum(y_bar)``,
    ``x_bar = r scale (y_bar - bias_bar / N - x_hat scale_bar / N)`` (:func:`_normalise_backward`'s
    ``r (g - mean(g) - x_hat mean(g x_hat))`` with ``g = y_bar scale``, the per-channel factors
    taken out of the sums), plus the paths through ``mean`` and ``var`` as outputs (the running
    statistics; zero unless they are differentiated): ``mean_bar / N + 2 var_bar (x - mean) / N``.
    """
    x, scale, bias, mean, var = residuals
    y_bar, mean_bar, var_bar = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    r = lax.rsqrt(var + eps)
    x_hat = (x - mean) * r
    scale_bar = jnp.sum(y_bar * x_hat, axis=axes)
    bias_bar = jnp.sum(y_bar, axis=axes)
    x_bar = (r * scale) * (y_bar - bias_bar / n - x_hat * (scale_bar / n)) + (mean_bar + 2.0 * var_bar * (x - mean)) / n
    return x_bar.astype(x.dtype), scale_bar.astype(scale.dtype), bias_bar.astype(bias.dtype), None


_train_normalise.defvjp(_train_normalise_fwd, _train_normalise_bwd)


def _params(features: int, use_scale: bool, use_bias: bool) -> dict:
    params = {}
    if use_scale:
        params["scale"] = jnp.ones((features,), jnp.float32)
    if use_bias:
        params["bias"] = jnp.zeros((features,), jnp.float32)
    return params


def _normalise(params, x, mean, var, eps, use_scale, use_bias, spec):
    """``y = (x - mean) / sqrt(var + eps) * scale + bias``.

    With per-feature statistics (BatchNorm's running ones, shape ``(C,)``) the
    scale is folded into the per-feature factor first, ``(x - mean) * (r scale)``,
    so that the full-size tensor takes one product, not two, as in training
    (:func:`_train_normalise`).
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

    In training the batch statistics are taken in one pass over ``x``,
    shifted by the running mean (which keeps them exact while the running
    statistics follow the data), and ``jax.grad`` differentiates the layer
    by its closed-form rule (a ``jax.custom_vjp``, as cuDNN and PyTorch do)
    rather than by tracing the statistics: on CPU it took the ResNet step of
    ``experiments/benchmarks/resnet.py`` from 1.10x flax.linen's to 0.93x.
    Reverse mode works to any order (``jax.grad`` of ``jax.grad``); forward
    mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) through a training
    call does not: use ``jax.jacrev``, or ``train=False``.

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
        if not train:
            mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
            return _normalise(params, x, mean, var, eps, use_scale, use_bias, spec), state
        c = x.shape[-1]
        scale = _util.entry(params, "scale", "params", spec) if use_scale else jnp.ones((c,), x.dtype)
        bias = _util.entry(params, "bias", "params", spec) if use_bias else jnp.zeros((c,), x.dtype)
        y, mean, var = _train_normalise(x, scale, bias, running_mean.astype(x.dtype), eps)
        new_state = {
            "mean": momentum * running_mean + (1.0 - momentum) * mean.astype(running_mean.dtype),
            "var": momentum * running_var + (1.0 - momentum) * var.astype(running_var.dtype),
        }
        return y, new_state

    def backward(params, state, x, y_bar, *, key=None, train=False):
        """See :func:`_normalise_backward`: batch statistics over every axis but the
        last in training (gradients flow through them), running statistics
        (constants) in evaluation. The state gets no cotangent."""
        del key
        axes = tuple(range(x.ndim - 1))
        running_mean, running_var = running(state, x)
        if train:
            mean, var = _batch_statistics(x, axes, running_mean)
        else:
            mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
        return _normalise_backward(params, x, y_bar, mean, var, eps, axes, use_scale, use_bias, spec, train)

    return core.build("batch_norm", spec, init_with_state, apply_with_state, backward)
