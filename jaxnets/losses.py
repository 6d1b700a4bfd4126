"""Losses, each reduced to a scalar: the mean over the batch (sum over classes).

Every loss takes ``(predictions, targets)`` with the batch on the leading
axis and returns a scalar. For per-example values, ``jax.vmap`` a loss over
single examples with a leading axis of 1, or use the optax functions the
tests compare against (``optax.softmax_cross_entropy`` and friends), which
return per-example values.

Label values are checked when they are concrete (called outside ``jit``);
``fit`` and ``evaluate`` check every data set before tracing.

The hand-derived gradient of each loss will sit directly below it (see the
issue on hand-derived backprop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets.activations import log_softmax, softplus

__all__ = [
    "mean_squared_error",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "binary_cross_entropy_with_logits",
    "huber",
    "hinge",
    "accuracy",
]


def _same_shape(a, b, a_name: str, b_name: str) -> None:
    _checks.array_like(a, a_name)
    _checks.array_like(b, b_name)
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


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
    _checks.labels_in_range(labels, logits.shape[-1])


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """``mean((predictions - targets)^2)`` over every element.

    Shapes: ``predictions`` and ``targets`` of one shape; returns ``()``.
    """
    _same_shape(predictions, targets, "predictions", "targets")
    return jnp.mean(jnp.square(predictions - targets))


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against target distributions.

    ``L = -(1/B) sum_b sum_c t_bc log softmax(z_b)_c``.

    Args:
      logits: ``(batch, classes)`` (any leading axes), unnormalised scores ``z``.
      targets: same shape; one-hot rows or probability rows ``t``.
    """
    _same_shape(logits, targets, "logits", "targets")
    _checks.floating(logits, "logits")
    return -jnp.mean(jnp.sum(targets * log_softmax(logits), axis=-1))


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
    log_p = log_softmax(logits)
    picked = jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
    return -jnp.mean(picked)


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy of ``sigmoid(logits)`` against targets in ``[0, 1]``.

    ``L = mean(softplus(z) - t z)``, the stable form of
    ``-t log sigmoid(z) - (1 - t) log(1 - sigmoid(z))``.
    """
    _same_shape(logits, targets, "logits", "targets")
    _checks.floating(logits, "logits")
    return jnp.mean(softplus(logits) - targets * logits)


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


def hinge(scores: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary hinge loss ``mean(max(0, 1 - t s))`` for targets ``t`` in ``{-1, +1}``."""
    _same_shape(scores, targets, "scores", "targets")
    return jnp.mean(jnp.maximum(0.0, 1.0 - targets * scores))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose arg-max equals the integer label (a metric, not differentiable)."""
    _logits_and_labels(logits, labels)
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
