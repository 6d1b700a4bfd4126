"""Gradients of whole models from the hand-derived rules alone, and training on them.

Every built-in layer carries a backward rule written as linear algebra
(:mod:`jaxnets.layers`), every loss its rule (``loss.backward`` in
:mod:`jaxnets.losses`). This module chains them:

* :func:`vjp`: a model's output and its pullback ``y_bar -> (params_bar, x_bar)``;
* :func:`grad`, :func:`value_and_grad`: the gradient of ``loss(model(params, x), y)``
  with respect to params, with exactly the params' pytree structure, without
  ``jax.grad``;
* :func:`hand_gradients`: the model wrapped in ``jax.custom_vjp`` so that
  ``jax.grad`` (and so ``fit``) runs the hand rules instead of autodiff.

Check any of them against autodiff with :mod:`jaxnets.gradcheck`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, cast

import jax

from jaxnets import _checks
from jaxnets.layers import Layer, require_rule

__all__ = ["vjp", "grad", "value_and_grad", "hand_gradients", "loss_gradient"]


def _check_model(model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    require_rule(model)
    return model


def loss_gradient(loss: Callable[..., Any], loss_grad: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """The hand-derived gradient of ``loss`` with respect to its predictions, ``(predictions, targets) -> dL/dpredictions``.

    ``loss_grad`` if given, else from ``loss.backward(predictions, targets,
    y_bar)`` (every loss in :mod:`jaxnets.losses` has one; the convention of
    every hand rule: the forward's arguments, then the output's cotangent).
    """
    _checks.callable_arg(loss, "loss", "loss(predictions, targets) -> scalar")
    if loss_grad is not None:
        if not callable(loss_grad):
            raise TypeError(f"loss_grad must be callable as loss_grad(predictions, targets), got {loss_grad!r}")
        return loss_grad
    rule = getattr(loss, "backward", None)
    if rule is None:
        name = getattr(loss, "__name__", repr(loss))
        raise ValueError(f"loss {name} has no hand-derived gradient (loss.backward); pass loss_grad=... "
                         f"(predictions, targets) -> dL/dpredictions")
    return lambda predictions, targets: rule(predictions, targets, 1.0)


def vjp(model: Layer, params: Any, x: Any, *, state: Any = None, key: jax.Array | None = None,
        train: bool = False) -> tuple[Any, Any, Callable[[Any], tuple[Any, Any]]]:
    """Runs ``model`` forward and returns ``(y, new_state, pullback)``.

    ``pullback(y_bar) -> (params_bar, x_bar)`` applies the hand-derived rules
    in reverse, from the tape recorded on the way forward.
    """
    model = _check_model(model)
    train = _checks.boolean(train, "train")
    if key is not None:
        _checks.prng_key(key, "key")
    for leaf in jax.tree_util.tree_leaves(x):
        _checks.real_array(leaf, "x")
    state = {} if state is None else state
    y, new_state, tape = model.tape_forward(params, state, x, key=key, train=train)

    def pullback(y_bar):
        return model.tape_backward(params, state, tape, y_bar, key=key, train=train)

    return y, new_state, pullback


def value_and_grad(model: Layer, loss: Callable[..., Any], *, loss_grad: Callable[..., Any] | None = None,
                   train: bool = True) -> Callable[..., tuple[jax.Array, Any]]:
    """Like :func:`grad`, returning ``(loss value, grads)``."""
    model = _check_model(model)
    train = _checks.boolean(train, "train")
    rule = loss_gradient(loss, loss_grad)

    def value_and_grad_fn(params, x, y, *, state=None, key=None):
        out, _, pullback = vjp(model, params, x, state=state, key=key, train=train)
        value = loss(out, y)
        if getattr(value, "shape", None) != ():
            raise ValueError(f"loss must return a scalar, got shape {getattr(value, 'shape', type(value).__name__)}")
        grads, _ = pullback(rule(out, y))
        return value, grads

    return value_and_grad_fn


def grad(model: Layer, loss: Callable[..., Any], *, loss_grad: Callable[..., Any] | None = None,
         train: bool = True) -> Callable[..., Any]:
    """The gradient of ``loss(model(params, x), y)`` with respect to params, by hand rules alone.

    Args:
      model: any jaxnets model whose layers all have rules (every built-in
        one does; ``Elementwise`` needs ``vjp=``).
      loss: ``loss(outputs, targets) -> scalar``.
      loss_grad: its gradient with respect to the outputs; default from ``loss.backward``.
      train: run the model in training mode (dropout on, batch statistics).

    Returns:
      ``grad_fn(params, x, y, *, state=None, key=None) -> grads`` with exactly
      the pytree structure of ``params``. Works under ``jit`` and ``vmap``.

    Raises:
      ValueError: naming the first layer without a rule, or a loss without a gradient.
    """
    value_and_grad_fn = value_and_grad(model, loss, loss_grad=loss_grad, train=train)

    def grad_fn(params, x, y, *, state=None, key=None):
        return value_and_grad_fn(params, x, y, state=state, key=key)[1]

    return grad_fn


def hand_gradients(model: Layer) -> Layer:
    """The same model, differentiated by its hand-derived rules instead of autodiff.

    Its ``apply_with_state`` is a ``jax.custom_vjp`` function: the forward pass
    records the tape, and ``jax.grad`` calls the layers' rules on it. Params,
    state and shapes are unchanged, so ``fit(hand_gradients(model), ...)``
    trains the same network on hand-derived gradients under ``jit``; compare
    it with ``fit(model, ...)`` (autodiff).
    """
    model = _check_model(model)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
    def run(params, state, x, key, train):
        return model.apply_with_state(params, state, x, key=key, train=train)

    def run_fwd(params, state, x, key, train):
        y, new_state, tape = model.tape_forward(params, state, x, key=key, train=train)
        return (y, new_state), (params, state, tape, key)

    def run_bwd(train, residuals, cotangents):
        params, state, tape, key = residuals
        y_bar, _ = cotangents  # the new state is not differentiated
        params_bar, x_bar = model.tape_backward(params, state, tape, y_bar, key=key, train=train)
        zeros = jax.tree_util.tree_map(lambda a: jax.numpy.zeros_like(a), state)
        return params_bar, zeros, x_bar, None

    run.defvjp(run_fwd, run_bwd)

    def forward_fn(params, state, x, *, key=None, train=False):
        y, new_state = cast(tuple[Any, Any], run(params, state, x, key, train))
        return y, new_state, x

    def backward_fn(params, state, x, y_bar, *, key=None, train=False):
        return model.backward(params, state, x, y_bar, key=key, train=train)

    return Layer(model.name, f"hand_gradients({model.spec})", model.init_fn, forward_fn, backward_fn, model.children)
