"""Layers: pairs of pure functions over parameter pytrees, and their combinators.

The contract
============

A :class:`Layer` holds pure functions::

    init(key, input_shape) -> (output_shape, params)
    apply(params, x, *, key=None, train=False) -> y

``input_shape`` is a tuple of ints in which ``-1`` leaves a size (the batch)
unknown, as in ``jax.example_libraries.stax``; ``init`` returns the output
shape computed from it without running the layer. ``params`` is a plain nested
dict of arrays with readable keys, e.g.
``{"dense_0": {"w": (64, 128), "b": (128,)}, "dense_1": {...}}``.

* ``key`` is a ``jax.random`` key for random layers (``Dropout``). A random
  layer in training mode without a key raises; combinators split the key so
  that each random child gets its own.
* ``train`` switches training behaviour on: ``Dropout`` drops, ``BatchNorm``
  normalises with batch statistics. The default ``train=False`` is evaluation.

State (BatchNorm's running mean and variance) is an explicit pytree beside
params, threaded through the second pair of functions::

    init_with_state(key, input_shape) -> (output_shape, params, state)
    apply_with_state(params, state, x, *, key=None, train=False) -> (y, state)

Every layer has both pairs; for a stateless layer the state is ``{}`` and is
passed through unchanged, so stateless models use ``init``/``apply`` alone and
stay as short as stax. Calling ``apply`` on a model that holds state raises,
naming the layer and pointing to ``apply_with_state``.

Every built-in layer also carries a hand-derived backward rule, written as
plain linear algebra right after its forward function::

    backward(params, state, x, y_bar, *, key=None, train=False) -> (params_bar, x_bar)

``y_bar`` is the cotangent of the output (``dL/dy``); the rule returns the
cotangents of the params (same pytree) and of the input. Combinators apply
the chain rule over their children's rules through a *tape*::

    tape_forward(params, state, x, *, key=None, train=False) -> (y, state, tape)
    tape_backward(params, state, tape, y_bar, *, key=None, train=False) -> (params_bar, x_bar)

where the tape holds what the backward pass needs (each child's input), so
the forward pass runs once. :mod:`jaxnets.backprop` turns these into
gradients of whole models; :mod:`jaxnets.gradcheck` checks them.

Layout conventions: dense layers act on the last axis of any-rank input;
convolutions and pooling take channels-last input ``(batch, *spatial,
channels)`` (NWC for 1-D, NHWC for 2-D) and kernels ``(*window, in, out)``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import Counter
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets import activations as act
from jaxnets import initializers as inits

__all__ = [
    "Layer",
    # parametric layers
    "Dense",
    "Conv",
    "Conv1D",
    "Conv2D",
    "ConvTranspose",
    "ConvTranspose2D",
    "Embedding",
    "LayerNorm",
    "BatchNorm",
    # parameter-free layers
    "MaxPool",
    "AvgPool",
    "Flatten",
    "Dropout",
    "Elementwise",
    # activation layers
    "Relu",
    "LeakyRelu",
    "Elu",
    "Gelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Silu",
    "Softmax",
    "LogSoftmax",
    "Identity",
    # combinators
    "serial",
    "parallel",
    "residual",
    "FanOut",
    "FanInSum",
    "FanInConcat",
    # utilities
    "count_params",
]

Params = Any  # a nested dict of arrays
Shape = tuple  # ints, -1 for unknown


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: pure ``init``/``apply`` functions (see the module docstring).

    Attributes:
      name: short kind name, used for params keys (``"dense"`` -> ``"dense_0"``).
      spec: how the layer was built, e.g. ``"Dense(128)"``; its ``repr``.
      init: ``(key, input_shape) -> (output_shape, params)``.
      apply: ``(params, x, *, key=None, train=False) -> y``.
      init_with_state: ``(key, input_shape) -> (output_shape, params, state)``.
      apply_with_state: ``(params, state, x, *, key=None, train=False) -> (y, state)``.
      backward: the hand-derived rule ``(params, state, x, y_bar, *, key=None,
        train=False) -> (params_bar, x_bar)``, or ``None`` for a layer without one.
      tape_forward, tape_backward: the same rule split around a recorded
        forward pass (see the module docstring); ``None`` without a rule.
    """

    name: str
    spec: str
    init: Callable[..., tuple]
    apply: Callable[..., Any]
    init_with_state: Callable[..., tuple]
    apply_with_state: Callable[..., tuple]
    backward: Callable[..., tuple] | None = None
    tape_forward: Callable[..., tuple] | None = None
    tape_backward: Callable[..., tuple] | None = None

    def __repr__(self) -> str:
        return self.spec


# ---------------------------------------------------------------------------
# Building blocks for defining layers
# ---------------------------------------------------------------------------


def _with_rule(layer: Layer, backward: Callable | None) -> Layer:
    """Attach a primitive layer's rule; its tape is simply its input ``x``."""
    if backward is None:
        return layer

    def tape_forward(params, state, x, *, key=None, train=False):
        y, new_state = layer.apply_with_state(params, state, x, key=key, train=train)
        return y, new_state, x

    def tape_backward(params, state, tape, y_bar, *, key=None, train=False):
        return backward(params, state, tape, y_bar, key=key, train=train)

    return dataclasses.replace(layer, backward=backward, tape_forward=tape_forward, tape_backward=tape_backward)


def _stateless(name: str, spec: str, init: Callable, apply: Callable, backward: Callable | None = None) -> Layer:
    """A layer without state; derives the state-threading pair.

    ``backward`` is the rule without state: ``(params, x, y_bar, *, key, train) -> (params_bar, x_bar)``.
    """

    def checked_init(key, input_shape):
        return init(key, _checks.shape_tuple(input_shape))

    def init_with_state(key, input_shape):
        out_shape, params = checked_init(key, input_shape)
        return out_shape, params, {}

    def apply_with_state(params, state, x, *, key=None, train=False):
        return apply(params, x, key=key, train=train), state

    rule = None
    if backward is not None:

        def rule(params, state, x, y_bar, *, key=None, train=False):
            del state
            return backward(params, x, y_bar, key=key, train=train)

    return _with_rule(Layer(name, spec, checked_init, apply, init_with_state, apply_with_state), rule)


def _stateful(name: str, spec: str, init_with_state: Callable, apply_with_state: Callable, backward: Callable | None = None) -> Layer:
    """A layer that may carry state; derives the stateless pair from the general one."""

    def init(key, input_shape):
        out_shape, params, _ = init_with_state(key, input_shape)
        return out_shape, params

    def apply(params, x, *, key=None, train=False):
        y, _ = apply_with_state(params, {}, x, key=key, train=train)
        return y

    return _with_rule(Layer(name, spec, init, apply, init_with_state, apply_with_state), backward)


def _combinator(name: str, spec: str, init_with_state: Callable, apply_with_state: Callable,
                tape_forward: Callable, tape_backward: Callable) -> Layer:
    """A layer built from others: its rule is the chain rule over the children's tapes."""

    def backward(params, state, x, y_bar, *, key=None, train=False):
        _, _, tape = tape_forward(params, state, x, key=key, train=train)
        return tape_backward(params, state, tape, y_bar, key=key, train=train)

    layer = _stateful(name, spec, init_with_state, apply_with_state)
    return dataclasses.replace(layer, backward=backward, tape_forward=tape_forward, tape_backward=tape_backward)


def _require_rule(layer: Layer) -> None:
    if layer.tape_forward is None or layer.tape_backward is None:
        raise ValueError(f"{layer.spec} has no hand-derived backward rule (for Elementwise, pass vjp=...)")


def _sum_leading(a: jax.Array, keep: int = 1) -> jax.Array:
    """Sum over all axes but the last ``keep``: the batch (and spatial) axes."""
    return jnp.sum(a, axis=tuple(range(a.ndim - keep)))


def _has_leaves(tree: Any) -> bool:
    return bool(jax.tree_util.tree_leaves(tree))


def _entry(tree: Any, key: str, what: str, layer: str) -> Any:
    """``tree[key]``, or a ValueError naming the layer and the keys present."""
    if not isinstance(tree, dict):
        raise TypeError(f"{layer}: {what} must be a dict, got {type(tree).__name__}")
    if key not in tree:
        raise ValueError(f"{layer}: {what} has no entry {key!r}; it has {sorted(tree)}")
    return tree[key]


def _check_input(x: Any, layer: str, *, min_rank: int = 1, rank: int | None = None, dtype: str = "floating") -> None:
    _checks.array_like(x, f"{layer} input x")
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{layer} expects input of rank {rank}, got x of shape {tuple(x.shape)}")
    if x.ndim < min_rank:
        raise ValueError(f"{layer} expects input of rank >= {min_rank}, got x of shape {tuple(x.shape)}")
    if dtype == "floating":
        _checks.floating(x, f"{layer} input x")
    elif dtype == "integer":
        _checks.integer(x, f"{layer} input x")


def _check_rank(input_shape: Shape, layer: str, *, min_rank: int = 1, rank: int | None = None) -> None:
    if rank is not None and len(input_shape) != rank:
        raise ValueError(f"{layer} expects an input_shape of rank {rank}, got {input_shape}")
    if len(input_shape) < min_rank:
        raise ValueError(f"{layer} expects an input_shape of rank >= {min_rank}, got {input_shape}")


def _check_last_dim(input_shape: Shape, layer: str) -> int:
    features = input_shape[-1]
    if features == -1:
        raise ValueError(f"{layer} needs a known last dimension (features), got input_shape {input_shape}")
    return features


def _check_initializer(fn: Any, name: str) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be an initializer (key, shape, dtype) -> array, got {fn!r}")
    return fn


def _window_out(size: int, window: int, stride: int, padding: str, what: str) -> int:
    """Output length of a strided window over ``size`` (-1 stays -1)."""
    if size == -1:
        return -1
    if padding == "SAME":
        return -(-size // stride)
    if size < window:
        raise ValueError(f"{what}: window {window} is larger than the input size {size} with padding 'VALID'")
    return (size - window) // stride + 1


# ---------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------


def Dense(
    out_features: int,
    *,
    use_bias: bool = True,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
) -> Layer:
    """Affine map on the last axis: ``y = x W + b``.

    Args:
      out_features: size of the output's last axis.
      use_bias: add ``b``; without it the params hold only ``w``.
      w_init: initializer of ``W``; default ``lecun_normal()`` (variance
        ``1 / in_features``, flax's default; use ``he_normal()`` for deep
        ReLU stacks).
      b_init: initializer of ``b``; default zeros.

    Shapes:
      x: ``(..., in_features)``; params ``{"w": (in_features, out_features),
      "b": (out_features,)}``; y: ``(..., out_features)``.

    Raises:
      ValueError: if ``x``'s last axis is not ``in_features``.
    """
    out_features = _checks.positive_int(out_features, "out_features")
    w_init = _check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _check_initializer(b_init, "b_init")
    spec = f"Dense({out_features}{'' if use_bias else ', use_bias=False'})"

    def init(key, input_shape):
        _check_rank(input_shape, spec)
        in_features = _check_last_dim(input_shape, spec)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (in_features, out_features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_features,), jnp.float32)
        return input_shape[:-1] + (out_features,), params

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _entry(params, "w", "params", spec)
        _check_input(x, spec)
        if x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{spec} expects inputs with last dimension {w.shape[0]} (w has shape {tuple(w.shape)}), "
                f"got x of shape {tuple(x.shape)}"
            )
        y = x @ w
        if use_bias:
            y = y + _entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """With the batch (and any leading axes) flattened into the rows of X:

        dL/dW = X^T Y_bar  (in, out);   dL/db = sum of Y_bar's rows;   dL/dX = Y_bar W^T.
        """
        del key, train
        w = _entry(params, "w", "params", spec)
        rows_x = x.reshape(-1, x.shape[-1])  # (rows, in)
        rows_y = y_bar.reshape(-1, y_bar.shape[-1])  # (rows, out)
        grads = {"w": rows_x.T @ rows_y}
        if use_bias:
            grads["b"] = jnp.sum(rows_y, axis=0)
        return grads, y_bar @ w.T

    return _stateless("dense", spec, init, apply, backward)


# ---------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
    s = _SPATIAL[ndim]
    return (f"N{s}C", f"{s}IO", f"N{s}C")


def _same_pads(sizes, kernel, strides) -> list[tuple[int, int]]:
    """XLA's 'SAME' padding: output ceil(n / s), the extra padding at the end."""
    pads = []
    for n, k, s in zip(sizes, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _transpose_pads(kernel, strides, padding) -> list[tuple[int, int]]:
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


def _patches(xp, kernel, strides):
    """One strided slice of the padded input per window offset ``o``:
    ``patch_o[b, i, c] = xp[b, i * s + o, c]`` for every output position ``i``."""
    n = len(strides)
    out = [(xp.shape[1 + a] - kernel[a]) // strides[a] + 1 for a in range(n)]
    patches = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        start = (0, *offset, 0)
        limit = (xp.shape[0], *(o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides)), xp.shape[-1])
        patches.append(lax.slice(xp, start, limit, (1, *strides, 1)))
    return patches


def _patches_adjoint(pieces, padded_shape, kernel, strides):
    """The adjoint of :func:`_patches` ("col2im"): add each piece back where its slice came from.

    A strided slice's adjoint pads with zeros: ``o`` before, ``s - 1`` between
    entries, the rest after. Overlapping windows add up.
    """
    n = len(strides)
    total = None
    for piece, offset in zip(pieces, itertools.product(*(range(k) for k in kernel))):
        config = [(0, 0, 0)]
        for a in range(n):
            m, o, s, size = piece.shape[1 + a], offset[a], strides[a], padded_shape[1 + a]
            config.append((o, size - (o + (m - 1) * s + 1), s - 1))
        config.append((0, 0, 0))
        placed = lax.pad(piece, jnp.zeros((), piece.dtype), config)
        total = placed if total is None else total + placed
    return total


def _crop(a, pads):
    """Remove edge padding: the adjoint of zero-padding."""
    return a[(slice(None),) + tuple(slice(lo, a.shape[1 + i] - hi) for i, (lo, hi) in enumerate(pads)) + (slice(None),)]


def _conv_im2col(x, w, strides, pads):
    """Convolution as one matmul over gathered windows ("im2col").

    For each offset ``o`` in the window, a strided slice of the padded input
    gives ``x[b, i * s + o, c]`` at every output position ``i``; the slices
    are concatenated on the channel axis in the order of ``w.reshape(-1, out)``:

        cols[b, i, (o, c)] = x_pad[b, i * s + o, c]      (b, *out, prod(k) * in)
        y = cols @ W.reshape(prod(k) * in, out)

    Its gradient is pads, slices and one matmul, which XLA:CPU runs fast
    inside ``lax.scan`` (where its native convolution gradients are an order
    of magnitude slower; see ``experiments/benchmarks/conv_impl.py``).
    """
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    cols = jnp.concatenate(_patches(xp, w.shape[: len(strides)], strides), axis=-1)  # (batch, *out, prod(k) * in)
    return cols @ w.reshape(-1, w.shape[-1])  # (batch, *out, out_channels)


def _conv_im2col_backward(x, w, strides, pads, y_bar):
    """Cotangents of ``(w, x)`` for :func:`_conv_im2col`, as linear algebra.

    With ``cols`` the gathered windows (rows: every output position of every
    example) and ``W_m = W.reshape(prod(k) in, out)``:

        y = cols W_m                      (the forward, one matmul)
        W_m_bar = cols^T y_bar            (prod(k) in, out)
        cols_bar = y_bar W_m^T            (rows, prod(k) in)
        x_bar = crop(col2im(cols_bar))    (each window's share added back)
    """
    kernel = w.shape[: len(strides)]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    cols = jnp.concatenate(_patches(xp, kernel, strides), axis=-1)
    rows = cols.reshape(-1, cols.shape[-1])  # (batch * prod(out), prod(k) * in)
    w_bar = (rows.T @ y_bar.reshape(-1, y_bar.shape[-1])).reshape(w.shape)
    cols_bar = y_bar @ w.reshape(-1, w.shape[-1]).T  # (batch, *out, prod(k) * in)
    pieces = jnp.split(cols_bar, math.prod(kernel), axis=-1)
    x_bar = _crop(_patches_adjoint(pieces, xp.shape, kernel, strides), pads)
    return w_bar, x_bar


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
    w_init = _check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _check_initializer(b_init, "b_init")
    spec = f"{label}({out_channels}, {kernel_size}, strides={strides}, padding={padding!r})"
    n = len(kernel_size)
    dn = _dimension_numbers(n)
    if impl not in _CONV_IMPLS:
        raise ValueError(f"impl must be one of {_CONV_IMPLS}, got {impl!r}")

    def out_size(size: int, k: int, s: int) -> int:
        if not transpose:
            return _window_out(size, k, s, padding, spec)
        if size == -1:
            return -1
        return size * s if padding == "SAME" else size * s + max(k - s, 0)

    def init(key, input_shape):
        _check_rank(input_shape, spec, rank=n + 2)
        in_channels = _check_last_dim(input_shape, spec)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, kernel_size + (in_channels, out_channels), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_channels,), jnp.float32)
        spatial = tuple(out_size(d, k, s) for d, k, s in zip(input_shape[1:-1], kernel_size, strides))
        return (input_shape[0],) + spatial + (out_channels,), params

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _entry(params, "w", "params", spec)
        _check_input(x, spec, rank=n + 2)
        if x.shape[-1] != w.shape[-2]:
            raise ValueError(
                f"{spec} expects {w.shape[-2]} input channels (last axis; layout {dn[0]}), "
                f"got x of shape {tuple(x.shape)}"
            )
        how = _resolve_impl(impl)
        if not transpose:
            for size, k in zip(x.shape[1:-1], kernel_size):
                _window_out(size, k, 1, padding, spec)  # raises if the window does not fit
            if how == "xla":
                y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
            else:
                pads = _same_pads(x.shape[1:-1], kernel_size, strides) if padding == "SAME" else [(0, 0)] * n
                y = _conv_im2col(x, w, strides, pads)
        else:
            # A scatter of W is a correlation with W flipped in space over the
            # input dilated by s - 1 zeros and padded at the edges.
            flipped = jnp.flip(w, axis=tuple(range(n)))
            if how == "xla":
                y = lax.conv_transpose(x, flipped, strides, padding, dimension_numbers=dn)
            else:
                edges = _transpose_pads(kernel_size, strides, padding)
                config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides)] + [(0, 0, 0)]
                dilated = lax.pad(x, jnp.zeros((), x.dtype), config)
                y = _conv_im2col(dilated, flipped, (1,) * n, [(0, 0)] * n)
        if use_bias:
            y = y + _entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """Convolution is a matmul over gathered windows, so its rule is Dense's
        plus col2im (see :func:`_conv_im2col_backward`); ``b_bar`` sums ``y_bar``
        over batch and space. A transposed convolution is a stride-1 convolution
        of the zero-dilated input with the flipped kernel: its rule is that
        one's, with the flip undone on ``W_bar`` and the dilation undone on
        ``x_bar`` (the adjoint of inserting zeros is a strided slice).
        """
        del key, train
        w = _entry(params, "w", "params", spec)
        if not transpose:
            pads = _same_pads(x.shape[1:-1], kernel_size, strides) if padding == "SAME" else [(0, 0)] * n
            w_bar, x_bar = _conv_im2col_backward(x, w, strides, pads, y_bar)
        else:
            spatial = tuple(range(n))
            edges = _transpose_pads(kernel_size, strides, padding)
            config = [(0, 0, 0)] + [(lo, hi, s - 1) for (lo, hi), s in zip(edges, strides)] + [(0, 0, 0)]
            dilated = lax.pad(x, jnp.zeros((), x.dtype), config)
            flipped_bar, dilated_bar = _conv_im2col_backward(dilated, jnp.flip(w, spatial), (1,) * n, [(0, 0)] * n, y_bar)
            w_bar = jnp.flip(flipped_bar, spatial)
            keep = tuple(slice(lo, lo + (m - 1) * s + 1, s) for (lo, _), m, s in zip(edges, x.shape[1:-1], strides))
            x_bar = dilated_bar[(slice(None),) + keep + (slice(None),)]
        grads = {"w": w_bar}
        if use_bias:
            grads["b"] = _sum_leading(y_bar)
        return grads, x_bar

    return _stateless(name, spec, init, apply, backward)


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
        (``floor((n - k) / s) + 1``).
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


# ---------------------------------------------------------------------------
# Pooling, Flatten
# ---------------------------------------------------------------------------


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
        _check_rank(input_shape, spec, rank=n + 2)
        spatial = tuple(_window_out(d, k, s, padding, spec) for d, k, s in zip(input_shape[1:-1], window, strides))
        return (input_shape[0],) + spatial + (input_shape[-1],), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _check_input(x, spec, rank=n + 2)
        for size, k in zip(x.shape[1:-1], window):
            _window_out(size, k, 1, padding, spec)
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
        pads = _same_pads(x.shape[1:-1], window, strides) if padding == "SAME" else [(0, 0)] * n
        padded_shape = (x.shape[0],) + tuple(d + lo + hi for d, (lo, hi) in zip(x.shape[1:-1], pads)) + (x.shape[-1],)
        if name == "max_pool":
            xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
            patches = _patches(xp, window, strides)
            y = functools.reduce(jnp.maximum, patches)
            taken = jnp.zeros(y.shape, bool)
            pieces = []
            for patch in patches:
                hit = (patch == y) & ~taken
                taken = taken | hit
                pieces.append(jnp.where(hit, y_bar, jnp.zeros_like(y_bar)))
        else:
            pieces = [y_bar / window_counts(x)] * math.prod(window)
        return {}, _crop(_patches_adjoint(pieces, padded_shape, window, strides), pads)

    return _stateless(name, spec, init, apply, backward)


def MaxPool(window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: str = "VALID") -> Layer:
    """Maximum over each window of the spatial axes, per channel.

    Args:
      window_shape: one int per spatial axis (an int means a square 2-D window).
      strides: defaults to ``window_shape`` (non-overlapping windows).
      padding: ``"VALID"`` (default) or ``"SAME"`` (padded with ``-inf``).

    Shapes: x ``(batch, *spatial, channels)`` -> ``(batch, *spatial_out, channels)``.
    """
    return _pool("max_pool", "MaxPool", window_shape, strides, padding)


def AvgPool(window_shape: int | Sequence[int], strides: int | Sequence[int] | None = None, padding: str = "VALID") -> Layer:
    """Mean over each window of the spatial axes, per channel.

    With ``"SAME"`` padding a window at the border is averaged over the
    inputs it covers only (padding is not counted), like PyTorch's
    ``count_include_pad=False``. Arguments as in :func:`MaxPool`.
    """
    return _pool("avg_pool", "AvgPool", window_shape, strides, padding)


def Flatten() -> Layer:
    """Flattens all axes but the first: ``(batch, d1, ..., dk) -> (batch, d1 * ... * dk)``."""
    spec = "Flatten()"

    def init(key, input_shape):
        del key
        _check_rank(input_shape, spec, min_rank=2)
        rest = input_shape[1:]
        if -1 in rest:
            raise ValueError(f"{spec} needs known sizes beyond the batch axis, got input_shape {input_shape}")
        return (input_shape[0], math.prod(rest)), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _check_input(x, spec, min_rank=2, dtype="any")
        return x.reshape(x.shape[0], -1)  # (batch, d1 * ... * dk)

    def backward(params, x, y_bar, *, key=None, train=False):
        """A reshape moves no values: the cotangent is reshaped back."""
        del params, key, train
        return {}, y_bar.reshape(x.shape)

    return _stateless("flatten", spec, init, apply, backward)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------


def Dropout(drop_prob: float) -> Layer:
    """Inverted dropout: zeroes each entry with probability ``drop_prob`` in training.

    In training (``train=True``) each entry is kept with probability
    ``1 - drop_prob`` and the kept entries are scaled by ``1 / (1 - drop_prob)``
    so the expected output equals the input; in evaluation it is the identity.

    Args:
      drop_prob: probability of *dropping* an entry, in ``[0, 1)``. (stax's
        ``Dropout(rate)`` means the probability of keeping; this one does not.)

    Raises:
      ValueError: in training without a ``key``.
    """
    drop_prob = _checks.in_unit_interval(drop_prob, "drop_prob")
    spec = f"Dropout(drop_prob={drop_prob})"

    def init(key, input_shape):
        del key
        return input_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params
        if not train or drop_prob == 0.0:
            return x
        if key is None:
            raise ValueError(
                f"{spec} is random in training: pass key=... to apply (got key=None with train=True)"
            )
        keep_prob = 1.0 - drop_prob
        keep = jax.random.bernoulli(key, keep_prob, x.shape)
        return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))

    def backward(params, x, y_bar, *, key=None, train=False):
        """``y = m * x / (1 - p)`` with the same mask ``m`` (redrawn from the same key): ``x_bar = m * y_bar / (1 - p)``."""
        del params
        if not train or drop_prob == 0.0:
            return {}, y_bar
        if key is None:
            raise ValueError(f"{spec} is random in training: pass key=... to apply (got key=None with train=True)")
        keep_prob = 1.0 - drop_prob
        keep = jax.random.bernoulli(key, keep_prob, x.shape)
        return {}, jnp.where(keep, y_bar / keep_prob, jnp.zeros_like(y_bar))

    return _stateless("dropout", spec, init, apply, backward)


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


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
        grads["scale"] = _sum_leading(y_bar * x_hat)
        g = y_bar * _entry(params, "scale", "params", spec)
    if use_bias:
        grads["bias"] = _sum_leading(y_bar)
    if not batch_stats:
        return grads, g * r
    g_mean = jnp.mean(g, axis=axes, keepdims=True)
    gx_mean = jnp.mean(g * x_hat, axis=axes, keepdims=True)
    return grads, r * (g - g_mean - x_hat * gx_mean)


def LayerNorm(*, eps: float = 1e-5, use_scale: bool = True, use_bias: bool = True) -> Layer:
    """Normalises each example over its last axis, then scales and shifts.

    ``y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias``, with the mean
    and (biased) variance over the last axis of each example.

    Shapes: x ``(..., features)``; params ``{"scale": (features,), "bias": (features,)}``.
    """
    eps = _checks.positive_float(eps, "eps")
    spec = f"LayerNorm(eps={eps})"

    def init(key, input_shape):
        del key
        _check_rank(input_shape, spec)
        features = _check_last_dim(input_shape, spec)
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((features,), jnp.float32)
        if use_bias:
            params["bias"] = jnp.zeros((features,), jnp.float32)
        return input_shape, params

    def apply(params, x, *, key=None, train=False):
        del key, train
        _check_input(x, spec)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * lax.rsqrt(var + eps)
        if use_scale:
            y = y * _entry(params, "scale", "params", spec)
        if use_bias:
            y = y + _entry(params, "bias", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """See :func:`_normalise_backward`, with statistics over the last axis."""
        del key, train
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return _normalise_backward(params, x, y_bar, mean, var, eps, (-1,), use_scale, use_bias, spec, True)

    return _stateless("layer_norm", spec, init, apply, backward)


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

    Params ``{"scale": (C,), "bias": (C,)}``; state ``{"mean": (C,), "var": (C,)}``.
    Use ``init_with_state`` / ``apply_with_state``.
    """
    momentum = _checks.in_unit_interval(momentum, "momentum")
    eps = _checks.positive_float(eps, "eps")
    spec = f"BatchNorm(momentum={momentum}, eps={eps})"

    def init_with_state(key, input_shape):
        del key
        input_shape = _checks.shape_tuple(input_shape)
        _check_rank(input_shape, spec, min_rank=2)
        c = _check_last_dim(input_shape, spec)
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((c,), jnp.float32)
        if use_bias:
            params["bias"] = jnp.zeros((c,), jnp.float32)
        state = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)}
        return input_shape, params, state

    def apply_with_state(params, state, x, *, key=None, train=False):
        del key
        _check_input(x, spec, min_rank=2)
        if not state:
            raise ValueError(
                f"{spec} keeps running statistics as state: build with init_with_state and call "
                f"apply_with_state(params, state, x, train=...) (got no state)"
            )
        running_mean = _entry(state, "mean", "state", spec)
        running_var = _entry(state, "var", "state", spec)
        if x.shape[-1] != running_mean.shape[0]:
            raise ValueError(f"{spec} expects {running_mean.shape[0]} channels (last axis), got x of shape {tuple(x.shape)}")
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            new_state = {
                "mean": momentum * running_mean + (1.0 - momentum) * mean.astype(running_mean.dtype),
                "var": momentum * running_var + (1.0 - momentum) * var.astype(running_var.dtype),
            }
        else:
            mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
            new_state = state
        y = (x - mean) * lax.rsqrt(var + eps)
        if use_scale:
            y = y * _entry(params, "scale", "params", spec)
        if use_bias:
            y = y + _entry(params, "bias", "params", spec)
        return y, new_state

    def backward(params, state, x, y_bar, *, key=None, train=False):
        """See :func:`_normalise_backward`: batch statistics over every axis but the
        last in training (gradients flow through them), running statistics
        (constants) in evaluation. The state gets no cotangent."""
        del key
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
        else:
            if not state:
                raise ValueError(f"{spec} keeps running statistics as state: pass the state to backward (got no state)")
            mean = _entry(state, "mean", "state", spec).astype(x.dtype)
            var = _entry(state, "var", "state", spec).astype(x.dtype)
        return _normalise_backward(params, x, y_bar, mean, var, eps, axes, use_scale, use_bias, spec, train)

    return _stateful("batch_norm", spec, init_with_state, apply_with_state, backward)


# ---------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------


def Embedding(num_embeddings: int, features: int, *, embedding_init: inits.Initializer | None = None) -> Layer:
    """Looks up rows of a table: ``y[..., :] = table[ids[...], :]``.

    Equivalent to ``one_hot(ids) @ table`` without building the one-hot.

    Args:
      num_embeddings: number of rows (the vocabulary size).
      features: size of each row.
      embedding_init: default ``normal(1.0)``.

    Shapes: ids ``(...)`` of an integer dtype; params ``{"table": (num_embeddings,
    features)}``; y ``(..., features)``.

    Raises:
      TypeError: for non-integer ids.
      ValueError: for ids outside ``[0, num_embeddings)`` when their values are
        known (outside ``jit``). Under ``jit`` such ids give rows of ``nan``,
        so the error shows in the loss instead of passing silently.
    """
    num_embeddings = _checks.positive_int(num_embeddings, "num_embeddings")
    features = _checks.positive_int(features, "features")
    embedding_init = _check_initializer(embedding_init or inits.normal(1.0), "embedding_init")
    spec = f"Embedding({num_embeddings}, {features})"

    def init(key, input_shape):
        return input_shape + (features,), {"table": embedding_init(key, (num_embeddings, features), jnp.float32)}

    def apply(params, ids, *, key=None, train=False):
        del key, train
        table = _entry(params, "table", "params", spec)
        _check_input(ids, spec, min_rank=0, dtype="integer")
        _checks.labels_in_range(ids, num_embeddings, f"{spec} ids")
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)

    def backward(params, ids, y_bar, *, key=None, train=False):
        """``y = onehot(ids) T``, so ``T_bar = onehot(ids)^T y_bar``: each looked-up row
        collects the cotangents of every place it was used (added, not
        overwritten). The integer ids get no cotangent (``None``)."""
        del key, train
        table = _entry(params, "table", "params", spec)
        rows = y_bar.reshape(-1, table.shape[-1])  # (number of ids, features)
        return {"table": jnp.zeros_like(table).at[ids.reshape(-1)].add(rows, mode="drop")}, None

    return _stateless("embedding", spec, init, apply, backward)


# ---------------------------------------------------------------------------
# Activation layers
# ---------------------------------------------------------------------------


def Elementwise(fn: Callable[[jax.Array], jax.Array], name: str = "elementwise", *, vjp: Callable | None = None, **fn_kwargs) -> Layer:
    """A parameter-free layer applying ``fn(x, **fn_kwargs)``; shape unchanged.

    The activation layers below are made with it; use it for your own.

    Args:
      fn: the function.
      name: the kind name used for params keys and messages.
      vjp: its hand-derived rule ``(x, y_bar, **fn_kwargs) -> x_bar``; for
        an elementwise ``fn`` that is ``y_bar * fn'(x)``. Defaults to the rule
        in :data:`jaxnets.activations.GRADIENTS` when ``fn`` is one of
        jaxnets' activations; without one the layer has no backward rule.
      fn_kwargs: keyword arguments of ``fn`` (and ``vjp``).
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if vjp is None:
        vjp = act.GRADIENTS.get(fn)
    elif not callable(vjp):
        raise TypeError(f"vjp must be callable as vjp(x, y_bar), got {vjp!r}")
    args = "".join(f", {k}={v!r}" for k, v in fn_kwargs.items())
    spec = f"{''.join(p.capitalize() for p in name.split('_'))}({args[2:]})"

    def init(key, input_shape):
        del key
        return input_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _checks.array_like(x, f"{spec} input x")
        return fn(x, **fn_kwargs)

    def backward(params, x, y_bar, *, key=None, train=False):
        del params, key, train
        return {}, vjp(x, y_bar, **fn_kwargs)

    return _stateless(name, spec, init, apply, backward if vjp is not None else None)


def Relu() -> Layer:
    """:func:`jaxnets.activations.relu` as a layer."""
    return Elementwise(act.relu, "relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """:func:`jaxnets.activations.leaky_relu` as a layer."""
    return Elementwise(act.leaky_relu, "leaky_relu", negative_slope=_checks.positive_float(negative_slope, "negative_slope", allow_zero=True))


def Elu(alpha: float = 1.0) -> Layer:
    """:func:`jaxnets.activations.elu` as a layer."""
    return Elementwise(act.elu, "elu", alpha=_checks.positive_float(alpha, "alpha"))


def Gelu(approximate: bool = False) -> Layer:
    """:func:`jaxnets.activations.gelu` as a layer (exact by default)."""
    return Elementwise(act.gelu, "gelu", approximate=bool(approximate))


def Sigmoid() -> Layer:
    """:func:`jaxnets.activations.sigmoid` as a layer."""
    return Elementwise(act.sigmoid, "sigmoid")


def Tanh() -> Layer:
    """:func:`jaxnets.activations.tanh` as a layer."""
    return Elementwise(act.tanh, "tanh")


def Softplus() -> Layer:
    """:func:`jaxnets.activations.softplus` as a layer."""
    return Elementwise(act.softplus, "softplus")


def Silu() -> Layer:
    """:func:`jaxnets.activations.silu` as a layer."""
    return Elementwise(act.silu, "silu")


def Softmax(axis: int = -1) -> Layer:
    """:func:`jaxnets.activations.softmax` as a layer."""
    return Elementwise(act.softmax, "softmax", axis=int(axis))


def LogSoftmax(axis: int = -1) -> Layer:
    """:func:`jaxnets.activations.log_softmax` as a layer."""
    return Elementwise(act.log_softmax, "log_softmax", axis=int(axis))


def Identity() -> Layer:
    """The identity as a layer (a placeholder, or a skip branch in :func:`parallel`)."""
    return Elementwise(act.identity, "identity")


# ---------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------


def _check_layers(layers: Sequence[Any], combinator: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    if not layers:
        raise ValueError(f"{combinator} needs at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. Relu()?)" if callable(layer) else ""
            raise TypeError(f"{combinator}: argument {i} must be a Layer, got {layer!r}{hint}")
    return tuple(layers)


def _child_names(layers: Sequence[Layer]) -> list[str]:
    """Readable params keys: a counter per kind, e.g. dense_0, relu_0, dense_1."""
    seen: Counter = Counter()
    names = []
    for layer in layers:
        names.append(f"{layer.name}_{seen[layer.name]}")
        seen[layer.name] += 1
    return names


def _located(path: str, fn: Callable, *args, **kwargs):
    """Call ``fn``; prefix the path of the failing child to our own errors."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        if type(e) not in (ValueError, TypeError):
            raise
        raise type(e)(f"{path}: {e}") from None


def _children(names, layers, params, state):
    """Each child's params and state (``{}`` for parameter-free ones); rejects unknown keys."""
    for what, tree in (("params", params), ("state", state)):
        if not isinstance(tree, dict):
            raise TypeError(f"{what} must be a dict keyed by layer name, got {type(tree).__name__}")
        unknown = sorted(set(tree) - set(names))
        if unknown:
            raise ValueError(f"{what} has entries {unknown} that match no layer; the layers are {names}")
    return [(params.get(n, {}), state.get(n, {})) for n in names]


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


def _keep(tree: dict, name: str, value: Any) -> None:
    if _has_leaves(value):
        tree[name] = value


def _chain_tapes(names, layers, spec):
    """tape_forward / tape_backward of ``serial``: record each child's tape, then
    run the children's rules in reverse (the chain rule)."""
    n = len(layers)

    def tape_forward(params, state, x, *, key=None, train=False):
        new_state, tapes = {}, []
        children = _children(names, layers, params, state)
        for name, layer, (p, s), k in zip(names, layers, children, _split(key, n)):
            _located(name, _require_rule, layer)
            x, s, tape = _located(name, layer.tape_forward, p, s, x, key=k, train=train)
            _keep(new_state, name, s)
            tapes.append(tape)
        return x, new_state, tuple(tapes)

    def tape_backward(params, state, tapes, y_bar, *, key=None, train=False):
        grads = {}
        children = _children(names, layers, params, state)
        keys = _split(key, n)
        for i in reversed(range(n)):
            name, layer, (p, s) = names[i], layers[i], children[i]
            p_bar, y_bar = _located(name, layer.tape_backward, p, s, tapes[i], y_bar, key=keys[i], train=train)
            if name in params:
                grads[name] = p_bar
        return grads, y_bar

    return tape_forward, tape_backward


def serial(*layers: Layer) -> Layer:
    """Composes layers in sequence: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Params and state are dicts keyed ``<kind>_<i>`` (``dense_0``, ``dense_1``,
    ...); parameter-free layers (activations, pooling, ...) take no entry.
    The key is split so that each child gets its own.

    Backward: the chain rule, children's rules in reverse order, each fed the
    cotangent of its output and the input recorded on the way forward.
    """
    layers = _check_layers(layers, "serial")
    names = _child_names(layers)
    spec = f"serial({', '.join(map(repr, layers))})"

    def init_with_state(key, input_shape):
        shape = input_shape
        params, state = {}, {}
        for name, layer, k in zip(names, layers, jax.random.split(key, len(layers))):
            shape, p, s = _located(name, layer.init_with_state, k, shape)
            _keep(params, name, p)
            _keep(state, name, s)
        return shape, params, state

    def apply_with_state(params, state, x, *, key=None, train=False):
        new_state = {}
        children = _children(names, layers, params, state)
        for name, layer, (p, s), k in zip(names, layers, children, _split(key, len(layers))):
            x, s = _located(name, layer.apply_with_state, p, s, x, key=k, train=train)
            _keep(new_state, name, s)
        return x, new_state

    return _combinator("serial", spec, init_with_state, apply_with_state, *_chain_tapes(names, layers, spec))


def parallel(*layers: Layer) -> Layer:
    """Applies layer ``i`` to input ``i``: ``(x_0, ..., x_n) -> (f_0(x_0), ..., f_n(x_n))``.

    ``input_shape`` is a tuple of shapes, one per layer. Pair with
    :func:`FanOut` and :func:`FanInSum`/:func:`FanInConcat` to build branches.
    Backward: each branch's rule on its own cotangent.
    """
    layers = _check_layers(layers, "parallel")
    names = _child_names(layers)
    spec = f"parallel({', '.join(map(repr, layers))})"
    n = len(layers)

    def check_arity(inputs, what):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != n:
            got = f"{len(inputs)} items" if isinstance(inputs, (tuple, list)) else type(inputs).__name__
            raise ValueError(f"{spec} expects {what} to be a tuple of {n} items, one per layer, got {got}")

    def init_with_state(key, input_shape):
        check_arity(input_shape, "input_shape")
        shapes, params, state = [], {}, {}
        for name, layer, k, shp in zip(names, layers, jax.random.split(key, n), input_shape):
            out, p, s = _located(name, layer.init_with_state, k, shp)
            shapes.append(out)
            _keep(params, name, p)
            _keep(state, name, s)
        return tuple(shapes), params, state

    def apply_with_state(params, state, xs, *, key=None, train=False):
        check_arity(xs, "the input")
        ys, new_state = [], {}
        children = _children(names, layers, params, state)
        for name, layer, (p, s), k, x in zip(names, layers, children, _split(key, n), xs):
            y, s = _located(name, layer.apply_with_state, p, s, x, key=k, train=train)
            ys.append(y)
            _keep(new_state, name, s)
        return tuple(ys), new_state

    def tape_forward(params, state, xs, *, key=None, train=False):
        check_arity(xs, "the input")
        ys, new_state, tapes = [], {}, []
        children = _children(names, layers, params, state)
        for name, layer, (p, s), k, x in zip(names, layers, children, _split(key, n), xs):
            _located(name, _require_rule, layer)
            y, s, tape = _located(name, layer.tape_forward, p, s, x, key=k, train=train)
            ys.append(y)
            tapes.append(tape)
            _keep(new_state, name, s)
        return tuple(ys), new_state, tuple(tapes)

    def tape_backward(params, state, tapes, y_bars, *, key=None, train=False):
        grads, x_bars = {}, []
        children = _children(names, layers, params, state)
        for name, layer, (p, s), k, tape, y_bar in zip(names, layers, children, _split(key, n), tapes, y_bars):
            p_bar, x_bar = _located(name, layer.tape_backward, p, s, tape, y_bar, key=k, train=train)
            x_bars.append(x_bar)
            if name in params:
                grads[name] = p_bar
        return grads, tuple(x_bars)

    return _combinator("parallel", spec, init_with_state, apply_with_state, tape_forward, tape_backward)


def residual(*layers: Layer) -> Layer:
    """A skip connection around ``serial(*layers)``: ``y = x + f(x)``.

    The body must keep the shape. Params are the body's own dict (no extra
    nesting), e.g. ``{"residual_0": {"dense_0": ..., "dense_1": ...}}`` in a model.
    Backward: ``x`` is used twice, so its cotangent is the sum of both paths,
    ``x_bar = y_bar + f_bar(y_bar)``.
    """
    body = serial(*_check_layers(layers, "residual"))
    spec = f"residual({body.spec[len('serial('):-1]})"

    def check_shape(y, x):
        if y.shape != x.shape:
            raise ValueError(f"{spec}: the body must keep the input shape {tuple(x.shape)}, but it gives {tuple(y.shape)}")

    def init_with_state(key, input_shape):
        input_shape = _checks.shape_tuple(input_shape)
        out_shape, params, state = body.init_with_state(key, input_shape)
        if len(out_shape) != len(input_shape) or any(a != b and -1 not in (a, b) for a, b in zip(out_shape, input_shape)):
            raise ValueError(f"{spec}: the body must keep the input shape {input_shape}, but it gives {out_shape}")
        return input_shape, params, state

    def apply_with_state(params, state, x, *, key=None, train=False):
        y, state = body.apply_with_state(params, state, x, key=key, train=train)
        check_shape(y, x)
        return x + y, state

    def tape_forward(params, state, x, *, key=None, train=False):
        y, state, tape = body.tape_forward(params, state, x, key=key, train=train)
        check_shape(y, x)
        return x + y, state, tape

    def tape_backward(params, state, tape, y_bar, *, key=None, train=False):
        grads, x_bar = body.tape_backward(params, state, tape, y_bar, key=key, train=train)
        return grads, y_bar + x_bar

    return _combinator("residual", spec, init_with_state, apply_with_state, tape_forward, tape_backward)


def FanOut(num: int) -> Layer:
    """Copies its input ``num`` times: ``x -> (x, ..., x)`` (for :func:`parallel`).

    Backward: the input feeds every copy, so its cotangent is the *sum* of the
    copies' cotangents (forgetting to add them is the classic bug of
    hand-written backprop).
    """
    num = _checks.positive_int(num, "num")
    spec = f"FanOut({num})"

    def init_with_state(key, input_shape):
        del key
        return (input_shape,) * num, {}, {}

    def apply_with_state(params, state, x, *, key=None, train=False):
        del params, key, train
        return (x,) * num, state

    def tape_forward(params, state, x, *, key=None, train=False):
        y, state = apply_with_state(params, state, x)
        return y, state, None

    def tape_backward(params, state, tape, y_bars, *, key=None, train=False):
        del params, state, tape, key, train
        return {}, functools.reduce(lambda a, b: a + b, y_bars)

    return _combinator("fan_out", spec, init_with_state, apply_with_state, tape_forward, tape_backward)


def _fan_in(name: str, spec: str, out_shape: Callable, combine: Callable, split: Callable) -> Layer:
    def init_with_state(key, input_shapes):
        del key
        if not isinstance(input_shapes, (tuple, list)) or not input_shapes or not all(isinstance(s, (tuple, list)) for s in input_shapes):
            raise ValueError(f"{spec} expects a tuple of input shapes (from parallel), got {input_shapes!r}")
        shapes = [_checks.shape_tuple(s) for s in input_shapes]
        return out_shape(shapes), {}, {}

    def apply_with_state(params, state, xs, *, key=None, train=False):
        del params, key, train
        if not isinstance(xs, (tuple, list)) or not xs:
            raise ValueError(f"{spec} expects a tuple of arrays (from parallel), got {type(xs).__name__}")
        return combine(xs), state

    def tape_forward(params, state, xs, *, key=None, train=False):
        y, state = apply_with_state(params, state, xs)
        return y, state, tuple(xs)

    def tape_backward(params, state, xs, y_bar, *, key=None, train=False):
        del params, state, key, train
        return {}, split(xs, y_bar)

    return _combinator(name, spec, init_with_state, apply_with_state, tape_forward, tape_backward)


def FanInSum() -> Layer:
    """Sums a tuple of same-shaped inputs: ``(x_0, ..., x_n) -> x_0 + ... + x_n``.

    Backward: every input receives the output's cotangent unchanged.
    """
    spec = "FanInSum()"

    def out_shape(shapes):
        first = shapes[0]
        for s in shapes[1:]:
            if len(s) != len(first) or any(a != b and -1 not in (a, b) for a, b in zip(s, first)):
                raise ValueError(f"{spec} needs inputs of one shape, got {shapes}")
        return first

    def combine(xs):
        shapes = [tuple(x.shape) for x in xs]
        if len(set(shapes)) != 1:
            raise ValueError(f"{spec} needs inputs of one shape, got {shapes}")
        return sum(xs[1:], xs[0])

    return _fan_in("fan_in_sum", spec, out_shape, combine, lambda xs, y_bar: tuple(y_bar for _ in xs))


def FanInConcat(axis: int = -1) -> Layer:
    """Concatenates a tuple of inputs along ``axis`` (default: the features).

    Backward: the output's cotangent is cut back into the inputs' pieces.
    """
    axis = int(axis)
    spec = f"FanInConcat(axis={axis})"

    def out_shape(shapes):
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes) or not -rank <= axis < rank:
            raise ValueError(f"{spec} needs inputs of one rank with axis {axis} in range, got {shapes}")
        ax = axis % rank
        sizes = [s[ax] for s in shapes]
        total = -1 if -1 in sizes else sum(sizes)
        return shapes[0][:ax] + (total,) + shapes[0][ax + 1 :]

    def combine(xs):
        out_shape([tuple(x.shape) for x in xs])
        return jnp.concatenate(xs, axis=axis)

    def split(xs, y_bar):
        bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return tuple(jnp.split(y_bar, bounds, axis=axis))

    return _fan_in("fan_in_concat", spec, out_shape, combine, split)


def count_params(params: Params) -> int:
    """Number of scalars in a params pytree."""
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
