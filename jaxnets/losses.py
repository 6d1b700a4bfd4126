"""Losses, each reduced to a scalar: the mean over the batch (sum over classes).

Every loss takes ``(predictions, targets)`` with the batch on the leading
axis and returns a scalar. For per-example values, ``jax.vmap`` a loss over
single examples with a leading axis of 1, or use the optax functions the
tests compare against (``optax.softmax_cross_entropy`` and friends), which
return per-example values.

Predictions (logits, scores) must be real floating arrays and targets real
(a complex, bool or integer prediction, or a complex target, raises a
``TypeError`` naming it); an empty batch raises a ``ValueError`` (the mean
over no elements would be NaN). These read shapes and dtypes only, so they
run under ``jit`` too, at trace time. Label values are checked when they are concrete (called outside ``jit``);
``fit`` and ``evaluate`` check every data set before tracing.

Each loss's hand-derived gradient with respect to its predictions sits
directly below it as ``<loss>_grad(predictions, targets)``, and is attached
to the loss as ``loss.grad``; its hand rule in the convention shared with layers
and activations is ``loss.backward(predictions, targets, y_bar=1.0)`` (what
:func:`jaxnets.backprop.grad` looks up).
Targets are constants. Kinks: ``hinge``'s gradient is 0 at the margin
``t s = 1``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks
from jaxnets.activations import log_softmax, sigmoid, softmax, softplus

__all__ = [
    "mean_squared_error",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "binary_cross_entropy_with_logits",
    "huber",
    "hinge",
    "accuracy",
    "mean_squared_error_grad",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_with_integer_labels_grad",
    "binary_cross_entropy_with_logits_grad",
    "huber_grad",
    "hinge_grad",
]


def _same_shape(a, b, a_name: str, b_name: str) -> None:
    """Both arrays, of one shape, not empty; ``a`` (the predictions) real floating, ``b`` (the targets) real."""
    _checks.array_like(a, a_name)
    _checks.array_like(b, b_name)
    _checks.floating(a, a_name)
    _checks.real_array(b, b_name)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _checks.not_empty(a, a_name)


def _logits_and_labels(logits, labels) -> None:
    _checks.array_like(logits, "logits")
    _checks.array_like(labels, "labels")
    _checks.floating(logits, "logits")
    _checks.integer(labels, "labels")
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have the shape of logits without the class axis: logits {tuple(logits.shape)} "
            f"needs labels {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    _checks.not_empty(logits, "logits")
    _checks.labels_in_range(labels, logits.shape[-1])


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """``mean((predictions - targets)^2)`` over every element.

    Shapes: ``predictions`` and ``targets`` of one shape; returns ``()``.
    """
    _same_shape(predictions, targets, "predictions", "targets")
    return jnp.mean(jnp.square(predictions - targets))


def mean_squared_error_grad(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """``dL/dp = 2 (p - t) / N`` with ``N`` the number of elements."""
    _same_shape(predictions, targets, "predictions", "targets")
    return 2.0 * (predictions - targets) / predictions.size


mean_squared_error.grad = mean_squared_error_grad


def _class_axis(logits) -> None:
    if logits.ndim < 1:
        raise ValueError(f"logits must have a class axis (the last), got a scalar of shape {tuple(logits.shape)}")


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against target distributions.

    ``L = -(1/B) sum_b sum_c t_bc log softmax(z_b)_c``.

    Args:
      logits: ``(batch, classes)`` (any leading axes), unnormalised scores ``z``.
      targets: same shape; one-hot rows or probability rows ``t``.
    """
    _same_shape(logits, targets, "logits", "targets")
    _class_axis(logits)
    return -jnp.mean(jnp.sum(targets * log_softmax(logits), axis=-1))


def softmax_cross_entropy_grad(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``dL/dz = (softmax(z) sum_c t_c - t) / B``; for rows of ``t`` summing to 1, ``(softmax(z) - t) / B``.

    From ``L_b = -sum_c t_c (z_c - logsumexp(z))``: ``dL_b/dz_k = -t_k + softmax(z)_k sum_c t_c``.
    ``B`` is the number of rows (the product of the leading axes).
    """
    _same_shape(logits, targets, "logits", "targets")
    _class_axis(logits)
    rows = logits.size // logits.shape[-1]
    return (softmax(logits) * jnp.sum(targets, axis=-1, keepdims=True) - targets) / rows


softmax_cross_entropy.grad = softmax_cross_entropy_grad


def softmax_cross_entropy_with_integer_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against integer class labels.

    ``L = -(1/B) sum_b log softmax(z_b)_{y_b}``; equal to
    :func:`softmax_cross_entropy` with one-hot targets, without building them.

    Args:
      logits: ``(batch, classes)`` (any leading axes).
      labels: ``(batch,)`` integers in ``[0, classes)``.

    Raises:
      TypeError: non-integer labels.
      ValueError: labels of the wrong shape, or out of range (when concrete).
    """
    _logits_and_labels(logits, labels)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]  # z_{b, y_b}
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)  # log softmax(z)_y = z_y - logsumexp(z)


def softmax_cross_entropy_with_integer_labels_grad(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The classic combined gradient ``dL/dz = (softmax(z) - onehot(y)) / B``.

    Softmax and cross-entropy differentiated together: the exponentials
    cancel against the logarithm, leaving predicted minus true probabilities.
    """
    _logits_and_labels(logits, labels)
    rows = logits.size // logits.shape[-1]
    one_hot = (labels[..., None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)).astype(logits.dtype)
    return (softmax(logits) - one_hot) / rows


softmax_cross_entropy_with_integer_labels.grad = softmax_cross_entropy_with_integer_labels_grad


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy of ``sigmoid(logits)`` against targets in ``[0, 1]``.

    ``L = mean(softplus(z) - t z)``, the stable form of
    ``-t log sigmoid(z) - (1 - t) log(1 - sigmoid(z))``.

    Raises:
      ValueError: shapes differ, or (when concrete, outside ``jit``) a target
        outside ``[0, 1]``: the formula would return a number, but not a
        cross-entropy (it is unbounded below for such targets).
    """
    _same_shape(logits, targets, "logits", "targets")
    _checks.values_in_interval(targets, 0.0, 1.0, "targets")
    return jnp.mean(softplus(logits) - targets * logits)


def binary_cross_entropy_with_logits_grad(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``dL/dz = (sigmoid(z) - t) / N``, since ``softplus' = sigmoid``."""
    _same_shape(logits, targets, "logits", "targets")
    _checks.values_in_interval(targets, 0.0, 1.0, "targets")
    return (sigmoid(logits) - targets) / logits.size


binary_cross_entropy_with_logits.grad = binary_cross_entropy_with_logits_grad


def huber(predictions: jax.Array, targets: jax.Array, delta: float = 1.0) -> jax.Array:
    """Huber loss: quadratic near zero, linear beyond ``delta``; mean over elements.

    With ``r = |predictions - targets|``: ``r^2 / 2`` if ``r <= delta``, else
    ``delta (r - delta / 2)``. Equals ``optax.huber_loss``, averaged.
    """
    delta = _checks.positive_float(delta, "delta")
    _same_shape(predictions, targets, "predictions", "targets")
    r = jnp.abs(predictions - targets)
    quadratic = jnp.minimum(r, delta)
    return jnp.mean(0.5 * quadratic**2 + delta * (r - quadratic))


def huber_grad(predictions: jax.Array, targets: jax.Array, delta: float = 1.0) -> jax.Array:
    """``dL/dp = clip(p - t, -delta, delta) / N``: the residual, capped at ``delta`` in size."""
    delta = _checks.positive_float(delta, "delta")
    _same_shape(predictions, targets, "predictions", "targets")
    return jnp.clip(predictions - targets, -delta, delta) / predictions.size


huber.grad = huber_grad


def _plus_minus_one(targets) -> None:
    if _checks.is_traced(targets):
        return
    arr = np.asarray(targets)
    bad = (arr != 1) & (arr != -1)
    if bad.any():
        value = arr[tuple(np.argwhere(bad)[0])]
        raise ValueError(f"targets must be -1 or +1 for the hinge loss, got {value} ({int(bad.sum())} of {arr.size} entries)")


def hinge(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary hinge loss ``mean(max(0, 1 - t s))`` for targets ``t`` in ``{-1, +1}``.

    Raises:
      ValueError: shapes differ, or (when concrete) a target other than -1 or +1.
    """
    _same_shape(scores, targets, "scores", "targets")
    _plus_minus_one(targets)
    margin = 1.0 - targets * scores
    return jnp.mean(jnp.where(margin > 0, margin, jnp.zeros_like(margin)))


def hinge_grad(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """``dL/ds = -t / N`` where the margin ``1 - t s`` is positive, else 0 (0 at the kink ``t s = 1``)."""
    _same_shape(scores, targets, "scores", "targets")
    _plus_minus_one(targets)
    return jnp.where(1.0 - targets * scores > 0, -targets, jnp.zeros_like(targets)) / scores.size


hinge.grad = hinge_grad


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max equals the integer label (a metric, not differentiable)."""
    _logits_and_labels(logits, labels)
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def _attach_backward(loss, grad):
    """The one convention of hand rules: ``loss.backward(predictions, targets, y_bar=1.0) -> predictions_bar``."""

    def backward(predictions, targets, y_bar=1.0):
        return y_bar * grad(predictions, targets)

    backward.__doc__ = f"Hand rule of ``{loss.__name__}``: ``y_bar * {grad.__name__}(predictions, targets)``."
    loss.backward = backward


for _loss in (mean_squared_error, softmax_cross_entropy, softmax_cross_entropy_with_integer_labels,
              binary_cross_entropy_with_logits, huber, hinge):
    if getattr(_loss, "grad", None) is not None:
        _attach_backward(_loss, _loss.grad)
