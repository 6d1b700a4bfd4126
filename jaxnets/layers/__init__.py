"""Layers: pairs of pure functions over parameter pytrees, and their combinators.

A :class:`Layer` holds two pure functions::

    init(key, input_shape) -> (output_shape, params)
    apply(params, x, *, key=None, train=False) -> y

``input_shape`` is a tuple of ints in which ``-1`` leaves a size (the batch)
unknown, as in ``jax.example_libraries.stax``; ``init`` returns the output
shape without running the layer. ``params`` is a plain nested dict of arrays
with readable keys, e.g. ``{"dense_0": {"w": (64, 128), "b": (128,)}}``.
``key`` is a ``jax.random`` key, needed by random layers (``Dropout``) in
training; ``train=True`` switches training behaviour on.

    >>> model = serial(Dense(128), Relu(), Dense(10))
    >>> out_shape, params = model.init(jax.random.key(0), (-1, 64))
    >>> logits = model.apply(params, x)

That is all a first model needs. State (BatchNorm), hand-derived backward
rules and your own layers (:func:`define_layer`) are introduced in
:mod:`jaxnets.layers.core`, where they are implemented.

``jax.jit(model.apply)`` works as written, ``train=`` included: a traced
``train`` compiles both modes and runs the one asked for. To compile one
mode only, make it static: ``jax.jit(model.apply, static_argnames="train")``.

Layout: dense layers act on the last axis of any-rank input; convolutions
and pooling take channels-last input ``(batch, *spatial, channels)`` and
kernels ``(*window, in, out)``.

Modules: :mod:`~jaxnets.layers.core` (the record, the builders, the checks),
:mod:`~jaxnets.layers.custom` (``define_layer``),
:mod:`~jaxnets.layers.dense` (Dense, Embedding, TiedEmbedding), :mod:`~jaxnets.layers.conv`,
:mod:`~jaxnets.layers.pooling`, :mod:`~jaxnets.layers.reshape`,
:mod:`~jaxnets.layers.dropout`, :mod:`~jaxnets.layers.normalization`,
:mod:`~jaxnets.layers.elementwise`, :mod:`~jaxnets.layers.combinators`,
:mod:`~jaxnets.layers.attention`, :mod:`~jaxnets.layers.positional`, :mod:`~jaxnets.layers.transformer`,
:mod:`~jaxnets.layers.incremental` (cached decoding: the key/value cache),
:mod:`~jaxnets.layers.recurrent`, :mod:`~jaxnets.layers.sequence`
(sequences are ``(..., length, features)``),
and the im2col helpers in ``_im2col``.
"""

from jaxnets.layers.attention import MultiHeadAttention, causal_mask, dot_product_attention, padding_mask
from jaxnets.layers.combinators import FanInConcat, FanInSum, FanOut, parallel, residual, serial
from jaxnets.layers.conv import Conv, Conv1D, Conv2D, ConvTranspose, ConvTranspose2D, one_step_program
from jaxnets.layers.core import Layer, check_params, count_params, require_rule
from jaxnets.layers.custom import define_layer
from jaxnets.layers.dense import Dense, Embedding, TiedEmbedding
from jaxnets.layers.dropout import Dropout
from jaxnets.layers.elementwise import (Elementwise, Elu, Gelu, Identity, Lambda, LeakyRelu, LogSoftmax, PReLU, Relu,
                                        Sigmoid, Silu, Softmax, Softplus, Tanh)
from jaxnets.layers.normalization import BatchNorm, LayerNorm
from jaxnets.layers.positional import (PositionalEmbedding, RotaryEmbedding, SinusoidalEncoding, rotary_embedding,
                                       sinusoidal_encoding)
from jaxnets.layers.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from jaxnets.layers.recurrent import GRU, LSTM, GRUCell, LSTMCell, SimpleRNN, SimpleRNNCell
from jaxnets.layers.reshape import Flatten, Reshape
from jaxnets.layers.sequence import SequencePool
from jaxnets.layers.transformer import TransformerBlock

__all__ = [
    "Layer",
    # parametric layers
    "Dense",
    "Conv",
    "Conv1D",
    "Conv2D",
    "ConvTranspose",
    "ConvTranspose2D",
    "one_step_program",
    "Embedding",
    "TiedEmbedding",
    "LayerNorm",
    "BatchNorm",
    # parameter-free layers
    "MaxPool",
    "AvgPool",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "Flatten",
    "Reshape",
    "Dropout",
    "Elementwise",
    "Lambda",
    # activation layers
    "Relu",
    "LeakyRelu",
    "PReLU",
    "Elu",
    "Gelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Silu",
    "Softmax",
    "LogSoftmax",
    "Identity",
    # sequences
    "MultiHeadAttention",
    "dot_product_attention",
    "causal_mask",
    "padding_mask",
    "SimpleRNN",
    "LSTM",
    "GRU",
    "SimpleRNNCell",
    "LSTMCell",
    "GRUCell",
    "SequencePool",
    "PositionalEmbedding",
    "SinusoidalEncoding",
    "RotaryEmbedding",
    "rotary_embedding",
    "sinusoidal_encoding",
    "TransformerBlock",
    # combinators
    "serial",
    "parallel",
    "residual",
    "FanOut",
    "FanInSum",
    "FanInConcat",
    # defining and checking layers
    "define_layer",
    "check_params",
    "require_rule",
    "count_params",
]
