"""Layers that move no values, only change the shape: ``Flatten`` and ``Reshape``.

Their rule reshapes the cotangent back: a reshape's adjoint is the inverse reshape.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from jaxnets.layers import _util, core
from jaxnets.layers.core import Layer

__all__ = ["Flatten", "Reshape"]


def Flatten() -> Layer:
    """Flattens all axes but the first: ``(batch, d1, ..., dk) -> (batch, d1 * ... * dk)``."""
    spec = "Flatten()"

    def init(key, input_shape):
        del key
        _util.check_rank(input_shape, spec, min_rank=2)
        rest = input_shape[1:]
        if -1 in rest:
            raise ValueError(f"{spec} needs known sizes beyond the batch axis, got input_shape {input_shape}")
        return (input_shape[0], math.prod(rest)), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _util.check_input(x, spec, min_rank=2, dtype="any")
        return x.reshape(x.shape[0], -1)  # (batch, d1 * ... * dk)

    def backward(params, x, y_bar, *, key=None, train=False):
        """A reshape moves no values: the cotangent is reshaped back."""
        del params, key, train
        return {}, y_bar.reshape(x.shape)

    return core.build_stateless("flatten", spec, init, apply, backward)


def Reshape(shape: Sequence[int]) -> Layer:
    """Reshapes each example: ``(batch, *in) -> (batch, *shape)``; one entry may be ``-1``.

    The batch axis is kept (as stax's ``Reshape`` does not: it reshapes the
    whole array); ``shape`` is the shape of one example.
    """
    if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints (one may be -1), got {shape!r}")
    shape = tuple(shape)
    if shape.count(-1) > 1:
        raise ValueError(f"shape may hold at most one -1, got {shape}")
    spec = f"Reshape({shape})"

    def resolve(rest: tuple[Any, ...]) -> tuple[Any, ...]:
        size = math.prod(rest)
        known = math.prod(d for d in shape if d != -1)
        if -1 in shape:
            if size % known:
                raise ValueError(f"{spec} cannot reshape an example of shape {rest} ({size} entries) to {shape}")
            return tuple(size // known if d == -1 else d for d in shape)
        if size != known:
            raise ValueError(f"{spec} cannot reshape an example of shape {rest} ({size} entries) to {shape}")
        return shape

    def init(key, input_shape):
        del key
        _util.check_rank(input_shape, spec, min_rank=1)
        if -1 in input_shape[1:]:
            raise ValueError(f"{spec} needs known sizes beyond the batch axis, got input_shape {input_shape}")
        return (input_shape[0],) + resolve(input_shape[1:]), {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _util.check_input(x, spec, min_rank=1, dtype="any")
        return x.reshape((x.shape[0],) + resolve(tuple(x.shape[1:])))  # (batch, *shape)

    def backward(params, x, y_bar, *, key=None, train=False):
        """A reshape moves no values: the cotangent is reshaped back."""
        del params, key, train
        return {}, y_bar.reshape(x.shape)

    return core.build_stateless("reshape", spec, init, apply, backward)
