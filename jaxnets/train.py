"""Training: a train state, the general step, fused epochs, and ``fit``.

The general step is a pure function

    (state, batch) -> (state, metrics)

of an *objective* ``(params, batch, key, model_state) -> (loss, aux)``:
``jax.value_and_grad`` (or a replacement, e.g. DP-SGD's clipped and noised
per-example gradients from :mod:`jaxnets.per_example`),
``optimizer.update``, ``optax.apply_updates``, ``step + 1``, and nothing
else. ``batch`` is any pytree of arrays (a pair ``(x, y)``, a dict of
inputs and targets); ``aux`` is a dict of scalar metrics, and its entry
``"model_state"`` (if any) is the model's new state (BatchNorm statistics).
A per-batch transform ``(key, batch) -> batch`` (augmentation,
binarisation) can run first, on the device. :func:`make_step` builds it.

The common case, a model and ``loss(outputs, targets)`` on pairs ``(x, y)``,
is the objective :func:`objective_from_loss`; :func:`make_train_step`
returns its step as ``(state, x, y) -> (state, metrics)``. With the default
metrics (the loss alone) and a model without randomness it compiles to the
same program as a hand-written raw-JAX step
(``experiments/benchmarks/w1.py`` measures it).

An epoch is one more pure function, :func:`scan_epoch` (:func:`make_epoch`
for the common case): a pseudo-random permutation of the example indices
computed on the device (:func:`permutation`), then ``lax.scan`` of the step
over batches gathered on the device. It also reports the first step whose
loss was not finite (or, at the last step, whose params were not): the
losses are there already, so the check costs one reduction per epoch.
:func:`fit` compiles one program that runs up to ``epochs_per_call``
epochs, each followed by its evaluation passes, and reuses it for every
call with the same configuration (model, loss or objective, optimizer,
options, shapes). Between calls it runs hooks, appends the history to a
JSON-lines file, saves checkpoints (:mod:`jaxnets.checkpoint`), and stops
at the first non-finite epoch, keeping the last finite state.

Batching (:func:`epoch_indices`): an epoch has ``ceil(n / batch_size)``
steps, all of the same shape. The last batch is completed with the first
examples of the same shuffled order, so every example is used at least once
per epoch and no step recompiles. (Padding with masked rows instead would
bias BatchNorm's batch statistics.) With ``drop_last=True`` an epoch has
``floor(n / batch_size)`` steps and the ``n % batch_size`` examples at the end
of that epoch's order are skipped for that epoch.

Randomness: :class:`TrainState` holds one fixed key. The step that starts
with counter ``s`` gets ``k_s = fold_in(key, 2 s)`` (split in two when a
transform takes one half), and the epoch that starts at ``s`` shuffles with
``fold_in(key, 2 s + 1)``. Nothing random is carried from step to step, so
an unused key costs nothing (XLA removes it), and a run resumed from a
checkpoint draws exactly the numbers it would have drawn.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks, _run
from jaxnets import precision as precision_module
from jaxnets._run import (NonFiniteError, Progress, check_state_for_model, check_targets, early_stopping, permutation,
                          prepare_run)
from jaxnets.evaluation import (batched_outputs, evaluate, normalized_objective, objective_means, predict, resolve_metrics,
                                score)
from jaxnets.layers import Layer

__all__ = [
    "TrainState",
    "init_train_state",
    "objective_from_loss",
    "default_gradient",
    "make_step",
    "make_train_step",
    "scan_epoch",
    "make_epoch",
    "make_chunk",
    "epoch_indices",
    "permutation",
    "fit",
    "Progress",
    "early_stopping",
    "NonFiniteError",
    "evaluate",
    "predict",
]

Metrics = Mapping[str, "Callable[[Any, Any], jax.Array] | str"]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's parameters (nested dict).
      opt_state: the optimizer's state.
      model_state: the model's state, e.g. BatchNorm running statistics (``{}`` if none).
      step: number of optimizer steps taken; an int32 array (so it never retraces).
      key: a fixed typed ``jax.random`` key; each step's and each epoch's keys
        are derived from it and ``step`` (see the module docstring).
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    key: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, *, model_state: Any = None,
               key: jax.Array | None = None, seed: int | None = None) -> "TrainState":
        """A state at step 0 from params one already has (and the model's state), in one call.

        ``optimizer.init(params)`` makes the optimizer state; the key (or
        ``jax.random.key(seed)``, seed 0 by default) is kept for dropout and
        shuffling. The params are used as they are (not copied).
        """
        _run.check_optimizer(optimizer)
        _run.check_not_donated(params, "params")
        return cls(params, optimizer.init(params), {} if model_state is None else model_state,
                   jnp.zeros((), jnp.int32), _run.as_key(key, seed))


def init_train_state(
    model: Layer, optimizer: optax.GradientTransformation, input_shape, *, key: jax.Array | None = None, seed: int | None = None
) -> TrainState:
    """Initial params, optimizer state and model state for ``input_shape`` (batch -1).

    The key (or ``jax.random.key(seed)``, seed 0 by default) is split: one
    part initialises the params, the other is kept for dropout and shuffling.
    To start from params one already has, use :meth:`TrainState.create`.
    """
    model, optimizer = _run.check_model(model), _run.check_optimizer(optimizer)
    init_key, train_key = jax.random.split(_run.as_key(key, seed))
    _, params, model_state = model.init_with_state(init_key, input_shape)
    return TrainState(params, optimizer.init(params), model_state, jnp.zeros((), jnp.int32), train_key)


def objective_from_loss(model: Layer, loss: Callable[[Any, Any], jax.Array], *, metrics: Metrics | None = None) -> Callable:
    """The objective of the common case: ``(params, (x, y), key, model_state) -> (loss(model(x), y), aux)``.

    The model runs in training mode with ``key``; ``aux`` holds the new
    ``"model_state"`` and ``metrics`` (``name -> fn(outputs, y)``) of the
    training-mode outputs. Outputs and targets may be pytrees.
    """
    model, loss = _run.check_model(model), _run.check_loss(loss)
    metrics = resolve_metrics(metrics or {})

    def objective(params, batch, key, model_state):
        x, y = batch
        outputs, new_state = model.apply_with_state(params, model_state, x, key=key, train=True)
        return loss(outputs, y), {"model_state": new_state, **{name: fn(outputs, y) for name, fn in metrics.items()}}

    return objective


def default_gradient(objective: Callable, params: Any, batch: Any, key: jax.Array, model_state: Any):
    """``((loss, aux), grads)`` by ``jax.value_and_grad``: the gradient step of :func:`make_step` unless replaced.

    A replacement has this signature (e.g.
    :func:`jaxnets.per_example.dp_gradient`, clipped per-example gradients
    with Gaussian noise). One marked ``per_example = True`` returns
    per-example gradients (leaves ``(B, ...)``), for optimizers that take
    them, such as ``optax.contrib.dpsgd``.
    """
    return jax.value_and_grad(objective, has_aux=True)(params, batch, key, model_state)


_DPSGD_MSG = ("optimizer {name} expects per-example gradients (leaves with a leading batch axis), but this step "
              "computes the batch gradient. Pass gradient=jaxnets.per_example.stacked_gradient to give it per-example "
              "gradients, or train with any optimizer and gradient=jaxnets.per_example.dp_gradient(l2_norm_clip, "
              "noise_multiplier)")


def _check_gradient_fits(opt_state: Any, gradient: Callable) -> None:
    """``optax.contrib.dpsgd`` (which takes per-example gradients) with a batch gradient fails here, not silently."""
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda n: type(n).__name__ == "DifferentiallyPrivateAggregateState")
    wants_per_example = any(type(n).__name__ == "DifferentiallyPrivateAggregateState" for n in nodes)
    if wants_per_example != bool(getattr(gradient, "per_example", False)):
        if wants_per_example:
            raise TypeError(_DPSGD_MSG.format(name="optax.contrib.dpsgd"))
        raise TypeError("gradient returns per-example gradients (per_example = True), which only an optimizer that "
                        "aggregates them (optax.contrib.dpsgd) takes; use jaxnets.per_example.dp_gradient for any other")


def make_step(
    objective: Callable,
    optimizer: optax.GradientTransformation,
    *,
    gradient: Callable | None = None,
    transform: Callable | None = None,
    jit: bool = True,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The general training step ``(state, batch) -> (state, metrics)``.

    ``k = fold_in(state.key, 2 state.step)``; with a ``transform``,
    ``k_t, k = split(k)`` and ``batch = transform(k_t, batch)``; then
    ``(loss, aux), grads = gradient(objective, params, batch, k,
    model_state)``, ``optimizer.update``, ``optax.apply_updates``, ``step + 1``.

    Args:
      objective: ``(params, batch, key, model_state) -> loss`` or ``(loss,
        aux)``: a scalar loss, and a dict of scalar metrics whose entry
        ``"model_state"`` (if present) replaces the model's state.
      optimizer: any ``optax.GradientTransformation``.
      gradient: the gradient step (:func:`default_gradient` unless given).
      transform: ``(key, batch) -> batch``, run on the device before the objective.
      jit: return ``jax.jit(step, donate_argnums=0)`` (default), or the pure function.

    Loss scaling: when ``state.opt_state`` is a
    :class:`jaxnets.precision.LossScaleState` (the optimizer is
    ``precision.loss_scaling(optimizer)``), the step differentiates ``S *
    loss`` (the optimizer unscales the gradients, and skips the update when
    they overflowed) and adds ``"skipped_steps"`` (0 or 1) and ``"loss_scale"``
    to the metrics; ``"loss"`` is the unscaled loss.

    Returns:
      ``step(state, batch) -> (state, {"loss": ..., **aux metrics})``.
    """
    objective, optimizer = normalized_objective(objective), _run.check_optimizer(optimizer)
    gradient = default_gradient if gradient is None else gradient
    if not callable(gradient):
        raise TypeError(f"gradient must be callable as gradient(objective, params, batch, key, model_state), got {gradient!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable as transform(key, batch) -> batch, got {transform!r}")

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        _check_gradient_fits(state.opt_state, gradient)
        scale = precision_module.loss_scale_of(state.opt_state)
        key = _run.model_key(state)
        if transform is not None:
            transform_key, key = jax.random.split(key)
            batch = transform(transform_key, batch)
        if scale is None:
            (value, aux), grads = gradient(objective, state.params, batch, key, state.model_state)
        else:  # the optimizer (precision.loss_scaling) unscales the gradients and skips the step if they overflowed
            if not getattr(gradient, "linear_in_loss", True):
                raise TypeError(f"gradient {getattr(gradient, '__name__', gradient)} is not linear in the loss (it "
                                "clips or adds noise), so it cannot differentiate a scaled loss: train it without "
                                "loss scaling (loss_scale=None; bfloat16 needs none)")
            (value, aux), grads = gradient(precision_module.scaled_objective(objective, scale), state.params, batch, key,
                                           state.model_state)
            value = value / scale
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = aux.pop("model_state", state.model_state)
        for name, metric in aux.items():
            if jnp.shape(metric) != ():
                raise ValueError(f"objective's aux[{name!r}] must be a scalar metric, got shape {jnp.shape(metric)}")
        metrics = {"loss": value, **aux}
        if scale is not None:  # counted per epoch by scan_epoch (SCALE_METRICS)
            metrics["skipped_steps"] = (opt_state.skipped - state.opt_state.skipped).astype(value.dtype)
            metrics["loss_scale"] = opt_state.scale
        return TrainState(params, opt_state, model_state, state.step + 1, state.key), metrics

    return _donating_jit(step) if jit else step


def _donating_jit(fn: Callable) -> Callable:
    """``jax.jit(fn, donate_argnums=0)`` whose donated state, if used again, gets a clear error, not XLA's."""
    compiled = jax.jit(fn, donate_argnums=0)

    @functools.wraps(fn)
    def call(state, *args):
        try:
            return compiled(state, *args)
        except (RuntimeError, ValueError) as error:  # free on the happy path: only a failed call looks
            if _run.is_deleted(state):
                raise ValueError(_run.DONATED_MSG.format(name="state")) from error
            raise

    call.lower = compiled.lower
    return call


def make_train_step(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    metrics: Metrics | None = None,
    jit: bool = True,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """The training step of the common case, ``(state, x, y) -> (state, metrics)``.

    :func:`make_step` of :func:`objective_from_loss`. With the default
    ``metrics`` this is the program a hand-written raw-JAX step compiles to.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``, e.g.
        ``jaxnets.losses.softmax_cross_entropy_with_integer_labels``.
      optimizer: any ``optax.GradientTransformation``.
      metrics: extra ``name -> fn(outputs, targets)`` computed on the step's
        (training-mode) outputs; ``"loss"`` is always returned. Each costs
        time on every step.
      jit: return ``jax.jit(step, donate_argnums=0)`` (default), or the pure
        function to compose into your own program.
    """
    general = make_step(objective_from_loss(model, loss, metrics=metrics), optimizer, jit=False)

    def step(state: TrainState, x: Any, y: Any) -> tuple[TrainState, dict]:
        return general(state, (x, y))

    return _donating_jit(step) if jit else step


def epoch_indices(state: TrainState, num_examples: int, batch_size: int, *, drop_last: bool = False) -> jax.Array:
    """The example indices of each step of the epoch that starts at ``state``.

    The order is :func:`permutation` under the state's epoch key. Without
    ``drop_last`` the last batch wraps around to the start of the same order;
    with it, the examples that do not fill a batch are skipped this epoch.

    Returns:
      ``(steps, batch_size)`` int32; row ``i`` holds the indices of step ``i``.
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    steps = _run.steps_per_epoch(num_examples, batch_size, drop_last)
    order = permutation(_run.shuffle_key(state), num_examples)
    if steps * batch_size > num_examples:  # wrap around: complete the last batch from the start of the order
        order = jnp.concatenate([order, order[: steps * batch_size - num_examples]])
    return order[: steps * batch_size].reshape(steps, batch_size)  # (steps, batch)


# Loss-scaling metrics of a step (precision.loss_scaling) and how an epoch reduces them: the skipped steps are
# counted, the scale is the one the epoch ends with. Every other metric is the mean over the epoch's steps.
SCALE_METRICS = {"skipped_steps": jnp.sum, "loss_scale": lambda v: v[-1]}


def scan_epoch(
    step: Callable[[TrainState, Any], tuple[TrainState, dict]],
    *,
    batch_size: int,
    drop_last: bool = False,
    check_finite: bool = True,
    jit: bool = True,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """One epoch of a general step as one program: ``(state, data) -> (state, mean metrics)``.

    ``data`` is a pytree whose leaves hold all examples on the device (leading
    axis ``n``, fixed when the program is traced). The batches are
    :func:`epoch_indices` of the incoming state; ``step`` (pure, from
    :func:`make_step` with ``jit=False``) runs over them in a ``lax.scan``.

    Returns:
      The state after the epoch and the means of the step's metrics over the
      epoch's steps; with ``check_finite``, also ``"nonfinite_step"``: -1 if
      every loss and the final params are finite, else the index (in this
      epoch) of the first step whose loss was not (the last step's when only
      the final params are not).
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")

    def epoch(state: TrainState, data: Any) -> tuple[TrainState, dict]:
        batches = epoch_indices(state, _run.leading(data), batch_size, drop_last=drop_last)
        state, logged = jax.lax.scan(lambda s, idx: step(s, _run.take(data, idx)), state, batches)
        means = {k: SCALE_METRICS.get(k, jnp.mean)(v) for k, v in logged.items()}
        if check_finite:
            means["nonfinite_step"] = _run.first_nonfinite(logged["loss"], state.params, logged.get("skipped_steps"))
        return state, means

    return _donating_jit(epoch) if jit else epoch


def make_epoch(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    num_examples: int,
    batch_size: int,
    drop_last: bool = False,
    metrics: Metrics | None = None,
    check_finite: bool = True,
    jit: bool = True,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict]]:
    """One epoch of the common case as one program: ``(state, x, y) -> (state, mean metrics)``.

    :func:`scan_epoch` of :func:`make_train_step`'s step on ``data = (x, y)``.

    Args:
      num_examples: ``x.shape[0]`` (checked: it fixes the number of steps).
      batch_size, drop_last: see :func:`epoch_indices`.
      metrics, jit: as for :func:`make_train_step` (jitted with the state donated).
      check_finite: add ``"nonfinite_step"`` to the metrics (see :func:`scan_epoch`).
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    _run.steps_per_epoch(num_examples, batch_size, drop_last)
    general = make_step(objective_from_loss(model, loss, metrics=metrics), optimizer, jit=False)
    scanned = scan_epoch(general, batch_size=batch_size, drop_last=drop_last, check_finite=check_finite, jit=False)

    def epoch(state: TrainState, x: Any, y: Any) -> tuple[TrainState, dict]:
        if _run.leading(x) != num_examples or _run.leading(y) != num_examples:
            raise ValueError(f"this epoch was built for num_examples={num_examples}, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        return scanned(state, (x, y))

    return _donating_jit(epoch) if jit else epoch


def make_chunk(
    model: Layer,
    optimizer: optax.GradientTransformation,
    *,
    loss: Callable | None = None,
    objective: Callable | None = None,
    eval_objective: Callable | None = None,
    metrics: Metrics | None = None,
    gradient: Callable | None = None,
    transform: Callable | None = None,
    batch_size: int = 64,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    epochs_per_call: int = 1,
    on_nonfinite: str = "raise",
    placement: Any = None,
) -> Callable:
    """The pure program :func:`fit` compiles: ``(state, count, data, test) -> (state, out)``.

    It runs ``count <= epochs_per_call`` epochs (``count`` traced), each an
    epoch of :func:`scan_epoch` followed by its evaluation passes, and
    returns ``out["results"][name]`` (a row per epoch), ``out["nonfinite_step"]``
    and ``out["done"]`` (``jaxnets._run.chunk_program``). With a ``loss``,
    the passes compute the loss and ``metrics`` on the training data
    (``train_<metric>``) and on ``test`` (``test_loss``, ``test_<metric>``)
    in evaluation mode; with an ``objective``, the training metrics are the
    means of ``aux`` over the epoch's steps and ``test`` is scored by
    ``eval_objective`` (default: the objective) with an evaluation key.
    :func:`jaxnets.population.fit_population` vmaps it. With a
    ``placement`` (:func:`jaxnets.distributed.placement`), each gathered
    batch is constrained to the data sharding and the state to its own.
    """
    epochs_per_call = _checks.positive_int(epochs_per_call, "epochs_per_call")
    if on_nonfinite not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {on_nonfinite!r}")
    if loss is not None:
        metrics = resolve_metrics(dict(metrics)) if metrics is not None else {}
        objective = objective_from_loss(model, loss)
    else:
        objective = normalized_objective(objective)
        eval_objective = objective if eval_objective is None else normalized_objective(eval_objective)
    step = make_step(objective, optimizer, gradient=gradient, transform=transform, jit=False)
    if placement is not None:  # data parallel: each gathered batch split over the mesh (jaxnets.distributed)
        step = _placed_step(step, placement)
    epoch = scan_epoch(step, batch_size=batch_size, drop_last=drop_last, check_finite=on_nonfinite != "ignore", jit=False)

    def scores(state, x, y, which, prefix, skip_loss):
        outputs = batched_outputs(model, min(eval_batch_size, _run.leading(x)), state.params, state.model_state, x,
                                  _run.eval_key(state, which))
        return {f"{prefix}_{k}": v for k, v in score(outputs, y, loss, metrics).items() if not (skip_loss and k == "loss")}

    def one_epoch(state, data, test):
        state, logged = epoch(state, data)
        nonfinite = logged.pop("nonfinite_step", jnp.int32(-1))
        results = {"train_loss": logged.pop("loss"), **{k: logged.pop(k) for k in SCALE_METRICS if k in logged}}
        if loss is not None:
            if metrics:
                results.update(scores(state, *data, 0, "train", True))
            if test is not None:
                results.update(scores(state, *test, 1, "test", False))
        else:
            results.update({f"train_{k}": v for k, v in logged.items()})
            if test is not None:
                means = objective_means(eval_objective, min(eval_batch_size, _run.leading(test)), state.params,
                                        state.model_state, test, _run.eval_key(state, 1))
                results.update({f"test_{k}": v for k, v in means.items()})
        return state, results, nonfinite

    def names(state, data, test):
        scaled = list(SCALE_METRICS) if precision_module.loss_scale_of(state.opt_state) is not None else []
        if loss is not None:
            found = ["train_loss"] + scaled + [f"train_{k}" for k in metrics]
            return found + (["test_loss"] + [f"test_{k}" for k in metrics] if test is not None else [])
        batch = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((batch_size,) + a.shape[1:], a.dtype), data)
        aux = jax.eval_shape(objective, state.params, batch, _run.model_key(state), state.model_state)[1]
        found = ["train_loss"] + scaled + [f"train_{k}" for k in aux if k != "model_state"]
        if test is not None:
            test_batch = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), test)
            aux = jax.eval_shape(eval_objective, state.params, test_batch, _run.model_key(state), state.model_state)[1]
            found += ["test_loss"] + [f"test_{k}" for k in aux if k != "model_state"]
        return found

    program = _run.chunk_program(one_epoch, epochs_per_call, freeze_nonfinite=on_nonfinite == "raise", names=names)
    if placement is None:
        return program

    def placed_program(state, count, data, test):  # the state leaves in the sharding it came in with
        state, out = program(state, count, data, test)
        return placement.constrain_state(state), out

    return placed_program


def _placed_step(step: Callable, placement: Any) -> Callable:
    """``step`` on a batch constrained to the placement's data sharding, returning the state in its sharding."""

    def placed(state, batch):
        state, metrics = step(state, placement.constrain_batch(batch))
        return placement.constrain_state(state), metrics

    return placed


@functools.lru_cache(maxsize=32)
def _compiled_chunk(model, optimizer, options: tuple):
    """One jitted program per configuration: a second ``fit`` with the same one compiles nothing."""
    return jax.jit(make_chunk(model, optimizer, **dict(options)), donate_argnums=0)


def fit(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    data: Any = None,
    *,
    objective: Callable | None = None,
    eval_objective: Callable | None = None,
    test: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int | None = None,
    key: jax.Array | None = None,
    state: TrainState | None = None,
    input_shape: Sequence[int] | None = None,
    metrics: Metrics | None = None,
    transform: Callable | None = None,
    gradient: Callable | None = None,
    precision: str | Any | None = None,
    loss_scale: str | float | None = "auto",
    epochs_per_call: int = 1,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    hooks: Callable | Sequence[Callable] = (),
    history_file: str | None = None,
    checkpoint_dir: Any = None,
    checkpoint_every: int = 1,
    checkpoint_keep: int = 3,
    checkpoint_best: str | None = None,
    on_nonfinite: str = "raise",
    mesh: Any = None,
    data_axis: str = "data",
    param_sharding: Any = "replicated",
    progress: bool = True,
    verbose: bool = False,
    **deprecated: Any,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Trains ``model`` on ``data`` with whole epochs, and their evaluation, compiled.

    One program runs up to ``epochs_per_call`` epochs, each an on-device
    shuffle and a ``lax.scan`` of the step, followed by evaluation passes
    (:func:`make_chunk`). It is compiled once per configuration and reused by
    every later call with the same model, loss or objective, optimizer,
    options and shapes (continuing from a returned state, a checkpoint loop).

    Args:
      model: the network (may be None with an ``objective`` and a ``state``,
        e.g. a VAE's encoder and decoder in one params dict).
      loss: ``loss(outputs, targets) -> scalar`` on pairs ``(x, y)`` (the
        common case). Give either ``loss`` or ``objective``.
      optimizer: any ``optax.GradientTransformation``.
      data: a :class:`jaxnets.data.Dataset` (its test split becomes ``test``
        unless given), a pair ``(x, y)`` (arrays or pytrees), or, with an
        ``objective``, any pytree of arrays with a common leading axis. Or a
        :class:`jaxnets.streaming.Stream` of host arrays, memory-mapped files
        or a grain source, trained in prefetched chunks of scanned steps in
        the same order as in memory (for data beyond device memory).
      objective: instead of ``loss``, ``(params, batch, key, model_state) ->
        (loss, aux)`` (see :func:`make_step`); its ``aux`` metrics are
        logged as ``train_<name>`` (means over the epoch's steps).
      eval_objective: scores ``test`` with an objective (default: ``objective``),
        as means over the examples; it gets an evaluation key.
      test: held-out data (a pair, a pytree or a Dataset), evaluated after every epoch.
      epochs: number of passes over ``data`` (in total, when resuming).
      batch_size: examples per step.
      seed, key: where training starts; ``seed=0`` if neither is given.
      state: continue from this :class:`TrainState` instead of a fresh one
        (it is copied, never consumed; it must fit the model and optimizer).
      input_shape: the model's input shape (batch -1), needed for a fresh
        state when ``data`` is not a pair whose ``x`` is an array.
      metrics: ``name -> fn(outputs, targets)`` or a known name
        (``"accuracy"``) for the evaluation passes; default ``accuracy`` for
        integer labels. Only with ``loss``.
      transform: ``(key, batch) -> batch`` applied to each training batch on the device.
      gradient: replaces :func:`default_gradient`, e.g.
        ``jaxnets.per_example.dp_gradient(l2_norm_clip, noise_multiplier)``.
      precision: train in mixed precision: ``"bfloat16"``, ``"float16"`` or a
        :class:`jaxnets.precision.Policy` (the model runs under
        :func:`jaxnets.precision.with_policy`: float32 master weights, each
        layer computing in the reduced dtype, normalisation, softmax and the
        loss in float32). Only with ``loss`` (an objective applies the
        policy itself, and takes ``loss_scale``).
      loss_scale: ``"auto"`` (dynamic for float16, none otherwise),
        ``"dynamic"``, a number (static) or None: the optimizer is wrapped in
        :func:`jaxnets.precision.loss_scaling`; ``history["skipped_steps"]``
        counts the steps skipped for overflow and ``history["loss_scale"]``
        is the scale at the end of each epoch. float16 without scaling first
        checks one batch and warns naming the layers whose gradients
        underflow to zero.
      epochs_per_call: epochs per host round-trip (hooks, history file,
        checkpoints and the progress bar run between round-trips).
      drop_last: skip the examples that do not fill a last batch instead of
        completing it from the start of the epoch's order (module docstring).
      eval_batch_size: batch size of the evaluation passes.
      hooks: callables ``hook(progress: Progress) -> bool | None`` run after
        each round-trip, in order; one returning True stops training (e.g.
        :func:`early_stopping`).
      history_file: append one JSON line per epoch to this file, as it comes.
      checkpoint_dir: save the whole state, the history and the configuration
        there with orbax (``pip install 'jaxnets[checkpoint]'``), and resume
        from the latest good checkpoint found there. Or a
        :class:`jaxnets.checkpoint.Checkpoints` (e.g. with ``async_save=False``).
      checkpoint_every: save after every this many epochs (and at the end),
        in the background: a save that comes due while the previous one is
        still being written replaces any older one waiting, so training never
        waits for the disk (the last save is always written before ``fit``
        returns). Across processes saves are synchronous: orbax saves are
        collective, and every process must write the same ones.
      checkpoint_keep: keep the last this many checkpoints...
      checkpoint_best: ...and the best by this history name (``"test_loss"``).
      on_nonfinite: ``"raise"`` (default): stop at the first epoch whose loss
        or params are NaN/Inf and raise :class:`NonFiniteError` holding the
        last finite state; ``"warn"``: warn and train on; ``"ignore"``: no check.
      mesh: train data parallel over a ``jax.sharding.Mesh`` (or a list of
        devices): the data replicated on every device, each batch split over
        the mesh axis ``data_axis`` (``batch_size`` must be divisible by its
        size), XLA inserting the gradient all-reduce; across processes after
        :func:`jaxnets.distributed.initialize` (only process 0 prints and
        writes ``history_file``). See :mod:`jaxnets.distributed`.
      data_axis: the mesh axis the batch is split over.
      param_sharding: with a mesh, ``"replicated"`` params and optimizer state
        (default), or ``"fsdp"``: every matrix split along its largest axis
        over ``data_axis`` (:func:`jaxnets.distributed.fsdp_spec`).
      progress: show a progress bar (needs ``tqdm``).
      verbose: also print one line per epoch.

    Returns:
      ``(state, history)``: the trained state, and per epoch lists
      ``history["epoch"]``, ``history["train_loss"]`` (mean over the epoch's
      training-mode steps), ``history["train_<metric>"]`` and
      ``history["test_<...>"]``, and ``history["time"]`` (seconds since this
      call of ``fit`` began, when the epoch's results reached the host).

    Raises:
      TypeError, ValueError: on a wrong model, loss, optimizer, data (NaN/Inf
        included), hyperparameter or state, before anything is compiled.
      NonFiniteError: training diverged (with ``on_nonfinite="raise"``).
    """
    if "train" in deprecated:
        warnings.warn("fit(train=...) is deprecated: the data argument is called data", DeprecationWarning, stacklevel=2)
        data = deprecated.pop("train") if data is None else data
    if deprecated:
        raise TypeError(f"fit() got unexpected keyword arguments {sorted(deprecated)}")
    if loss is not None or model is not None:  # an objective with a given state needs no model
        _run.check_model(model)
    if (loss is None) == (objective is None):
        raise TypeError("fit needs exactly one of loss (loss(outputs, targets)) and objective "
                        "(objective(params, batch, key, model_state)), got " + ("both" if loss is not None else "neither"))
    if loss is not None:
        _run.check_loss(loss)
        if eval_objective is not None:
            raise TypeError("eval_objective goes with objective; with a loss, metrics score the evaluation passes")
    elif metrics is not None:
        raise TypeError("metrics go with loss; an objective returns its metrics in aux")
    if optimizer is None or data is None:
        raise TypeError(f"fit needs an optimizer and data, got optimizer={optimizer!r} and data of type {type(data).__name__}")
    _run.check_optimizer(optimizer)
    base_model = model
    model, optimizer, policy = precision_module.for_training(model, optimizer, precision, loss_scale,
                                                            loss_mode=loss is not None, gradient=gradient)
    hooks = [hooks] if callable(hooks) else list(hooks)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"hooks must be callables hook(progress) -> bool | None, got {hook!r}")
    placement = None
    if mesh is not None:  # data parallel (jaxnets.distributed): checked before any device work
        from jaxnets import distributed

        placement = distributed.placement(mesh, axis=data_axis, rule=param_sharding,
                                          batch_size=_checks.positive_int(batch_size, "batch_size"))
        if not distributed.is_main_process():  # one process speaks for all
            progress, verbose, history_file = False, False, None
    elif param_sharding != "replicated":
        raise TypeError(f"param_sharding={param_sharding!r} needs a mesh: pass mesh=jaxnets.distributed.data_mesh()")
    from jaxnets import streaming  # data beyond device memory: host chunks, each one scanned program (jaxnets.streaming)

    stream = data if isinstance(data, streaming.Stream) else None
    if stream is not None:
        if placement is not None:  # each chunk split over the data axis, each process reading its own rows
            stream = stream.placed(placement)
        run = stream.prepare_run(test, objective_mode=objective is not None, epochs=epochs, batch_size=batch_size,
                                 epochs_per_call=epochs_per_call, drop_last=drop_last)
    else:
        run = prepare_run(data, test, objective_mode=objective is not None, epochs=epochs, batch_size=batch_size,
                          epochs_per_call=epochs_per_call, drop_last=drop_last,
                          place=None if placement is None else placement.data)
    metrics = resolve_metrics(metrics, run.data[1]) if loss is not None else None
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
    if input_shape is None and isinstance(run.data, tuple) and isinstance(run.data[0], jax.Array):
        input_shape = (-1,) + tuple(run.data[0].shape[1:])
    if state is None:
        if input_shape is None or model is None:
            raise TypeError("fit needs a model and input_shape, or a state, when data is not a pair (x, y) whose x is an array")
        state = init_train_state(model, optimizer, input_shape, key=key, seed=seed)
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    else:
        _run.check_not_donated(state, "state")
        if loss is not None:
            check_targets(model, state, run)  # data that does not fit the model fails first, with the layer's message
        if input_shape is not None and model is not None:
            check_state_for_model(model, state, input_shape)
        precision_module.check_scaling_matches(optimizer, state.opt_state, f"precision={precision!r}, loss_scale={loss_scale!r}")
        _run.check_state_fits(optimizer, state)
        state = jax.device_put(state, may_alias=False)  # a copy (compiles nothing): the program donates its input
    _check_gradient_fits(jax.eval_shape(optimizer.init, state.params), default_gradient if gradient is None else gradient)
    if loss is not None:
        check_targets(model, state, run)
    if policy is not None and policy.compute_dtype == jnp.float16 and precision_module.loss_scale_of(state.opt_state) is None:
        x, y = run.data if isinstance(run.data, tuple) else (None, None)
        if isinstance(x, jax.Array) and isinstance(y, jax.Array):  # one batch (a stream's run holds its first record)
            batch = min(run.batch_size, run.num_examples)
            precision_module.warn_underflow(base_model, loss, state.params, x[:batch], y[:batch], policy=policy,
                                            state=state.model_state)

    options = (("loss", loss), ("objective", objective), ("eval_objective", eval_objective),
               ("metrics", tuple(metrics.items()) if metrics is not None else None), ("gradient", gradient),
               ("transform", transform), ("batch_size", run.batch_size), ("drop_last", drop_last),
               ("eval_batch_size", eval_batch_size), ("epochs_per_call", run.epochs_per_call),
               ("on_nonfinite", on_nonfinite)) + ((("placement", placement),) if placement is not None else ())
    if stream is not None:
        program = stream.program(model, optimizer, run, options)
    else:
        try:
            program = _compiled_chunk(model, optimizer, options)
        except TypeError:  # something unhashable in the configuration: build (and compile) it for this call only
            program = jax.jit(make_chunk(model, optimizer, **dict(options)), donate_argnums=0)

    history: dict[str, list] = {"epoch": []}
    done = 0
    checkpoints = None
    if checkpoint_dir is not None:
        from jaxnets import checkpoint  # orbax is imported only when checkpoints are asked for

        checkpoints = checkpoint_dir if isinstance(checkpoint_dir, checkpoint.Checkpoints) else \
            checkpoint.Checkpoints(checkpoint_dir, keep=checkpoint_keep, best=checkpoint_best)
        config = {"model": repr(model), "optimizer": getattr(optimizer, "__name__", type(optimizer).__name__),
                  "epochs": run.epochs, "batch_size": run.batch_size, "drop_last": drop_last,
                  "epochs_per_call": run.epochs_per_call, "num_examples": run.num_examples,
                  "key_impl": str(jax.random.key_impl(state.key))}
        if stream is not None:
            config["stream"] = stream.describe()  # the input position is the state's step; this says which input
        restored = checkpoints.restore(state)
        if restored is not None:
            state, history, saved = restored
            if stream is not None:
                stream.check_resume(saved)
            done = len(history["epoch"])
    if placement is not None:
        state = placement.state(state)
    saved_at, warned = done, False
    describe = (lambda row: " ".join(f"{k}={float(v):.4f}" for k, v in row.items()))
    try:
        for chunk in _run.drive(program, state, run, done=done, progress=progress, verbose=verbose, describe=describe):
            state = chunk.state
            bad = chunk.nonfinite[0] if chunk.nonfinite else None
            rows = [(e, r) for e, r in chunk.rows if bad is None or on_nonfinite != "raise" or e < bad[0]]
            for epoch, row in rows:
                history["epoch"].append(epoch)
                for k, v in row.items():
                    history.setdefault(k, []).append(float(v))
                history.setdefault("time", []).append(chunk.seconds)
            if history_file is not None and rows:
                _run.append_lines(history_file, [{"epoch": e, **{k: float(v) for k, v in r.items()}, "time": chunk.seconds}
                                             for e, r in rows])
            done = len(history["epoch"])
            stop = bad is not None and on_nonfinite == "raise"
            if bad is not None:
                epoch, index = bad
                global_step = int(state.step) + int(index) if on_nonfinite == "raise" else None
                where = f"epoch {epoch}, step {global_step} (step {int(index)} of the epoch)" if global_step is not None \
                    else f"epoch {epoch} (step {int(index)} of the epoch)"
                message = f"training diverged: the loss or the params became NaN/Inf at {where}"
                if precision_module.loss_scale_of(state.opt_state) is not None:
                    message += (" (or every step of that epoch had non-finite gradients, each skipped by the loss "
                                "scale: not an overflow the scale can fix)")
            progress_info = Progress(done, run.epochs, {k: float(v) for k, v in rows[-1][1].items()} if rows else {},
                                     history, state)
            if not stop:
                for hook in hooks:
                    try:
                        stop = bool(hook(progress_info)) or stop
                    except Exception as error:
                        if hasattr(error, "add_note"):
                            error.add_note(f"raised by the hook {getattr(hook, '__name__', hook)!r} of fit, after epoch "
                                           f"{done}; the state and history up to it are kept in the checkpoint, if any")
                        if checkpoints is not None and done > saved_at:
                            checkpoints.save(done, state, history, config)
                        raise
            if checkpoints is not None and done > saved_at and (
                    done // checkpoint_every > saved_at // checkpoint_every or done >= run.epochs or stop):
                checkpoints.save(done, state, history, config)
                saved_at = done
            if bad is not None:
                if on_nonfinite == "raise":
                    raise NonFiniteError(f"{message}; fit stopped and kept the last finite state (after epoch "
                                         f"{epoch - 1}: error.state, error.history). To find the cause, {_run.LOCATE_ADVICE}. "
                                         "Lower the learning rate, or pass on_nonfinite='warn' to train on",
                                         epoch=epoch, step=global_step, state=state, history=history)
                if not warned:
                    warned = True
                    warnings.warn(f"{message}; training goes on (on_nonfinite='warn')", RuntimeWarning, stacklevel=2)
            if stop:
                break
    finally:
        if checkpoints is not None:
            checkpoints.close()
    return state, history
