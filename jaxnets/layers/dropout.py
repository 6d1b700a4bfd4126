"""Dropout: the one random layer. It needs an explicit key in training."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets.layers import core, incremental
from jaxnets.layers.core import Layer

__all__ = ["Dropout"]


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

    def kept(key, shape):
        """The mask of kept entries, drawn from ``key`` (the same in forward and backward)."""
        if key is None:
            raise ValueError(f"{spec} is random in training: pass key=... to apply (got key=None with train=True)")
        # a float32 probability: the same mask with x64 on (gradient checks in float64) or off
        return jax.random.bernoulli(key, jnp.float32(1.0 - drop_prob), shape)

    def apply(params, x, *, key=None, train=False):
        del params
        if not train or drop_prob == 0.0:
            return x
        return jnp.where(kept(key, x.shape), x / (1.0 - drop_prob), jnp.zeros_like(x))

    def backward(params, x, y_bar, *, key=None, train=False):
        """``y = m * x / (1 - p)`` with the same mask ``m`` (redrawn from the same key): ``x_bar = m * y_bar / (1 - p)``."""
        del params
        if not train or drop_prob == 0.0:
            return {}, y_bar
        return {}, jnp.where(kept(key, x.shape), y_bar / (1.0 - drop_prob), jnp.zeros_like(y_bar))

    return incremental.positionwise(core.build_stateless("dropout", spec, init, apply, backward))  # decoding: evaluation mode
