"""The general training step, and the common case of a model and a loss.

The general step is a pure function

    (state, batch) -> (state, metrics)

of an *objective* ``(params, batch, key, model_state) -> (loss, aux)``:
``jax.value_and_grad`` (or a replacement, e.g. DP-SGD's clipped and noised
per-example gradients from :mod:`jaxnets.per_example`),
``optimizer.update``, ``optax.apply_updates``, ``step + 1``, and nothing
else. ``batch`` is any pytree of arrays; a per-batch transform ``(key,
batch) -> batch`` (augmentation, random windows; it may change the batch's
structure) can run first, on the device. :func:`make_step` builds it.

The common case, a model and ``loss(outputs, targets)`` on pairs ``(x, y)``,
is the objective :func:`objective_from_loss`; :func:`make_train_step`
returns its step as ``(state, x, y) -> (state, metrics)``. With the default
metrics (the loss alone) and a model without randomness it compiles to the
same program as a hand-written raw-JAX step
(``experiments/benchmarks/w1.py`` measures it).

Steps compose: a GAN's step is two of these steps (``jit=False``) called in
turn on a dict of two states (:doc:`/engine`), and :func:`jaxnets.train.with_ema`
wraps any step with an exponential moving average of its params.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks, _inputs
from jaxnets import precision as precision_module
from jaxnets.evaluation import normalized_objective, resolve_metrics
from jaxnets.precision import LossScaleState
from jaxnets.layers import Layer, one_step_program
from jaxnets.train.state import TrainState, check_state_fits, check_train_state, model_key

__all__ = ["objective_from_loss", "default_gradient", "make_step", "make_train_step", "donating_jit", "check_gradient_fits"]

Metrics = Mapping[str, "Callable[[Any, Any], jax.Array] | str"]


def objective_from_loss(model: Layer, loss: Callable[[Any, Any], jax.Array], *, metrics: Metrics | None = None) -> Callable[..., Any]:
    """The objective of the common case: ``(params, (x, y), key, model_state) -> (loss(model(x), y), aux)``.

    The model runs in training mode with ``key``; ``aux`` holds the new
    ``"model_state"`` and ``metrics`` (``name -> fn(outputs, y)``) of the
    training-mode outputs. Outputs and targets may be pytrees.
    """
    model, loss = _inputs.check_model(model), _inputs.check_loss(loss)
    metrics = resolve_metrics(metrics or {})

    def objective(params, batch, key, model_state):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"batch must be a pair (x, y) for a model and a loss, got {type(batch).__name__}"
                            + (f" of {len(batch)} entries" if isinstance(batch, (tuple, list)) else ""))
        x, y = batch
        outputs, new_state = model.apply_with_state(params, model_state, x, key=key, train=True)
        return loss(outputs, y), {"model_state": new_state, **{name: fn(outputs, y) for name, fn in metrics.items()}}

    return objective


def default_gradient(objective: Callable[..., Any], params: Any, batch: Any, key: jax.Array,
                     model_state: Any) -> tuple[tuple[jax.Array, Any], Any]:
    """``((loss, aux), grads)`` by ``jax.value_and_grad``: the gradient step of :func:`make_step` unless replaced.

    A replacement has this signature (e.g.
    :func:`jaxnets.per_example.dp_gradient`, clipped per-example gradients
    with Gaussian noise). One marked ``per_example = True`` returns
    per-example gradients (leaves ``(B, ...)``), for optimizers that take
    them, such as ``optax.contrib.dpsgd``.
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, batch, key, model_state), got {objective!r}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not hasattr(leaf, "dtype") or not jnp.issubdtype(leaf.dtype, jnp.inexact):
            got = np.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else type(leaf).__name__
            raise TypeError(f"params{jax.tree_util.keystr(path)} must be an array of floating (or complex) numbers to "
                            f"be differentiated, got {got}")
    return jax.value_and_grad(objective, has_aux=True)(params, batch, key, model_state)


_DPSGD_MSG = ("optimizer {name} expects per-example gradients (leaves with a leading batch axis), but this step "
              "computes the batch gradient. Pass gradient=jaxnets.per_example.stacked_gradient to give it per-example "
              "gradients, or train with any optimizer and gradient=jaxnets.per_example.dp_gradient(l2_norm_clip, "
              "noise_multiplier)")


def check_gradient_fits(opt_state: Any, gradient: Callable[..., Any]) -> None:
    """``optax.contrib.dpsgd`` (which takes per-example gradients) with a batch gradient fails here, not silently."""
    nodes = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda n: type(n).__name__ == "DifferentiallyPrivateAggregateState")
    wants_per_example = any(type(n).__name__ == "DifferentiallyPrivateAggregateState" for n in nodes)
    if wants_per_example != bool(getattr(gradient, "per_example", False)):
        if wants_per_example:
            raise TypeError(_DPSGD_MSG.format(name="optax.contrib.dpsgd"))
        raise TypeError("gradient returns per-example gradients (per_example = True), which only an optimizer that "
                        "aggregates them (optax.contrib.dpsgd) takes; use jaxnets.per_example.dp_gradient for any other")


def make_step(
    objective: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    gradient: Callable[..., Any] | None = None,
    transform: Callable[..., Any] | None = None,
    jit: bool = True,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]:
    """The general training step ``(state, batch) -> (state, metrics)``.

    ``k = fold_in(state.key, 2 state.step)``; with a ``transform``,
    ``k_t, k = split(k)`` and ``batch = transform(k_t, batch)``; then
    ``(loss, aux), grads = gradient(objective, params, batch, k,
    model_state)``, ``optimizer.update``, ``optax.apply_updates``, ``step + 1``.

    Args:
      objective: ``(params, batch, key, model_state) -> loss`` or ``(loss,
        aux)``: a scalar loss, and a dict whose entry ``"model_state"`` (if
        present) replaces the model's state. Its other entries are returned
        in the metrics: scalars are logged by the loop; any other pytree (a
        second network's new BatchNorm state, generated samples) is there for
        a step that composes this one to take out before returning.
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
    objective, optimizer = normalized_objective(objective), _inputs.check_optimizer(optimizer)
    gradient = default_gradient if gradient is None else gradient
    if not callable(gradient):
        raise TypeError(f"gradient must be callable as gradient(objective, params, batch, key, model_state), got {gradient!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable as transform(key, batch) -> batch, got {transform!r}")
    jit = _checks.boolean(jit, "jit")

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Any]]:
        check_train_state(state)
        check_state_fits(optimizer, state)
        check_gradient_fits(state.opt_state, gradient)
        scale = precision_module.loss_scale_of(state.opt_state)
        key = model_key(state)
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
        _check_updates(updates, state.params)
        params = optax.apply_updates(state.params, updates)
        model_state = aux.pop("model_state", state.model_state)
        metrics = {"loss": value, **aux}  # non-scalar entries pass through (a composed step takes them out)
        if scale is not None:  # counted per epoch by scan_epoch (SCALE_METRICS)
            metrics["skipped_steps"] = (cast(LossScaleState, opt_state).skipped - state.opt_state.skipped).astype(value.dtype)
            metrics["loss_scale"] = cast(LossScaleState, opt_state).scale
        return TrainState(params, opt_state, model_state, state.step + 1, state.key), metrics

    return donating_jit(_one_step(step)) if jit else step


def _check_updates(updates: Any, params: Any) -> None:
    """Updates of another shape than their params (an array hyperparameter broadcast them) fail here, naming the leaf."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    try:
        ups = jax.tree_util.tree_structure(params).flatten_up_to(updates)
    except (ValueError, TypeError):  # another structure: optax.apply_updates says so
        return
    for (path, p), u in zip(flat, ups):
        if u is not None and jnp.shape(u) != jnp.shape(p):
            raise ValueError(f"optimizer.update returned updates{jax.tree_util.keystr(path)} of shape {jnp.shape(u)} "
                             f"for params of shape {jnp.shape(p)}: is a hyperparameter of the optimizer an array "
                             f"(learning_rate=jnp.ones(3))? Hyperparameters must be scalars")


def _one_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step``, traced as a program of one step per call (``impl="auto"`` convolutions: see ``one_step_program``)."""
    @functools.wraps(step)
    def one_step(*args):
        with one_step_program():
            return step(*args)

    return one_step


def donating_jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.jit(fn, donate_argnums=0)`` whose donated state, if used again, gets a clear error, not XLA's."""
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(state, *args) -> (state, ...), got {fn!r}")
    compiled = jax.jit(fn, donate_argnums=0)

    @functools.wraps(fn)
    def call(state, *args):
        try:
            return compiled(state, *args)
        except (RuntimeError, ValueError) as error:  # free on the happy path: only a failed call looks
            if _inputs.is_deleted(state):
                raise ValueError(_inputs.DONATED_MSG.format(name="state")) from error
            raise

    cast(Any, call).lower = compiled.lower
    return call


def make_train_step(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    metrics: Metrics | None = None,
    jit: bool = True,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, Any]]]:
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
    jit = _checks.boolean(jit, "jit")

    def step(state: TrainState, x: Any, y: Any) -> tuple[TrainState, dict[str, Any]]:
        return general(state, (x, y))

    return donating_jit(_one_step(step)) if jit else step
