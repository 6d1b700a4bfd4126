"""Find where a NaN or an Inf first appears: which layer's output, input cotangent or params gradient.

:func:`locate_nonfinite` runs a model forward and backward on one batch,
through the same taped passes that :mod:`jaxnets.backprop` uses, and checks
every intermediate for finiteness, in the order they are computed:

1. the params (by path, e.g. ``dense_1/w``) and the input;
2. each layer's output, innermost layers first (``residual_0/dense_1``);
3. the model's output, the loss and its cotangent ``dL/dy``;
4. each layer's input cotangent and params gradient, from the last layer back.

The first non-finite entry is the culprit: a layer whose output is NaN while
its input was finite produced it. The whole check is one compiled program.
A model holding a layer without a hand rule is checked forward only, and its
params gradients come from ``jax.vjp``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets.layers import Layer
from jaxnets.layers.core import observing

__all__ = ["Check", "NonFiniteReport", "locate_nonfinite"]


@dataclasses.dataclass(frozen=True)
class Check:
    """One intermediate: where (``path``), what (``"output"``, ``"params gradient"``, ...), and whether it is finite."""

    path: str
    what: str
    finite: bool
    bad: int  # how many entries are NaN or Inf
    size: int


@dataclasses.dataclass(frozen=True)
class NonFiniteReport:
    """Every check in the order computed; :attr:`first` is the culprit, or ``None``."""

    checks: list[Any]

    @property
    def first(self) -> Check | None:
        return next((c for c in self.checks if not c.finite), None)

    @property
    def finite(self) -> bool:
        return self.first is None

    def __str__(self) -> str:
        first = self.first
        head = ("everything is finite" if first is None
                else f"first non-finite: {first.what} of {first.path} ({first.bad} of {first.size} entries)")
        rows = [f"  {'ok ' if c.finite else 'BAD'} {c.what:<16} {c.path}" + ("" if c.finite else f"  ({c.bad}/{c.size})")
                for c in self.checks]
        return head + "\n" + "\n".join(rows)


def _float_leaves(tree: Any) -> list[tuple[str, Any]]:
    out = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact):
            out.append((jax.tree_util.keystr(path, simple=True, separator="/"), leaf))
    return out


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p) or "(model)"


def locate_nonfinite(model: Layer, params: Any, x: Any, y: Any = None, *, loss: Callable[..., Any] | None = None,
                     state: Any = None, key: jax.Array | None = None, train: bool = True) -> NonFiniteReport:
    """Run ``model`` forward and backward on one batch and report the first non-finite intermediate.

    Args:
      model: any jaxnets model.
      params: its params (and ``state``, for a model with BatchNorm).
      x: the input batch (an array or a tuple of arrays).
      y: the targets, with ``loss``; without a loss the backward pass starts
        from ``dL/dy = 1`` everywhere.
      loss: ``loss(outputs, targets) -> scalar``.
      key: for random layers in training mode (dropout).
      train: the mode to run in (training, by default, as where divergence happens).

    Returns:
      A :class:`NonFiniteReport`: ``report.first`` names the culprit
      (``report.first.path``, ``report.first.what``); ``print(report)`` lists every check.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    if loss is not None and y is None:
        raise ValueError("loss needs the targets: pass y=...")
    if loss is not None:
        _checks.callable_arg(loss, "loss", "loss(outputs, targets) -> scalar")
    train = _checks.boolean(train, "train")
    if key is not None:
        _checks.prng_key(key, "key")
    for leaf in jax.tree_util.tree_leaves(x):
        _checks.real_array(leaf, "x")
    state = {} if state is None else state
    labels: list[tuple[str, str]] = []

    def run(params, state, x, y, key):
        flags = []

        def record(path, what, tree):
            for leaf_path, leaf in _float_leaves(tree):
                labels.append((_join(path, leaf_path) if what in ("params", "params gradient") else _join(path), what))
                flags.append((jnp.sum(~jnp.isfinite(leaf)), leaf.size))

        def observe(path, phase, result):
            if phase == "forward":
                record(path, "output", result[0])
            else:
                params_bar, x_bar = result
                record(path, "input cotangent", x_bar)
                record(path, "params gradient", params_bar)

        record("", "params", params)
        record("input", "input", x)
        with observing(observe):
            out, _, tape = model.tape_forward(params, state, x, key=key, train=train)
        record("", "output", out)
        if loss is not None:
            value, y_bar = jax.value_and_grad(loss)(out, y)
            record("loss", "loss", value)
        else:
            y_bar = jax.tree_util.tree_map(jnp.ones_like, out)
        record("", "output cotangent", y_bar)
        if model.has_rule:
            with observing(observe):
                params_bar, x_bar = model.tape_backward(params, state, tape, y_bar, key=key, train=train)
        else:
            _, pullback = jax.vjp(lambda p: model.apply_with_state(p, state, x, key=key, train=train)[0], params)
            params_bar, x_bar = pullback(y_bar)[0], None
        record("input", "input cotangent", x_bar)
        record("", "params gradient", params_bar)
        return flags

    flags = jax.jit(run)(params, state, x, y, key)
    checks, seen = [], set()
    for (path, what), (bad, size) in zip(labels, flags):
        # a combinator reports its children's gradients again, and the model all of them: keep the first
        if (path, what) not in seen and int(size) > 0:
            seen.add((path, what))
            checks.append(Check(path, what, int(bad) == 0, int(bad), int(size)))
    return NonFiniteReport(checks)
