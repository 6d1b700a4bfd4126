"""Scaled dot-product attention, as a function and as a multi-head layer, with hand rules.

For queries ``Q`` (T, H), keys ``K`` (S, H) and values ``V`` (S, H) of one head:

    S = c Q K^T           (T, S)   scores, c = 1 / sqrt(H) by default
    P = softmax_rows(S)   (T, S)   each row a distribution over the keys (masked keys get 0)
    O = P V               (T, H)

The rule, given ``O_bar`` (T, H), is three matrix products and the softmax
Jacobian applied row by row without building it. Row ``p`` of ``P`` has
Jacobian ``diag(p) - p p^T``, so for the row ``p_bar`` of ``P_bar``:

    V_bar = P^T O_bar                          (S, H)
    P_bar = O_bar V^T                          (T, S)
    S_bar = P * (P_bar - rowsum(P * P_bar))    (T, S)   = (diag(p) - p p^T) p_bar, row by row
    Q_bar = c S_bar K                          (T, H)
    K_bar = c S_bar^T Q                        (S, H)

A masked score gets weight exactly 0 (and so cotangent 0). A row whose keys
are all masked has no distribution to form: it gets weights 0, so its output
is **zero** (and its cotangents zero), never NaN. (``jax.nn.dot_product_attention``
gives such a row the *mean* of the values instead; everywhere else the two agree.)

Layout follows ``jax.nn.dot_product_attention``: ``q`` (..., T, N, H),
``k``/``v`` (..., S, N, H) for ``N`` heads of width ``H``, scores and masks
(..., N, T, S).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util, core, incremental
from jaxnets.layers.positional import rotary_embedding
from jaxnets.layers.core import Layer

__all__ = ["dot_product_attention", "MultiHeadAttention", "causal_mask", "padding_mask"]


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def causal_mask(num_queries: int, num_keys: int | None = None) -> jax.Array:
    """``mask[t, s] = s <= t`` (T, S): each query attends to itself and the past.

    Broadcasts against scores (..., N, T, S); combine masks with ``&``.
    """
    num_queries = _checks.positive_int(num_queries, "num_queries")
    num_keys = num_queries if num_keys is None else _checks.positive_int(num_keys, "num_keys")
    return jnp.tril(jnp.ones((num_queries, num_keys), dtype=bool))


def padding_mask(valid: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """A key-padding mask: ``valid`` (..., S) bool (True at real tokens) -> (..., 1, 1, S).

    Broadcasts against scores (..., N, T, S): every head and query ignores the
    padded keys.
    """
    valid = _checks.array_like(valid, "valid")
    if valid.dtype != jnp.bool_:
        raise TypeError(f"padding_mask: valid must be a boolean array (..., S), got dtype {valid.dtype}")
    return valid[..., None, None, :]


def _check_mask(mask, scores_shape: tuple, where: str) -> jax.Array:
    """``mask`` as a bool array that broadcasts to ``scores_shape``, or a ValueError naming both shapes."""
    _checks.array_like(mask, f"{where} mask")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{where}: mask must be a boolean array (True = attend), got dtype {mask.dtype}")
    try:
        ok = np.broadcast_shapes(tuple(mask.shape), scores_shape) == scores_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{where}: mask of shape {tuple(mask.shape)} does not broadcast to the attention scores "
                         f"(..., heads, queries, keys) = {scores_shape}")
    return mask


# ---------------------------------------------------------------------------
# The function and its rule
# ---------------------------------------------------------------------------


def _check_qkv(q, k, v, where: str) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        _checks.array_like(a, f"{where} {name}")
        _checks.floating(a, f"{where} {name}")
        if a.ndim < 3:
            raise ValueError(f"{where}: {name} must have shape (..., length, heads, head_dim), got {tuple(a.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"{where}: k and v must have one shape (..., S, N, H), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[:-3] != k.shape[:-3] or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"{where}: q (..., T, N, H) and k (..., S, N, H) must agree but for the length, got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[-3] == 0 or k.shape[-3] == 0:
        raise ValueError(f"{where}: sequences must not be empty, got q {tuple(q.shape)} (T={q.shape[-3]}), "
                         f"k {tuple(k.shape)} (S={k.shape[-3]})")


def _scores_shape(q, k) -> tuple:
    return tuple(q.shape[:-3]) + (q.shape[-2], q.shape[-3], k.shape[-3])  # (..., N, T, S)


def _weights(q, k, mask, scale) -> jax.Array:
    """``P = softmax_rows(c Q K^T)`` over unmasked keys; rows with no unmasked key are 0. (..., N, T, S)."""
    s = jnp.einsum("...tnh,...snh->...nts", q, k) * scale  # (..., N, T, S)
    if mask is None:
        return jax.nn.softmax(s, axis=-1)
    # Subtract the row's largest *unmasked* score (a constant, so no gradient);
    # masked entries become exp(-inf) = 0, whose derivative is 0, never NaN.
    m = jax.lax.stop_gradient(jnp.max(jnp.where(mask, s, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, jnp.zeros_like(m))  # a fully masked row: any finite shift
    e = jnp.exp(jnp.where(mask, s - m, -jnp.inf))
    total = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, jnp.ones_like(total))


def _default_scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None, *,
                          scale: float | None = None) -> jax.Array:
    """Scaled dot-product attention ``O = softmax_rows(c Q K^T) V`` per head, with a boolean mask.

    Equal to ``jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)``
    wherever a query has at least one unmasked key (tested); a query with
    none gets output 0 here (the mean of the values there).

    Args:
      q: queries (..., T, N, H): T positions, N heads of width H.
      k: keys (..., S, N, H).
      v: values (..., S, N, H).
      mask: optional boolean, True where query t may attend to key s;
        broadcastable to the scores (..., N, T, S), e.g. :func:`causal_mask`
        (T, S) or :func:`padding_mask` (..., 1, 1, S).
      scale: ``c``; default ``1 / sqrt(H)``.

    Returns:
      O (..., T, N, H).

    Raises:
      ValueError: shapes that do not agree, an empty sequence, a mask that
        does not broadcast to the scores. TypeError: a mask that is not boolean.

    The hand rule is ``dot_product_attention.backward(q, k, v, mask, o_bar,
    *, scale=None) -> (q_bar, k_bar, v_bar)`` (module docstring).
    """
    _check_qkv(q, k, v, "dot_product_attention")
    if mask is not None:
        mask = _check_mask(mask, _scores_shape(q, k), "dot_product_attention")
    p = _weights(q, k, mask, _default_scale(q, scale))
    return jnp.einsum("...nts,...snh->...tnh", p, v)


def _attention_backward(q, k, v, p, o_bar, scale, dropped=None):
    """The rule from the weights ``P`` (..., N, T, S): ``(q_bar, k_bar, v_bar)`` (module docstring).

    ``dropped``: the weights after dropout, ``P' = M * P / (1 - d)``, when ``O = P' V``
    (:func:`MultiHeadAttention`'s ``drop_prob``); ``None`` for ``P' = P``.
    """
    dropped = p if dropped is None else dropped
    v_bar = jnp.einsum("...nts,...tnh->...snh", dropped, o_bar)  # P'^T O_bar
    p_bar = jnp.einsum("...tnh,...snh->...nts", o_bar, v)  # O_bar V^T: the cotangent of P'
    g = dropped * p_bar  # = P * (M p_bar / (1 - d)): P times the cotangent of P
    s_bar = g - p * jnp.sum(g, axis=-1, keepdims=True)  # softmax Jacobian, row by row
    q_bar = jnp.einsum("...nts,...snh->...tnh", s_bar, k) * scale
    k_bar = jnp.einsum("...nts,...tnh->...snh", s_bar, q) * scale
    return q_bar, k_bar, v_bar


def _dot_product_attention_backward(q, k, v, mask, o_bar, *, scale=None):
    """``(q, k, v, mask, o_bar) -> (q_bar, k_bar, v_bar)``; the mask gets no cotangent."""
    _check_qkv(q, k, v, "dot_product_attention.backward")
    if mask is not None:
        mask = _check_mask(mask, _scores_shape(q, k), "dot_product_attention.backward")
    scale = _default_scale(q, scale)
    return _attention_backward(q, k, v, _weights(q, k, mask, scale), o_bar, scale)


dot_product_attention.backward = _dot_product_attention_backward


# ---------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------


def _project(x, p, use_bias):
    y = _util.rows_matmul(x, p["w"])
    return y + p["b"] if use_bias else y


def _project_backward(x, p, y_bar, use_bias):
    """``y = x W + b``: ``(W_bar, b_bar, x_bar)`` with the leading axes flattened into rows."""
    rows_x = x.reshape(-1, x.shape[-1])  # (rows, in)
    rows_y = y_bar.reshape(-1, y_bar.shape[-1])  # (rows, out)
    grads = {"w": _util.batch_matmul_t(rows_x, rows_y)}  # summed over rows in float32 for 16-bit dtypes
    if use_bias:
        grads["b"] = _util.sum_leading(rows_y)
    return grads, y_bar @ p["w"].T


def MultiHeadAttention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    out_features: int | None = None,
    causal: bool = False,
    cross: bool = False,
    mask_input: bool = False,
    use_bias: bool = True,
    rotary: bool = False,
    scale: float | None = None,
    drop_prob: float = 0.0,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
    out_w_init: inits.Initializer | None = None,
) -> Layer:
    """Multi-head attention with query, key, value and output projections.

    With ``X_q`` (..., T, D) the queries' input and ``X_kv`` (..., S, D_kv)
    the keys' and values' (the same ``X`` for self-attention), per head ``n``:

        Q_n = X_q W_q[n] + b_q[n],  K_n = X_kv W_k[n],  V_n = X_kv W_v[n] + b_v[n]
        P_n = softmax_rows(c Q_n K_n^T + mask)             (see dot_product_attention)
        O_n = P'_n V_n,   P'_n = M_n * P_n / (1 - d)        (dropout on the weights; P' = P without it)
        Y   = concat_n(O_n) W_o + b_o                       (..., T, out_features)

    **Inputs**, fixed when the layer is built (so that shapes, tapes and
    combinators know them):

    ============================  =====================================
    ``cross=False`` (default)     ``x`` (..., T, D)
    ``mask_input=True``           ``(x, mask)``
    ``cross=True``                ``(x_q, x_kv)``
    ``cross=True, mask_input``    ``(x_q, x_kv, mask)``
    ============================  =====================================

    ``mask`` is boolean, True where query t may attend to key s,
    broadcastable to the scores (..., N, T, S): ``(T, S)`` for one pattern,
    :func:`padding_mask` for padded keys, ``(B, N, T, S)`` for anything.
    ``causal=True`` adds :func:`causal_mask` (and needs no input). The mask
    gets no cotangent (``None``).

    **Fully masked queries** (no key allowed) get attention output 0, so the
    layer returns ``b_o`` there, and pass no gradient to ``Q``, ``K``, ``V``
    (module docstring).

    **Dropout** (``drop_prob = d > 0``, training only): each attention
    weight is kept with probability ``1 - d`` (mask ``M`` drawn from the
    ``key`` passed to ``apply``, which training then requires) and the kept
    ones scaled by ``1 / (1 - d)``, so ``E[P'] = P``: the rows of ``P'`` no
    longer sum to 1, only in expectation (as in PyTorch's and nanoGPT's
    attention dropout). Evaluation (``train=False``) uses ``P``, deterministically.

    **Rule** (linear algebra, from a tape of ``Q, K, V, P, P', O``): the
    output projection's rule as Dense's; then ``V_bar = P'^T O_bar`` and
    ``P'_bar = O_bar V^T``; dropout's rule ``P_bar = M * P'_bar / (1 - d)``
    and the softmax Jacobian ``S_bar = P * (P_bar - rowsum(P * P_bar))`` fold
    into ``S_bar = G - P rowsum(G)`` with ``G = P' * P'_bar`` (since
    ``P * P_bar = P' * P'_bar``), so the mask itself is never stored; then
    ``Q_bar = c S_bar K``, ``K_bar = c S_bar^T Q`` per head, and the three
    projections' rules; in self-attention ``X_bar`` is the *sum* of the
    cotangents through ``Q``, ``K`` and ``V``.

    **Key/value cache** (``causal=True`` self-attention without a mask
    input): :func:`jaxnets.layers.incremental.decoder` runs the layer on new
    positions given the keys and values of the earlier ones, a cache
    ``{"k", "v"}`` of ``(..., max_length, N, H)`` each: the new positions'
    ``K``, ``V`` are written at their rows, and query ``t`` (absolute
    position ``pos + i``) attends to rows ``s <= pos + i``, exactly the keys
    the causal mask allows it in the full forward pass.

    Args:
      num_heads: N.
      head_dim: H; default ``D // num_heads`` (N must then divide D).
      out_features: width of Y; default D.
      causal: mask the future (key s > query t).
      cross: take ``(x_q, x_kv)``: queries from one sequence, keys and values
        from another.
      mask_input: take a boolean mask as the last input.
      use_bias: biases on the query, value and output projections. The keys
        take none: a key bias ``b`` adds ``c q_t . b`` to every score of row
        t, which the softmax cancels, so its gradient is identically zero
        (``rowsum(S_bar) = 0``).
      rotary: rotate each head's queries and keys by their positions
        (:func:`jaxnets.layers.rotary_embedding`, H even) before the scores,
        so that scores depend on relative positions; the rule rotates
        ``Q_bar``, ``K_bar`` back (a rotation's transpose).
      scale: c; default ``1 / sqrt(H)``.
      drop_prob: ``d``, dropout on the attention weights in training, in ``[0, 1)``.
      w_init: initializer of the query, key and value weights (and of the
        output weights unless ``out_w_init``); default ``lecun_normal()``.
      b_init: initializer of the biases; default zeros.
      out_w_init: initializer of ``W_o``; default ``w_init``. (GPT-2 scales
        it by ``1 / sqrt(2 n_layers)``: :func:`jaxnets.layers.TransformerBlock`'s
        ``residual_scale``.)

    Params:
      ``{"query": {"w": (D, N H), "b": (N H,)}, "key": {"w": (D_kv, N H)},
      "value": {"w": (D_kv, N H), "b": (N H,)}, "out": {"w": (N H, out_features),
      "b": (out_features,)}}``.

    Raises:
      ValueError: ``num_heads`` not dividing D, an empty sequence, a mask
        that does not broadcast to the scores, inputs of the wrong arity or
        shape; each naming the layer and the shapes. In training with
        ``drop_prob > 0`` and no ``key``.
    """
    num_heads = _checks.positive_int(num_heads, "num_heads")
    head_dim = None if head_dim is None else _checks.positive_int(head_dim, "head_dim")
    out_features = None if out_features is None else _checks.positive_int(out_features, "out_features")
    drop_prob = _checks.in_unit_interval(drop_prob, "drop_prob")
    causal, cross = _checks.boolean(causal, "causal"), _checks.boolean(cross, "cross")
    mask_input, rotary = _checks.boolean(mask_input, "mask_input"), _checks.boolean(rotary, "rotary")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    out_w_init = _util.check_initializer(out_w_init or w_init, "out_w_init")
    options = [f"causal={causal}" if causal else "", "cross=True" if cross else "",
               "mask_input=True" if mask_input else "", "rotary=True" if rotary else "", f"head_dim={head_dim}" if head_dim else "",
               f"out_features={out_features}" if out_features else "", f"drop_prob={drop_prob}" if drop_prob else ""]
    spec = f"MultiHeadAttention({', '.join([str(num_heads)] + [o for o in options if o])})"
    arity = 1 + int(cross) + int(mask_input)
    names = ("x_q", "x_kv", "mask") if cross else ("x", "mask")
    names = tuple(n for n in names if mask_input or n != "mask")

    def split_input(x):
        """``(x_q, x_kv, mask)`` from the input (x_kv is x_q in self-attention; mask may be None)."""
        if arity == 1:
            items: tuple[Any, ...] = (x,)
        elif not isinstance(x, (tuple, list)) or len(x) != arity:
            got = f"a tuple of {len(x)}" if isinstance(x, (tuple, list)) else f"one {type(x).__name__}"
            raise ValueError(f"{spec} expects the input ({', '.join(names)}), got {got}")
        else:
            items = tuple(x)
        x_q = items[0]
        x_kv = items[1] if cross else x_q
        mask = items[-1] if mask_input else None
        return x_q, x_kv, mask

    def width(shape_q):
        d = shape_q[-1]
        if head_dim is not None:
            return head_dim
        if d % num_heads:
            raise ValueError(f"{spec}: num_heads={num_heads} does not divide the model width {d} "
                             f"(input shape {tuple(shape_q)}); choose num_heads dividing it or pass head_dim=")
        return d // num_heads

    def check_shape(input_shape):
        if arity > 1 and not (isinstance(input_shape, (tuple, list)) and len(input_shape) == arity
                              and all(isinstance(s, (tuple, list)) for s in input_shape)):
            raise ValueError(f"{spec} expects the input ({', '.join(names)}), so input_shape must be a tuple of "
                             f"{arity} shapes, got {input_shape!r}")
        shapes = (input_shape,) if arity == 1 else tuple(input_shape)
        for name, s in zip(names, shapes[: 1 + int(cross)]):
            if len(s) < 2:
                raise ValueError(f"{spec}: {name} must have shape (..., length, features), got {tuple(s)}")
            if s[-2] == 0:
                raise ValueError(f"{spec}: sequences must not be empty, got {name} of shape {tuple(s)}")

    def init_fn(key, input_shape):
        check_shape(input_shape)
        input_shape = core.input_shapes(input_shape)
        shapes: tuple[Any, ...] = (input_shape,) if arity == 1 else tuple(input_shape)
        shape_q = shapes[0]
        shape_kv = shapes[1] if cross else shape_q
        d_q = _util.check_last_dim(shape_q, spec)
        d_kv = _util.check_last_dim(shape_kv, spec)
        h = width(shape_q)
        if rotary and h % 2:
            raise ValueError(f"{spec}: rotary embeddings need an even head_dim, got {h} (input shape {tuple(shape_q)})")
        d_out = out_features or d_q
        ks = jax.random.split(key, 4)
        params = {}
        for k, name, (rows, cols) in zip(ks, ("query", "key", "value", "out"),
                                         ((d_q, num_heads * h), (d_kv, num_heads * h), (d_kv, num_heads * h),
                                          (num_heads * h, d_out))):
            params[name] = {"w": (out_w_init if name == "out" else w_init)(k, (rows, cols), jnp.float32)}
            if use_bias and name != "key":
                params[name]["b"] = b_init(jax.random.fold_in(k, 1), (cols,), jnp.float32)
        return tuple(shape_q[:-1]) + (d_out,), params, {}

    def scale_of(h):
        return 1.0 / math.sqrt(h) if scale is None else float(scale)

    def drop(p, key, train):
        """``(P, P')``: the weights and the weights after dropout (``P'`` is ``P`` in evaluation)."""
        if not train or drop_prob == 0.0:
            return p
        if key is None:
            raise ValueError(f"{spec} is random in training (attention dropout): pass key=... to apply "
                             f"(got key=None with train=True)")
        # a float32 probability: the same mask with x64 on (gradient checks in float64) or off
        kept = jax.random.bernoulli(key, jnp.float32(1.0 - drop_prob), p.shape)
        return jnp.where(kept, p / (1.0 - drop_prob), jnp.zeros_like(p))

    def forward_fn(params, state, x, *, key=None, train=False):
        x_q, x_kv, mask = split_input(x)
        for name, a in zip(names, (x_q, x_kv)):
            _util.check_input(a, spec, min_rank=2)
        if x_q.shape[:-2] != x_kv.shape[:-2]:
            raise ValueError(f"{spec}: x_q {tuple(x_q.shape)} and x_kv {tuple(x_kv.shape)} must share their leading "
                             f"(batch) axes")
        for name, a in zip(names, (x_q, x_kv)):
            if a.shape[-2] == 0:
                raise ValueError(f"{spec}: sequences must not be empty, got {name} of shape {tuple(a.shape)}")
        h = width(x_q.shape)
        t, s = x_q.shape[-2], x_kv.shape[-2]
        scores_shape = tuple(x_q.shape[:-2]) + (num_heads, t, s)
        if mask is not None:
            mask = _check_mask(mask, scores_shape, spec)
        if causal:
            mask = causal_mask(t, s) if mask is None else mask & causal_mask(t, s)
        q = _project(x_q, params["query"], use_bias).reshape(x_q.shape[:-1] + (num_heads, h))  # (..., T, N, H)
        k = _project(x_kv, params["key"], False).reshape(x_kv.shape[:-1] + (num_heads, h))  # (..., S, N, H)
        v = _project(x_kv, params["value"], use_bias).reshape(x_kv.shape[:-1] + (num_heads, h))  # (..., S, N, H)
        if rotary:
            q, k = rotary_embedding(q, time_axis=-3), rotary_embedding(k, time_axis=-3)
        p = _weights(q, k, mask, scale_of(h))  # (..., N, T, S)
        dropped = drop(p, key, train)  # (..., N, T, S)
        o = jnp.einsum("...nts,...snh->...tnh", dropped, v).reshape(x_q.shape[:-1] + (num_heads * h,))  # (..., T, N H)
        y = _project(o, params["out"], use_bias)
        tape = {"x_q": x_q, "x_kv": x_kv if cross else None, "q": q, "k": k, "v": v, "p": p, "o": o}
        if drop_prob:  # the tape's structure depends on the layer only, not on the mode
            tape["dropped"] = dropped
        return y, state, tape

    def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
        del state, key, train  # the dropped weights are on the tape
        x_q = tape["x_q"]
        x_kv = tape["x_kv"] if cross else x_q
        q, k, v, p, o = tape["q"], tape["k"], tape["v"], tape["p"], tape["o"]
        c = scale_of(q.shape[-1])
        grads = {}
        grads["out"], o_bar = _project_backward(o, params["out"], y_bar, use_bias)
        q_bar, k_bar, v_bar = _attention_backward(q, k, v, p, o_bar.reshape(q.shape), c, tape.get("dropped"))
        if rotary:  # back through the rotations: rotate by -t theta
            q_bar, k_bar = (rotary_embedding.backward(a, a_bar, time_axis=-3) for a, a_bar in ((q, q_bar), (k, k_bar)))
        flat = lambda a: a.reshape(a.shape[:-2] + (-1,))  # noqa: E731  (..., L, N, H) -> (..., L, N H)
        grads["query"], xq_bar = _project_backward(x_q, params["query"], flat(q_bar), use_bias)
        grads["key"], xk_bar = _project_backward(x_kv, params["key"], flat(k_bar), False)
        grads["value"], xv_bar = _project_backward(x_kv, params["value"], flat(v_bar), use_bias)
        if not cross:
            x_bar = xq_bar + xk_bar + xv_bar  # X feeds Q, K and V: the three paths add
            return grads, ((x_bar, None) if mask_input else x_bar)
        x_bars = (xq_bar, xk_bar + xv_bar)
        return grads, (x_bars + (None,) if mask_input else x_bars)

    def incremental_rule(max_length, resolve):
        """The key/value cache (docstring): causal self-attention only."""
        del resolve
        if not causal or cross or mask_input:
            raise incremental.Unsupported(f"{spec} has no incremental (cached) step: a key/value cache serves causal "
                                          f"self-attention only (causal=True, no cross or mask input)")

        def heads(params):
            n_h = params["key"]["w"].shape[1]
            return n_h // num_heads

        def init_cache(params, batch_shape, dtype):
            shape = tuple(batch_shape) + (max_length, num_heads, heads(params))
            return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

        def step(params, cache, x, position):
            _util.check_input(x, spec, min_rank=2)
            h, t = heads(params), x.shape[-2]
            if cache["k"].shape[:-3] != x.shape[:-2]:
                raise ValueError(f"{spec}: the cache holds a batch of shape {tuple(cache['k'].shape[:-3])}, got x of "
                                 f"shape {tuple(x.shape)}")
            q = _project(x, params["query"], use_bias).reshape(x.shape[:-1] + (num_heads, h))  # (..., t, N, H)
            k = _project(x, params["key"], False).reshape(x.shape[:-1] + (num_heads, h))  # (..., t, N, H)
            v = _project(x, params["value"], use_bias).reshape(x.shape[:-1] + (num_heads, h))  # (..., t, N, H)
            if rotary:
                q, k = (rotary_embedding(a, time_axis=-3, offset=position, max_length=max_length) for a in (q, k))
            axis = cache["k"].ndim - 3  # the cache's position axis
            keys = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), position, axis)
            values = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), position, axis)
            allowed = jnp.arange(max_length, dtype=jnp.int32)[None, :] <= position + jnp.arange(t, dtype=jnp.int32)[:, None]  # (t, L)
            p = _weights(q, keys.astype(q.dtype), allowed, scale_of(h))  # (..., N, t, max_length)
            o = jnp.einsum("...nts,...snh->...tnh", p, values.astype(q.dtype)).reshape(x.shape[:-1] + (num_heads * h,))
            return _project(o, params["out"], use_bias), {"k": keys, "v": values}

        return incremental.Incremental(init_cache, step)

    layer = Layer("attention", spec, init_fn, forward_fn, backward_fn)
    return incremental.attach(layer, incremental_rule)
