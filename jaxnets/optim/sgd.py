"""Stochastic gradient descent, with heavy-ball or Nesterov momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnets.optim import _base


class SgdState(NamedTuple):
    """``count``: steps taken (int32). ``trace``: the momentum buffer ``v`` (None without momentum).

    The field is named ``trace`` as in optax's ``TraceState``, so
    ``optax.tree.get(state, "trace")`` finds it in either library's state.
    """

    count: jax.Array
    trace: Any


def sgd(
    learning_rate: _base.ScalarOrSchedule,
    momentum: float | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Stochastic gradient descent, optionally with momentum.

    Without momentum: ``p <- p - lr g``. With momentum ``mu``:

    .. math::
        v_t = g_t + \mu v_{t-1}, \qquad
        p_t = p_{t-1} - \mathrm{lr}\, v_t
        \quad(\text{Nesterov: } p_t = p_{t-1} - \mathrm{lr}\,(g_t + \mu v_t))

    Args:
      learning_rate: a number > 0 or a schedule ``count -> lr``.
      momentum: ``mu`` in [0, 1), or None for plain SGD.
      nesterov: use the Nesterov look-ahead form above.
      accumulator_dtype: dtype of ``v`` (default: that of the gradients); ``mu v``
        is computed in ``v``'s dtype before ``g`` is added, as ``optax.trace``
        does, so a bfloat16 buffer matches optax's bit for bit.

    Same as ``optax.sgd``. PyTorch's ``SGD(momentum=mu, dampening=0)`` is the
    same for a constant learning rate (it folds ``lr`` in after the buffer too).
    """
    _base.check_learning_rate(learning_rate)
    if momentum is not None:
        _base.check_decay(momentum, "momentum")
    _base.check_flag(nesterov, "nesterov")
    accumulator_dtype = _base.check_dtype(accumulator_dtype, "accumulator_dtype")

    def init(params):
        trace = None
        if momentum is not None:
            trace = jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=accumulator_dtype), params)
        return SgdState(count=jnp.zeros([], jnp.int32), trace=trace)

    def update(grads, state, params=None):
        _base.check_state(state, SgdState, "sgd")
        _base.check_grad_leaves(grads)
        if momentum is None:
            if params is not None:
                _base.check_same_structure(grads, params, "params")
            updates, velocity = grads, None
        else:
            _base.check_same_structure(grads, state.trace, "momentum buffer")

            def trace(g, v):
                return _base.add(g, _base.scale(momentum, v))  # optax's order: mu v in v's dtype, then the sum

            velocity = jax.tree_util.tree_map(trace, grads, state.trace)
            updates = jax.tree_util.tree_map(trace, grads, velocity) if nesterov else velocity
            if accumulator_dtype is not None:
                velocity = jax.tree_util.tree_map(lambda v: v.astype(accumulator_dtype), velocity)
        updates = _base.scale_by_learning_rate(updates, learning_rate, state.count)
        return updates, SgdState(count=_base.increment(state.count), trace=velocity)

    return _base.transformation(init, update)
