"""Pooling: the maximum or mean over windows of the spatial axes, and over all of them.

Window pooling's rule uses col2im (:mod:`jaxnets.layers._im2col`): each
window's output cotangent goes back to the inputs it covered. Global pooling
reduces every spatial axis at once (``(batch, *spatial, channels) -> (batch,
channels)``), the usual head of a convolutional network.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets.layers import _im2col, _util, core
from jaxnets.layers.core import Layer

__all__ = ["MaxPool", "AvgPool", "GlobalAvgPool", "GlobalMaxPool"]


def _pool(name: str, label: str, window_shape, strides, padding) -> Layer:
    if isinstance(window_shape, (int, np.integer)):
        window_shape = (window_shape, window_shape)
    if not isinstance(window_shape, Sequence) or not 1 <= len(window_shape) <= 3:
        raise ValueError(f"window_shape must be an int (2-D) or a sequence of 1 to 3 ints, got {window_shape!r}")
    window = _checks.int_tuple(window_shape, len(window_shape), "window_shape")
    n = len(window)
    strides = window if strides is None else _checks.int_tuple(strides, n, "strides")
    padding = _checks.padding_mode(padding)
    spec = f"{label}({window}, strides={strides}, padding={padding!r})"
    dims, steps = (1,) + window + (1,), (1,) + strides + (1,)

    def init(key, input_shape):
        del key
        _util.check_rank(input_shape, spec, rank=n + 2)
        spatial = tuple(_util.window_out(d, k, s, padding, spec) for d, k, s in zip(input_shape[1:-1], window, strides))
        return (input_shape[0],) + spatial + (input_shape[-1],), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _util.check_input(x, spec, rank=n + 2)
        for size, k in zip(x.shape[1:-1], window):
            _util.window_out(size, k, 1, padding, spec)
        if name == "max_pool":
            return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, padding)
        sums = lax.reduce_window(x, 0.0, lax.add, dims, steps, padding)
        return sums / window_counts(x)

    def window_counts(x):
        """How many real (not padded) inputs each window covers."""
        ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
        return lax.reduce_window(ones, 0.0, lax.add, dims, steps, padding)

    def backward(params, x, y_bar, *, key=None, train=False):
        """Each window's output depends on the inputs it covers. Max: the whole
        cotangent goes to the window's maximum (the first one in row-major
        order when several tie, as XLA does). Average: each covered input gets
        ``y_bar / count``. The shares are added back with col2im.
        """
        del params, key, train
        pads = _im2col.same_pads(x.shape[1:-1], window, strides) if padding == "SAME" else [(0, 0)] * n
        padded_shape = (x.shape[0],) + tuple(d + lo + hi for d, (lo, hi) in zip(x.shape[1:-1], pads)) + (x.shape[-1],)
        if name == "max_pool":
            xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
            patches = _im2col.patches(xp, window, strides)
            y = functools.reduce(jnp.maximum, patches)
            taken = jnp.zeros(y.shape, bool)
            pieces = []
            for patch in patches:
                hit = (patch == y) & ~taken
                taken = taken | hit
                pieces.append(jnp.where(hit, y_bar, jnp.zeros_like(y_bar)))
        else:
            pieces = [y_bar / window_counts(x)] * math.prod(window)
        return {}, _im2col.crop(_im2col.patches_adjoint(pieces, padded_shape, window, strides), pads)

    return core.build_stateless(name, spec, init, apply, backward)


def MaxPool(window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: str = "VALID") -> Layer:
    """Maximum over each window of the spatial axes, per channel.

    Args:
      window_shape: one int per spatial axis (an int means a square 2-D window).
      strides: defaults to ``window_shape`` (non-overlapping windows), as
        PyTorch's; stax's and flax's pools default to stride 1.
      padding: ``"VALID"`` (default) or ``"SAME"`` (padded with ``-inf``).

    Shapes: x ``(batch, *spatial, channels)`` -> ``(batch, *spatial_out, channels)``.
    """
    return _pool("max_pool", "MaxPool", window_shape, strides, padding)


def AvgPool(window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: str = "VALID") -> Layer:
    """Mean over each window of the spatial axes, per channel.

    With ``"SAME"`` padding a window at the border is averaged over the
    inputs it covers only (padding is not counted), like PyTorch's
    ``count_include_pad=False`` and stax's ``AvgPool``; PyTorch's default
    (``count_include_pad=True``) and flax's ``nn.avg_pool`` count the padded
    zeros, so their border windows are smaller. Arguments as in :func:`MaxPool`.
    """
    return _pool("avg_pool", "AvgPool", window_shape, strides, padding)


def _global_pool(label: str, name: str, reduce) -> Layer:
    spec = f"{label}()"

    def init(key, input_shape):
        del key
        _util.check_rank(input_shape, spec, min_rank=3)
        return (input_shape[0], input_shape[-1]), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _util.check_input(x, spec, min_rank=3)
        return reduce(x, axis=tuple(range(1, x.ndim - 1)))  # (batch, channels)

    def backward(params, x, y_bar, *, key=None, train=False):
        """Mean: every one of the ``N`` spatial positions gets ``y_bar / N``.
        Max: the whole cotangent goes to the position of the maximum (the first
        one in row-major order when several tie, as ``jnp.argmax``)."""
        del params, key, train
        batch, channels = x.shape[0], x.shape[-1]
        spatial = x.shape[1:-1]
        if reduce is jnp.mean:
            return {}, jnp.broadcast_to(y_bar[:, None, :] / math.prod(spatial), (batch, math.prod(spatial), channels)).reshape(x.shape)
        flat = x.reshape(batch, -1, channels)  # (batch, positions, channels)
        first = jnp.argmax(flat, axis=1)  # (batch, channels)
        hit = jnp.arange(flat.shape[1])[None, :, None] == first[:, None, :]
        return {}, jnp.where(hit, y_bar[:, None, :], jnp.zeros((), y_bar.dtype)).reshape(x.shape)

    return core.build_stateless(name, spec, init, apply, backward)


def GlobalAvgPool() -> Layer:
    """Mean over every spatial axis: ``(batch, *spatial, channels) -> (batch, channels)``.

    flax writes it ``jnp.mean(x, axis=(1, 2))``; PyTorch ``AdaptiveAvgPool2d(1)``
    followed by a flatten.
    """
    return _global_pool("GlobalAvgPool", "global_avg_pool", jnp.mean)


def GlobalMaxPool() -> Layer:
    """Maximum over every spatial axis: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global_pool("GlobalMaxPool", "global_max_pool", jnp.max)
