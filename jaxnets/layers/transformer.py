"""A pre-LayerNorm Transformer block, composed from the existing layers and combinators.

    x <- x + Attention(LayerNorm(x))          (residual)
    x <- x + W_2 gelu(W_1 LayerNorm(x))       (residual)

(Xiong et al., 2020; GPT-2's arrangement). Its hand rule is the chain of its
parts' rules through :func:`residual` and :func:`serial`: nothing new to derive.
"""

from __future__ import annotations

import dataclasses

from jaxnets import _checks
from jaxnets.layers.attention import MultiHeadAttention
from jaxnets.layers.combinators import residual, serial
from jaxnets.layers.core import Layer
from jaxnets.layers.dense import Dense
from jaxnets.layers.elementwise import Gelu
from jaxnets.layers.normalization import LayerNorm

__all__ = ["TransformerBlock"]


def TransformerBlock(features: int, num_heads: int, *, mlp_features: int | None = None, causal: bool = False,
                     rotary: bool = False, eps: float = 1e-5) -> Layer:
    """``serial(residual(LayerNorm(), MultiHeadAttention(num_heads)), residual(LayerNorm(), Dense(mlp), Gelu(), Dense(features)))``.

    Args:
      features: D, the width of the input (..., T, D) and of the output.
      num_heads: attention heads; must divide D.
      mlp_features: hidden width of the MLP; default ``4 D``.
      causal: causal self-attention (a language model's block).
      rotary: rotary position embeddings inside the attention.
      eps: the LayerNorms' epsilon.

    Params: ``{"residual_0": {"layer_norm_0": ..., "attention_0": ...},
    "residual_1": {"layer_norm_0": ..., "dense_0": ..., "dense_1": ...}}``.

    A mask other than the causal one needs an input ``(x, mask)``, which
    :func:`residual` does not pass through; compose such a block by hand.
    """
    features = _checks.positive_int(features, "features")
    num_heads = _checks.positive_int(num_heads, "num_heads")
    if features % num_heads:
        raise ValueError(f"TransformerBlock: num_heads={num_heads} does not divide features={features}")
    mlp_features = 4 * features if mlp_features is None else _checks.positive_int(mlp_features, "mlp_features")
    block = serial(
        residual(LayerNorm(eps=eps), MultiHeadAttention(num_heads, causal=causal, rotary=rotary)),
        residual(LayerNorm(eps=eps), Dense(mlp_features), Gelu(), Dense(features)),
    )
    opts = [f"mlp_features={mlp_features}", "causal=True" if causal else "", "rotary=True" if rotary else ""]
    spec = f"TransformerBlock({features}, {num_heads}, {', '.join(o for o in opts if o)})"
    return dataclasses.replace(block, name="transformer_block", spec=spec)
