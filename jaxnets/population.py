"""Populations: many models trained at once, in one compiled program.

A population is a set of members that share a model, a loss and the data,
and differ in their seed (initial params, shuffling, dropout) and in the
optimizer's hyperparameters. :func:`fit_population` stacks the members'
train states along a leading axis and ``jax.vmap``\\ s the program of
:func:`jaxnets.fit` over it: each member's small matrix products become one
batched product, and the host dispatches once per call for all of them.

Hyperparameters enter through ``optax.inject_hyperparams``: they live in
each member's optimizer state, so one update function serves all members.
Member ``i`` computes what ``jaxnets.fit`` computes with ``seed=seeds[i]``
and ``optimizer(**{name: values[i]})`` (the tests check it), up to float
rounding in the batched products.

Example::

    members = population.grid(seed=[0, 1], learning_rate=[1e-3, 3e-3])
    state, history = population.fit_population(model, loss, optax.adam, digits, members=members)
    best = population.best_member(history)
    params = population.member(state, best).params
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks, _run, train
from jaxnets.evaluation import resolve_metrics
from jaxnets.layers import Layer

__all__ = ["grid", "fit_population", "member", "best_member"]


def grid(**axes: Sequence) -> dict[str, list]:
    """All combinations of the given values, as equal-length columns.

    ``grid(seed=[0, 1], learning_rate=[0.1, 0.01])`` gives
    ``{"seed": [0, 0, 1, 1], "learning_rate": [0.1, 0.01, 0.1, 0.01]}``
    (the last axis varies fastest, as in ``itertools.product``).
    """
    if not axes:
        raise ValueError("grid needs at least one axis, e.g. grid(seed=range(4))")
    names, values = list(axes), []
    for name, column in axes.items():
        if isinstance(column, (str, bytes)) or not hasattr(column, "__iter__"):
            raise TypeError(f"grid axis {name!r} must be a sequence of values, got {column!r}")
        column = list(column)
        if not column:
            raise ValueError(f"grid axis {name!r} is empty")
        values.append(column)
    rows = list(itertools.product(*values))
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _check_members(members: Any) -> tuple[list[int], dict[str, np.ndarray]]:
    if not isinstance(members, Mapping) or not members:
        raise TypeError(f"members must be a non-empty mapping of name -> values, e.g. grid(seed=range(8)), got {members!r}")
    columns = {}
    for name, values in members.items():
        if not isinstance(name, str):
            raise TypeError(f"members keys must be strings (seed or hyperparameter names), got {name!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(f"members[{name!r}] must be a sequence with one value per member, got {values!r}")
        columns[name] = list(values)
    sizes = {name: len(values) for name, values in columns.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(f"members must all have the same, positive number of values, got lengths {sizes}")
    size = next(iter(sizes.values()))
    seeds = columns.pop("seed", [0] * size)
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"members['seed'] must hold ints, got {s!r}")
    hyperparams = {}
    for name, values in columns.items():
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"members[{name!r}] must hold numbers (hyperparameter values), got {values!r}")
        hyperparams[name] = array
    return [int(s) for s in seeds], hyperparams


#: Hyperparameters whose values are checked per member: name -> (low, high, high included).
_RANGES = {"learning_rate": (0.0, np.inf, False), "b1": (0.0, 1.0, False), "b2": (0.0, 1.0, False),
           "decay": (0.0, 1.0, True), "momentum": (0.0, 1.0, False), "eps": (0.0, np.inf, False),
           "weight_decay": (0.0, np.inf, False)}


def _check_hyperparams(hyperparams: dict[str, np.ndarray]) -> None:
    """Concrete hyperparameter values out of range (a negative learning rate, ``b1 = 1.5``) refused, naming the member."""
    for name, values in hyperparams.items():
        values = np.asarray(values, dtype=float).reshape(-1)
        low, high, closed = _RANGES.get(name, (-np.inf, np.inf, False))
        for index, value in enumerate(values):
            ok = np.isfinite(value) and low <= value and (value <= high if closed else value < high or high == np.inf)
            if not ok:
                interval = f"[{low:g}, {high:g}{']' if closed else ')'}" if name in _RANGES else "finite"
                raise ValueError(f"members[{name!r}][{index}] (member {index}) must be {interval}, got {value}")


def _member_optimizer(optimizer: Any, hyperparams: dict[str, np.ndarray]) -> Callable[[dict], optax.GradientTransformation]:
    """``hyperparams -> GradientTransformation`` whose state carries them (``optax.inject_hyperparams``)."""
    if not hyperparams:
        _run.check_optimizer(optimizer)
        return lambda h: optimizer
    if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
        raise TypeError("with hyperparameters in members, optimizer must be a factory such as optax.adam or "
                        f"jaxnets.optim.adam (called with them), not a built GradientTransformation; got {optimizer!r}")
    if not callable(optimizer):
        raise TypeError(f"optimizer must be an optimizer factory such as optax.adam, got {optimizer!r}")
    injected = optax.inject_hyperparams(optimizer)
    try:
        sample = injected(**{k: v[0].item() for k, v in hyperparams.items()})
    except TypeError as error:
        raise TypeError(f"optimizer {getattr(optimizer, '__name__', optimizer)!r} does not accept the hyperparameters "
                        f"{sorted(hyperparams)}: {error}") from None
    return lambda h: injected(**h) if h else sample


def fit_population(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: Any,
    data: Any = None,
    *,
    members: Mapping[str, Sequence] | None = None,
    state: train.TrainState | None = None,
    test: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    metrics: Mapping[str, Callable] | None = None,
    epochs_per_call: int = 1,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    progress: bool = True,
    verbose: bool = False,
    mesh: Any = None,
    data_axis: str = "data",
    **deprecated: Any,
) -> tuple[train.TrainState, dict[str, Any]]:
    """Trains every member of a population at once; one program, vmapped over members.

    Args:
      model: as for :func:`jaxnets.fit`, as are ``loss``, ``data``, ``test``,
        ``epochs``, ``batch_size``, ``metrics``, ``epochs_per_call``,
        ``drop_last``, ``eval_batch_size``, ``progress`` and ``verbose``.
      optimizer: an ``optax.GradientTransformation`` when ``members`` holds
        only seeds; otherwise a factory taking the hyperparameters as keyword
        arguments (``optax.adam``, ``jaxnets.optim.adamw``, or a
        ``functools.partial`` of one fixing the others).
      members: ``name -> one value per member``: ``"seed"`` (ints; 0 for all
        if absent) and any numeric hyperparameters of ``optimizer``, all of
        the same length ``P``. :func:`grid` builds all combinations.
        Required for a fresh population; when continuing from ``state``,
        leave it out to keep the state's hyperparameters.
      state: continue from a population's state (as returned here, or built
        from chosen members, e.g. copies of the best) instead of a fresh one;
        it is copied, never consumed. Its keys and step counters carry on, so
        ``members`` must not hold ``"seed"``; the hyperparameters in
        ``members`` replace those in the state, as population-based training
        does when it perturbs the members it copies.
      mesh: spread the members over a ``jax.sharding.Mesh`` (or a list of
        devices): the member axis of the state split over ``data_axis``
        (the member count must be divisible by its size), the data
        replicated; members never communicate, so each device trains its
        share alone (:mod:`jaxnets.distributed`).
      data_axis: the mesh axis the members are split over.

    Returns:
      ``(state, history)``: a :class:`jaxnets.TrainState` whose leaves have a
      leading axis of length ``P`` (:func:`member` takes one out), and
      ``history`` with ``history[name]`` a ``(epochs, P)`` NumPy array for
      each metric (as in :func:`jaxnets.fit`), ``history["epoch"]``,
      ``history["time"]`` and ``history["members"]`` (the columns of
      ``members``, seeds included unless continuing from ``state``).

    Raises:
      TypeError, ValueError: on mismatched ``members``, an optimizer that
        does not take their hyperparameters, or anything :func:`jaxnets.fit`
        rejects, before anything is compiled.
    """
    if "train" in deprecated:
        warnings.warn("fit_population(train=...) is deprecated: the data argument is called data", DeprecationWarning,
                      stacklevel=2)
        data = deprecated.pop("train") if data is None else data
    if deprecated:
        raise TypeError(f"fit_population() got unexpected keyword arguments {sorted(deprecated)}")
    if data is None:
        raise TypeError("fit_population needs data: a Dataset or a pair (x, y)")
    continued = state is not None
    if continued and isinstance(members, Mapping) and "seed" in members:
        raise ValueError("members must not hold 'seed' when continuing from a state: its keys carry on")
    if continued and not members:  # keep the hyperparameters the state holds
        built = hasattr(optimizer, "init") and hasattr(optimizer, "update")
        held = {} if built else getattr(state.opt_state, "hyperparams", {})
        seeds, hyperparams = [0] * _population_size(state), {k: np.asarray(v) for k, v in held.items()}
    else:
        seeds, hyperparams = _check_members(members)
    _run.check_model(model)
    _run.check_loss(loss)
    placement = None
    if mesh is not None:  # members over devices (jaxnets.distributed): checked before any device work
        from jaxnets import distributed

        placement = distributed.placement(mesh, axis=data_axis, members=len(seeds))
        progress, verbose = (progress, verbose) if distributed.is_main_process() else (False, False)
    run = _run.prepare_run(data, test, objective_mode=False, epochs=epochs, batch_size=batch_size,
                           epochs_per_call=epochs_per_call, drop_last=drop_last,
                           place=None if placement is None else placement.data)
    metrics = resolve_metrics(metrics, run.data[1])
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    _check_hyperparams(hyperparams)
    input_shape = (-1,) + tuple(run.data[0].shape[1:])
    make_optimizer = _member_optimizer(optimizer, hyperparams)
    shared = make_optimizer({})  # the update function; each member's hyperparameters sit in its state

    def init(seed_key, h):
        return train.init_train_state(model, make_optimizer(h), input_shape, key=seed_key)

    if state is None:
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        state = jax.jit(jax.vmap(init))(keys, {k: jnp.asarray(v) for k, v in hyperparams.items()})
    else:
        state = _continued(state, shared, hyperparams, len(seeds))
    if placement is not None:
        state = placement.state(state)
    one = member(state, 0)
    _run.check_state_for_model(model, one, (-1,) + tuple(run.data[0].shape[1:]))
    _run.check_targets(model, one, run)
    chunk = train.make_chunk(model, shared, loss=loss, metrics=metrics, batch_size=run.batch_size, drop_last=drop_last,
                             eval_batch_size=eval_batch_size, epochs_per_call=run.epochs_per_call, on_nonfinite="warn")
    program = jax.jit(jax.vmap(chunk, in_axes=(0, None, None, None),  # results: (epochs, P)
                               out_axes=(0, {"results": 1, "nonfinite_step": 1, "done": 0})), donate_argnums=0)

    def describe(row):
        return " ".join(f"{k}={np.min(v):.4f}..{np.max(v):.4f}" for k, v in row.items())

    history: dict[str, Any] = {"epoch": [], "time": []}
    rows, diverged = [], {}
    for chunk in _run.drive(program, state, run, progress=progress, verbose=verbose, describe=describe, vectorised=True):
        state = chunk.state
        for epoch, row in chunk.rows:
            history["epoch"].append(epoch)
            history["time"].append(chunk.seconds)
            rows.append(row)
        for epoch, flags in chunk.nonfinite:
            for index in np.flatnonzero(np.asarray(flags) >= 0):
                diverged.setdefault(int(index), epoch)
    if diverged:
        warnings.warn("training diverged (loss or params NaN/Inf) for member(s) " +
                      ", ".join(f"{m} at epoch {e}" for m, e in sorted(diverged.items())) +
                      f"; the others trained on. To find the cause, {_run.LOCATE_ADVICE}", RuntimeWarning, stacklevel=2)
    for name in rows[0]:
        history[name] = np.stack([np.asarray(r[name]) for r in rows])  # (epochs, P)
    history["members"] = {**({} if continued else {"seed": list(seeds)}), **{k: v.tolist() for k, v in hyperparams.items()}}
    return state, history


def _continued(state: Any, optimizer: optax.GradientTransformation, hyperparams: dict, size: int) -> train.TrainState:
    """A copy of a population's ``state`` for ``size`` members, with ``hyperparams`` written into its optimizer state."""
    if _population_size(state) != size:
        raise ValueError(f"state must hold {size} members (one per value in members), got step of shape {np.shape(state.step)}")
    one = member(state, 0)
    _run.check_state_fits(optimizer, one)
    state = jax.device_put(state, may_alias=False)  # a copy (compiles nothing): the program donates its input
    if hyperparams:
        held = state.opt_state.hyperparams
        for name, values in hyperparams.items():
            held[name] = jnp.asarray(values, held[name].dtype)
    return state


def _population_size(state: Any) -> int:
    if not isinstance(state, train.TrainState):
        raise TypeError(f"state must be a population's TrainState, got {type(state).__name__}")
    shape = np.shape(state.step)
    if shape == ():
        raise ValueError("state is a single model's TrainState, not a population's (its step has no member axis)")
    return shape[0]


def member(state: train.TrainState, index: int) -> train.TrainState:
    """Member ``index`` of a population's state, as a plain :class:`jaxnets.TrainState`."""
    size = _population_size(state)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -size <= index < size:
        raise ValueError(f"index must be an int in [0, {size}) for a population of {size}, got {index!r}")
    return jax.tree_util.tree_map(lambda leaf: leaf[index], state)


def best_member(history: Mapping[str, Any], metric: str | None = None, *, mode: str | None = None) -> int:
    """Index of the member with the best final value of ``metric``.

    Args:
      history: as returned by :func:`fit_population`.
      metric: a key of ``history``; default ``"test_accuracy"`` if present,
        else ``"test_loss"``, else ``"train_loss"``.
      mode: ``"max"`` or ``"min"``; default ``"min"`` for names ending in
        ``loss``, else ``"max"``.
    """
    if metric is None:
        metric = next((m for m in ("test_accuracy", "test_loss", "train_loss") if m in history), None)
    if metric not in history or np.ndim(history[metric]) != 2:
        choices = sorted(k for k, v in history.items() if np.ndim(v) == 2)
        raise ValueError(f"metric must be one of the population's metrics {choices}, got {metric!r}")
    mode = mode or ("min" if metric.endswith("loss") else "max")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    final = np.asarray(history[metric])[-1]
    return int(np.nanargmin(final) if mode == "min" else np.nanargmax(final))
