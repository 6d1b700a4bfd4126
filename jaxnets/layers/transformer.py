"""A pre-LayerNorm Transformer block, composed from the existing layers and combinators.

    x <- x + Drop(Attention(LayerNorm(x)))            (residual)
    x <- x + Drop(W_2 gelu(W_1 LayerNorm(x)))         (residual)

(Xiong et al., 2020; GPT-2's arrangement), with dropout on the attention
weights inside the attention and on each residual branch (nanoGPT's
``attn_dropout``, ``resid_dropout`` and the MLP's dropout). Its hand rule is
the chain of its parts' rules through :func:`residual` and :func:`serial`:
the attention's rule (with its dropout), Dropout's, Dense's, Gelu's and
LayerNorm's; nothing new to derive.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util, incremental
from jaxnets.layers.attention import MultiHeadAttention
from jaxnets.layers.combinators import residual, serial
from jaxnets.layers.core import Layer
from jaxnets.layers.dense import Dense
from jaxnets.layers.dropout import Dropout
from jaxnets.layers.elementwise import Gelu
from jaxnets.layers.normalization import LayerNorm

__all__ = ["TransformerBlock"]


def _scaled(init: inits.Initializer, factor: float) -> inits.Initializer:
    """``factor * init(key, shape, dtype)``."""
    if factor == 1.0:
        return init

    def scaled(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * factor

    return scaled


def TransformerBlock(features: int, num_heads: int, *, mlp_features: int | None = None, causal: bool = False,
                     rotary: bool = False, eps: float = 1e-5, drop_prob: float = 0.0,
                     attention_drop_prob: float | None = None, w_init: inits.Initializer | None = None,
                     b_init: inits.Initializer = inits.zeros, residual_scale: float = 1.0) -> Layer:
    """``serial(residual(LayerNorm(), MultiHeadAttention(num_heads), Dropout), residual(LayerNorm(), Dense(mlp), Gelu(), Dense(features), Dropout))``.

    **Dropout** (training only; each needs the ``key`` passed to ``apply``):
    ``attention_drop_prob`` on the attention weights (``MultiHeadAttention``'s
    ``drop_prob``), ``drop_prob`` on the output of each residual branch
    before it is added back (``Dropout(drop_prob)``). nanoGPT's
    ``dropout=0.2`` is ``drop_prob=0.2`` (``attention_drop_prob`` follows it
    by default). With both 0 (the default) the block holds no Dropout layer.
    Evaluation (``train=False``) is deterministic.

    **Initialization.** ``w_init``/``b_init`` initialize every weight and
    bias of the four attention projections and the two MLP layers; the two
    *output projections*, the attention's ``W_o`` and the MLP's ``W_2``
    (the matrices that write into the residual stream), are further
    multiplied by ``residual_scale``. GPT-2 (and nanoGPT) initialize
    ``W ~ N(0, 0.02^2)``, biases 0, and scale the output projections by
    ``1 / sqrt(2 n_layers)``, since each of the ``2 n_layers`` residual
    branches adds its output to the stream and the stream's variance grows
    with their number::

        TransformerBlock(D, heads, causal=True, drop_prob=0.2, w_init=initializers.normal(0.02),
                         residual_scale=1 / math.sqrt(2 * n_layers))

    Args:
      features: D, the width of the input (..., T, D) and of the output.
      num_heads: attention heads; must divide D.
      mlp_features: hidden width of the MLP; default ``4 D``.
      causal: causal self-attention (a language model's block; then
        :mod:`jaxnets.generate` decodes it with a key/value cache).
      rotary: rotary position embeddings inside the attention.
      eps: the LayerNorms' epsilon.
      drop_prob: dropout on the two residual branches, in ``[0, 1)``.
      attention_drop_prob: dropout on the attention weights; default ``drop_prob``.
      w_init: initializer of the weights; default ``lecun_normal()`` (the
        layers' own default).
      b_init: initializer of the biases; default zeros.
      residual_scale: factor on the output projections' initial weights
        (``> 0``); default 1.

    Params: ``{"residual_0": {"layer_norm_0": ..., "attention_0": ...},
    "residual_1": {"layer_norm_0": ..., "dense_0": ..., "dense_1": ...}}``
    (Dropout holds no params: the same with and without it).

    A mask other than the causal one needs an input ``(x, mask)``, which
    :func:`residual` does not pass through; compose such a block by hand.
    """
    features = _checks.positive_int(features, "features")
    num_heads = _checks.positive_int(num_heads, "num_heads")
    if features % num_heads:
        raise ValueError(f"TransformerBlock: num_heads={num_heads} does not divide features={features}")
    mlp_features = 4 * features if mlp_features is None else _checks.positive_int(mlp_features, "mlp_features")
    drop_prob = _checks.in_unit_interval(drop_prob, "drop_prob")
    attention_drop_prob = drop_prob if attention_drop_prob is None else _checks.in_unit_interval(
        attention_drop_prob, "attention_drop_prob")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    residual_scale = _checks.positive_float(residual_scale, "residual_scale")
    out_init = _scaled(w_init, residual_scale)
    branch_dropout = (Dropout(drop_prob),) if drop_prob else ()
    block = serial(
        residual(LayerNorm(eps=eps), MultiHeadAttention(num_heads, causal=causal, rotary=rotary, drop_prob=attention_drop_prob,
                                                        w_init=w_init, b_init=b_init, out_w_init=out_init), *branch_dropout),
        residual(LayerNorm(eps=eps), Dense(mlp_features, w_init=w_init, b_init=b_init), Gelu(),
                 Dense(features, w_init=out_init, b_init=b_init), *branch_dropout),
    )
    opts = [f"mlp_features={mlp_features}", "causal=True" if causal else "", "rotary=True" if rotary else "",
            f"drop_prob={drop_prob}" if drop_prob else "",
            f"attention_drop_prob={attention_drop_prob}" if attention_drop_prob != drop_prob else "",
            f"residual_scale={residual_scale:g}" if residual_scale != 1.0 else ""]
    spec = f"TransformerBlock({features}, {num_heads}, {', '.join(o for o in opts if o)})"
    block = dataclasses.replace(block, name="transformer_block", spec=spec)
    return incremental.attach(block, lambda max_length, resolve: incremental.chain(block.children, max_length, resolve))
