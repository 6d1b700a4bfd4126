"""Positional information for sequences (..., T, D): learned embeddings, sinusoidal encodings, rotary embeddings.

Attention is blind to order (permuting the keys permutes nothing in the
output); these layers give each position t an identity:

* :func:`PositionalEmbedding`: ``y_t = x_t + E_t``, a learned table (GPT-2);
* :func:`SinusoidalEncoding`: ``y_t = x_t + PE_t``, fixed sines and cosines
  (Vaswani et al., 2017), no params;
* :func:`RotaryEmbedding` / :func:`rotary_embedding`: rotate each pair of
  features by an angle proportional to t (Su et al., 2021), so that the dot
  product of a rotated query and key depends on their *relative* position.
  Use it inside attention with ``MultiHeadAttention(..., rotary=True)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util, core, incremental
from jaxnets.layers.core import Layer

__all__ = ["PositionalEmbedding", "SinusoidalEncoding", "RotaryEmbedding", "sinusoidal_encoding", "rotary_embedding"]


def _check_sequence(x, spec: str) -> None:
    _util.check_input(x, spec, min_rank=2)
    if x.shape[-2] == 0:
        raise ValueError(f"{spec}: sequences must not be empty, got x of shape {tuple(x.shape)}")


def _check_shape(input_shape, spec: str) -> None:
    _util.check_rank(input_shape, spec, min_rank=2)
    _util.check_last_dim(input_shape, spec)


def PositionalEmbedding(max_length: int, *, embedding_init: inits.Initializer | None = None) -> Layer:
    """Adds a learned vector per position: ``y[..., t, :] = x[..., t, :] + E[t, :]``.

    Args:
      max_length: the longest sequence (rows of ``E``).
      embedding_init: default ``normal(0.02)`` (GPT-2).

    Shapes: x (..., T, D) with ``T <= max_length``; params ``{"table": (max_length, D)}``.

    Rule: ``x_bar = y_bar``; ``E_bar[t] = sum of y_bar[..., t, :]`` over the
    leading axes for ``t < T``, zero for the unused rows.

    Raises:
      ValueError: a sequence longer than ``max_length``, naming both.
    """
    max_length = _checks.positive_int(max_length, "max_length")
    embedding_init = _util.check_initializer(embedding_init or inits.normal(0.02), "embedding_init")
    spec = f"PositionalEmbedding({max_length})"

    def check_length(t):
        if t > max_length:
            raise ValueError(f"{spec}: sequences of length {t} are longer than max_length={max_length}")

    def init(key, input_shape):
        _check_shape(input_shape, spec)
        check_length(input_shape[-2])
        return input_shape, {"table": embedding_init(key, (max_length, input_shape[-1]), jnp.float32)}

    def apply(params, x, *, key=None, train=False):
        del key, train
        _check_sequence(x, spec)
        check_length(x.shape[-2])
        table = _util.entry(params, "table", "params", spec)
        return x + table[: x.shape[-2]]

    def backward(params, x, y_bar, *, key=None, train=False):
        del key, train
        table = _util.entry(params, "table", "params", spec)
        used = _util.sum_leading(y_bar, keep=2)  # (T, D)
        return {"table": jnp.zeros(table.shape, used.dtype).at[: x.shape[-2]].set(used)}, y_bar

    def incremental_rule(cache_length, resolve):
        check_length(cache_length)

        def step(params, cache, x, position):  # x (..., t, D) at positions position .. position + t - 1
            _check_sequence(x, spec)
            table = _util.entry(params, "table", "params", spec)
            return x + jax.lax.dynamic_slice_in_dim(table, position, x.shape[-2], axis=0), cache

        return incremental.Incremental(lambda p, b, d: {}, step)

    layer = core.build_stateless("positional_embedding", spec, init, apply, backward)
    return incremental.attach(layer, incremental_rule)


def sinusoidal_encoding(length: int, features: int, *, base: float = 10000.0, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """``PE`` (length, features): ``PE[t, 2i] = sin(t / base^(2i/D))``, ``PE[t, 2i+1] = cos(t / base^(2i/D))``.

    Computed in float64 with NumPy (a constant), then cast to ``dtype``. An odd
    ``features`` drops the last cosine.
    """
    length = _checks.positive_int(length, "length")
    features = _checks.positive_int(features, "features")
    base = _checks.positive_float(base, "base")
    t = np.arange(length, dtype=np.float64)[:, None]
    inv = base ** (-np.arange(0, features, 2, dtype=np.float64) / features)  # (ceil(D/2),)
    pe = np.zeros((length, features + features % 2))
    pe[:, 0::2], pe[:, 1::2] = np.sin(t * inv), np.cos(t * inv)
    return jnp.asarray(pe[:, :features], dtype)


def SinusoidalEncoding(*, base: float = 10000.0) -> Layer:
    """Adds fixed sinusoids: ``y[..., t, :] = x[..., t, :] + PE[t, :]`` (:func:`sinusoidal_encoding`).

    No params; any length. Rule: ``x_bar = y_bar`` (PE is a constant).
    """
    base = _checks.positive_float(base, "base")
    spec = f"SinusoidalEncoding(base={base})"

    def init(key, input_shape):
        del key
        _check_shape(input_shape, spec)
        return input_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _check_sequence(x, spec)
        return x + sinusoidal_encoding(x.shape[-2], x.shape[-1], base=base, dtype=x.dtype)

    def backward(params, x, y_bar, *, key=None, train=False):
        del params, x, key, train
        return {}, y_bar

    def incremental_rule(cache_length, resolve):
        def step(params, cache, x, position):  # the rows position .. position + t - 1 of PE (cache_length, D)
            _check_sequence(x, spec)
            pe = sinusoidal_encoding(cache_length, x.shape[-1], base=base, dtype=x.dtype)
            return x + jax.lax.dynamic_slice_in_dim(pe, position, x.shape[-2], axis=0), cache

        return incremental.Incremental(lambda p, b, d: {}, step)

    layer = core.build_stateless("sinusoidal_encoding", spec, init, apply, backward)
    return incremental.attach(layer, incremental_rule)


def _rotary_angles(length: int, features: int, base: float, dtype):
    """``cos``, ``sin`` (length, features / 2) of the angles ``t theta_i``, ``theta_i = base^(-2i/D)``."""
    length = _checks.positive_int(length, "length")
    features = _checks.positive_int(features, "features")
    base = _checks.positive_float(base, "base")
    t = np.arange(length, dtype=np.float64)[:, None]
    angles = t * base ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    return jnp.asarray(np.cos(angles), dtype), jnp.asarray(np.sin(angles), dtype)


def _rotary_check(x, time_axis: int, where: str) -> tuple[Any, ...]:
    if x.shape[-1] % 2:
        raise ValueError(f"{where}: rotary embeddings rotate pairs of features, so the last axis must be even, "
                         f"got x of shape {tuple(x.shape)}")
    ax = time_axis % x.ndim
    if ax == x.ndim - 1:
        raise ValueError(f"{where}: time_axis must not be the feature axis, got {time_axis} for shape {tuple(x.shape)}")
    # shape (length, 1, ..., 1, D/2): broadcasts from the time axis to the features
    return ax, (x.shape[ax],) + (1,) * (x.ndim - 2 - ax) + (x.shape[-1] // 2,)


def _rotary_tables(x, ax: int, shape: tuple[Any, ...], base: float, offset, max_length, dtype, where: str):
    """``cos``, ``sin`` of the angles at positions ``offset .. offset + T - 1``, shaped to broadcast against ``x``."""
    length = x.shape[ax]
    if _checks.is_traced(offset) or not isinstance(offset, (int, np.integer)):
        if max_length is None:
            raise ValueError(f"{where}: a traced offset needs max_length= (the angles are tabulated for positions "
                             f"0 .. max_length - 1)")
        cos, sin = _rotary_angles(_checks.positive_int(max_length, "max_length"), x.shape[-1], base, dtype)
        cos, sin = (jax.lax.dynamic_slice_in_dim(a, offset, length, axis=0) for a in (cos, sin))
    else:
        if offset < 0:
            raise ValueError(f"{where}: offset must be >= 0, got {offset}")
        cos, sin = (a[offset:] for a in _rotary_angles(int(offset) + length, x.shape[-1], base, dtype))
    return cos.reshape(shape), sin.reshape(shape)


def rotary_embedding(x: jax.Array, *, base: float = 10000.0, time_axis: int = -2, offset: Any = 0,
                     max_length: int | None = None) -> jax.Array:
    """Rotates feature pairs ``(x1_i, x2_i) = (x[..., i], x[..., D/2 + i])`` by the angle ``t theta_i``.

    ``y1 = x1 cos - x2 sin``, ``y2 = x1 sin + x2 cos`` with
    ``theta_i = base^(-2i/D)`` (the "half-split" pairing of GPT-NeoX and
    LLaMA's reference code; RoFormer pairs neighbours, a permutation of the
    features). For rotated ``q_t``, ``k_s``: ``q_t . k_s`` depends on
    ``t - s`` only.

    Args:
      x: (..., T, ..., D) with ``D`` even; positions along ``time_axis``.
      offset: the position of ``x``'s first entry along ``time_axis`` (its
        entries are at ``offset .. offset + T - 1``): an int, or a traced
        int scalar (incremental decoding), which then needs ``max_length``.
      max_length: for a traced ``offset``: the angles are tabulated for
        positions ``0 .. max_length - 1`` (in float64, as for an int offset,
        so both give the same values) and sliced at ``offset``.

    Rule (a rotation's inverse is its transpose, the rotation by ``-t theta``):
    ``rotary_embedding.backward(x, y_bar, *, base, time_axis)`` gives
    ``x1_bar = y1_bar cos + y2_bar sin``, ``x2_bar = -y1_bar sin + y2_bar cos``.
    """
    ax, shape = _rotary_check(x, time_axis, "rotary_embedding")
    cos, sin = _rotary_tables(x, ax, shape, base, offset, max_length, x.dtype, "rotary_embedding")
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _rotary_backward(x, y_bar, *, base: float = 10000.0, time_axis: int = -2, offset: Any = 0,
                     max_length: int | None = None):
    ax, shape = _rotary_check(x, time_axis, "rotary_embedding.backward")
    cos, sin = _rotary_tables(x, ax, shape, base, offset, max_length, y_bar.dtype, "rotary_embedding.backward")
    y1, y2 = jnp.split(y_bar, 2, axis=-1)
    return jnp.concatenate([y1 * cos + y2 * sin, -y1 * sin + y2 * cos], axis=-1)


rotary_embedding.backward = _rotary_backward


def RotaryEmbedding(*, base: float = 10000.0) -> Layer:
    """:func:`rotary_embedding` as a layer on (..., T, D), positions on axis -2, D even. No params.

    Inside attention, rotate queries and keys per head instead:
    ``MultiHeadAttention(..., rotary=True)``.
    """
    base = _checks.positive_float(base, "base")
    spec = f"RotaryEmbedding(base={base})"

    def init(key, input_shape):
        del key
        _check_shape(input_shape, spec)
        if input_shape[-1] % 2:
            raise ValueError(f"{spec} rotates pairs of features: the last axis must be even, got input_shape {input_shape}")
        return input_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _check_sequence(x, spec)
        return rotary_embedding(x, base=base)

    def backward(params, x, y_bar, *, key=None, train=False):
        del params, key, train
        return {}, _rotary_backward(x, y_bar, base=base)

    def incremental_rule(cache_length, resolve):
        def step(params, cache, x, position):
            _check_sequence(x, spec)
            return rotary_embedding(x, base=base, offset=position, max_length=cache_length), cache

        return incremental.Incremental(lambda p, b, d: {}, step)

    layer = core.build_stateless("rotary_embedding", spec, init, apply, backward)
    return incremental.attach(layer, incremental_rule)
