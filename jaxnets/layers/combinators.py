"""Combinators: layers made of layers, and the tape that chains their hand rules.

Each combinator writes its loop once, as a taped forward pass
``(params, state, x) -> (y, state, tape)``; its plain forward is the same
function with the tape dropped (under ``jit`` the unused tape costs nothing).
Its rule runs the children's rules on their recorded tapes: in reverse for
:func:`serial` (the chain rule), side by side for :func:`parallel`, and
adds the two paths of a skip connection in :func:`residual`.

Params and state are dicts keyed by child (``dense_0``, ``relu_0``,
``dense_1``, ...; a counter per kind); children without params or state
take no entry. An error inside a child names its path
(``residual_0/dense_1: ...``) and keeps its traceback.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any, Callable, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets.layers import _util
from jaxnets.layers.core import Layer

__all__ = ["serial", "parallel", "residual", "FanOut", "FanInSum", "FanInConcat"]


def _check_layers(layers: Sequence[Any], combinator: str) -> tuple[Layer, ...]:
    if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
        layers = tuple(layers[0])
    if not layers:
        raise ValueError(f"{combinator} needs at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. Relu()?)" if callable(layer) else ""
            raise TypeError(f"{combinator}: argument {i} must be a Layer, got {layer!r}{hint}")
    return tuple(layers)


def _named(layers: Sequence[Layer]) -> tuple[tuple[str, Layer], ...]:
    """Readable params keys: a counter per kind, e.g. dense_0, relu_0, dense_1."""
    seen: Counter = Counter()
    named = []
    for layer in layers:
        named.append((f"{layer.name}_{seen[layer.name]}", layer))
        seen[layer.name] += 1
    return tuple(named)


def _children(children, params, state):
    """Each child's params and state (``{}`` for parameter-free ones); rejects unknown keys."""
    names = [n for n, _ in children]
    for what, tree in (("params", params), ("state", state)):
        if not isinstance(tree, dict):
            raise TypeError(f"{what} must be a dict keyed by layer name, got {type(tree).__name__}")
        unknown = sorted(set(tree) - set(names))
        if unknown:
            raise ValueError(f"{what} has entries {unknown} that match no layer; the layers are {names}")
    return [(params.get(n, {}), state.get(n, {})) for n in names]


def _init_children(children, key, input_shapes):
    """Each child's ``init`` on its input shape: ``(output shapes, params, state)``."""
    shapes, params, state = [], {}, {}
    for (name, layer), k, shape in zip(children, jax.random.split(key, len(children)), input_shapes):
        out, p, s = _util.located(name, layer.init_fn, k, shape)
        shapes.append(out)
        _util.keep(params, name, p)
        _util.keep(state, name, s)
    return shapes, params, state


def _combinator(name: str, spec: str, children, init_fn: Callable[..., Any], forward_fn: Callable[..., Any], backward_fn: Callable[..., Any]) -> Layer:
    return Layer(name, spec, init_fn, forward_fn, backward_fn, tuple(children))


def serial(*layers: Layer) -> Layer:
    """Composes layers in sequence: ``serial(f, g, h)(x) = h(g(f(x)))``.

    Params and state are dicts keyed ``<kind>_<i>`` (``dense_0``, ``dense_1``,
    ...); parameter-free layers (activations, pooling, ...) take no entry.
    The key is split so that each child gets its own.

    Backward: the chain rule, children's rules in reverse order, each fed the
    cotangent of its output and the tape it recorded on the way forward.
    """
    children = _named(_check_layers(layers, "serial"))
    spec = f"serial({', '.join(repr(layer) for _, layer in children)})"
    n = len(children)

    def init_fn(key, input_shape):
        shape = input_shape
        params, state = {}, {}
        for (name, layer), k in zip(children, jax.random.split(key, n)):
            shape, p, s = _util.located(name, layer.init_fn, k, shape)
            _util.keep(params, name, p)
            _util.keep(state, name, s)
        return shape, params, state

    def forward_fn(params, state, x, *, key=None, train=False):
        new_state, tapes = {}, []
        for (name, layer), (p, s), k in zip(children, _children(children, params, state), _util.split_key(key, n)):
            x, s, tape = _util.child(name, "forward", layer, p, s, x, key=k, train=train)
            _util.keep(new_state, name, s)
            tapes.append(tape)
        return x, new_state, tuple(tapes)

    def backward_fn(params, state, tapes, y_bar, *, key=None, train=False):
        grads = {}
        pairs = _children(children, params, state)
        keys = _util.split_key(key, n)
        for i in reversed(range(n)):
            (name, layer), (p, s) = children[i], pairs[i]
            p_bar, y_bar = _util.child(name, "backward", layer, p, s, tapes[i], y_bar, key=keys[i], train=train)
            if name in params:
                grads[name] = p_bar
        return grads, y_bar

    return _combinator("serial", spec, children, init_fn, forward_fn, backward_fn)


def parallel(*layers: Layer) -> Layer:
    """Applies layer ``i`` to input ``i``: ``(x_0, ..., x_n) -> (f_0(x_0), ..., f_n(x_n))``.

    ``input_shape`` is a tuple of shapes, one per layer. Pair with
    :func:`FanOut` and :func:`FanInSum`/:func:`FanInConcat` to build branches.
    Backward: each branch's rule on its own cotangent.
    """
    children = _named(_check_layers(layers, "parallel"))
    spec = f"parallel({', '.join(repr(layer) for _, layer in children)})"
    n = len(children)

    def check_arity(inputs, what):
        if not isinstance(inputs, (tuple, list)) or len(inputs) != n:
            got = f"{len(inputs)} items" if isinstance(inputs, (tuple, list)) else type(inputs).__name__
            raise ValueError(f"{spec} expects {what} to be a tuple of {n} items, one per layer, got {got}")

    def init_fn(key, input_shape):
        check_arity(input_shape, "input_shape")
        shapes, params, state = _init_children(children, key, input_shape)
        return tuple(shapes), params, state

    def forward_fn(params, state, xs, *, key=None, train=False):
        check_arity(xs, "the input")
        ys, new_state, tapes = [], {}, []
        pairs = _children(children, params, state)
        for (name, layer), (p, s), k, x in zip(children, pairs, _util.split_key(key, n), xs):
            y, s, tape = _util.child(name, "forward", layer, p, s, x, key=k, train=train)
            ys.append(y)
            tapes.append(tape)
            _util.keep(new_state, name, s)
        return tuple(ys), new_state, tuple(tapes)

    def backward_fn(params, state, tapes, y_bars, *, key=None, train=False):
        grads, x_bars = {}, []
        pairs = _children(children, params, state)
        for (name, layer), (p, s), k, tape, y_bar in zip(children, pairs, _util.split_key(key, n), tapes, y_bars):
            p_bar, x_bar = _util.child(name, "backward", layer, p, s, tape, y_bar, key=k, train=train)
            x_bars.append(x_bar)
            if name in params:
                grads[name] = p_bar
        return grads, tuple(x_bars)

    return _combinator("parallel", spec, children, init_fn, forward_fn, backward_fn)


def residual(*layers: Layer) -> Layer:
    """A skip connection around ``serial(*layers)``: ``y = x + f(x)``.

    The body must keep the shape. Params are the body's own dict (no extra
    nesting), e.g. ``{"residual_0": {"dense_0": ..., "dense_1": ...}}`` in a model.
    Backward: ``x`` is used twice, so its cotangent is the sum of both paths,
    ``x_bar = y_bar + f_bar(y_bar)``.
    """
    body = serial(*_check_layers(layers, "residual"))
    spec = f"residual({body.spec[len('serial('):-1]})"

    def init_fn(key, input_shape):
        input_shape = _checks.shape_tuple(input_shape)
        out_shape, params, state = body.init_fn(key, input_shape)
        if len(out_shape) != len(input_shape) or any(a != b and -1 not in (a, b) for a, b in zip(out_shape, input_shape)):
            raise ValueError(f"{spec}: the body must keep the input shape {input_shape}, but it gives {out_shape}")
        return input_shape, params, state

    def forward_fn(params, state, x, *, key=None, train=False):
        y, state, tape = body.forward_fn(params, state, x, key=key, train=train)
        if y.shape != x.shape:
            raise ValueError(f"{spec}: the body must keep the input shape {tuple(x.shape)}, but it gives {tuple(y.shape)}")
        return x + y.astype(x.dtype), state, tape  # one dtype under a precision policy (a no-op otherwise)

    def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
        grads, x_bar = cast(Callable[..., Any], body.backward_fn)(params, state, tape, y_bar, key=key, train=train)
        return grads, y_bar + x_bar.astype(y_bar.dtype)

    return _combinator("residual", spec, body.children, init_fn, forward_fn, backward_fn)


def FanOut(num: int) -> Layer:
    """Copies its input ``num`` times: ``x -> (x, ..., x)`` (for :func:`parallel`).

    Backward: the input feeds every copy, so its cotangent is the *sum* of the
    copies' cotangents (forgetting to add them is the classic bug of
    hand-written backprop).
    """
    num = _checks.positive_int(num, "num")
    spec = f"FanOut({num})"

    def init_fn(key, input_shape):
        del key
        return (input_shape,) * num, {}, {}

    def forward_fn(params, state, x, *, key=None, train=False):
        del params, key, train
        return (x,) * num, state, None

    def backward_fn(params, state, tape, y_bars, *, key=None, train=False):
        del params, state, tape, key, train
        return {}, functools.reduce(lambda a, b: a + b, y_bars)

    return Layer("fan_out", spec, init_fn, forward_fn, backward_fn)


def _fan_in(name: str, spec: str, out_shape: Callable[..., Any], combine: Callable[..., Any], split: Callable[..., Any]) -> Layer:
    def init_fn(key, input_shapes):
        del key
        if not isinstance(input_shapes, (tuple, list)) or not input_shapes or not all(isinstance(s, (tuple, list)) for s in input_shapes):
            raise ValueError(f"{spec} expects a tuple of input shapes (from parallel), got {input_shapes!r}")
        return out_shape([_checks.shape_tuple(s) for s in input_shapes]), {}, {}

    def forward_fn(params, state, xs, *, key=None, train=False):
        del params, key, train
        if not isinstance(xs, (tuple, list)) or not xs:
            raise ValueError(f"{spec} expects a tuple of arrays (from parallel), got {type(xs).__name__}")
        return combine(xs), state, tuple(xs)

    def backward_fn(params, state, xs, y_bar, *, key=None, train=False):
        del params, state, key, train
        return {}, split(xs, y_bar)

    return Layer(name, spec, init_fn, forward_fn, backward_fn)


def FanInSum() -> Layer:
    """Sums a tuple of same-shaped inputs: ``(x_0, ..., x_n) -> x_0 + ... + x_n``.

    Backward: every input receives the output's cotangent unchanged.
    """
    spec = "FanInSum()"

    def out_shape(shapes):
        first = shapes[0]
        for s in shapes[1:]:
            if len(s) != len(first) or any(a != b and -1 not in (a, b) for a, b in zip(s, first)):
                raise ValueError(f"{spec} needs inputs of one shape, got {shapes}")
        return first

    def combine(xs):
        shapes = [tuple(x.shape) for x in xs]
        if len(set(shapes)) != 1:
            raise ValueError(f"{spec} needs inputs of one shape, got {shapes}")
        return sum((x.astype(xs[0].dtype) for x in xs[1:]), xs[0])

    return _fan_in("fan_in_sum", spec, out_shape, combine, lambda xs, y_bar: tuple(y_bar for _ in xs))


def FanInConcat(axis: int = -1) -> Layer:
    """Concatenates a tuple of inputs along ``axis`` (default: the features).

    Backward: the output's cotangent is cut back into the inputs' pieces.
    """
    axis = _checks.int_value(axis, "axis")
    spec = f"FanInConcat(axis={axis})"

    def out_shape(shapes):
        rank = len(shapes[0])
        if any(len(s) != rank for s in shapes) or not -rank <= axis < rank:
            raise ValueError(f"{spec} needs inputs of one rank with axis {axis} in range, got {shapes}")
        ax = axis % rank
        sizes = [s[ax] for s in shapes]
        total = -1 if -1 in sizes else sum(sizes)
        return shapes[0][:ax] + (total,) + shapes[0][ax + 1 :]

    def combine(xs):
        out_shape([tuple(x.shape) for x in xs])
        return jnp.concatenate([x.astype(xs[0].dtype) for x in xs], axis=axis)

    def split(xs, y_bar):
        bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
        return tuple(jnp.split(y_bar, bounds, axis=axis))

    return _fan_in("fan_in_concat", spec, out_shape, combine, split)
