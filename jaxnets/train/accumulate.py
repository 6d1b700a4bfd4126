"""Gradient accumulation inside the step: one step, one optimizer update, over ``micro_batches`` micro-batches.

``optax.MultiSteps`` accumulates across loop steps, so a loop step is a
micro-step and ``steps=``, ``every=``, ``log_every=`` and ``state.step`` all
count micro-batches. :func:`accumulate_gradients` accumulates inside one
step instead (a ``gradient=`` for :func:`jaxnets.train.make_step`), so every
count of the loop is a count of optimizer updates.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets.evaluation import normalized_objective
from jaxnets.train.step import default_gradient

__all__ = ["accumulate_gradients"]

_SIGNATURE = "gradient(objective, params, batch, key, model_state) -> ((loss, aux), grads)"


def accumulate_gradients(micro_batches: int, gradient: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """A gradient step that averages ``gradient`` over ``micro_batches`` micro-batches, one at a time.

    With ``k = micro_batches`` and the batch's leaves ``(k, B, ...)``, micro-batch
    ``i`` (the leaves' ``[i]``) gets the key ``fold_in(key, i)`` and the model
    state micro-batch ``i - 1`` left (BatchNorm's statistics move on in order),
    and

        loss = (1/k) sum_i loss_i,        grads = (1/k) sum_i g_i

    with ``((loss_i, aux_i), g_i) = gradient(objective, params, batch[i],
    fold_in(key, i), state_i)``: the update ``optax.MultiSteps(optimizer,
    every_k_schedule=k)`` applies after ``k`` loop steps, here in one step
    (so ``state.step``, ``steps=``, ``every=`` and ``log_every=`` count updates).
    For a loss that is a mean over the micro-batch and a model without
    state, ``grads`` is the gradient of the mean loss over all ``k B``
    examples. The micro-batches run in a ``lax.scan``: memory is one
    micro-batch's activations (the gradients are summed in at least float32).

    ``aux``: floating scalar entries (metrics) are averaged over the
    micro-batches; ``"model_state"`` is the last micro-batch's new state, and
    so is every other entry. A ``transform=`` of :func:`make_step` sees the
    whole ``(k, B, ...)`` batch.

    Loss scaling (:func:`jaxnets.precision.loss_scaling`) composes: the mean
    is linear in the loss, so the result is linear in the loss exactly when
    ``gradient`` is (``linear_in_loss`` is carried over). A ``gradient`` that
    is not (``per_example.dp_gradient``) is averaged as it is: each
    micro-batch is clipped and noised on its own, which is not DP-SGD on the
    ``k B`` examples.

    Args:
      micro_batches: ``k >= 1``, the size of the batch's leading axis.
      gradient: the gradient step of one micro-batch, ``gradient(objective,
        params, batch, key, model_state) -> ((loss, aux), grads)``
        (:func:`default_gradient` unless given); not one that returns
        per-example gradients (``per_example = True``).

    Returns:
      ``gradient(objective, params, batch, key, model_state) -> ((loss, aux),
      grads)`` for ``make_step(..., gradient=...)``, stepped by a loop over a
      source of ``(k, B, ...)`` batches (a :class:`Sampler`). The same
      arguments give the same function (programs built on it are reused).

    Raises:
      TypeError: ``micro_batches`` not an int, ``gradient`` not callable or
        per-example.
      ValueError: ``micro_batches < 1``; at trace time, a batch leaf whose
        leading axis is not ``micro_batches``, or an objective whose new model
        state has another structure than the one it was given.

    Example::

        step = train.make_step(objective, optax.adamw(3e-4), gradient=train.accumulate_gradients(4))
        # a Sampler drawing batches of (4, batch_size, context) tokens: steps=1000 is 1000 updates
    """
    micro_batches = _checks.positive_int(micro_batches, "micro_batches")
    base = default_gradient if gradient is None else _checks.callable_arg(gradient, "gradient", _SIGNATURE)
    if getattr(base, "per_example", False):
        raise TypeError(f"gradient {getattr(base, '__name__', base)} returns per-example gradients (per_example = "
                        "True), which accumulate_gradients cannot average into one batch gradient; accumulate a "
                        "batch gradient (default_gradient, per_example.dp_gradient)")
    try:
        return _accumulated(micro_batches, base)
    except TypeError:  # an unhashable gradient: build it for this call only
        return _accumulated.__wrapped__(micro_batches, base)


@functools.lru_cache(maxsize=256)
def _accumulated(k: int, base: Callable[..., Any]) -> Callable[..., Any]:

    def gradient(objective, params, batch, key, model_state):
        objective = normalized_objective(objective)
        _check_leading_axis(batch, k)
        one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], a.dtype), batch)
        (_, aux_shape), grads_shape = jax.eval_shape(functools.partial(base, objective), params, one, key, model_state)
        new_state = aux_shape.get("model_state", model_state)
        if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(model_state):
            raise ValueError(f"accumulate_gradients threads the model state from one micro-batch to the next, but the "
                             f"objective returned aux['model_state'] of structure {jax.tree_util.tree_structure(new_state)} "
                             f"for a model_state of structure {jax.tree_util.tree_structure(model_state)}")
        averaged = [name for name, v in aux_shape.items() if name != "model_state" and _floating_scalar(v)]
        kept = {name: v for name, v in aux_shape.items() if name != "model_state" and name not in averaged}
        zeros = jax.tree_util.tree_map(lambda g: jnp.zeros(g.shape, _sum_dtype(g.dtype)), grads_shape)
        last = jax.tree_util.tree_map(lambda v: jnp.zeros(v.shape, v.dtype), kept)

        def micro_step(carry, xs):
            state, total, _ = carry
            i, micro = xs
            (value, aux), g = base(objective, params, micro, jax.random.fold_in(key, i), state)
            state = aux.get("model_state", state)
            total = jax.tree_util.tree_map(lambda t, gi: t + gi.astype(t.dtype), total, g)
            return (state, total, {name: aux[name] for name in kept}), (value, {name: aux[name] for name in averaged})

        (state, total, last), (values, scalars) = jax.lax.scan(
            micro_step, (model_state, zeros, last), (jnp.arange(k), batch), length=k)
        grads = jax.tree_util.tree_map(lambda t, g: (t / k).astype(g.dtype), total, grads_shape)
        aux = {**last, **{name: v.mean() for name, v in scalars.items()}}
        if "model_state" in aux_shape:
            aux["model_state"] = state
        return (values.mean(), aux), grads

    gradient.__name__ = f"accumulate_gradients({k}, {getattr(base, '__name__', base)})"
    gradient.linear_in_loss = getattr(base, "linear_in_loss", True)  # a mean of the base's gradients
    return gradient


def _check_leading_axis(batch: Any, k: int) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = jnp.shape(leaf)
        if not shape or shape[0] != k:
            raise ValueError(f"accumulate_gradients({k}) needs every batch leaf to have a leading axis of micro_batches="
                             f"{k}, leaves (micro_batches, B, ...), got batch{jax.tree_util.keystr(path)} of shape "
                             f"{tuple(shape)} (a batch of k B examples splits as x.reshape(k, -1, *x.shape[1:]))")


def _floating_scalar(v: Any) -> bool:
    return isinstance(v, jax.ShapeDtypeStruct) and v.shape == () and jnp.issubdtype(v.dtype, jnp.inexact)


def _sum_dtype(dtype: Any) -> Any:
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else dtype
