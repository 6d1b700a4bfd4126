"""A model's summary: each layer's path, output shape, params, state and FLOPs, as a table and as data.

:func:`summary` traces the model once at the input shape (``jax.eval_shape``:
nothing is allocated, nothing runs) and records, for every layer inside it
(combinators and the layers they hold, by path: ``residual_0/dense_1``),
its output shape and the size of its params and state. Each primitive
layer's FLOPs are XLA's own count (``cost_analysis()["flops"]`` of the
compiled program) of that layer's ``apply`` alone, in inference mode, at the
input it receives inside the model; the total is XLA's count of the whole
model compiled as one program.

Example::

    >>> print(jaxnets.summary(L.serial(L.Dense(128), L.Relu(), L.Dense(10)), (-1, 64)))
    serial(Dense(128), Relu(), Dense(10)) on input (1, 64)
    path     layer       output shape  params  state   FLOPs
    dense_0  Dense(128)  (1, 128)       8,320      0  16,512
    relu_0   Relu()      (1, 128)           0      0     128
    dense_1  Dense(10)   (1, 10)        1,290      0   2,570
    total                (1, 10)        9,610      0  19,210
    state: none
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets.layers.core import Layer, casting, count_params, observing

__all__ = ["LayerSummary", "Summary", "summary"]


class LayerSummary(NamedTuple):
    """One row of a :class:`Summary`.

    Attributes:
      path: where the layer sits (``"residual_0/dense_1"``), as its params are keyed.
      layer: the layer's ``repr`` (``"Dense(128)"``).
      output_shape: its output's shape (a tuple of shapes for several outputs).
      params: number of scalars in its params (its children's included).
      state: number of scalars in its state (BatchNorm's running statistics).
      flops: XLA's FLOP count of the layer alone at this input (its children's summed, for a combinator).
      transcendentals: XLA's count of transcendental operations (``tanh``, ``exp``, ``log``, ...), which it
        keeps apart from ``flops``.
      depth: nesting depth (0 for the model's own children).
    """

    path: str
    layer: str
    output_shape: Any
    params: int
    state: int
    flops: float
    transcendentals: float
    depth: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """A model's summary: :attr:`rows` (one :class:`LayerSummary` per layer, in call order) and the totals.

    ``str(summary)`` is an aligned text table.

    Attributes:
      model: the model's ``repr``.
      input_shape: the concrete input shape summarised (``-1`` replaced by the batch).
      rows: one :class:`LayerSummary` per layer inside the model.
      params: the model's number of params scalars.
      state: the model's number of state scalars.
      state_bytes: the state's size in bytes.
      flops: XLA's FLOP count of the whole model compiled as one program; it also
        counts what the combinators compute themselves (a residual's addition),
        so it may exceed the sum of the rows.
      transcendentals: XLA's count of the whole model's transcendental operations.
      output_shape: the model's output shape.
    """

    model: str
    input_shape: Any
    rows: tuple[Any, ...]
    params: int
    state: int
    state_bytes: int
    flops: float
    transcendentals: float
    output_shape: Any

    def __str__(self) -> str:
        header = ("path", "layer", "output shape", "params", "state", "FLOPs")
        body = [("  " * r.depth + r.path.rsplit("/", 1)[-1] if r.depth else r.path, _short(r.layer), _shape(r.output_shape),
                 f"{r.params:,}", f"{r.state:,}", f"{r.flops:,.0f}") for r in self.rows]
        total = ("total", "", _shape(self.output_shape), f"{self.params:,}", f"{self.state:,}", f"{self.flops:,.0f}")
        table = [header] + body + [total]
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        right = (False, False, False, True, True, True)
        lines = ["  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(line, widths, right)).rstrip()
                 for line in table]
        state = f"state: {self.state:,} scalars ({self.state_bytes:,} bytes)" if self.state else "state: none"
        return "\n".join([f"{_short(self.model, 60)} on input {_shape(self.input_shape)}"] + lines + [state])


def _short(text: str, width: int = 36) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _shape(shape: Any) -> str:
    if isinstance(shape, tuple) and shape and all(isinstance(s, tuple) for s in shape):
        return "(" + ", ".join(_shape(s) for s in shape) + ")"
    return str(tuple(shape))


def _structs(shape: Any, dtype: Any) -> Any:
    """``ShapeDtypeStruct`` pytree of an input shape (or a tuple of them)."""
    if isinstance(shape, tuple) and shape and all(isinstance(s, tuple) for s in shape):
        return tuple(_structs(s, dtype) for s in shape)
    return jax.ShapeDtypeStruct(shape, dtype)


def _concrete(shape: Any, batch: int) -> Any:
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(s, (tuple, list)) for s in shape):
        return tuple(_concrete(s, batch) for s in shape)
    return tuple(batch if d == -1 else d for d in _checks.shape_tuple(shape))


def _out_shape(tree: Any) -> Any:
    if isinstance(tree, (tuple, list)):
        return tuple(_out_shape(t) for t in tree)
    return tuple(tree.shape)


def _subtree(tree: Any, path: str) -> Any:
    for part in path.split("/"):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
    return tree


def _size(tree: Any) -> int:
    return count_params(tree) if jax.tree_util.tree_leaves(tree) else 0


def _bytes(tree: Any) -> int:
    return sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(tree))


def _cost(layer: Layer, params: Any, state: Any, x: Any) -> tuple[float, float]:
    """XLA's ``(flops, transcendentals)`` of ``layer.apply_with_state`` (inference mode) on abstract arguments."""

    def run(params, state, x):
        return layer.apply_with_state(params, state, x, train=False)[0]

    cost = jax.jit(run).lower(params, state, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    cost = cost or {}
    return float(cost.get("flops", 0.0)), float(cost.get("transcendentals", 0.0))


def summary(model: Layer, input_shape: Sequence[int] | Sequence[Sequence[int]], *, batch: int = 1,
            dtype: Any = jnp.float32) -> Summary:
    """Each layer's path, output shape, params, state and FLOPs, and the model's totals.

    Args:
      model: a :class:`~jaxnets.layers.Layer`.
      input_shape: as for ``model.init`` (``-1`` for the batch), or a tuple of
        shapes for a model of several inputs.
      batch: the size that replaces ``-1`` (FLOPs scale with it).
      dtype: the input's dtype (``jnp.int32`` for token ids).

    Returns:
      A :class:`Summary`: ``str()`` of it is a table; ``.rows`` holds one
      :class:`LayerSummary` per layer (combinators and their children, in
      call order), ``.params``, ``.state``, ``.state_bytes``, ``.flops`` the
      totals. Params and state are counted from ``jax.eval_shape`` of
      ``init`` (nothing is allocated); FLOPs are XLA's
      ``cost_analysis()["flops"]`` of each primitive layer's ``apply``
      compiled alone at the input it gets inside the model (in inference
      mode: dropout off, BatchNorm on its running statistics), and of the
      whole model for the total. A matrix product ``(m, k) @ (k, n)`` counts
      ``2 m k n``, an element-wise operation one per element; XLA counts
      transcendental functions (``tanh``, ``exp``) apart, in ``transcendentals``.

    Raises:
      TypeError: if ``model`` is not a Layer.
      ValueError: if ``batch`` is not a positive int or ``input_shape`` is not a shape.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    batch = _checks.positive_int(batch, "batch")
    shape = _concrete(input_shape, batch)
    x = _structs(shape, jnp.dtype(dtype))
    _, params, state = jax.eval_shape(lambda k: model.init_fn(k, shape), jax.random.key(0))

    outputs: dict[str, Any] = {}
    inputs: dict[str, tuple[Layer, Any]] = {}

    def observe(path, phase, result):
        if phase == "forward":
            outputs[path] = _out_shape(result[0])

    def plan(path, layer, phase, fn):
        def recorded(params, state, x, **kwargs):
            inputs[path] = (layer, jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x))
            return fn(params, state, x, **kwargs)

        return recorded

    def forward(params, state, x):
        with observing(observe), casting(plan):
            return model.apply_with_state(params, state, x, train=False)[0]

    y = jax.eval_shape(forward, params, state, x)
    layers = _layers_by_path(model)

    costs = {path: _cost(layer, _subtree(params, path), _subtree(state, path), x_in)
             for path, (layer, x_in) in inputs.items()}
    flops, transcendentals = _cost(model, params, state, x)
    totals = (_size(params), _size(state), _bytes(state), flops, transcendentals, _out_shape(y))
    if not model.children:  # a primitive model is its own only row
        row = LayerSummary(model.name, repr(model), _out_shape(y), _size(params), _size(state), flops, transcendentals, 0)
        return Summary(repr(model), shape, (row,), *totals)
    rows = []
    for path in [p for p in layers if p in outputs]:  # definition order: a combinator before its children
        inside = [c for p, c in costs.items() if p == path or p.startswith(path + "/")]
        rows.append(LayerSummary(path, repr(layers[path]), outputs[path], _size(_subtree(params, path)),
                                 _size(_subtree(state, path)), sum(c[0] for c in inside), sum(c[1] for c in inside),
                                 path.count("/")))
    return Summary(repr(model), shape, tuple(rows), *totals)


def _layers_by_path(model: Layer) -> dict[str, Layer]:
    found = {}

    def walk(layer, prefix):
        for name, child in layer.children:
            path = f"{prefix}/{name}" if prefix else name
            found[path] = child
            walk(child, path)

    walk(model, "")
    return found
