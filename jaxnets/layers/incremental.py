"""Incremental forward passes: a model run on a few new positions, given a cache of the earlier ones.

Autoregressive decoding feeds a causal model one position (or a few) at a
time. Recomputing the whole prefix for each new token costs a forward pass
over ``T`` positions per token. In a model made of *position-wise* layers
(Dense, LayerNorm, activations, embeddings: position ``t``'s output depends
on position ``t``'s input only), *position-dependent* ones (positional
embeddings: they need the absolute position) and **causal self-attention**,
the only thing a new position needs from the earlier ones is each attention
layer's keys and values there: the *key/value cache*. With it, a new token
costs one position's forward pass plus, per attention layer, one row of
scores against the cached keys.

**The contract.** The cache is an explicit pytree; nothing is stored in the
model or in a global::

    dec = decoder(model, max_length)                    # a Decoder, built once
    cache = dec.init_cache(params, batch_shape)         # zeros
    y, cache = dec.step(params, cache, x, position)     # x: the inputs at positions position, ..., position + t - 1

``x`` holds ``t >= 1`` new positions on its sequence axis (``(*batch, t)``
token ids for a language model, ``(*batch, t, D)`` for an attention layer);
``position`` (an int or a traced int32 scalar: one compiled step serves every
position) is the index of the first of them. ``y`` equals the model's
``apply(params, full_prefix)`` (evaluation mode) at those positions, to
float32 rounding (tested), provided every earlier position was stepped
first. The cache holds ``max_length`` positions: keep
``position + t <= max_length``, which :meth:`Decoder.step` checks when
``position`` is a Python int (under ``jit`` an overflowing write is clamped
by ``lax.dynamic_update_slice``, so it cannot be checked there).

Per causal self-attention layer the cache is ``{"k": K, "v": V}``, each
``(*batch, max_length, N, H)`` (keys after the rotary rotation); combinators
nest their children's caches by the children's params keys
(``{"transformer_block_0": {"residual_0": {"attention_0": {"k", "v"}}}}``);
layers without a cache take no entry.

**What has a cached step.** serial, residual, TransformerBlock,
TiedEmbedding, Embedding, Dense, LayerNorm, Dropout (the identity in
evaluation), PositionalEmbedding, SinusoidalEncoding, RotaryEmbedding,
``MultiHeadAttention(causal=True)`` (self-attention, no mask input), and
the built-in activation layers, recognised by their kind names (``relu``,
``gelu``, ``tanh``, ... and ``softmax``/``log_softmax`` over the last axis).
Any other layer (convolutions, recurrences, pooling over time, your own
layers) has none: :func:`decoder` raises naming it, and
:mod:`jaxnets.generate` recomputes the context instead.

A layer declares its step with :func:`attach` (``make(max_length, resolve)
-> Incremental``; ``resolve(child, path)`` gives a child's rule), or
:func:`positionwise` when its step is its own forward pass on the new
positions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets.layers.core import Layer

__all__ = ["Decoder", "Incremental", "Unsupported", "decoder", "attach", "positionwise", "chain"]

_ATTRIBUTE = "_jaxnets_incremental"

# Elementwise layers are made in jaxnets.layers.elementwise: these kind names are its activations, each acting on
# every entry (softmax and log_softmax on one axis: position-wise when that axis is the features').
_ACTIVATIONS = frozenset({"relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "silu", "identity"})
_LAST_AXIS = frozenset({"softmax", "log_softmax"})


class Incremental(NamedTuple):
    """A layer's incremental rule, for a cache of a fixed length.

    Attributes:
      init_cache: ``(params, batch_shape, dtype) -> cache`` (zeros; ``{}`` for a layer without one).
      step: ``(params, cache, x, position) -> (y, cache)``.
    """

    init_cache: Callable[..., Any]
    step: Callable[..., tuple[Any, ...]]


class Unsupported(ValueError):
    """A layer without an incremental step (its path and spec in the message)."""

    located: bool  # set (True) once the message names the layer's path


def attach(layer: Layer, make: Callable[[int, Callable[..., Any]], Incremental]) -> Layer:
    """Declare ``layer``'s incremental rule: ``make(max_length, resolve) -> Incremental``. Returns ``layer``.

    ``resolve(child, path)`` builds a child's rule (for combinators). The rule
    lives on the layer's own forward function, so a copy of the layer
    (``dataclasses.replace``) keeps it and no registry outlives the layer.
    """
    setattr(layer.forward_fn, _ATTRIBUTE, make)
    return layer


def _no_cache(params, batch_shape, dtype):
    del params, batch_shape, dtype
    return {}


def _positionwise_rule(layer: Layer) -> Incremental:
    def step(params, cache, x, position):
        del position
        y, _, _ = layer.forward_fn(params, {}, x, key=None, train=False)
        return y, cache

    return Incremental(_no_cache, step)


def positionwise(layer: Layer) -> Layer:
    """Declare that ``layer`` acts on each position alone: its step is its forward pass (evaluation mode) on the new positions."""
    return attach(layer, lambda max_length, resolve: _positionwise_rule(layer))


def chain(children: tuple[Any, ...], max_length: int, resolve: Callable[..., Any], path: str = "") -> Incremental:
    """The rule of ``serial(*children)`` (``((name, layer), ...)``): the children's steps in order, caches by name."""
    rules = [(name, resolve(layer, f"{path}/{name}".lstrip("/"))) for name, layer in children]

    def init_cache(params, batch_shape, dtype):
        cache = {}
        for name, rule in rules:
            c = rule.init_cache(params.get(name, {}), batch_shape, dtype)
            if jax.tree_util.tree_leaves(c):
                cache[name] = c
        return cache

    def step(params, cache, x, position):
        new = {}
        for name, rule in rules:
            x, c = rule.step(params.get(name, {}), cache.get(name, {}), x, position)
            if jax.tree_util.tree_leaves(c):
                new[name] = c
        return x, new

    return Incremental(init_cache, step)


def _residual(children, max_length, resolve, path):
    body = chain(children, max_length, resolve, path)

    def step(params, cache, x, position):
        y, cache = body.step(params, cache, x, position)
        return x + y.astype(x.dtype), cache

    return Incremental(body.init_cache, step)


def _rule(layer: Layer, max_length: int, path: str) -> Incremental:
    def resolve(child, child_path):
        return _rule(child, max_length, child_path)

    make = getattr(layer.forward_fn, _ATTRIBUTE, None)
    if make is not None:
        try:
            return make(max_length, lambda child, child_path: resolve(child, f"{path}/{child_path}".lstrip("/")))
        except Unsupported as error:
            if getattr(error, "located", False) or not path:
                raise
            located = Unsupported(f"{path}: {error}")
            located.located = True
            raise located from None
    if layer.children and layer.name == "serial":
        return chain(layer.children, max_length, resolve, path)
    if layer.children and layer.name == "residual":
        return _residual(layer.children, max_length, resolve, path)
    if not layer.children and (layer.name in _ACTIVATIONS or (layer.name in _LAST_AXIS and layer.spec.endswith("(axis=-1)"))):
        return _positionwise_rule(layer)
    where = f"{path}: " if path else ""
    error = Unsupported(f"{where}{layer.spec} has no incremental (cached) step: a key/value cache needs a model of "
                        f"position-wise layers, positional embeddings and causal self-attention (see "
                        f"jaxnets.layers.incremental)")
    error.located = True
    raise error


@dataclasses.dataclass(frozen=True)
class Decoder:
    """``model`` run incrementally with a cache of ``max_length`` positions (module docstring).

    Attributes:
      model: the layer.
      max_length: positions the cache holds.
    """

    model: Layer
    max_length: int
    rule: Incremental = dataclasses.field(repr=False, compare=False, hash=False)

    def init_cache(self, params: Any, batch_shape: int | tuple[Any, ...] = (), dtype: Any = None) -> Any:
        """Zeros for every cached layer: ``{"k", "v"}`` of ``(*batch_shape, max_length, N, H)`` per attention layer.

        ``dtype``: default, the params' floating dtype (float32 params: a float32 cache).
        """
        batch_shape = (batch_shape,) if isinstance(batch_shape, (int, np.integer)) else tuple(batch_shape)
        for i, b in enumerate(batch_shape):
            _checks.positive_int(b, f"batch_shape[{i}]")
        if dtype is None:
            floats = [leaf.dtype for leaf in jax.tree_util.tree_leaves(params) if jnp.issubdtype(leaf.dtype, jnp.floating)]
            dtype = floats[0] if floats else jnp.float32
        return self.rule.init_cache(params, batch_shape, jnp.dtype(dtype))

    def step(self, params: Any, cache: Any, x: Any, position: Any) -> tuple[Any, ...]:
        """``(y, cache)``: the model's outputs at positions ``position .. position + t - 1`` (``t`` = x's sequence length)."""
        length = _sequence_length(x, self.model.spec)
        if not _checks.is_traced(position):
            if isinstance(position, (bool, np.bool_)) or not isinstance(position, (int, np.integer, jax.Array, np.ndarray)) \
                    or np.ndim(position) != 0 or not np.issubdtype(np.asarray(position).dtype, np.integer):
                raise TypeError(f"position must be an integer scalar (the index of x's first position), got {position!r}")
            position = int(position)
            if position < 0 or position + length > self.max_length:
                raise ValueError(f"{self.model.spec}: positions {position} .. {position + length - 1} do not fit the "
                                 f"cache of max_length={self.max_length}")
        position = jnp.asarray(position, jnp.int32)
        return self.rule.step(params, cache, x, position)


def _sequence_length(x: Any, spec: str) -> int:
    """The number of new positions in ``x``: its last axis for ids (integers), the one before the features for floats."""
    first = jax.tree_util.tree_leaves(x)[0] if isinstance(x, (tuple, list)) else x
    _checks.array_like(first, f"{spec} input x")
    integer = jnp.issubdtype(first.dtype, jnp.integer)
    if first.ndim < (1 if integer else 2):
        raise ValueError(f"{spec}: x must have a sequence axis ((..., t) ids or (..., t, features)), got shape {tuple(first.shape)}")
    length = first.shape[-1] if integer else first.shape[-2]
    if length == 0:
        raise ValueError(f"{spec}: x holds no new position (shape {tuple(first.shape)})")
    return int(length)


def decoder(model: Layer, max_length: int) -> Decoder:
    """The incremental form of ``model`` with a cache of ``max_length`` positions (module docstring).

    Raises:
      ValueError: naming the first layer (by path) without an incremental step, e.g. a
        non-causal attention, a convolution or a recurrence.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    max_length = _checks.positive_int(max_length, "max_length")
    return Decoder(model, max_length, _rule(model, max_length, ""))
