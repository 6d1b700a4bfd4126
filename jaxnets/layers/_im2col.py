"""im2col: convolution and pooling as gathered windows and one matrix product.

For each offset ``o`` in a window, a strided slice of the (padded) input
gives ``x[b, i * s + o d, c]`` at every output position ``i`` (``d`` the
kernel dilation: the window's taps are ``d`` apart). Concatenated
on the channel axis these slices are the "columns" of im2col, and a
convolution is one matmul with the reshaped kernel. The adjoint of the
gather ("col2im") pads each piece back where its slice came from and adds:
the backward rules of convolution and pooling are built from it. Shared by
:mod:`jaxnets.layers.conv` and :mod:`jaxnets.layers.pooling`.
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
from jax import lax

from jaxnets.layers._util import accumulation_dtype, batch_matmul_t, rows_matmul

__all__ = ["same_pads", "transpose_pads", "dilated_size", "patches", "patches_adjoint", "crop", "conv_im2col",
           "conv_im2col_backward"]


def dilated_size(kernel, dilation) -> tuple[int, ...]:
    """The span of a dilated window: ``(k - 1) d + 1`` per axis."""
    dilation = (1,) * len(kernel) if dilation is None else dilation
    return tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))


def same_pads(sizes, kernel, strides) -> list[tuple[int, int]]:
    """XLA's 'SAME' padding: output ceil(n / s), the extra padding at the end."""
    pads = []
    for n, k, s in zip(sizes, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def transpose_pads(kernel, strides, padding) -> list[tuple[int, int]]:
    """Edge padding of the stride-dilated input that makes a stride-1 conv a transposed conv."""
    pads = []
    for k, s in zip(kernel, strides):
        if padding == "SAME":
            total = k + s - 2
            lo = k - 1 if s > k - 1 else -(-total // 2)
        else:
            total = k + s - 2 + max(k - s, 0)
            lo = k - 1
        pads.append((lo, total - lo))
    return pads


def patches(xp, kernel, strides, dilation=None):
    """One strided slice of the padded input per window offset ``o``:
    ``patch_o[b, i, c] = xp[b, i * s + o d, c]`` for every output position ``i``."""
    n = len(strides)
    dilation = (1,) * n if dilation is None else tuple(dilation)
    span = dilated_size(kernel, dilation)
    out = [(xp.shape[1 + a] - span[a]) // strides[a] + 1 for a in range(n)]
    patches = []
    for offset in itertools.product(*(range(0, (k - 1) * d + 1, d) for k, d in zip(kernel, dilation))):
        start = (0, *offset, 0)
        limit = (xp.shape[0], *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides)), xp.shape[-1])
        patches.append(lax.slice(xp, start, limit, (1, *strides, 1)))
    return patches


def patches_adjoint(pieces, padded_shape, kernel, strides, dilation=None):
    """The adjoint of :func:`patches` ("col2im"): add each piece back where its slice came from.

    A strided slice's adjoint pads with zeros: ``o d`` before, ``s - 1``
    between entries, the rest after. Overlapping windows add up.
    """
    n = len(strides)
    dilation = (1,) * n if dilation is None else tuple(dilation)
    total = None
    offsets = itertools.product(*(range(0, (k - 1) * d + 1, d) for k, d in zip(kernel, dilation)))
    for piece, offset in zip(pieces, offsets):
        config = [(0, 0, 0)]
        for a in range(n):
            m, o, s, size = piece.shape[1 + a], offset[a], strides[a], padded_shape[1 + a]
            config.append((o, size - (o + (m - 1) * s + 1), s - 1))
        config.append((0, 0, 0))
        placed = lax.pad(piece, jnp.zeros((), piece.dtype), config)
        total = placed if total is None else total + placed
    return total


def crop(a, pads):
    """Remove edge padding: the adjoint of zero-padding."""
    return a[(slice(None),) + tuple(slice(lo, a.shape[1 + i] - hi) for i, (lo, hi) in enumerate(pads)) + (slice(None),)]


def _grouped_cols(cols, kernel_taps, groups):
    """``(..., K C) -> (..., K, G, C / G)``: the gathered windows split by feature group."""
    c = cols.shape[-1] // kernel_taps
    return cols.reshape(cols.shape[:-1] + (kernel_taps, groups, c // groups))


def conv_im2col(x, w, strides, pads, dilation=None, groups=1):
    """Convolution as one matmul over gathered windows ("im2col").

    For each offset ``o`` in the window, a strided slice of the padded input
    gives ``x[b, i * s + o d, c]`` at every output position ``i``; the slices
    are concatenated on the channel axis in the order of ``w.reshape(-1, out)``:

        cols[b, i, (o, c)] = x_pad[b, i * s + o d, c]      (b, *out, prod(k) * in)
        y = cols @ W.reshape(prod(k) * in, out)

    With ``G = groups`` feature groups, ``W`` is ``(*k, in / G, out)`` and
    output channel block ``g`` (``out / G`` channels) sees input channel
    block ``g`` only: ``y[..., g, :] = cols[..., :, g, :] W[:, :, g, :]``
    summed over the window and the group's channels, one batched product
    (an einsum over ``g``); ``groups == in`` is a depthwise convolution.

    Its gradient is pads, slices and one matmul, which XLA:CPU runs fast
    inside ``lax.scan`` (where its native convolution gradients are an order
    of magnitude slower; see ``experiments/benchmarks/conv_impl.py``).
    """
    kernel = w.shape[: len(strides)]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    cols = jnp.concatenate(patches(xp, kernel, strides, dilation), axis=-1)  # (batch, *out, prod(k) * in)
    if groups == 1:
        return rows_matmul(cols, w.reshape(-1, w.shape[-1]))  # (batch, *out, out_channels)
    taps = math.prod(kernel)
    wg = w.reshape(taps, w.shape[-2], groups, w.shape[-1] // groups)  # (K, in / G, G, out / G)
    y = jnp.einsum("...kgc,kcgo->...go", _grouped_cols(cols, taps, groups), wg)  # (batch, *out, G, out / G)
    return y.reshape(y.shape[:-2] + (w.shape[-1],))


def conv_im2col_backward(x, w, strides, pads, y_bar, dilation=None, groups=1):
    """Cotangents of ``(w, x)`` for :func:`conv_im2col`, as linear algebra.

    With ``cols`` the gathered windows (rows: every output position of every
    example) and ``W_m = W.reshape(prod(k) in, out)``:

        y = cols W_m                      (the forward, one matmul)
        W_m_bar = cols^T y_bar            (prod(k) in, out)
        cols_bar = y_bar W_m^T            (rows, prod(k) in)
        x_bar = crop(col2im(cols_bar))    (each window's share added back)

    With feature groups the two products are taken per group (block ``g`` of
    ``cols``' channels against block ``g`` of ``y_bar``'s): ``W_bar[:, :, g, :]
    = cols[..., g, :]^T y_bar[..., g, :]``, ``cols_bar[..., g, :] =
    y_bar[..., g, :] W[:, :, g, :]^T``. Dilation only moves where each piece
    of ``cols_bar`` is added back (taps ``d`` apart).
    """
    kernel = w.shape[: len(strides)]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    cols = jnp.concatenate(patches(xp, kernel, strides, dilation), axis=-1)
    taps = math.prod(kernel)
    if groups == 1:
        rows = cols.reshape(-1, cols.shape[-1])  # (batch * prod(out), prod(k) * in)
        w_bar = batch_matmul_t(rows, y_bar.reshape(-1, y_bar.shape[-1])).reshape(w.shape)  # float32 sum for 16-bit
        cols_bar = y_bar @ w.reshape(-1, w.shape[-1]).T  # (batch, *out, prod(k) * in)
    else:
        out_g = w.shape[-1] // groups
        gc = _grouped_cols(cols, taps, groups).reshape(-1, taps, groups, w.shape[-2])  # (rows, K, G, in / G)
        gy = y_bar.reshape(-1, groups, out_g)  # (rows, G, out / G)
        acc = accumulation_dtype(jnp.result_type(gc, gy))
        w_bar = jnp.einsum("rkgc,rgo->kcgo", gc, gy, preferred_element_type=acc).reshape(w.shape)  # summed over rows
        wg = w.reshape(taps, w.shape[-2], groups, out_g)
        cols_bar = jnp.einsum("...go,kcgo->...kgc", y_bar.reshape(y_bar.shape[:-1] + (groups, out_g)), wg)
        cols_bar = cols_bar.reshape(y_bar.shape[:-1] + (taps * x.shape[-1],))  # (batch, *out, prod(k) * in)
    pieces = jnp.split(cols_bar, taps, axis=-1)
    x_bar = crop(patches_adjoint(pieces, xp.shape, kernel, strides, dilation), pads)
    return w_bar, x_bar
