"""A primitive layer whose tape holds its intermediates, not only its input (not public API).

:func:`jaxnets.layers.core.build` records a layer's input as its tape, so
the rule recomputes what it needs. Attention and recurrent layers record the
attention weights and the hidden states instead: their rules then cost what
autodiff's backward pass costs (which also keeps these residuals), rather
than a second forward pass on top.
"""

from __future__ import annotations

from typing import Any, Callable

from jaxnets.layers import core
from jaxnets.layers.core import Layer


def build_taped(name: str, spec: str, init: Callable[..., Any], forward: Callable[..., Any], backward: Callable[..., Any],
                check_shape: Callable[..., Any] | None = None) -> Layer:
    """A stateless primitive layer from

    ``init(key, input_shape) -> (output_shape, params)``,
    ``forward(params, x) -> (y, tape)`` and
    ``backward(params, tape, y_bar) -> (params_bar, x_bar)``.

    ``check_shape(input_shape)``, if given, runs on the raw input shape before
    the generic checks (to name the layer in errors such as a zero length).
    Neither ``key`` nor ``train`` changes these layers.
    """

    def init_fn(key, input_shape):
        if check_shape is not None:
            check_shape(input_shape)
        out_shape, params = init(key, core.input_shapes(input_shape))
        return out_shape, params, {}

    def forward_fn(params, state, x, *, key=None, train=False):
        del key, train
        y, tape = forward(params, x)
        return y, state, tape

    def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
        del state, key, train
        return backward(params, tape, y_bar)

    return Layer(name, spec, init_fn, forward_fn, backward_fn)
