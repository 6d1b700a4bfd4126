"""Dense (affine) layers and embeddings: the layers that are a matrix product.

``Dense`` is ``y = x W + b`` on the last axis; ``Embedding`` is a row lookup,
``one_hot(ids) @ T``; ``TiedEmbedding`` looks up rows of ``T`` at the input
and scores against them at the output, ``h T^T``. Each hand rule sits right
after its forward function.
"""

from __future__ import annotations

from typing import Any, Callable, cast

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util, core, incremental
from jaxnets.layers.combinators import serial
from jaxnets.layers.core import Layer

__all__ = ["Dense", "Embedding", "TiedEmbedding"]


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
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    spec = f"Dense({out_features}{'' if use_bias else ', use_bias=False'})"

    def init(key, input_shape):
        _util.check_rank(input_shape, spec)
        in_features = _util.check_last_dim(input_shape, spec)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (in_features, out_features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_features,), jnp.float32)
        return input_shape[:-1] + (out_features,), params

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _util.entry(params, "w", "params", spec)
        _util.check_input(x, spec)
        if x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{spec} expects inputs with last dimension {w.shape[0]} (w has shape {tuple(w.shape)}), "
                f"got x of shape {tuple(x.shape)}"
            )
        y = _util.rows_matmul(x, w)  # one 2-D product (its gradient reads the rows in place)
        if use_bias:
            y = y + _util.entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """With the batch (and any leading axes) flattened into the rows of X:

        dL/dW = X^T Y_bar  (in, out);   dL/db = sum of Y_bar's rows;   dL/dX = Y_bar W^T.
        """
        del key, train
        w = _util.entry(params, "w", "params", spec)
        rows_x = x.reshape(-1, x.shape[-1])  # (rows, in)
        rows_y = y_bar.reshape(-1, y_bar.shape[-1])  # (rows, out)
        grads = {"w": _util.batch_matmul_t(rows_x, rows_y)}  # summed over rows in float32 for 16-bit dtypes
        if use_bias:
            grads["b"] = _util.sum_leading(rows_y)
        return grads, y_bar @ w.T

    return incremental.positionwise(core.build_stateless("dense", spec, init, apply, backward))


def Embedding(num_embeddings: int, features: int, *, embedding_init: inits.Initializer | None = None) -> Layer:
    """Looks up rows of a table: ``y[..., :] = table[ids[...], :]``.

    Equivalent to ``one_hot(ids) @ table`` without building the one-hot.

    Args:
      num_embeddings: number of rows (the vocabulary size).
      features: size of each row.
      embedding_init: default ``normal(1.0)`` (standard deviation 1, as
        PyTorch's ``nn.Embedding``; flax's ``nn.Embed`` uses standard
        deviation ``1 / sqrt(features)``).

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
    embedding_init = _util.check_initializer(embedding_init or inits.normal(1.0), "embedding_init")
    spec = f"Embedding({num_embeddings}, {features})"

    def init(key, input_shape):
        return input_shape + (features,), {"table": embedding_init(key, (num_embeddings, features), jnp.float32)}

    def apply(params, ids, *, key=None, train=False):
        del key, train
        table = _util.entry(params, "table", "params", spec)
        _util.check_input(ids, spec, min_rank=0, dtype="integer")
        _checks.labels_in_range(ids, num_embeddings, f"{spec} ids")
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)

    def backward(params, ids, y_bar, *, key=None, train=False):
        """``y = onehot(ids) T``, so ``T_bar = onehot(ids)^T y_bar``: each looked-up row
        collects the cotangents of every place it was used (added, not
        overwritten). The integer ids get no cotangent (``None``)."""
        del key, train
        table = _util.entry(params, "table", "params", spec)
        rows = y_bar.reshape(-1, table.shape[-1])  # (number of ids, features)
        acc = _util.accumulation_dtype(rows.dtype)  # a row used by many ids adds many terms: float32 for 16-bit dtypes
        return {"table": jnp.zeros(table.shape, acc).at[ids.reshape(-1)].add(rows.astype(acc), mode="drop")}, None

    return incremental.positionwise(core.build_stateless("embedding", spec, init, apply, backward))


def _tied_head(num_embeddings: int, features: int) -> Layer:
    """``logits = h T^T`` from an embedding table ``T`` (num_embeddings, features): the output end of :func:`TiedEmbedding`."""
    spec = f"TiedHead({num_embeddings}, {features})"

    def init(key, input_shape):
        return input_shape[:-1] + (num_embeddings,), {"table": inits.zeros(key, (num_embeddings, features))}

    def apply(params, h, *, key=None, train=False):
        del key, train
        table = _util.entry(params, "table", "params", spec)
        _util.check_input(h, spec)
        if h.shape[-1] != table.shape[-1]:
            raise ValueError(f"{spec} scores inputs of width {table.shape[-1]} against the table, got h of shape "
                             f"{tuple(h.shape)}")
        return _util.rows_matmul(h, table.T)

    def backward(params, h, y_bar, *, key=None, train=False):
        """``y = h T^T``: ``T_bar = Y_bar^T H`` (num_embeddings, features), rows flattened; ``h_bar = Y_bar T``."""
        del key, train
        table = _util.entry(params, "table", "params", spec)
        rows_h = h.reshape(-1, h.shape[-1])  # (rows, features)
        rows_y = y_bar.reshape(-1, y_bar.shape[-1])  # (rows, num_embeddings)
        return {"table": _util.batch_matmul_t(rows_y, rows_h)}, y_bar @ table

    return incremental.positionwise(core.build_stateless("tied_head", spec, init, apply, backward))


def TiedEmbedding(num_embeddings: int, features: int, *layers: Layer,
                  embedding_init: inits.Initializer | None = None) -> Layer:
    """An embedding whose table is also the output head: ``logits = f(T[ids]) T^T`` (weight tying).

    ``TiedEmbedding(V, D, *layers)`` computes what
    ``serial(Embedding(V, D), *layers, head)`` would with a head ``h -> h T^T``
    whose matrix *is* the embedding table ``T`` (V, D): one set of ``V D``
    numbers, trained by both ends (GPT-2, nanoGPT; Press & Wolf, 2017). A GPT::

        gpt = TiedEmbedding(vocab, D, PositionalEmbedding(context), Dropout(0.2),
                            *[TransformerBlock(D, heads, causal=True, drop_prob=0.2) for _ in range(n)],
                            LayerNorm())
        logits = gpt.apply(params, ids)          # ids (B, T) -> (B, T, vocab)

    **Why a combinator and not a pair of layers.** In jaxnets every layer
    owns its params, and ``serial`` gives each child its own entry: params
    are plain pytrees, and a pytree has no aliasing, so two layers cannot
    share one array. The table is used at both ends of the layers between,
    so the layer that owns it wraps them, as :func:`residual` wraps what its
    skip connection spans. (A separate "tied head" layer would need the
    table passed to it through the activations, or params that alias one
    another, which neither ``jax.grad`` nor an optimizer would see as one
    parameter.) Here the table is one leaf, ``jax.grad`` sums both uses'
    gradients by itself, and an optimizer updates it once.

    **Params** are exactly ``serial(Embedding(V, D), *layers)``'s:
    ``{"embedding_0": {"table": (V, D)}, "positional_embedding_0": ...,
    ...}``, so untied params (a separate head) convert by dropping the head.

    **Rule.** With ``H = f(T[ids])`` (..., D) and ``Y = H T^T`` (..., V):
    ``H_bar = Y_bar T``, and the table's cotangent is the sum of its two
    uses: ``T_bar = Y_bar^T H`` (rows flattened; the head) plus the
    embedding's scatter-add of ``f``'s input cotangent into the looked-up
    rows (the body's rule chained back to the lookup).

    Args:
      num_embeddings: V, the vocabulary.
      features: D, the width of each row, of the body's input and output.
      *layers: the body ``f`` between the lookup and the head (any layers,
        composed in sequence; none for ``ids -> T[ids] T^T``); its output's
        last axis must be D.
      embedding_init: the table's initializer; default ``normal(1.0)``
        (:func:`Embedding`'s; GPT-2 uses ``normal(0.02)``).

    Shapes: ids ``(..., T)`` of an integer dtype (any shape the body takes);
    logits ``(..., T, V)``.

    Raises:
      ValueError: a body whose output width is not ``features``.
    """
    num_embeddings = _checks.positive_int(num_embeddings, "num_embeddings")
    features = _checks.positive_int(features, "features")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. LayerNorm()?)" if callable(layer) else ""
            raise TypeError(f"TiedEmbedding: layer {i} (after num_embeddings and features) must be a Layer, got {layer!r}{hint}")
    inner = serial(Embedding(num_embeddings, features, embedding_init=embedding_init), *layers)
    table_name = inner.children[0][0]  # "embedding_0"
    head = _tied_head(num_embeddings, features)
    body = ", ".join(repr(layer) for _, layer in inner.children[1:])
    spec = f"TiedEmbedding({num_embeddings}, {features}{', ' + body if body else ''})"

    def init_fn(key, input_shape):
        out_shape, params, state = inner.init_fn(key, input_shape)
        if not out_shape or out_shape[-1] != features:
            raise ValueError(f"{spec}: the layers between the embedding and the head must end in width {features} "
                             f"(the table's rows), but they give shape {out_shape}")
        return tuple(out_shape[:-1]) + (num_embeddings,), params, state

    def forward_fn(params, state, ids, *, key=None, train=False):
        h, new_state, tape = inner.forward_fn(params, state, ids, key=key, train=train)
        table = _util.entry(params, table_name, "params", spec)
        logits, _, head_tape = _util.child("head", "forward", head, table, {}, h, key=None, train=train)
        return logits, new_state, (tape, head_tape)

    def backward_fn(params, state, tapes, y_bar, *, key=None, train=False):
        tape, head_tape = tapes
        table = _util.entry(params, table_name, "params", spec)
        head_bar, h_bar = _util.child("head", "backward", head, table, {}, head_tape, y_bar, key=None, train=train)
        grads, ids_bar = cast(Callable[..., Any], inner.backward_fn)(params, state, tape, h_bar, key=key, train=train)
        grads[table_name] = {"table": grads[table_name]["table"] + head_bar["table"].astype(grads[table_name]["table"].dtype)}
        return grads, ids_bar

    def incremental_rule(max_length, resolve):
        body_rule = incremental.chain(inner.children, max_length, resolve)

        def step(params, cache, ids, position):
            h, cache = body_rule.step(params, cache, ids, position)
            return head.forward_fn(params[table_name], {}, h, key=None, train=False)[0], cache

        return incremental.Incremental(body_rule.init_cache, step)

    layer = Layer("tied_embedding", spec, init_fn, forward_fn, backward_fn, inner.children)
    return incremental.attach(layer, incremental_rule)
