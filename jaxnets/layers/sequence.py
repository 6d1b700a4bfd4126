"""Sequence pooling that respects masks: the mean over valid positions, the last valid position.

Input ``x`` (..., T, D), or ``(x, mask)`` with ``mask`` (..., T) boolean
(True at real positions) when built with ``mask_input=True``. Output (..., D).
A sequence with no valid position pools to **zeros** (and passes no gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets.layers import _util, core
from jaxnets.layers.core import Layer

__all__ = ["SequencePool"]

_MODES = ("mean", "last")


def SequencePool(mode: str = "mean", *, mask_input: bool = False) -> Layer:
    """Pools a sequence (..., T, D) to (..., D) over its valid positions.

    ``mode="mean"``: ``y = sum_t m_t x_t / max(sum_t m_t, 1)``; rule
    ``x_bar_t = m_t y_bar / max(sum_t m_t, 1)``.

    ``mode="last"``: ``y = x_l`` with ``l`` the last t with ``m_t`` (for
    right-padded sequences, the state of a recurrent layer after the
    sequence's own last token); rule: ``y_bar`` goes to position ``l``, zeros
    elsewhere.

    Without ``mask_input`` every position is valid (``m_t = 1``). A sequence
    with no valid position gives zeros.

    Raises:
      ValueError: an unknown mode, a mask whose shape is not x's without the
        features, an empty sequence; naming the layer and the shapes.
    """
    if mode not in _MODES:
        raise ValueError(f"SequencePool: mode must be one of {_MODES}, got {mode!r}")
    spec = f"SequencePool({mode!r}{', mask_input=True' if mask_input else ''})"

    def split(x):
        if not mask_input:
            return x, None
        if not isinstance(x, (tuple, list)) or len(x) != 2:
            got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else f"one {type(x).__name__}"
            raise ValueError(f"{spec} expects the input (x, mask), got {got}")
        return x[0], x[1]

    def init(key, input_shape):
        del key
        if mask_input and not (isinstance(input_shape, tuple) and len(input_shape) == 2
                               and isinstance(input_shape[0], tuple)):
            raise ValueError(f"{spec} expects the input (x, mask), so input_shape must be two shapes, got {input_shape!r}")
        shape = input_shape[0] if mask_input else input_shape
        _util.check_rank(shape, spec, min_rank=2)
        if shape[-2] == 0:
            raise ValueError(f"{spec}: sequences must not be empty, got x of shape {shape}")
        return tuple(shape[:-2]) + (shape[-1],), {}

    def weights(x, mask):
        """``(w, valid)``: per-position weights (..., T) whose pooling is the output."""
        _util.check_input(x, spec, min_rank=2)
        t_len = x.shape[-2]
        if t_len == 0:
            raise ValueError(f"{spec}: sequences must not be empty, got x of shape {tuple(x.shape)}")
        if mask is None:
            m = jnp.ones(x.shape[:-1], x.dtype)
        else:
            if getattr(mask, "dtype", None) != jnp.bool_:
                raise TypeError(f"{spec}: mask must be a boolean array (..., T), got dtype {getattr(mask, 'dtype', None)}")
            if tuple(mask.shape) != tuple(x.shape[:-1]):
                raise ValueError(f"{spec}: mask must have x's shape without the features {tuple(x.shape[:-1])}, "
                                 f"got {tuple(mask.shape)}")
            m = mask.astype(x.dtype)
        if mode == "mean":
            count = jnp.sum(m, axis=-1, keepdims=True)
            return m / jnp.maximum(count, jnp.ones_like(count))
        last = jnp.max(jnp.where(m > 0, jnp.arange(t_len), -1), axis=-1)  # (...), -1 if none
        return jax.nn.one_hot(last, t_len, dtype=x.dtype)  # a row of zeros for -1

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        x, mask = split(x)
        w = weights(x, mask)
        return jnp.einsum("...t,...td->...d", w, x)

    def backward(params, x, y_bar, *, key=None, train=False):
        """``y = w^T X`` per sequence, with constant weights ``w``: ``X_bar = w y_bar^T``."""
        del params, key, train
        x, mask = split(x)
        x_bar = jnp.einsum("...t,...d->...td", weights(x, mask), y_bar)
        return {}, ((x_bar, None) if mask_input else x_bar)

    return core.build_stateless("sequence_pool", spec, init, apply, backward)
