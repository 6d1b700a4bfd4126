"""The train state of one model, the keys derived from its counter, and the checks of a state against a model.

Randomness: a :class:`TrainState` holds one fixed key. The step that starts
with counter ``s`` gets ``fold_in(key, 2 s)`` (:func:`model_key`), and an
epoch of shuffled data that starts at ``s`` is ordered by ``fold_in(key,
2 s + 1)`` (:func:`shuffle_key`). Nothing random is carried from step to
step, so an unused key costs nothing (XLA removes it) and a run resumed from
a checkpoint draws exactly the numbers it would have drawn.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _inputs
from jaxnets.layers import Layer

__all__ = ["TrainState", "init_train_state", "model_key", "shuffle_key", "eval_key"]


class TrainState(NamedTuple):
    """Everything that changes while one model trains, as one pytree.

    Attributes:
      params: the model's parameters (nested dict).
      opt_state: the optimizer's state.
      model_state: the model's state, e.g. BatchNorm running statistics (``{}`` if none).
      step: number of optimizer steps taken; an int32 array (so it never retraces).
      key: a fixed typed ``jax.random`` key; each step's and each epoch's keys
        are derived from it and ``step`` (see the module docstring).

    Its ``repr`` is a summary (step, parameter count, shapes), not the arrays.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    key: jax.Array

    def __repr__(self) -> str:
        def size(tree):
            return sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree))

        try:
            step = int(self.step) if np.shape(self.step) == () else f"{np.shape(self.step)[0]} members"
        except Exception:  # noqa: BLE001 - a traced or deleted step
            step = "?"
        shapes = {k: tuple(v[0]) for k, v in _inputs.shapes_by_path(self.params).items()}
        shown = ", ".join(f"{k}: {s}" for k, s in list(shapes.items())[:6]) + (", ..." if len(shapes) > 6 else "")
        return (f"TrainState(step={step}, params={size(self.params):,} in {len(shapes)} arrays {{{shown}}}, "
                f"opt_state={type(self.opt_state).__name__} of {size(self.opt_state):,} values, "
                f"model_state={size(self.model_state):,} values)")

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, *, model_state: Any = None,
               key: jax.Array | None = None, seed: int | None = None) -> "TrainState":
        """A state at step 0 from params one already has (and the model's state), in one call.

        ``optimizer.init(params)`` makes the optimizer state; the key (or
        ``jax.random.key(seed)``, seed 0 by default) is kept for dropout and
        shuffling. The params are used as they are (not copied).
        """
        _inputs.check_optimizer(optimizer)
        _inputs.check_not_donated(params, "params")
        return cls(params, optimizer.init(params), {} if model_state is None else model_state,
                   jnp.zeros((), jnp.int32), _inputs.as_key(key, seed))


def init_train_state(
    model: Layer, optimizer: optax.GradientTransformation, input_shape: Sequence[int], *, key: jax.Array | None = None,
    seed: int | None = None
) -> TrainState:
    """Initial params, optimizer state and model state for ``input_shape`` (batch -1).

    The key (or ``jax.random.key(seed)``, seed 0 by default) is split: one
    part initialises the params, the other is kept for dropout and shuffling.
    To start from params one already has, use :meth:`TrainState.create`.
    """
    model, optimizer = _inputs.check_model(model), _inputs.check_optimizer(optimizer)
    init_key, train_key = jax.random.split(_inputs.as_key(key, seed))
    _, params, model_state = model.init_with_state(init_key, input_shape)
    return TrainState(params, optimizer.init(params), model_state, jnp.zeros((), jnp.int32), train_key)


def model_key(state: Any) -> jax.Array:
    """The key of the step that starts at ``state.step`` (the model's dropout, a transform, DP noise)."""
    return jax.random.fold_in(state.key, 2 * state.step)


def shuffle_key(state: Any) -> jax.Array:
    """The key that orders the epoch that starts at ``state.step``."""
    return jax.random.fold_in(state.key, 2 * state.step + 1)


def eval_key(state: Any, which: int) -> jax.Array:
    """The key of evaluation pass ``which`` (0 train, 1 test) after the epoch that ended at ``state.step``."""
    return jax.random.fold_in(jax.random.fold_in(shuffle_key(state), 1), which)


def check_state_fits(optimizer: optax.GradientTransformation, state: Any) -> None:
    """A state made by another optimizer fails here, printing both structures, not deep inside ``update``."""
    expected = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, state.params))
    got = jax.tree_util.tree_structure(state.opt_state)
    if expected != got:
        raise ValueError(f"state.opt_state does not fit this optimizer (was the state made with another one?): "
                         f"the optimizer's state has structure {expected}, state.opt_state has {got}")


def check_state_for_model(model: Layer, state: Any, input_shape: Sequence[int]) -> None:
    """A state whose params or model state another model made fails here, listing the differing paths."""
    expected = jax.eval_shape(lambda k: model.init_with_state(k, input_shape)[1:], jax.random.key(0))
    _inputs.compare_trees(expected[0], state.params, "state.params")
    _inputs.compare_trees(expected[1], state.model_state, "state.model_state")


def check_finite_state(state: Any, name: str = "state") -> None:
    """A state holding NaN/Inf in any floating leaf is refused before training, naming the first such leaf."""
    flat = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
            if isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer)
            and jnp.issubdtype(leaf.dtype, jnp.inexact)]
    counts = jax.device_get([jnp.sum(~jnp.isfinite(leaf)) for _, leaf in flat])  # one host sync for the whole state
    for (path, _), count in zip(flat, counts):
        if count:
            raise ValueError(f"{name}{jax.tree_util.keystr(path)} holds {int(count)} non-finite value(s) (NaN or Inf): "
                             f"training from it would diverge at once. Start from a finite state (for a NonFiniteError, "
                             f"error.state is the last finite one)")
