"""What :func:`jaxnets.fit` checks and builds before it hands a run to the loop: the step, the source, the state.

Everything here runs before anything is compiled, so a wrong model, loss,
optimizer, data, state or path fails with a message naming it, not inside
the first compiled call.
"""

from __future__ import annotations

import functools
import hashlib
import types
from typing import Any, Callable, Sequence, cast

import optax

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets import distributed
from jaxnets import precision as precision_module
from jaxnets.evaluation import normalized_objective, resolve_metrics
from jaxnets.layers import Layer
from jaxnets.train.epoch import steps_per_epoch
from jaxnets.train.sources import ArraySource
from jaxnets.train.state import (TrainState, check_finite_state, check_state_fits, check_state_for_model,
                                 init_train_state)
from jaxnets.train.step import check_gradient_fits, default_gradient, make_step, objective_from_loss

__all__ = ["describe_function", "split_data", "source_for", "check_targets", "cached_step", "placed_step",
           "initial_state", "as_placement"]


def describe_function(fn: Any, depth: int = 8) -> str:
    """A digest of what a function computes: its qualified name and, recursively, the constants it closes over.

    Two optimizers built with other names or hyperparameters (``nadam`` for
    ``adam``, another learning rate) get other digests; the same builder
    called twice with the same arguments gets the same one. Used to tell a
    checkpoint's configuration from this run's.
    """
    seen: set = set()
    parts: list[str] = []

    def visit(obj, level):
        if level > depth:
            return
        if isinstance(obj, (bool, int, float, str, bytes, type(None), np.number)):
            parts.append(repr(obj))
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (types.FunctionType, types.MethodType)):
            fn_ = getattr(obj, "__func__", obj)
            parts.append(f"{fn_.__module__}.{fn_.__qualname__}")
            for cell in fn_.__closure__ or ():
                try:
                    visit(cell.cell_contents, level + 1)
                except ValueError:  # an empty cell
                    pass
            for default in fn_.__defaults__ or ():
                visit(default, level + 1)
        elif isinstance(obj, functools.partial):
            visit(obj.func, level + 1)
            for a in obj.args:
                visit(a, level + 1)
            for k, v in sorted(obj.keywords.items()):
                parts.append(k)
                visit(v, level + 1)
        elif isinstance(obj, (tuple, list)):
            parts.append(type(obj).__name__)
            for item in obj:
                visit(item, level + 1)
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                parts.append(str(k))
                visit(obj[k], level + 1)
        elif isinstance(obj, (jax.Array, np.ndarray)) and np.size(obj) <= 16:
            if jnp.issubdtype(obj.dtype, jax.dtypes.prng_key):
                obj = jax.random.key_data(obj)
            parts.append(repr(np.asarray(obj).tolist()))
        else:
            parts.append(type(obj).__qualname__)

    visit(fn, 0)
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


def split_data(data: Any, test: Any, pair: bool) -> tuple[Any, Any]:
    """``(data, test)`` from a Dataset, a pair or a pytree; a Dataset's test split is ``test`` unless given."""
    if test is None and hasattr(data, "x_test"):
        test = (data.x_test, data.y_test)
    if hasattr(data, "x_train"):
        data = (data.x_train, data.y_train)
    if hasattr(test, "x_test"):  # a Dataset given as test: its held-out split
        test = (cast(Any, test).x_test, cast(Any, test).y_test)
    if hasattr(data, "bind"):  # a stream: checked when bound
        return data, test
    if isinstance(data, list):
        data = tuple(data)
    if pair and not (isinstance(data, tuple) and len(data) == 2):
        _inputs.check_data(data, "data", pair=True)  # the pair's own message
    return data, test


def _check_test(data: Any, test: Any, pair: bool) -> Any:
    test, _ = _inputs.check_data(test, "test", pair=pair)
    want = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)[1:]), data)
    got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)[1:]), test)
    if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or want != got:
        if pair and jax.tree_util.tree_structure(data) == jax.tree_util.tree_structure(test):
            raise ValueError(f"test x must have the feature shape of data x {want[0]}, got {got[0]}")
        raise ValueError(f"test must have the structure and feature shapes of data {want}, got {got}")
    return test


def source_for(data: Any, test: Any, *, pair: bool, batch_size: int, drop_last: bool, placement: Any) -> tuple[Any, Any]:
    """The source of ``fit``'s data (arrays in memory, or a stream bound to these options) and its placed test data."""
    place = None if placement is None else placement.data
    if hasattr(data, "bind"):  # a stream (jaxnets.streaming.Stream): the source protocol, bound to fit's options
        source = data.bind(batch_size=batch_size, drop_last=drop_last, placement=placement, pair=pair)
        example = source.example
    else:
        if pair:
            _inputs.check_data(data, "data", pair=True)
        source = ArraySource(data, batch_size, drop_last=drop_last, place=place)
        example = source.data
    if test is not None:
        test = _check_test(example, test, pair)
        test = place(test) if place is not None else jax.tree_util.tree_map(jnp.asarray, test)
    return source, test


def check_targets(model: Any, state: Any, example: Any, test: Any) -> int | None:
    """Labels out of range for the model's outputs fail here (pairs of arrays); returns the number of classes."""
    x, y = example
    if not isinstance(x, jax.Array) or not isinstance(y, jax.Array):
        return None
    out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], state.params, state.model_state,
                         jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
    if not isinstance(out, jax.ShapeDtypeStruct):
        return None
    _inputs.check_labels(y, out.shape, "data")
    if test is not None:
        _inputs.check_labels(test[1], out.shape, "test")
    integer = np.issubdtype(np.dtype(y.dtype), np.integer)
    return out.shape[-1] if integer and out.shape and out.shape[-1] > 0 else None


def placed_step(step: Callable[..., Any], placement: Any) -> Callable[..., Any]:
    """``step`` on a batch constrained to the placement's data sharding, returning the state in its sharding."""

    def placed(state, batch):
        state, metrics = step(state, placement.constrain_batch(batch))
        return placement.constrain_state(state), metrics

    placed.constrain_state = placement.constrain_state  # the program keeps its output state in this sharding too
    return placed


def _build_step(model, optimizer, loss, objective, metrics, gradient, transform, placement):
    if loss is not None:
        objective = objective_from_loss(model, loss, metrics=dict(metrics))
    step = make_step(objective, optimizer, gradient=gradient, transform=transform, jit=False)
    return step if placement is None else placed_step(step, placement)


@functools.lru_cache(maxsize=32)
def _cached(*options):
    return _build_step(*options)


def cached_step(model: Layer | None, optimizer: optax.GradientTransformation, *, loss: Callable[..., Any] | None = None,
                objective: Callable[..., Any] | None = None, metrics: Sequence[tuple[str, Callable[..., Any]]] = (),
                gradient: Callable[..., Any] | None = None, transform: Callable[..., Any] | None = None,
                placement: distributed.Placement | None = None) -> Callable[..., Any]:
    """The pure step of a ``fit`` configuration, the same object for the same one (so nothing recompiles)."""
    options = (model, optimizer, loss, objective, tuple(metrics), gradient, transform, placement)
    try:
        return _cached(*options)
    except TypeError:  # something unhashable: built for this call only
        return _build_step(*options)


def as_placement(placement: Any, batch_size: int) -> distributed.Placement | None:
    """``fit(placement=)``: a :class:`jaxnets.distributed.Placement`, or a mesh (or devices) made into one."""
    if placement is None or isinstance(placement, distributed.Placement):
        if placement is not None and not placement.members and batch_size % placement.size:
            raise ValueError(f"batch_size must be divisible by the {placement.size} devices of mesh axis "
                             f"{placement.axis!r}, got {batch_size}")
        return placement
    return distributed.placement(placement, batch_size=batch_size)


def initial_state(model: Layer | None, optimizer: optax.GradientTransformation, state: TrainState | None, *,
                  key: jax.Array | None, seed: int | None, input_shape: Sequence[int] | None, example: Any,
                  loss: Callable[..., Any] | None, precision: Any, gradient: Callable[..., Any] | None) -> TrainState:
    """A fresh state, or a copy of the given one checked against the model, the optimizer and its precision."""
    if input_shape is None and isinstance(example, tuple) and isinstance(example[0], jax.Array):
        input_shape = (-1,) + tuple(example[0].shape[1:])
    if state is None:
        if input_shape is None or model is None:
            raise TypeError("fit needs a model and input_shape, or a state, when data is not a pair (x, y) whose x is an array")
        state = init_train_state(model, optimizer, input_shape, key=key, seed=seed)
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    else:
        _inputs.check_not_donated(state, "state")
        if loss is not None and isinstance(example, tuple):  # data that does not fit the model: the layer's message first
            check_targets(model, state, example, None)
        if input_shape is not None and model is not None:
            check_state_for_model(model, state, input_shape)
        precision_module.check_scaling_matches(optimizer, state.opt_state, f"precision={precision!r}")
        check_state_fits(optimizer, state)
        check_finite_state(state)
    check_gradient_fits(jax.eval_shape(optimizer.init, state.params), default_gradient if gradient is None else gradient)
    return state


def resolve(metrics: Any, y: Any, loss: Any) -> tuple[tuple[str, Callable[..., Any]], ...]:
    """``fit``'s metrics as ``((name, fn), ...)``: default accuracy for integer labels; only with a loss."""
    if loss is None:
        return ()
    return tuple(resolve_metrics(metrics, y).items())


def num_steps(num_examples: int, batch_size: int, drop_last: bool) -> int:
    return steps_per_epoch(num_examples, _checks.positive_int(batch_size, "batch_size"), drop_last)


__all__ += ["resolve", "num_steps", "normalized_objective"]
