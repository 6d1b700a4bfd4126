"""Convolutions (N-D, channels last) and transposed convolutions, with their hand rules.

Computed by XLA's convolution (``impl="xla"``) or as im2col (gathered
windows and one matmul; :mod:`jaxnets.layers._im2col`). The default,
``impl="auto"``, is im2col on CPU, where it trains 16x faster inside a
scanned epoch, except in a program of one step per call, where XLA's is
faster (:func:`one_step_program`); XLA's convolution on other backends.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _im2col, _util, core
from jaxnets.layers.core import Layer

__all__ = ["Conv", "Conv1D", "Conv2D", "ConvTranspose", "ConvTranspose2D", "one_step_program"]


_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
    s = _SPATIAL[ndim]
    return (f"N{s}C", f"{s}IO", f"N{s}C")


_CONV_IMPLS = ("auto", "xla", "im2col")


_ONE_STEP: contextvars.ContextVar = contextvars.ContextVar("jaxnets_one_step_program", default=False)


@contextlib.contextmanager
def one_step_program() -> Iterator[None]:
    """Trace the block as a program that runs one training step per call: ``impl="auto"`` then picks XLA's convolution.

    ``impl="auto"`` (the default) is measured, not guessed
    (``experiments/benchmarks/resnet.py``, a small ResNet on 32x32x3 images on
    2 CPU cores): on CPU, a *single* jitted step is faster on XLA's
    convolution (0.98x a raw-JAX step, against 1.15x for im2col), but a step
    inside ``lax.scan`` or ``while_loop`` (a fused epoch, ``train.loop``,
    ``fit``) is 16x slower on it than on im2col, whose gradient is slices,
    pads and one matmul. So on CPU "auto" is im2col, except inside this
    block, which :func:`jaxnets.train.make_step` and
    :func:`jaxnets.train.make_train_step` enter when they jit the step
    (``jit=True``, one step per call); a hand-jitted step can enter it too.
    Elsewhere than CPU "auto" is always XLA's convolution (cuDNN on GPU).
    It is read when the program is traced.
    """
    token = _ONE_STEP.set(True)
    try:
        yield
    finally:
        _ONE_STEP.reset(token)


def _resolve_impl(impl: str) -> str:
    """'auto': im2col on CPU (fast inside scanned epochs) but in a one-step program, XLA's convolution elsewhere."""
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" and not _ONE_STEP.get() else "xla"
    return impl


def _padding(padding: Any, n: int, label: str) -> Literal["SAME", "VALID"] | tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"``, or explicit ``((lo, hi), ...)`` per spatial axis from an int, ints or pairs."""
    if isinstance(padding, str):
        return _checks.padding_mode(padding)
    how = (f"padding must be 'SAME', 'VALID', an int, {n} ints (one per spatial axis) or {n} (low, high) pairs, "
           f"got {padding!r}")

    def count(v, where):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(how)
        if v < 0:
            raise ValueError(f"{label}: padding must not be negative, got {int(v)} at {where} (padding={padding!r})")
        return int(v)

    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = count(padding, "every side")
        return ((p, p),) * n
    if not isinstance(padding, Sequence) or len(padding) != n:
        raise ValueError(how)
    pads = []
    for a, v in enumerate(padding):
        if isinstance(v, Sequence) and not isinstance(v, str):
            if len(v) != 2:
                raise ValueError(how)
            pads.append((count(v[0], f"axis {a} (low)"), count(v[1], f"axis {a} (high)")))
        else:
            p = count(v, f"axis {a}")
            pads.append((p, p))
    return tuple(pads)


def _conv_layer(
    label: str,
    name: str,
    out_channels: int,
    kernel_size: Sequence[int],
    strides: int | Sequence[int],
    padding,
    use_bias: bool,
    w_init: Callable[..., Any] | None,
    b_init: Callable[..., Any],
    transpose: bool,
    impl: str,
    dilation: int | Sequence[int] = 1,
    feature_groups: int = 1,
) -> Layer:
    """Validates the arguments of :func:`Conv` / :func:`ConvTranspose` and builds the layer."""
    out_channels = _checks.positive_int(out_channels, "out_channels")
    if isinstance(kernel_size, (int, np.integer)) or not isinstance(kernel_size, Sequence) or not 1 <= len(kernel_size) <= 3:
        raise ValueError(f"kernel_size must be a sequence of 1 to 3 ints (use {label}2D for an int), got {kernel_size!r}")
    kernel_size = _checks.int_tuple(kernel_size, len(kernel_size), "kernel_size")
    n = len(kernel_size)
    strides = _checks.int_tuple(strides, n, "strides")
    dilation = _checks.int_tuple(dilation, n, "dilation")
    groups = _checks.positive_int(feature_groups, "feature_groups")
    if out_channels % groups:
        raise ValueError(f"{label}: out_channels ({out_channels}) must be divisible by feature_groups ({groups})")
    padding = _padding(padding, n, label)
    span = _im2col.dilated_size(kernel_size, dilation)  # the dilated window
    if transpose and not isinstance(padding, str):
        for a, ((lo, hi), k) in enumerate(zip(padding, span)):
            if max(lo, hi) > k - 1:
                raise ValueError(f"{label}: padding crops the full output by at most (dilated kernel size - 1) = "
                                 f"{k - 1} per side, got {(lo, hi)} on axis {a}")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    extra = (("" if dilation == (1,) * n else f", dilation={dilation}")
             + ("" if groups == 1 else f", feature_groups={groups}"))
    spec = f"{label}({out_channels}, {kernel_size}, strides={strides}, padding={padding!r}{extra})"
    dn = _dimension_numbers(n)
    if impl not in _CONV_IMPLS:
        raise ValueError(f"impl must be one of {_CONV_IMPLS}, got {impl!r}")
    simple = dilation == (1,) * n and groups == 1 and isinstance(padding, str)  # the original, string-padded path

    def conv_pads(sizes):
        """Explicit ``(lo, hi)`` per spatial axis of a convolution for inputs of these sizes."""
        if padding == "SAME":
            return _im2col.same_pads(sizes, span, strides)
        if padding == "VALID":
            return [(0, 0)] * n
        return list(padding)

    def transpose_edges():
        """Edge padding of the stride-dilated input (the stride-1 convolution's padding)."""
        if isinstance(padding, str):
            return _im2col.transpose_pads(span, strides, padding)
        return [(k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(padding, span)]

    def out_size(size: int, axis: int) -> int:
        k, s = span[axis], strides[axis]
        if size == -1:
            return -1
        if not transpose:
            if isinstance(padding, str):
                return _util.window_out(size, k, s, padding, spec)
            lo, hi = padding[axis]
            if size + lo + hi < k:
                raise ValueError(f"{spec}: the (dilated) window {k} is larger than the padded input size "
                                 f"{size + lo + hi} on spatial axis {axis}")
            return (size + lo + hi - k) // s + 1
        if padding == "SAME":
            return size * s
        if padding == "VALID":
            return size * s + max(k - s, 0)
        lo, hi = padding[axis]
        return (size - 1) * s + k - lo - hi

    def check_channels(in_channels):
        if in_channels % groups:
            raise ValueError(f"{spec}: in_channels ({in_channels}) must be divisible by feature_groups ({groups})")

    def init(key, input_shape):
        _util.check_rank(input_shape, spec, rank=n + 2)
        in_channels = _util.check_last_dim(input_shape, spec)
        check_channels(in_channels)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, kernel_size + (in_channels // groups, out_channels), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,), jnp.float32)
        spatial = tuple(out_size(d, a) for a, d in enumerate(input_shape[1:-1]))
        return (input_shape[0],) + spatial + (out_channels,), params

    def dilate(x):
        """The input with ``s - 1`` zeros between entries and the transpose's edges (the transposed conv's input)."""
        config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(transpose_edges(), strides)] + [(0, 0, 0)]
        return lax.pad(x, jnp.zeros((), x.dtype), config)

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _util.entry(params, "w", "params", spec)
        _util.check_input(x, spec, rank=n + 2)
        if x.shape[-1] != w.shape[-2] * groups:
            per = "" if groups == 1 else f" ({w.shape[-2]} per group, {groups} groups)"
            raise ValueError(
                f"{spec} expects {w.shape[-2] * groups} input channels{per} (last axis; layout {dn[0]}), "
                f"got x of shape {tuple(x.shape)}"
            )
        how = _resolve_impl(impl)
        if not transpose:
            for a, size in enumerate(x.shape[1:-1]):
                out_size(size, a)  # raises if the window does not fit
            if how == "xla" and simple:
                y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
            elif how == "xla":
                y = lax.conv_general_dilated(x, w, strides, conv_pads(x.shape[1:-1]), rhs_dilation=dilation,
                                             dimension_numbers=dn, feature_group_count=groups)
            else:
                y = _im2col.conv_im2col(x, w, strides, conv_pads(x.shape[1:-1]), dilation, groups)
        else:
            # A scatter of W is a correlation with W flipped in space over the
            # input dilated by s - 1 zeros and padded at the edges.
            flipped = jnp.flip(w, axis=tuple(range(n)))
            if how == "xla" and simple:
                y = lax.conv_transpose(x, flipped, strides, padding, dimension_numbers=dn)
            elif how == "xla":
                y = lax.conv_general_dilated(x, flipped, (1,) * n, transpose_edges(), lhs_dilation=strides,
                                             rhs_dilation=dilation, dimension_numbers=dn, feature_group_count=groups)
            else:
                y = _im2col.conv_im2col(dilate(x), flipped, (1,) * n, [(0, 0)] * n, dilation, groups)
        if use_bias:
            y = y + _util.entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """Convolution is a matmul over gathered windows, so its rule is Dense's
        plus col2im (see :func:`jaxnets.layers._im2col.conv_im2col_backward`,
        which also covers dilation and feature groups); ``b_bar`` sums ``y_bar``
        over batch and space. A transposed convolution is a stride-1 convolution
        of the zero-dilated input with the flipped kernel: its rule is that
        one's, with the flip undone on ``W_bar`` and the dilation undone on
        ``x_bar`` (the adjoint of inserting zeros is a strided slice).
        """
        del key, train
        w = _util.entry(params, "w", "params", spec)
        if not transpose:
            w_bar, x_bar = _im2col.conv_im2col_backward(x, w, strides, conv_pads(x.shape[1:-1]), y_bar, dilation,
                                                        groups)
        else:
            spatial = tuple(range(n))
            flipped_bar, dilated_bar = _im2col.conv_im2col_backward(dilate(x), jnp.flip(w, spatial), (1,) * n,
                                                                    [(0, 0)] * n, y_bar, dilation, groups)
            w_bar = jnp.flip(flipped_bar, spatial)
            edges = transpose_edges()
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
    padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_groups: int = 1,
    use_bias: bool = True,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
    impl: str = "auto",
) -> Layer:
    """N-D convolution (cross-correlation, as in every framework), channels last.

    ``y[b, i, o] = sum_{k, c} x_pad[b, i * s + k d, c] W[k, c, o] + b[o]`` in
    1-D (``s`` the stride, ``d`` the dilation), and likewise over each
    spatial axis. With ``G`` feature groups, output channel ``o`` in block
    ``g = o // (out / G)`` sums over the input channels of block ``g`` only,
    so ``W`` is ``(*kernel_size, in / G, out)``.

    Args:
      out_channels: number of output channels.
      kernel_size: the window, one int per spatial axis: ``(k,)`` for 1-D,
        ``(kh, kw)`` for 2-D. Its length sets the number of spatial axes.
      strides: an int for every axis, or one per spatial axis.
      padding: ``"SAME"`` (output size ``ceil(n / s)``), ``"VALID"``
        (``floor((n - k') / s) + 1``, ``k' = (k - 1) d + 1`` the dilated
        window), or explicit zero padding: an int ``p`` (both sides of every
        spatial axis, PyTorch's and equinox's ``padding=p``), one int per
        spatial axis, or one ``(low, high)`` pair per spatial axis; the
        output is ``floor((n + low + high - k') / s) + 1``. When SAME's total
        padding is odd (an even size at stride 2, say) the extra cell goes at
        the end (bottom, right), as in XLA, flax and TensorFlow; PyTorch has
        no ``"same"`` at stride > 1. stax's ``Conv`` defaults to ``"VALID"``,
        flax's to ``"SAME"``.
      dilation: kernel dilation ``d``, an int or one per spatial axis: the
        window's taps are ``d`` apart (flax's ``kernel_dilation``, PyTorch's
        ``dilation``).
      feature_groups: ``G``: in and out channels are split into ``G`` blocks,
        block ``g`` of the output seeing block ``g`` of the input only
        (PyTorch's ``groups``, XLA's ``feature_group_count``);
        ``feature_groups == in_channels`` is a depthwise convolution. Both
        channel counts must be divisible by ``G``.
      use_bias, w_init, b_init: as in :func:`Dense` (default ``lecun_normal``
        with ``fan_in = prod(kernel_size) * in_channels``).
      impl: how to compute it: ``"xla"`` (``lax.conv_general_dilated``,
        cuDNN on GPU), ``"im2col"`` (gathered windows and one matmul; on CPU
        over 10x faster to train inside a scanned epoch), or ``"auto"``
        (default: on CPU im2col, but XLA's in a one-step program, see
        :func:`one_step_program`; xla elsewhere). Same result either way.

    Shapes:
      x: ``(batch, *spatial, in_channels)``; params ``{"w": (*kernel_size,
      in_channels / feature_groups, out_channels), "b": (out_channels,)}``; y:
      ``(batch, *spatial_out, out_channels)``.

    Raises:
      ValueError: negative or malformed padding, a non-positive dilation or
        group count, channels not divisible by ``feature_groups``, a window
        larger than the padded input; naming the argument and the values.
    """
    return _conv_layer("Conv", "conv", out_channels, kernel_size, strides, padding, use_bias, w_init, b_init,
                       transpose=False, impl=impl, dilation=dilation, feature_groups=feature_groups)


def Conv1D(out_channels: int, kernel_size: int, **kwargs: Any) -> Layer:
    """1-D convolution over ``(batch, length, channels)``; see :func:`Conv`."""
    return Conv(out_channels, _checks.int_tuple(kernel_size, 1, "kernel_size"), **kwargs)


def Conv2D(out_channels: int, kernel_size: int | Sequence[int], **kwargs: Any) -> Layer:
    """2-D convolution over ``(batch, height, width, channels)``; see :func:`Conv`."""
    return Conv(out_channels, _checks.int_tuple(kernel_size, 2, "kernel_size"), **kwargs)


def ConvTranspose(
    out_channels: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_groups: int = 1,
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

    Output size per spatial axis, with ``k' = (k - 1) d + 1`` the dilated
    kernel: ``n * s`` for ``"SAME"``; ``n * s + max(k' - s, 0)`` for
    ``"VALID"``; with explicit ``padding`` (an int, one per axis, or
    ``(low, high)`` pairs, each at most ``k' - 1``) PyTorch's
    ``(n - 1) s + k' - low - high``: the full scatter, ``low`` cells cropped
    at the start and ``high`` at the end. PyTorch's
    ``ConvTranspose2d(padding=p, output_padding=q)`` is
    ``padding=((p, p - q), (p, p - q))`` (for ``q <= p``).
    ``dilation`` and ``feature_groups`` as in :func:`Conv` (the kernel is then
    ``(*kernel_size, in / G, out)``). ``impl`` as in :func:`Conv` (im2col here
    dilates the input with ``s - 1`` zeros, pads it, and runs a stride-1
    convolution).

    Shapes:
      x: ``(batch, *spatial, in_channels)``; params ``{"w": (*kernel_size,
      in_channels / feature_groups, out_channels), "b": (out_channels,)}``.

    Raises:
      ValueError: as :func:`Conv`, and explicit padding beyond ``k' - 1``.
    """
    return _conv_layer("ConvTranspose", "conv_transpose", out_channels, kernel_size, strides, padding, use_bias,
                       w_init, b_init, transpose=True, impl=impl, dilation=dilation, feature_groups=feature_groups)


def ConvTranspose2D(out_channels: int, kernel_size: int | Sequence[int], **kwargs: Any) -> Layer:
    """2-D transposed convolution over NHWC input; see :func:`ConvTranspose`."""
    return ConvTranspose(out_channels, _checks.int_tuple(kernel_size, 2, "kernel_size"), **kwargs)
