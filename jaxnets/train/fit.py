"""``fit``: the supervised preset of the general loop (one model, one optimizer, a loss or an objective)."""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

import jax
import optax

from jaxnets import _checks, _inputs
from jaxnets import distributed
from jaxnets import precision as precision_module
from jaxnets.layers import Layer
from jaxnets.train import retired as retired_module
from jaxnets.train import setup
from jaxnets.train.scoring import Evaluate, evaluator
from jaxnets.train.history import History
from jaxnets.train.loop import loop
from jaxnets.train.progress_bar import ProgressBar
from jaxnets.train.state import TrainState

__all__ = ["fit"]


def fit(model: Layer | None, loss: Callable[..., Any] | None = None, optimizer: optax.GradientTransformation | None = None,
        data: Any = None, *, objective: Callable[..., Any] | None = None, eval_objective: Callable[..., Any] | None = None, test: Any = None,
        epochs: int | None = None, steps: int | None = None, batch_size: int = 64, seed: int | None = None,
        key: jax.Array | None = None, state: TrainState | None = None, input_shape: Sequence[int] | None = None,
        metrics: Any = None, transform: Callable[..., Any] | None = None, gradient: Callable[..., Any] | None = None,
        precision: Any = None, placement: distributed.Placement | jax.sharding.Mesh | Sequence[Any] | None = None,
        callbacks: Sequence[Any] | None = None,
        epochs_per_call: int = 1, steps_per_call: int | None = None, log_every: int | None = None,
        drop_last: bool = False, eval_batch_size: int = 1024, on_nonfinite: str = "raise",
        **retired: Any) -> tuple[TrainState, History]:
    """Trains ``model`` on ``data``: :func:`jaxnets.train.loop` with the step, source and callbacks of the common case.

    The step is :func:`make_step` of ``objective_from_loss(model, loss,
    metrics)`` (or of ``objective``); the source an :class:`ArraySource` of
    ``data`` (or a :class:`jaxnets.streaming.Stream`); ``test`` is scored by an
    :class:`Evaluate` callback after every epoch (every ``log_every`` steps in
    a run given in ``steps``); a :class:`ProgressBar` shows progress unless
    ``callbacks`` is given. One program is compiled per configuration and
    reused by every later call with the same one.

    Args:
      model: the network (None with an ``objective`` and a ``state``).
      loss: ``loss(outputs, targets)`` on pairs ``(x, y)``; or give ``objective``
        ``(params, batch, key, model_state) -> (loss, aux)`` (:func:`make_step`).
      optimizer: any ``optax.GradientTransformation``.
      data: a :class:`jaxnets.data.Dataset` (its test split becomes ``test``),
        a pair ``(x, y)``, any pytree of arrays (with an objective), or a Stream.
      eval_objective: scores ``test`` with an objective (default: ``objective``).
      epochs, steps: the run's length from its start (resumed steps included);
        ``epochs=10`` if neither is given.
      seed, key, state, input_shape: where training starts (a fresh state from
        ``seed``/``key``, 0 by default, or a copy of ``state``).
      metrics: ``name -> fn(outputs, targets)`` or known names (``"accuracy"``,
        the default for integer labels), with a loss: computed on every
        training step (``train_<name>``, means in training mode) and by the
        evaluation of ``test`` (``test_<name>``, evaluation mode).
      transform: ``(key, batch) -> batch`` on the device before each step (it may change the structure).
      gradient: replaces :func:`default_gradient` (``per_example.dp_gradient``).
      precision: a :class:`jaxnets.precision.MixedPrecision` (or its policy
        name, ``"bfloat16"``/``"float16"``, with dynamic loss scaling for float16).
      placement: a :class:`jaxnets.distributed.Placement` or a mesh: data parallel.
      callbacks: observers (:mod:`jaxnets.train.callbacks`): ``Checkpoint``,
        ``HistoryFile``, ``TensorBoard``, ``EarlyStopping``, ``Evaluate``, ``ProgressBar``, functions.
      epochs_per_call, steps_per_call, log_every: steps per host round-trip
        (``epochs_per_call`` epochs by default) and per history row (an epoch).
      drop_last: skip the examples that do not fill a last batch.
      eval_batch_size: batch size of the evaluation of ``test``.
      on_nonfinite: ``"raise"`` (:class:`NonFiniteError` holding the last finite state), ``"warn"``, ``"ignore"``.

    Returns:
      ``(state, history)``: a :class:`History` with a row per epoch (or per
      ``log_every`` steps): ``epoch``, ``step``, ``time``, ``train_loss``,
      ``train_<metric>``, ``test_loss``, ``test_<metric>``, and with loss
      scaling ``skipped_steps`` and ``loss_scale``. The keywords of 0.1
      (``hooks``, ``history_file``, ``checkpoint_*``, ``progress``, ``mesh``, ...)
      work for one more release (:mod:`jaxnets.train.retired`).

    Raises:
      TypeError, ValueError: a wrong model, loss, optimizer, data, hyperparameter,
        state or path, before anything is compiled.
      NonFiniteError: training diverged (``on_nonfinite="raise"``).
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    data, precision, placement, callbacks = retired_module.translate(
        retired, data=data, precision=precision, placement=placement, callbacks=callbacks, batch_size=batch_size)
    if loss is not None or model is not None:  # an objective with a given state needs no model
        _inputs.check_model(model)
    if (loss is None) == (objective is None):
        raise TypeError("fit needs exactly one of loss (loss(outputs, targets)) and objective "
                        "(objective(params, batch, key, model_state)), got " + ("both" if loss is not None else "neither"))
    if loss is not None:
        _inputs.check_loss(loss)
        if eval_objective is not None:
            raise TypeError("eval_objective goes with objective; with a loss, metrics score the evaluation passes")
    elif metrics is not None:
        raise TypeError("metrics go with loss; an objective returns its metrics in aux")
    if optimizer is None or data is None:
        raise TypeError(f"fit needs an optimizer and data, got optimizer={optimizer!r} and data of type {type(data).__name__}")
    _inputs.check_optimizer(optimizer)
    if epochs is None and steps is None:
        epochs = 10
    mixed = precision if isinstance(precision, precision_module.MixedPrecision) else precision_module.MixedPrecision(precision)
    base_model = model
    model, optimizer, policy = precision_module.for_training(model, optimizer, mixed.policy, mixed.loss_scale,
                                                            loss_mode=loss is not None, gradient=gradient)
    placement = setup.as_placement(placement, batch_size)
    data, test = setup.split_data(data, test, pair=loss is not None)
    source, test = setup.source_for(data, test, pair=loss is not None, batch_size=batch_size, drop_last=drop_last,
                                    placement=placement)
    example = source.example if hasattr(source, "example") else source.data
    metrics = setup.resolve(metrics, example[1] if loss is not None else None, loss)
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    state = setup.initial_state(model, optimizer, state, key=key, seed=seed, input_shape=input_shape, example=example,
                                loss=loss, precision=precision, gradient=gradient)
    if loss is not None:
        classes = setup.check_targets(model, state, example, test)
        if hasattr(source, "set_classes"):
            source.set_classes(classes)  # a stream checks the labels of every chunk it reads
    if policy is not None and policy.compute_dtype == jax.numpy.float16 and \
            precision_module.loss_scale_of(state.opt_state) is None and loss is not None:
        x, y = example
        if isinstance(x, jax.Array) and isinstance(y, jax.Array):
            n = min(batch_size, x.shape[0])
            precision_module.warn_underflow(cast(Layer, base_model), loss, state.params, x[:n], y[:n], policy=policy,
                                            state=state.model_state)
    step = setup.cached_step(model, optimizer, loss=loss, objective=objective, metrics=metrics, gradient=gradient,
                             transform=transform, placement=placement)
    callbacks = [ProgressBar()] if callbacks is None else list(callbacks)
    if test is not None:
        score = evaluator(cast(Layer, model), loss, metrics, batch_size=eval_batch_size) if loss is not None else \
            evaluator(cast(Layer, model), objective=setup.normalized_objective(cast(Callable[..., Any], eval_objective or objective)),
                      batch_size=eval_batch_size)
        every = (1, "epochs") if steps is None else log_every
        callbacks.insert(0, Evaluate(score, test, every=every, prefix="test_"))
    if placement is not None:
        state = placement.state(state)
        if not distributed.is_main_process():  # one process speaks for all
            for c in callbacks:
                if hasattr(c, "enabled"):  # bars and files; checkpoints save from every process (orbax is collective)
                    c.enabled = False
    spe = source.steps_per_epoch
    config = {"fit": {"model": repr(model), "optimizer": setup.describe_function(optimizer.update),
                      "loss": setup.describe_function(loss or objective), "metrics": [m for m, _ in metrics],
                      "transform": None if transform is None else setup.describe_function(transform),
                      "gradient": None if gradient is None else setup.describe_function(gradient),
                      "key": setup.describe_function(jax.random.key_data(state.key))}}
    per_call = steps_per_call if steps_per_call is not None else (
        _checks.positive_int(epochs_per_call, "epochs_per_call") * spe if spe else None)
    if epochs is not None and per_call is not None:
        per_call = min(per_call, epochs * spe)
    return loop(step, state, source, steps=steps, epochs=epochs, callbacks=callbacks, steps_per_call=per_call,
                log_every=log_every, on_nonfinite=on_nonfinite, config=config)
