"""Adagrad: per-coordinate step sizes from the running sum of squared gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxnets.optim import _base


class AdagradState(NamedTuple):
    """``count``: steps taken. ``sum_of_squares``: ``G = G_0 + sum_t |g_t|^2`` per coordinate."""

    count: jax.Array
    sum_of_squares: Any


def adagrad(learning_rate: _base.ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7) -> optax.GradientTransformation:
    r"""Adagrad (Duchi et al., 2011).

    .. math::
        G_t = G_{t-1} + |g_t|^2, \qquad
        p_t = p_{t-1} - \mathrm{lr}\, \frac{g_t}{\sqrt{G_t + \epsilon}}

    with ``G_0 = initial_accumulator_value`` (coordinates with ``G_t = 0`` get
    no update).

    Same as ``optax.adagrad``. PyTorch's ``Adagrad`` differs: its accumulator
    starts at 0 and its ``eps`` (1e-10) is added *outside* the square root,
    ``g / (sqrt(G) + eps)``.
    """
    _base.check_learning_rate(learning_rate)
    _base.check_nonnegative(initial_accumulator_value, "initial_accumulator_value")
    _base.check_nonnegative(eps, "eps")

    def init(params):
        return AdagradState(
            count=jnp.zeros([], jnp.int32),
            sum_of_squares=jax.tree_util.tree_map(lambda p: jnp.full_like(p, initial_accumulator_value), params),
        )

    def update(grads, state, params=None):
        del params
        _base.check_state(state, AdagradState, "adagrad")
        _base.check_same_structure(grads, state.sum_of_squares, "accumulator")

        def accumulate(g, s):
            return _base.add(_base.abs_sq(g), s)

        sums = jax.tree_util.tree_map(accumulate, grads, state.sum_of_squares)
        scaled = jax.tree_util.tree_map(
            lambda s, g: _base.scale(jnp.where(s > 0, lax.rsqrt(s + eps), jnp.zeros_like(s)), g), sums, grads
        )
        updates = _base.scale_by_learning_rate(scaled, learning_rate, state.count)
        return updates, AdagradState(count=_base.increment(state.count), sum_of_squares=sums)

    return _base.transformation(init, update)
