"""Lion: the sign of an interpolated momentum, with decoupled weight decay."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnets.optim import _base


class LionState(NamedTuple):
    """``count``: steps taken. ``mu``: the momentum (a moving average of the gradient, rate ``b2``)."""

    count: jax.Array
    mu: Any


def lion(
    learning_rate: _base.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any = None,
    weight_decay: _base.ScalarOrSchedule = 1e-3,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    .. math::
        c_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        p_t = p_{t-1} - \mathrm{lr}\,(\mathrm{sign}(c_t) + \lambda p_{t-1}), \qquad
        m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Every coordinate moves by exactly ``lr`` (plus decay), so Lion wants a
    learning rate 3 to 10 times smaller than Adam's. ``mask`` as in
    :func:`jaxnets.optim.adamw`; ``mu_dtype`` stores ``m`` (rounded as
    in :func:`jaxnets.optim.adam`). Same as ``optax.lion`` (PyTorch has none).
    """
    _base.check_learning_rate(learning_rate)
    _base.check_decay(b1, "b1")
    _base.check_decay(b2, "b2")
    _base.check_nonnegative(weight_decay, "weight_decay")
    mu_dtype = _base.check_dtype(mu_dtype, "mu_dtype")

    def init(params):
        _base.resolve_mask(mask, params)
        return LionState(count=jnp.zeros([], jnp.int32), mu=jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params))

    def update(grads, state, params=None):
        _base.check_state(state, LionState, "lion")
        _base.check_same_structure(grads, state.mu, "momentum mu")
        direction = jax.tree_util.tree_map(lambda g, m: jnp.sign(_base.ema(g, m, b1)), grads, state.mu)
        mu = jax.tree_util.tree_map(lambda g, m: _base.ema(g, m, b2), grads, state.mu)
        if mu_dtype is not None:
            mu = jax.tree_util.tree_map(lambda m: m.astype(mu_dtype), mu)
        direction = _base.add_weight_decay(direction, params, weight_decay, mask, state.count)
        updates = _base.scale_by_learning_rate(direction, learning_rate, state.count)
        return updates, LionState(count=_base.increment(state.count), mu=mu)

    return _base.transformation(init, update)
