"""Evaluation between calls: a jitted function of the state and held-out data, its results added to the history."""

from __future__ import annotations

import functools
from typing import Any, Callable, cast

import jax

import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.evaluation import batched_outputs, objective_means, score
from jaxnets.layers import Layer
from jaxnets.train.callbacks import Callback, Progress, check_every
from jaxnets.train.state import eval_key

__all__ = ["Evaluate", "evaluator"]

_COMPILED: dict[Callable[..., Any], Callable[..., Any]] = {}


def _jitted(fn: Callable[..., Any]) -> Callable[..., Any]:
    try:
        if fn not in _COMPILED:
            _COMPILED[fn] = jax.jit(fn)
        return _COMPILED[fn]
    except TypeError:  # unhashable: compiled for this callback only
        return jax.jit(fn)


class Evaluate(Callback):
    """Runs ``fn(state, data) -> {name: scalar}`` every ``every`` and adds ``prefix + name`` to the current history row.

    ``fn`` is compiled once (and reused by every ``Evaluate`` of the same
    function); ``data`` is an argument of the compiled function, not a
    constant. It runs on the host's schedule, between calls, never inside the
    training program: ``every=(500, "steps")`` evaluates after steps 500,
    1000, ... and at the end of the run.

    Args:
      fn: ``(state, data) -> dict`` of scalars (e.g. a mean loss over ``data``
        in evaluation mode; :func:`jaxnets.train.evaluator` builds one for a
        model and a loss).
      data: any pytree of arrays (held-out data), moved to the device once.
      every: when (see :mod:`jaxnets.train.callbacks`); default after every call.
      prefix: prepended to each name (``"test_"``, ``"val_"``).
    """

    order = -10

    def __init__(self, fn: Callable[[Any, Any], dict[str, Any]], data: Any, *, every: Any = None, prefix: str = "test_"):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(state, data) -> {{name: scalar}}, got {fn!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str such as 'test_', got {prefix!r}")
        self.fn: Callable[[Any, Any], dict[str, Any]]
        self.every: Any
        self.prefix: str
        self.fn, self.every, self.prefix = fn, check_every(every), prefix
        _inputs.check_arrays(data, "data")
        sizes = [np.shape(a)[0] for a in jax.tree_util.tree_leaves(data) if np.ndim(a) >= 1]
        if sizes and max(sizes) == 0:
            raise ValueError(f"data is empty (0 examples): nothing to evaluate")
        self.data: Any = jax.tree_util.tree_map(jax.numpy.asarray, data) if data is not None else None
        self._compiled = _jitted(fn)

    def __repr__(self) -> str:
        return f"Evaluate({getattr(self.fn, '__name__', self.fn)}, every={self.every!r}, prefix={self.prefix!r})"

    def __call__(self, progress: Progress) -> None:
        _inputs.check_not_donated(progress.state, "state")
        results = jax.device_get(self._compiled(progress.state, self.data))
        if not isinstance(results, dict):
            raise TypeError(f"Evaluate's fn must return a dict of scalars, got {type(results).__name__}")
        values: dict[str, float] = {}
        for name, value in results.items():
            if getattr(value, "shape", ()) != ():
                raise ValueError(f"Evaluate's fn returned {name!r} of shape {value.shape}; it must return scalars")
            values[self.prefix + name] = float(value)
        progress.history.set_last(values)
        return None


def evaluator(model: Layer, loss: Callable[..., Any] | None = None, metrics: tuple[tuple[str, Callable[..., Any]], ...] = (), *,
              objective: Callable[..., Any] | None = None, batch_size: int = 1024) -> Callable[[Any, Any], dict[str, Any]]:
    """``fn(state, data) -> {name: mean}`` for :class:`Evaluate`: a model's loss and metrics, or an objective's means.

    With ``loss``: ``data = (x, y)``, the model in evaluation mode over
    batches of ``batch_size``, ``{"loss": ..., **metrics}`` (``metrics`` a
    tuple of ``(name, fn(outputs, y))``). With ``objective``: the means of its
    loss and aux metrics over ``data`` (any pytree), in batches. The key is
    the state's evaluation key (:func:`jaxnets.train.eval_key`). Cached: the
    same arguments give the same function, so nothing recompiles.
    """
    if (loss is None) == (objective is None):
        raise TypeError("evaluator needs exactly one of loss and objective")
    if loss is not None:
        _inputs.check_model(model)
        _inputs.check_loss(loss)
    elif not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, batch, key, model_state), got {objective!r}")
    _checks.positive_int(batch_size, "batch_size")
    if not isinstance(metrics, tuple) or not all(isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str)
                                                  and callable(m[1]) for m in metrics):
        raise TypeError(f"metrics must be a tuple of (name, fn(outputs, y)) pairs, got {metrics!r:.80}")
    try:
        return _evaluator(model, loss, metrics, objective, batch_size)
    except TypeError:  # something unhashable (a model or a loss): built for this call only
        return _evaluator.__wrapped__(model, loss, metrics, objective, batch_size)


@functools.lru_cache(maxsize=64)
def _evaluator(model, loss, metrics, objective, batch_size):
    resolved = dict(metrics)

    def with_loss(state, data):
        x, y = data
        outputs = batched_outputs(model, min(batch_size, _inputs.leading(x)), state.params, state.model_state, x,
                                  eval_key(state, 1))
        return score(outputs, y, cast(Callable[..., Any], loss), resolved)

    def with_objective(state, data):
        return objective_means(cast(Callable[..., Any], objective), min(
batch_size, _inputs.leading(data)), state.params, state.model_state, data,
                               eval_key(state, 1))

    fn = with_loss if loss is not None else with_objective
    fn.__name__ = f"evaluate_{getattr(loss or objective, '__name__', 'objective')}"
    return fn
