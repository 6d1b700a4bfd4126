"""Every public layer constructor as a test case: how to build it, what to feed it, which modes it has.

A plain module of data, imported by the layer, backprop and gradient-report
tests. ``tests/test_layers.py::test_every_public_layer_has_a_case`` fails
when a public layer has no case here, and
``test_every_public_layer_is_in_the_gradient_report`` when it is missing from
``experiments/gradient_report.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

import jaxnets.layers as L
from jaxnets import initializers as I


@dataclasses.dataclass(frozen=True)
class Case:
    """One public layer constructor under test.

    Attributes:
      name: the public name in ``jaxnets.layers``.
      make: builds a representative layer.
      shapes: concrete input shapes (batch first); a tuple of shapes for several inputs.
      kind: ``"float"`` or ``"int"`` input (ids).
      train_differs: training mode computes something else (Dropout, BatchNorm,
        combinators holding them): tests run both modes; else one.
      random: needs a key in training.
      stateful: carries state (use the ``*_with_state`` pair).
    """

    name: str
    make: Callable[[], L.Layer]
    shapes: tuple
    kind: str = "float"
    train_differs: bool = False
    random: bool = False
    stateful: bool = False

    @property
    def modes(self) -> tuple:
        return (False, True) if self.train_differs else (True,)


def _tanh_dense():
    """A layer of one's own through define_layer: ``y = tanh(x W)`` with its rule."""

    def init(key, input_shape):
        return {"w": jax.random.normal(key, (input_shape[-1], 3)) / jnp.sqrt(input_shape[-1])}

    def apply(params, x):
        return jnp.tanh(x @ params["w"])

    def backward(params, x, y_bar):
        g = y_bar * (1 - jnp.tanh(x @ params["w"]) ** 2)  # through tanh: (..., 3)
        return {"w": x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, 3)}, g @ params["w"].T

    return L.define_layer("tanh_dense", init, apply, backward=backward)


CASES = [
    Case("Dense", lambda: L.Dense(5), ((3, 4), (2, 3, 4), (1, 7))),
    Case("Conv", lambda: L.Conv(4, (3, 2), strides=(2, 1), padding="VALID"), ((2, 7, 6, 3), (1, 5, 5, 1))),
    Case("Conv1D", lambda: L.Conv1D(4, 3, strides=2), ((2, 9, 3), (3, 4, 1))),
    Case("Conv2D", lambda: L.Conv2D(4, 3), ((2, 8, 8, 1), (1, 5, 7, 3))),
    Case("ConvTranspose", lambda: L.ConvTranspose(3, (3, 3), strides=2, padding="VALID"), ((2, 4, 5, 2), (1, 3, 3, 1))),
    Case("ConvTranspose2D", lambda: L.ConvTranspose2D(3, 4, strides=2), ((2, 4, 5, 2), (1, 3, 3, 1))),
    Case("Embedding", lambda: L.Embedding(11, 6), ((4,), (2, 5)), kind="int"),
    Case("LayerNorm", lambda: L.LayerNorm(), ((3, 6), (2, 3, 6))),
    Case("BatchNorm", lambda: L.BatchNorm(), ((8, 5), (4, 3, 3, 2)), train_differs=True, stateful=True),
    Case("MaxPool", lambda: L.MaxPool(2), ((2, 6, 6, 3), (1, 5, 7, 2))),
    Case("AvgPool", lambda: L.AvgPool((2, 3), strides=1, padding="SAME"), ((2, 6, 6, 3), (1, 5, 7, 2))),
    Case("GlobalAvgPool", lambda: L.GlobalAvgPool(), ((2, 4, 5, 3), (3, 6, 2))),
    Case("GlobalMaxPool", lambda: L.GlobalMaxPool(), ((2, 4, 5, 3), (3, 6, 2))),
    Case("Flatten", lambda: L.Flatten(), ((2, 3, 4), (3, 2, 2, 2))),
    Case("Reshape", lambda: L.Reshape((-1, 2)), ((2, 3, 4), (3, 8))),
    Case("Dropout", lambda: L.Dropout(0.5), ((4, 10), (2, 3, 4)), train_differs=True, random=True),
    Case("Elementwise", lambda: L.Elementwise(jnp.sin, "sin", vjp=lambda x, y_bar: y_bar * jnp.cos(x)), ((3, 4),)),
    Case("Lambda", lambda: L.Lambda(lambda x: jnp.cumsum(x, axis=-1)[..., ::2], name="cumsum_even"), ((3, 5), (2, 2, 4))),
    Case("define_layer", _tanh_dense, ((3, 4), (2, 3, 4))),
    Case("Relu", lambda: L.Relu(), ((3, 4),)),
    Case("LeakyRelu", lambda: L.LeakyRelu(0.1), ((3, 4),)),
    Case("Elu", lambda: L.Elu(), ((3, 4),)),
    Case("Gelu", lambda: L.Gelu(), ((3, 4),)),
    Case("Sigmoid", lambda: L.Sigmoid(), ((3, 4),)),
    Case("Tanh", lambda: L.Tanh(), ((3, 4),)),
    Case("Softplus", lambda: L.Softplus(), ((3, 4),)),
    Case("Silu", lambda: L.Silu(), ((3, 4),)),
    Case("Softmax", lambda: L.Softmax(), ((3, 4),)),
    Case("LogSoftmax", lambda: L.LogSoftmax(), ((3, 4),)),
    Case("Identity", lambda: L.Identity(), ((3, 4),)),
    Case("MultiHeadAttention", lambda: L.MultiHeadAttention(2, causal=True), ((2, 5, 8), (3, 1, 4))),
    Case("SimpleRNN", lambda: L.SimpleRNN(4, truncate=2), ((2, 5, 3), (3, 1, 2))),
    Case("LSTM", lambda: L.LSTM(4, initial_state="learned"), ((2, 5, 3), (1, 3, 2))),
    Case("GRU", lambda: L.GRU(4, return_sequences=False), ((2, 5, 3), (3, 2, 1))),
    Case("SequencePool", lambda: L.SequencePool("mean"), ((2, 5, 3), (3, 2, 4, 2))),
    Case("SimpleRNNCell", lambda: L.SimpleRNNCell(4), (((2, 4), (2, 3)), ((3, 2, 4), (3, 2, 1)))),
    Case("LSTMCell", lambda: L.LSTMCell(4), ((((2, 4), (2, 4)), (2, 3)),)),
    Case("GRUCell", lambda: L.GRUCell(4), (((2, 4), (2, 3)),)),
    Case("PReLU", lambda: L.PReLU(0.2, per_channel=True), ((3, 4), (2, 5, 4))),
    Case("PositionalEmbedding", lambda: L.PositionalEmbedding(8), ((2, 5, 3), (3, 8, 2))),
    Case("SinusoidalEncoding", lambda: L.SinusoidalEncoding(), ((2, 5, 3), (1, 4, 6))),
    Case("RotaryEmbedding", lambda: L.RotaryEmbedding(), ((2, 5, 4), (1, 3, 6))),
    Case("TransformerBlock", lambda: L.TransformerBlock(8, 2, causal=True, mlp_features=12), ((2, 5, 8),)),
    Case("serial", lambda: L.serial(L.Dense(6), L.Relu(), L.Dropout(0.2), L.Dense(3)), ((4, 5), (2, 3, 5)),
         train_differs=True, random=True),
    Case("parallel", lambda: L.parallel(L.Dense(3), L.Identity()), (((2, 4), (2, 7)),)),
    Case("residual", lambda: L.residual(L.Dense(4), L.Tanh(), L.Dense(4)), ((3, 4), (2, 2, 4))),
    Case("FanOut", lambda: L.FanOut(3), ((2, 4),)),
    Case("FanInSum", lambda: L.FanInSum(), (((2, 4), (2, 4), (2, 4)),)),
    Case("FanInConcat", lambda: L.FanInConcat(), (((2, 4), (2, 3)),)),
]

# Options of a layer get cases of their own, named "<public name> (<option>)": the coverage tests read the name
# up to the first " (". Attention dropout, the block's dropout and initializers, the tied embedding (issue 20):
CASES += [
    Case("MultiHeadAttention (attention dropout)", lambda: L.MultiHeadAttention(2, causal=True, drop_prob=0.3),
         ((2, 5, 8), (3, 1, 4)), train_differs=True, random=True),
    Case("MultiHeadAttention (cross, rotary, dropout, b_init)", lambda: L.MultiHeadAttention(
        2, cross=True, rotary=True, drop_prob=0.5, b_init=I.normal(0.5), out_w_init=I.normal(0.1)),
         (((2, 4, 8), (2, 6, 8)),), train_differs=True, random=True),
    Case("TransformerBlock (dropout, GPT-2 init)", lambda: L.TransformerBlock(
        8, 2, causal=True, mlp_features=12, drop_prob=0.2, attention_drop_prob=0.4, w_init=I.normal(0.3),
        b_init=I.normal(0.1), residual_scale=0.5), ((2, 5, 8), (1, 3, 8)), train_differs=True, random=True),
    Case("TiedEmbedding", lambda: L.TiedEmbedding(11, 6, L.PositionalEmbedding(8), L.Dropout(0.2),
                                                  L.TransformerBlock(6, 2, causal=True, drop_prob=0.1), L.LayerNorm()),
         ((2, 5), (3, 8)), kind="int", train_differs=True, random=True),
]

BY_NAME = {case.name: case for case in CASES}

# public names of jaxnets.layers that build no layer
NOT_LAYERS = {"Layer", "count_params", "check_params", "require_rule", "dot_product_attention", "causal_mask",
              "padding_mask", "rotary_embedding", "sinusoidal_encoding", "one_step_program"}
