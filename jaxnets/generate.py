"""Autoregressive generation from a language model: sampling (temperature, top-k, top-p) and greedy decoding.

A *language model* here is any :class:`~jaxnets.layers.Layer` mapping token
ids ``(B, T)`` to next-token logits ``(B, T, V)`` and **causal**: its output
at position ``t`` depends on the tokens ``0 .. t`` only (every model trained
by next-token prediction is). Generation repeats: read the logits at the
last known position, choose a token, append it.

**Compiled once.** :func:`sample` and :func:`greedy` run the whole loop as
one ``jax.jit`` program, a ``lax.scan`` over the new tokens, compiled once
per model, prompt shape and number of new tokens (and ``top_k``); new keys,
params, prompts of the same shape, temperatures and ``top_p`` values reuse
it.

**Two ways to compute the logits**, with equal results (tested):

* *a key/value cache* (``use_cache=True``): the model is run incrementally
  (:mod:`jaxnets.layers.incremental`): the prompt once, then one position per
  new token, each attention layer attending to its cached keys and values.
  A step costs one position's forward pass, plus one row of scores per
  attention layer. Needs a model of the layers that have a cached step
  (``TiedEmbedding``, ``Embedding``, ``PositionalEmbedding``,
  ``TransformerBlock(causal=True)``, ``MultiHeadAttention(causal=True)``,
  ``Dense``, ``LayerNorm``, ``Dropout``, activations, ``serial``,
  ``residual``, ...) and ``P + n - 1 <= context``.
* *recomputing the context* (``use_cache=False``; any causal model): each
  new token runs the whole model on a window of the last ``W`` tokens,
  ``W = min(context, P + n - 1)`` (nanoGPT's ``idx[:, -block_size:]``),
  and reads the logits at the last real one. The window has one shape for
  every step (so one compiled program): while fewer than ``W`` tokens are
  known it holds them from position 0, with zeros after them, which a causal
  model's outputs at the real positions cannot see.

``use_cache=None`` (the default) takes the cache when the model supports it
and the sequence fits the context, and recomputes otherwise.

**The context** (``context=``) is the longest window the model may see:
default, the smallest ``PositionalEmbedding`` table in ``params`` (its
``max_length``), or, for a model without one (rotary or sinusoidal
positions), unbounded (the whole sequence).

**Choosing a token** from logits ``z`` (V,) (:func:`filter_logits`, :func:`sample_logits`):

1. temperature ``tau``: ``z / tau`` (``tau -> 0`` approaches greedy; greedy
   itself is :func:`greedy`, the argmax);
2. top-k: keep the ``k`` largest logits (ties with the ``k``-th largest are
   kept too), the rest get ``-inf``;
3. top-p (nucleus; Holtzman et al., 2020): with the kept tokens sorted by
   probability ``pi_(1) >= pi_(2) >= ...`` (``pi = softmax(z)``, ties by
   index), keep the smallest prefix whose mass reaches ``p``: token ``(j)``
   is kept iff ``pi_(1) + ... + pi_(j-1) < p`` (the most likely token
   always is);
4. draw from ``softmax`` of what is left: ``P(i) = exp(z_i / tau) / sum over kept j of exp(z_j / tau)``.

Keys are explicit: :func:`sample` splits its ``key`` into one per new token.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets.layers import incremental
from jaxnets.layers.core import Layer
from jaxnets.layers.incremental import Decoder, decoder

__all__ = ["sample", "greedy", "sample_logits", "filter_logits", "context_length", "decoder", "Decoder"]


# ---------------------------------------------------------------------------
# Choosing a token
# ---------------------------------------------------------------------------


def _check_temperature(temperature: Any) -> Any:
    _checks.real_number(temperature, "temperature")
    if not _checks.is_traced(temperature):
        value = float(temperature)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"temperature must be finite and > 0, got {value} (for the argmax, use greedy(...))")
    return temperature


def _check_top_p(top_p: Any) -> Any:
    if top_p is None:
        return None
    _checks.real_number(top_p, "top_p")
    if not _checks.is_traced(top_p):
        value = float(top_p)
        if not 0.0 < value <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (the probability mass kept), got {value}")
    return top_p


def _check_top_k(top_k: Any, vocab: int | None = None) -> int | None:
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be a positive int (the number of tokens kept) or None, got {top_k!r} of type "
                        f"{type(top_k).__name__}")
    if vocab is not None and not 1 <= int(top_k) <= vocab:  # the vocabulary is known once the model is traced
        raise ValueError(f"top_k must be in [1, {vocab}] (the vocabulary), got {top_k}")
    return int(top_k)


def _filter(logits, temperature, top_k, top_p):
    """Steps 1-3 of the module docstring, unchecked; ``logits`` (..., V) in float32."""
    logits = logits / jnp.asarray(temperature, logits.dtype)
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        kth = lax.top_k(logits, top_k)[0][..., -1:]  # (..., 1): the k-th largest
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1, stable=True)  # most likely first, ties by index
        probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the more likely tokens
        keep_sorted = (before < jnp.asarray(top_p, probs.dtype)) | (jnp.asarray(top_p, probs.dtype) >= 1)
        keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _check_logits(logits: Any, where: str) -> jax.Array:
    _checks.array_like(logits, f"{where} logits")
    _checks.floating(logits, f"{where} logits")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"{where}: logits must have a vocabulary axis (..., V) with V >= 1, got shape {tuple(logits.shape)}")
    return jnp.asarray(logits)


def filter_logits(logits: jax.Array, *, temperature: Any = 1.0, top_k: int | None = None,
                  top_p: Any = None) -> jax.Array:
    """``logits / temperature`` with ``-inf`` outside the top-k and top-p sets (module docstring, steps 1-3).

    ``softmax`` of the result is the distribution :func:`sample_logits` draws from.

    Args:
      logits: (..., V), any floating dtype (computed in float32).
      temperature: ``> 0``.
      top_k: keep the ``k`` largest, ``1 <= k <= V``; None keeps all.
      top_p: keep the nucleus of mass ``p``, ``0 < p <= 1``; None (or 1) keeps all.

    Returns:
      float32 logits of the same shape.
    """
    logits = _check_logits(logits, "filter_logits")
    temperature, top_p = _check_temperature(temperature), _check_top_p(top_p)
    top_k = _check_top_k(top_k, logits.shape[-1])
    return _filter(logits.astype(jnp.float32), temperature, top_k, top_p)


def sample_logits(key: jax.Array, logits: jax.Array, *, temperature: Any = 1.0, top_k: int | None = None,
                  top_p: Any = None) -> jax.Array:
    """One token per row of ``logits`` (..., V), drawn from ``softmax(filter_logits(logits, ...))``.

    Returns: int32 ids of shape ``logits.shape[:-1]``.
    """
    _checks.prng_key(key, "key")
    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def context_length(params: Any) -> int | None:
    """The longest window the model can see: the smallest ``PositionalEmbedding`` table's length, or None."""
    lengths = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = [getattr(p, "key", None) for p in path]
        if len(names) >= 2 and names[-1] == "table" and str(names[-2]).startswith("positional_embedding_"):
            lengths.append(int(leaf.shape[0]))
    return min(lengths) if lengths else None


def _check_logits_shape(y, batch: int, length: int, spec: str) -> None:
    shape = getattr(y, "shape", None)
    if shape is None or len(shape) != 3 or tuple(shape[:2]) != (batch, length):
        raise ValueError(f"{spec}: generation needs a model mapping ids (B, T) to logits (B, T, vocab); for ids of shape "
                         f"({batch}, {length}) it gives {shape if shape is not None else type(y).__name__}")


@functools.partial(jax.jit, static_argnames=("model", "num_new_tokens", "window", "top_k", "nucleus", "greedy", "cached"))
def _generate(model, params, state, prompt, key, temperature, top_p, *, num_new_tokens, window, top_k, nucleus,
              greedy, cached):
    batch, prompt_length = prompt.shape
    n = num_new_tokens
    keys = jax.random.split(key, n)

    def choose(k, logits):  # (B, V) -> (B,)
        logits = logits.astype(jnp.float32)
        _check_top_k(top_k, logits.shape[-1])
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(prompt.dtype)
        filtered = _filter(logits, temperature, top_k, top_p if nucleus else None)
        return jax.random.categorical(k, filtered, axis=-1).astype(prompt.dtype)

    if cached:
        dec = decoder(model, prompt_length + n - 1)
        cache = dec.init_cache(params, (batch,))
        logits, cache = dec.step(params, cache, prompt, 0)
        _check_logits_shape(logits, batch, prompt_length, model.spec)
        first = choose(keys[0], logits[:, -1])

        def body(carry, k):  # pyright: ignore[reportRedeclaration]  (this branch returns; the other body is below)
            cache, token, position = carry
            logits, cache = dec.step(params, cache, token[:, None], position)
            token = choose(k, logits[:, -1])
            return (cache, token, position + 1), token

        _, rest = lax.scan(body, (cache, first, jnp.int32(prompt_length)), keys[1:])  # rest (n - 1, B)
        return jnp.concatenate([prompt, first[:, None], rest.T.astype(prompt.dtype)], axis=1)

    tokens = jnp.concatenate([prompt, jnp.zeros((batch, n), prompt.dtype)], axis=1)  # (B, P + n)

    def body(tokens, inputs):
        i, k = inputs
        known = prompt_length + i  # tokens 0 .. known - 1 are set
        start = jnp.maximum(known - window, 0)
        context = lax.dynamic_slice_in_dim(tokens, start, window, axis=1)  # (B, W)
        logits, _ = model.apply_with_state(params, state, context, train=False)
        _check_logits_shape(logits, batch, window, model.spec)
        last = lax.dynamic_index_in_dim(logits, known - 1 - start, axis=1, keepdims=False)  # (B, V)
        token = choose(k, last)
        return lax.dynamic_update_slice_in_dim(tokens, token[:, None], known, axis=1), None

    tokens, _ = lax.scan(body, tokens, (jnp.arange(n, dtype=jnp.int32), keys))
    return tokens


def _run(model, params, prompt, num_new_tokens, *, key, greedy, temperature, top_k, top_p, context, use_cache, state):
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    num_new_tokens = _checks.positive_int(num_new_tokens, "num_new_tokens")
    prompt = _checks.array_like(prompt, "prompt")
    _checks.integer(prompt, "prompt")
    single = prompt.ndim == 1
    if prompt.ndim not in (1, 2) or prompt.shape[-1] == 0:
        raise ValueError(f"prompt must be token ids (batch, length) or (length,) with length >= 1, got shape "
                         f"{tuple(prompt.shape)}")
    prompt = jnp.asarray(prompt)[None] if single else jnp.asarray(prompt)
    length = prompt.shape[1]
    if context is None:
        context = context_length(params)
    else:
        context = _checks.positive_int(context, "context")
    if context is not None and length > context:
        raise ValueError(f"the prompt of length {length} is longer than the context of {context} tokens the model can "
                         f"see; keep its last {context} tokens (prompt[:, -{context}:])")
    if use_cache not in (None, True, False):
        raise TypeError(f"use_cache must be None (automatic), True or False, got {use_cache!r}")
    total = length + num_new_tokens - 1  # the positions the model sees
    fits = context is None or total <= context
    cached = False
    if use_cache is not False:
        try:
            decoder(model, total if context is None else min(total, context))  # raises for a model without a cached step
            cached = fits
            reason = "" if fits else (f"the {length} + {num_new_tokens} tokens exceed the context of {context} (a cache "
                                      f"cannot slide a window)")
        except incremental.Unsupported as error:
            reason = str(error)
        if use_cache and not cached:
            raise ValueError(f"use_cache=True, but the key/value cache cannot serve here: {reason}; pass use_cache=False "
                             f"(or None) to recompute the context")
    window = total if context is None else min(context, total)
    if greedy:
        key = jax.random.key(0)  # unused
        temperature, top_p, nucleus = 1.0, 1.0, False
    else:
        _checks.prng_key(key, "key")
        temperature, top_p = _check_temperature(temperature), _check_top_p(top_p)
        nucleus = top_p is not None
        top_p = 1.0 if top_p is None else top_p
    top_k = _check_top_k(top_k)
    state = {} if state is None else state
    out = _generate(model, params, state, prompt, key, jnp.asarray(temperature, jnp.float32), jnp.asarray(top_p, jnp.float32),
                    num_new_tokens=num_new_tokens, window=window, top_k=top_k, nucleus=nucleus, greedy=greedy,
                    cached=cached)
    return out[0] if single else out


def sample(model: Layer, params: Any, prompt: Any, num_new_tokens: int, *, key: jax.Array, temperature: Any = 1.0,
           top_k: int | None = None, top_p: Any = None, context: int | None = None, use_cache: bool | None = None,
           state: Any = None) -> jax.Array:
    """Continue ``prompt`` by ``num_new_tokens`` tokens sampled from the model (module docstring).

    Args:
      model: a causal language model, ids (B, T) -> logits (B, T, V).
      params: its params (and ``state``, for a model with state).
      prompt: token ids (B, P) or (P,), ``P >= 1``, ``P <= context``.
      num_new_tokens: n >= 1.
      key: a ``jax.random`` key, split into one per new token.
      temperature: ``> 0``; may be traced.
      top_k: keep the ``k`` most likely tokens (``1 <= k <= V``); None keeps all.
      top_p: keep the nucleus of mass ``p`` (``0 < p <= 1``); None keeps all; may be traced.
      context: the longest window the model sees; default :func:`context_length` of ``params``.
      use_cache: True: the key/value cache (an error if the model cannot use
        it); False: recompute the windowed context; None: the cache when possible.

    Returns:
      ids (B, P + n) (or (P + n,)): the prompt followed by the new tokens.

    Raises:
      ValueError: ``temperature <= 0``, ``top_k`` outside ``[1, V]``,
        ``top_p`` outside ``(0, 1]``, a prompt longer than the context or
        empty, ``num_new_tokens < 1``, ``use_cache=True`` for a model or a
        length the cache cannot serve. TypeError: a missing or integer key,
        float ids.
    """
    return _run(model, params, prompt, num_new_tokens, key=key, greedy=False, temperature=temperature, top_k=top_k,
                top_p=top_p, context=context, use_cache=use_cache, state=state)


def greedy(model: Layer, params: Any, prompt: Any, num_new_tokens: int, *, context: int | None = None,
           use_cache: bool | None = None, state: Any = None) -> jax.Array:
    """Continue ``prompt`` by ``num_new_tokens`` argmax tokens (ties: the lowest id). Arguments as :func:`sample`'s."""
    return _run(model, params, prompt, num_new_tokens, key=None, greedy=True, temperature=1.0, top_k=None, top_p=None,
                context=context, use_cache=use_cache, state=state)
