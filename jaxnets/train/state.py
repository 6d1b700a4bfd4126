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

from jaxnets import _checks, _inputs
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
        shuffling. The params are copied: the jitted steps donate the state,
        so the caller's arrays (a converter's output, a loaded file) stay valid.
        """
        _inputs.check_optimizer(optimizer)
        _inputs.check_not_donated(params, "params")
        _check_params(params)
        params = jax.tree_util.tree_map(jnp.copy, params)  # the step donates the state: the caller's arrays stay valid
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


def _check_params(params: Any) -> None:
    """Params must be arrays of floating (or complex) numbers: ``jax.grad`` differentiates nothing else."""
    _inputs.check_floating_leaves(params, "params", why="(or complex) dtype to be trained",
                                  empty="params holds no arrays (give the model's params, e.g. model.init(key, shape)[1])")


def _check_counter(state: Any, what: str) -> None:
    """``state`` must carry a ``jax.random`` key and an integer scalar step counter (a TrainState does)."""
    if not (hasattr(state, "key") and hasattr(state, "step")):
        raise TypeError(f"{what} needs a state with .key and .step (a TrainState), got {type(state).__name__}")
    dtype = getattr(state.key, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jax.dtypes.prng_key) or np.shape(state.key) != ():
        raise TypeError(f"state.key must be a typed jax.random key of shape () (jax.random.key(seed)), got "
                        f"{type(state.key).__name__} of dtype {dtype} and shape {np.shape(state.key)}")
    step_dtype = getattr(state.step, "dtype", None)
    if np.shape(state.step) != () or step_dtype is None or not jnp.issubdtype(step_dtype, jnp.integer):
        raise TypeError(f"state.step must be an integer scalar (the step counter), got shape {np.shape(state.step)} "
                        f"and dtype {step_dtype}")


def model_key(state: Any) -> jax.Array:
    """The key of the step that starts at ``state.step`` (the model's dropout, a transform, DP noise)."""
    _check_counter(state, "model_key")
    return jax.random.fold_in(state.key, 2 * state.step)


def shuffle_key(state: Any) -> jax.Array:
    """The key that orders the epoch that starts at ``state.step``."""
    _check_counter(state, "shuffle_key")
    return jax.random.fold_in(state.key, 2 * state.step + 1)


def eval_key(state: Any, which: int) -> jax.Array:
    """The key of evaluation pass ``which`` (0 train, 1 test) after the epoch that ended at ``state.step``."""
    if not _checks.is_traced(which):
        if isinstance(which, (bool, np.bool_)) or not isinstance(which, (int, np.integer)):
            raise TypeError(f"which must be an int >= 0 (0 the training pass, 1 the test pass), got {which!r}")
        if which < 0:
            raise ValueError(f"which must be an int >= 0 (0 the training pass, 1 the test pass), got {which}")
    return jax.random.fold_in(jax.random.fold_in(shuffle_key(state), 1), which)


def check_train_state(state: Any) -> None:
    """A ``TrainState``, or any state with its five fields (params, opt_state, model_state, step, key)."""
    if not all(hasattr(state, f) for f in TrainState._fields):
        raise TypeError(f"state must be a TrainState (params, opt_state, model_state, step, key), got "
                        f"{type(state).__name__}")


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


@jax.jit
def _copied(arrays: list[Any]) -> list[Any]:
    return [jnp.copy(a) for a in arrays]


def copy_state(state: Any) -> Any:
    """A copy of every array leaf, in its own sharding (arrays spread over processes too).

    One compiled copy (cached per structure by ``jax.jit``): about 20 us, where
    ``jax.device_put(state, may_alias=False)`` dispatches a transfer per leaf (2.4 ms
    for the W1 MLP's Adam state, measured by experiments/benchmarks/w1.py's loop rows).
    """
    leaves, treedef = jax.tree_util.tree_flatten(state)
    where = [i for i, a in enumerate(leaves) if isinstance(a, jax.Array)]
    try:
        copies = _copied([leaves[i] for i in where])
    except ValueError:  # leaves on different device sets: copy each where it lives
        def one(a):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(jnp.copy(jax.random.key_data(a)), impl=jax.random.key_impl(a))
            return jnp.copy(a)

        copies = [one(leaves[i]) for i in where]
    for i, c in zip(where, copies):
        leaves[i] = c
    return jax.tree_util.tree_unflatten(treedef, leaves)


def step_counter(state: Any) -> int:
    """The step counter a state carries: its ``.step``, or the first one inside it (a dict of TrainStates); else 0."""
    held = getattr(state, "step", None) if not isinstance(state, dict) else None
    if held is not None and np.shape(held) == ():
        return int(held)
    inner = getattr(state, "state", None)  # an EmaState
    children = list(state.values()) if isinstance(state, dict) else ([inner] if inner is not None else [])
    for child in children:
        found = step_counter(child)
        if found:
            return found
    return 0
