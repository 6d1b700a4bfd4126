"""Convolutions (N-D, channels last) and transposed convolutions, with their hand rules.

Computed by XLA's convolution (``impl="xla"``) or as im2col (gathered
windows and one matmul; :mod:`jaxnets.layers._im2col`), the default on CPU,
where it trains over 10x faster inside a scanned epoch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _im2col, _util, core
from jaxnets.layers.core import Layer

__all__ = ["Conv", "Conv1D", "Conv2D", "ConvTranspose", "ConvTranspose2D"]


_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
    s = _SPATIAL[ndim]
    return (f"N{s}C", f"{s}IO", f"N{s}C")


_CONV_IMPLS = ("auto", "xla", "im2col")


def _resolve_impl(impl: str) -> str:
    """'auto' is im2col on CPU (fast inside scanned epochs), XLA's convolution elsewhere (cuDNN on GPU)."""
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return impl


def _conv_layer(
    label: str,
    name: str,
    out_channels: int,
    kernel_size: Sequence[int],
    strides: int | Sequence[int],
    padding: str,
    use_bias: bool,
    w_init: Callable | None,
    b_init: Callable,
    transpose: bool,
    impl: str,
) -> Layer:
    """Validates the arguments of :func:`Conv` / :func:`ConvTranspose` and builds the layer."""
    out_channels = _checks.positive_int(out_channels, "out_channels")
    if isinstance(kernel_size, (int, np.integer)) or not isinstance(kernel_size, Sequence) or not 1 <= len(kernel_size) <= 3:
        raise ValueError(f"kernel_size must be a sequence of 1 to 3 ints (use {label}2D for an int), got {kernel_size!r}")
    kernel_size = _checks.int_tuple(kernel_size, len(kernel_size), "kernel_size")
    strides = _checks.int_tuple(strides, len(kernel_size), "strides")
    padding = _checks.padding_mode(padding)
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    spec = f"{label}({out_channels}, {kernel_size}, strides={strides}, padding={padding!r})"
    n = len(kernel_size)
    dn = _dimension_numbers(n)
    if impl not in _CONV_IMPLS:
        raise ValueError(f"impl must be one of {_CONV_IMPLS}, got {impl!r}")

    def out_size(size: int, k: int, s: int) -> int:
        if not transpose:
            return _util.window_out(size, k, s, padding, spec)
        if size == -1:
            return -1
        return size * s if padding == "SAME" else size * s + max(k - s, 0)

    def init(key, input_shape):
        _util.check_rank(input_shape, spec, rank=n + 2)
        in_channels = _util.check_last_dim(input_shape, spec)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, kernel_size + (in_channels, out_channels), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,), jnp.float32)
        spatial = tuple(out_size(d, k, s) for d, k, s in zip(input_shape[1:-1], kernel_size, strides))
        return (input_shape[0],) + spatial + (out_channels,), params

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _util.entry(params, "w", "params", spec)
        _util.check_input(x, spec, rank=n + 2)
        if x.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"{spec} expects {w.shape[-2]} input channels (last axis; layout {dn[0]}), "
                f"got x of shape {tuple(x.shape)}"
            )
        how = _resolve_impl(impl)
        if not transpose:
            for size, k in zip(x.shape[1:-1], kernel_size):
                _util.window_out(size, k, 1, padding, spec)  # raises if the window does not fit
            if how == "xla":
                y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
            else:
                pads = _im2col.same_pads(x.shape[1:-1], kernel_size, strides) if padding == "SAME" else [(0, 0)] * n
                y = _im2col.conv_im2col(x, w, strides, pads)
        else:
            # A scatter of W is a correlation with W flipped in space over the
            # input dilated by s - 1 zeros and padded at the edges.
            flipped = jnp.flip(w, axis=tuple(range(n)))
            if how == "xla":
                y = lax.conv_transpose(x, flipped, strides, padding, dimension_numbers=dn)
            else:
                edges = _im2col.transpose_pads(kernel_size, strides, padding)
                config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides)] + [(0, 0, 0)]
                dilated = lax.pad(x, jnp.zeros((), x.dtype), config)
                y = _im2col.conv_im2col(dilated, flipped, (1,) * n, [(0, 0)] * n)
        if use_bias:
            y = y + _util.entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """Convolution is a matmul over gathered windows, so its rule is Dense's
        plus col2im (see :func:`jaxnets.layers._im2col.conv_im2col_backward`); ``b_bar`` sums ``y_bar``
        over batch and space. A transposed convolution is a stride-1 convolution
        of the zero-dilated input with the flipped kernel: its rule is that
        one's, with the flip undone on ``W_bar`` and the dilation undone on
        ``x_bar`` (the adjoint of inserting zeros is a strided slice).
        """
        del key, train
        w = _util.entry(params, "w", "params", spec)
        if not transpose:
            pads = _im2col.same_pads(x.shape[1:-1], kernel_size, strides) if padding == "SAME" else [(0, 0)] * n
            w_bar, x_bar = _im2col.conv_im2col_backward(x, w, strides, pads, y_bar)
        else:
            spatial = tuple(range(n))
            edges = _im2col.transpose_pads(kernel_size, strides, padding)
            config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides)] + [(0, 0, 0)]
            dilated = lax.pad(x, jnp.zeros((), x.dtype), config)
            flipped_bar, dilated_bar = _im2col.conv_im2col_backward(dilated, jnp.flip(w, spatial), (1,) * n, [(0, 0)] * n, y_bar)
            w_bar = jnp.flip(flipped_bar, spatial)
            keep = tuple(slice(lo, lo + (m - 1) * s + 1, s) for (lo, _), m, s in zip(edges, x.shape[1:-1], strides))
            x_bar = dilated_bar[(slice(None),) + keep + (slice(None),)]
        grads = {"w": w_bar}
        if use_bias:
            grads["b"] = _util.sum_leading(y_bar)
        return grads, x_bar

    return core.build_stateless(name, spec, init, apply, backward)


def Conv(
    out_channels: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
    impl: str = "auto",
) -> Layer:
    """N-D convolution (cross-correlation, as in every framework), channels last.

    ``y[b, i, o] = sum_{k, c} x[b, i * s + k, c] W[k, c, o] + b[o]`` in 1-D,
    and likewise over each spatial axis.

    Args:
      out_channels: number of output channels.
      kernel_size: the window, one int per spatial axis: ``(k,)`` for 1-D,
        ``(kh, kw)`` for 2-D. Its length sets the number of spatial axes.
      strides: an int for every axis, or one per spatial axis.
      padding: ``"SAME"`` (output size ``ceil(n / s)``) or ``"VALID"``
        (``floor((n - k) / s) + 1``). When SAME's total padding is odd (an
        even size at stride 2, say) the extra cell goes at the end (bottom,
        right), as in XLA, flax and TensorFlow; PyTorch has no ``"same"`` at
        stride > 1, and its explicit ``padding=p`` pads both sides equally.
        stax's ``Conv`` defaults to ``"VALID"``, flax's to ``"SAME"``.
      use_bias, w_init, b_init: as in :func:`Dense` (default ``lecun_normal``
        with ``fan_in = prod(kernel_size) * in_channels``).
      impl: how to compute it: ``"xla"`` (``lax.conv_general_dilated``,
        cuDNN on GPU), ``"im2col"`` (gathered windows and one matmul; on CPU
        over 10x faster to train inside a scanned epoch), or ``"auto"``
        (default: im2col on CPU, xla elsewhere). Same result either way.

    Shapes:
      x: ``(batch, *spatial, in_channels)``; params ``{"w": (*kernel_size,
      in_channels, out_channels), "b": (out_channels,)}``; y:
      ``(batch, *spatial_out, out_channels)``.
    """
    return _conv_layer("Conv", "conv", out_channels, kernel_size, strides, padding, use_bias, w_init, b_init,
                       transpose=False, impl=impl)


def Conv1D(out_channels: int, kernel_size: int, **kwargs) -> Layer:
    """1-D convolution over ``(batch, length, channels)``; see :func:`Conv`."""
    return Conv(out_channels, _checks.int_tuple(kernel_size, 1, "kernel_size"), **kwargs)


def Conv2D(out_channels: int, kernel_size: int | Sequence[int], **kwargs) -> Layer:
    """2-D convolution over ``(batch, height, width, channels)``; see :func:`Conv`."""
    return Conv(out_channels, _checks.int_tuple(kernel_size, 2, "kernel_size"), **kwargs)


def ConvTranspose(
    out_channels: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str = "SAME",
    use_bias: bool = True,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
    impl: str = "auto",
) -> Layer:
    """Transposed convolution (fractionally strided), channels last: upsamples.

    Each input position scatters ``W``'s window, scaled by its value, into the
    output at stride ``s``; overlapping windows add:
    ``y[b, i * s + o, d] += x[b, i, c] W[o, c, d]``. This is the adjoint of
    :func:`Conv` with the same kernel (channels swapped), the gradient of a
    convolution with respect to its input, and PyTorch's ``ConvTranspose``.
    (flax's ``ConvTranspose`` with ``transpose_kernel=False`` differs from it
    by a spatial flip of the kernel.)

    Output size per spatial axis: ``n * s`` for ``"SAME"``;
    ``n * s + max(k - s, 0)`` for ``"VALID"``. ``impl`` as in :func:`Conv`
    (im2col here dilates the input with ``s - 1`` zeros, pads it, and runs a
    stride-1 convolution).

    Shapes:
      x: ``(batch, *spatial, in_channels)``; params ``{"w": (*kernel_size,
      in_channels, out_channels), "b": (out_channels,)}``.
    """
    return _conv_layer("ConvTranspose", "conv_transpose", out_channels, kernel_size, strides, padding, use_bias,
                       w_init, b_init, transpose=True, impl=impl)


def ConvTranspose2D(out_channels: int, kernel_size: int | Sequence[int], **kwargs) -> Layer:
    """2-D transposed convolution over NHWC input; see :func:`ConvTranspose`."""
    return ConvTranspose(out_channels, _checks.int_tuple(kernel_size, 2, "kernel_size"), **kwargs)
