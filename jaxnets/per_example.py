"""Per-example gradients, and per-example clipping as their first use.

The gradient of a mean loss over a batch is the mean of the examples'
gradients, ``g = (1/B) sum_b g_b``; ``jax.grad`` returns only ``g``. For
some methods the ``g_b`` themselves matter: per-example clipping in
differentially private SGD, gradient-noise and influence estimates, per-example
norms for importance sampling. :func:`grads` computes them as
``jax.vmap(jax.grad(...))``: the model sees each example as a batch of one,
and XLA batches the ``B`` backward passes into the same matrix products, each
with an extra batch dimension.

For training, :func:`dp_gradient` is DP-SGD's gradient step (clip per
example, add Gaussian noise) in the form ``jaxnets.fit(..., gradient=...)``
takes, and :func:`stacked_gradient` hands the raw per-example gradients to
an optimizer that aggregates them itself (``optax.contrib.dpsgd``).

Example (one step of DP-SGD without the noise; ``docs/lessons/13_the_training_engine.md`` trains with it)::

    g = per_example.grads(model, loss, params, x, y)       # leaves (B, *param_shape)
    g = per_example.clip(g, max_norm=1.0)                  # each example's global norm <= 1
    mean = jax.tree_util.tree_map(lambda a: a.mean(0), g)  # then optimizer.update(mean, ...)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets.layers import Layer

__all__ = ["grads", "norms", "clip", "dp_gradient", "stacked_gradient"]


def grads(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    params: Any,
    x: Any,
    y: Any,
    *,
    model_state: Any = None,
    key: jax.Array | None = None,
    train: bool = False,
) -> Any:
    """The gradient of ``loss(model(params, x_b), y_b)`` for every example ``b``.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar`` for a batch; it is called
        with batches of one example.
      params: the model's parameters.
      x: ``(B, *features)`` inputs; y: ``(B, ...)`` targets.
      model_state: the model's state (e.g. BatchNorm running statistics),
        used as it is and not updated.
      key: needed by random layers in training mode; example ``b`` gets
        ``fold_in(key, b)``, so its dropout mask is its own.
      train: run the model in training mode. A model with state is then
        rejected: its batch statistics would be those of single examples.

    Returns:
      A pytree with the structure of ``params`` whose leaves have a leading
      axis of length ``B``. With a mean-reduced loss, their mean over that
      axis is the batch gradient (the tests check it against ``jax.grad``).

    Raises:
      TypeError, ValueError: wrong model, loss or shapes; state in training mode.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    x, y = _checks.real_array(x, "x"), _checks.real_array(y, "y")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"x must hold at least one example, got shape {tuple(x.shape)}")
    train = _checks.boolean(train, "train")
    if key is not None:
        _checks.prng_key(key, "key")
    model_state = {} if model_state is None else model_state
    if train and jax.tree_util.tree_leaves(model_state):
        raise ValueError("per-example gradients in training mode need a model without state; BatchNorm would "
                         "normalise each example by its own statistics (use train=False, or LayerNorm)")
    if not _checks.is_traced(y) and jnp.issubdtype(y.dtype, jnp.integer):
        out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], params, model_state,
                             jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
        if isinstance(out, jax.ShapeDtypeStruct) and out.shape and out.shape[-1] > 0:
            _checks.labels_in_range(y, out.shape[-1], "y (labels)")
    keys = None if key is None else jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(x.shape[0]))

    def one(xb, yb, kb):
        def objective(p):
            outputs, _ = model.apply_with_state(p, model_state, xb[None], key=kb, train=train)
            return loss(outputs, yb[None])

        return jax.grad(objective)(params)

    return jax.vmap(one, in_axes=(0, 0, None if key is None else 0))(jnp.asarray(x), jnp.asarray(y), keys)


def norms(per_example_grads: Any) -> jax.Array:
    """``(B,)``: each example's global L2 norm over all leaves, ``||g_b|| = sqrt(sum_leaves sum g_b^2)``."""
    leaves = jax.tree_util.tree_leaves(per_example_grads)
    if not leaves:
        raise ValueError("per_example_grads has no leaves")
    for path, leaf in jax.tree_util.tree_leaves_with_path(per_example_grads):
        where = f"per_example_grads{jax.tree_util.keystr(path)}"
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.core.Tracer)):
            raise TypeError(f"{where} must be an array with a leading example axis, got {type(leaf).__name__}")
        _checks.floating(leaf, where)
    sizes = {leaf.shape[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of per_example_grads needs the same leading (example) axis, got sizes {sorted(map(str, sizes))}")
    if sizes == {0}:
        raise ValueError("per_example_grads must hold at least one example, got leaves with a leading axis of 0")
    squares = [jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1) for leaf in leaves]
    return jnp.sqrt(sum(squares))


def clip(per_example_grads: Any, max_norm: float) -> Any:
    """Scales each example's gradient to a global L2 norm of at most ``max_norm``.

    ``g_b <- g_b * min(1, max_norm / ||g_b||)``, as in DP-SGD (Abadi et al.,
    2016, "Deep Learning with Differential Privacy"). Gradients already within
    the bound are unchanged; a zero gradient stays zero.

    Args:
      per_example_grads: a pytree from :func:`grads`, leaves ``(B, ...)``.
      max_norm: the bound, positive.

    Returns:
      The same structure, clipped per example.
    """
    max_norm = _checks.positive_float(max_norm, "max_norm")
    norm = norms(per_example_grads)
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))  # (B,)
    return jax.tree_util.tree_map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), per_example_grads)


def _per_example(objective: Callable[..., Any], params: Any, batch: Any, key: jax.Array, model_state: Any):
    """Per-example ``(losses (B,), aux means, grads with leaves (B, ...))`` of an objective, each example a batch of one."""
    _checks.callable_arg(objective, "objective", "objective(params, batch, key, model_state) -> (loss, aux)")
    _checks.prng_key(key, "key")
    if jax.tree_util.tree_leaves(model_state):
        raise ValueError("per-example gradients need a model without state; BatchNorm would normalise each example "
                         "by its own statistics (use LayerNorm)")
    leaves = jax.tree_util.tree_leaves(batch)
    for leaf in leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.core.Tracer)) or np.ndim(leaf) < 1:
            raise TypeError(f"batch must be a pytree of arrays with a leading example axis, got a leaf {leaf!r:.60}")
    if not leaves or leaves[0].shape[0] == 0:
        raise ValueError(f"batch must hold at least one example, got {'no arrays' if not leaves else f'shape {tuple(leaves[0].shape)}'}")
    n = leaves[0].shape[0]
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(n))

    def one(example, k):
        single = jax.tree_util.tree_map(lambda a: a[None], example)  # a batch of one
        (value, aux), g = jax.value_and_grad(objective, has_aux=True)(params, single, k, model_state)
        return value, {name: v for name, v in aux.items() if name != "model_state"}, g

    values, aux, g = jax.vmap(one)(batch, keys)
    return values, jax.tree_util.tree_map(jnp.mean, aux), g


def dp_gradient(l2_norm_clip: float, noise_multiplier: float) -> Callable[..., Any]:
    """DP-SGD's gradient step (Abadi et al., 2016), for ``jaxnets.fit(..., gradient=...)`` or ``train.make_step``.

    With ``g_b`` the gradient of example ``b``'s loss (the objective on a
    batch of one), ``C = l2_norm_clip`` and ``sigma = noise_multiplier``:

        g = (1/B) (sum_b clip(g_b, C) + N(0, sigma^2 C^2 I))

    Each example gets ``fold_in(k_e, b)`` as its key and the noise
    ``k_n``, where ``k_n, k_e = split(key)`` of the step's key, so a run is
    reproducible and resumes exactly. The optimizer that follows is any
    (``optax.sgd`` is the original). The privacy this buys depends on
    ``sigma``, the sampling rate ``B / n`` and the number of steps; see
    ``experiments/dp_sgd.py`` for an accountant.

    Args:
      l2_norm_clip: ``C > 0``.
      noise_multiplier: ``sigma >= 0`` (0 gives clipped SGD without noise).

    Returns:
      ``gradient(objective, params, batch, key, model_state) -> ((loss, aux), g)``
      with ``loss`` and ``aux`` the means over the batch.
    """
    l2_norm_clip = _checks.positive_float(l2_norm_clip, "l2_norm_clip")
    noise_multiplier = _checks.positive_float(noise_multiplier, "noise_multiplier", allow_zero=True)

    def gradient(objective, params, batch, key, model_state):
        noise_key, example_key = jax.random.split(key)
        values, aux, g = _per_example(objective, params, batch, example_key, model_state)
        g = clip(g, l2_norm_clip)
        leaves, tree = jax.tree_util.tree_flatten(g)
        keys = jax.random.split(noise_key, len(leaves))
        noisy = [(leaf.sum(0) + noise_multiplier * l2_norm_clip * jax.random.normal(k, leaf.shape[1:], leaf.dtype)) / leaf.shape[0]
                 for leaf, k in zip(leaves, keys)]
        return (values.mean(), {**aux, "model_state": model_state}), jax.tree_util.tree_unflatten(tree, noisy)

    gradient.__name__ = f"dp_gradient(l2_norm_clip={l2_norm_clip}, noise_multiplier={noise_multiplier})"
    gradient.linear_in_loss = False  # clipping and noise: a scaled loss (precision.loss_scaling) would change the result
    return gradient


def stacked_gradient(objective: Callable[..., Any], params: Any, batch: Any, key: jax.Array,
                     model_state: Any) -> tuple[tuple[jax.Array, dict[str, Any]], Any]:
    """The per-example gradients themselves (leaves ``(B, ...)``), for an optimizer that aggregates them.

    ``optax.contrib.dpsgd`` clips and noises per-example gradients itself;
    ``jaxnets.fit(model, loss, optax.contrib.dpsgd(...), data,
    gradient=per_example.stacked_gradient)`` trains with it. (With the
    default gradient ``fit`` refuses that optimizer with a message saying so.)
    """
    values, aux, g = _per_example(objective, params, batch, key, model_state)
    return (values.mean(), {**aux, "model_state": model_state}), g


stacked_gradient.per_example = True
