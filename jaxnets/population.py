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
import math
import warnings
from typing import Any, Callable, Mapping, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

import time

from jaxnets import _checks, _inputs, train
import jaxnets.train.history  # jaxnets.train.history and .state: the modules (train.state is not a name of train)
import jaxnets.train.state
from jaxnets.evaluation import resolve_metrics
from jaxnets.train import program as program_module
from jaxnets.train import setup
from jaxnets.layers import Layer

__all__ = ["grid", "fit_population", "member", "best_member"]


def grid(**axes: Sequence[Any]) -> dict[str, list[Any]]:
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


def _member_optimizer(optimizer: Any, hyperparams: dict[str, np.ndarray]) -> Callable[[dict[str, Any]], optax.GradientTransformation]:
    """``hyperparams -> GradientTransformation`` whose state carries them (``optax.inject_hyperparams``)."""
    if not hyperparams:
        _inputs.check_optimizer(optimizer)
        return lambda h: optimizer
    if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
        raise TypeError("with hyperparameters in members, optimizer must be a factory such as optax.adam or "
                        f"jaxnets.optim.adam (called with them), not a built GradientTransformation; got {optimizer!r}")
    if not callable(optimizer):
        raise TypeError(f"optimizer must be an optimizer factory such as optax.adam, got {optimizer!r}")
    injected = optax.inject_hyperparams(cast(Callable[..., optax.GradientTransformation], optimizer))
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
    members: Mapping[str, Sequence[Any]] | None = None,
    state: train.TrainState | None = None,
    test: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    metrics: Mapping[str, Callable[..., Any] | str] | None = None,
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
    _inputs.check_model(model)
    _inputs.check_loss(loss)
    epochs = _checks.positive_int(epochs, "epochs")
    epochs_per_call = _checks.positive_int(epochs_per_call, "epochs_per_call")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    placement = None
    if mesh is not None:  # members over devices (jaxnets.distributed): checked before any device work
        from jaxnets import distributed

        placement = distributed.placement(mesh, axis=data_axis, members=len(seeds))
        progress, verbose = (progress, verbose) if distributed.is_main_process() else (False, False)
    data, test = setup.split_data(data, test, pair=True)
    source, test = setup.source_for(data, test, pair=True, batch_size=batch_size, drop_last=drop_last,
                                    placement=placement)
    x, y = source.data
    metric_fns = tuple(resolve_metrics(metrics, y).items())
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    _check_hyperparams(hyperparams)
    input_shape = (-1,) + tuple(x.shape[1:])
    make_optimizer = _member_optimizer(optimizer, hyperparams)
    shared = make_optimizer({})  # the update function; each member's hyperparameters sit in its state

    def init(seed_key, h):
        return train.init_train_state(model, make_optimizer(h), input_shape, key=seed_key)

    if state is None:
        keys = jnp.stack([jax.random.key(s) for s in seeds])
        state = cast(train.TrainState, jax.jit(jax.vmap(init))(keys, {k: jnp.asarray(v) for k, v in hyperparams.items()}))
    else:
        state = _continued(state, shared, hyperparams, len(seeds))
    if placement is not None:
        state = placement.state(state)
    one = member(state, 0)
    jaxnets.train.state.check_state_for_model(model, one, input_shape)
    setup.check_targets(model, one, (x, y), test)
    spe = source.steps_per_epoch
    per_call = 1 if test is not None else min(epochs_per_call, epochs)  # evaluated after every epoch
    step = setup.cached_step(model, shared, loss=loss, metrics=metric_fns)
    built = program_module.build(step, source, length=spe, max_count=per_call, freeze=False)
    program = jax.jit(jax.vmap(built, in_axes=(0, None, None, None, None, None, None),  # results: (epochs, P)
                               out_axes=(0, {"sums": 1, "lasts": 1, "nonfinite": 1, "done": 0})), donate_argnums=0)
    score = jax.jit(jax.vmap(train.evaluator(model, loss, metric_fns, batch_size=eval_batch_size), in_axes=(0, None)))
    history: dict[str, Any] = {"epoch": [], "time": []}
    rows, diverged = [], {}
    origin = int(np.asarray(state.step).reshape(-1)[0])
    done, began = 0, time.perf_counter()
    bar = train.ProgressBar(lines=verbose, enabled=progress)
    run = train.Run({"loop": {"epochs": epochs}}, source, origin, origin + epochs * spe, train.History(), spe)
    bar.on_start(run)
    try:
        while done < epochs:
            count = min(per_call, epochs - done)
            state, out = program(state, None, jnp.int32(origin + done * spe), jnp.int32(origin), jnp.int32(count),
                                 source.data, None)
            out = jax.device_get(out)
            evaluated = jax.device_get(score(state, test)) if test is not None else {}
            for i in range(count):
                row = program_module.row_values({k: v[i] for k, v in out["sums"].items()},
                                                {k: v[i] for k, v in out["lasts"].items()}, spe, "train_")
                if i == count - 1:
                    row.update({f"test_{k}": v for k, v in evaluated.items()})
                rows.append(row)
                history["epoch"].append(done + i + 1)
                history["time"].append(time.perf_counter() - began)
                for index in np.flatnonzero(np.asarray(out["nonfinite"][i]) >= 0):
                    diverged.setdefault(int(index), done + i + 1)
            done += count
            run.history.add_row({"step": done * spe, **{k: float(np.min(v)) for k, v in rows[-1].items()}})
            bar(train.Progress(done, epochs, {k: float(np.min(v)) for k, v in rows[-1].items()}, run.history, state,
                               done * spe, epochs * spe, origin + done * spe, run))
    finally:
        bar.on_end(None, None)
    if diverged:
        warnings.warn("training diverged (loss or params NaN/Inf) for member(s) " +
                      ", ".join(f"{m} at epoch {e}" for m, e in sorted(diverged.items())) +
                      f"; the others trained on. To find the cause, {jaxnets.train.history.LOCATE_ADVICE}", RuntimeWarning,
                      stacklevel=2)
    for name in rows[0]:
        history[name] = np.stack([np.asarray(r[name]) for r in rows])  # (epochs, P)
    history["members"] = {**({} if continued else {"seed": list(seeds)}), **{k: v.tolist() for k, v in hyperparams.items()}}
    return cast(train.TrainState, state), history  # the compiled program's output state


def _continued(state: Any, optimizer: optax.GradientTransformation, hyperparams: dict[str, Any], size: int) -> train.TrainState:
    """A copy of a population's ``state`` for ``size`` members, with ``hyperparams`` written into its optimizer state."""
    if _population_size(state) != size:
        raise ValueError(f"state must hold {size} members (one per value in members), got step of shape {np.shape(state.step)}")
    one = member(state, 0)
    jaxnets.train.state.check_state_fits(optimizer, one)
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
    if metric is None or metric not in history or np.ndim(history[metric]) != 2:
        choices = sorted(k for k, v in history.items() if np.ndim(v) == 2)
        raise ValueError(f"metric must be one of the population's metrics {choices}, got {metric!r}")
    mode = mode or ("min" if metric.endswith("loss") else "max")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    final = np.asarray(history[metric])[-1]
    return int(np.nanargmin(final) if mode == "min" else np.nanargmax(final))
