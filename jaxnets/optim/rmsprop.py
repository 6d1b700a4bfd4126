"""RMSProp: step sizes from a moving average of squared gradients; centred and momentum variants."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxnets.optim import _base


class RmspropState(NamedTuple):
    """``count``: steps taken. ``nu``: average of ``|g|^2``. ``mu``: average of ``g``
    (centred only, else None). ``trace``: momentum buffer (else None).

    Field names are optax's (``ScaleByRmsState.nu``, ``ScaleByRStdDevState.mu``,
    ``TraceState.trace``), so ``optax.tree.get``/``optax.tree.set`` work by name.
    """

    count: jax.Array
    nu: Any
    mu: Any
    trace: Any


def rmsprop(
    learning_rate: _base.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformation:
    r"""RMSProp (Tieleman & Hinton, 2012).

    .. math::
        \nu_t = \rho \nu_{t-1} + (1 - \rho) |g_t|^2, \qquad
        u_t = \frac{g_t}{\sqrt{\hat\nu_t + \epsilon}}
        \quad\text{or}\quad \frac{g_t}{\sqrt{\hat\nu_t} + \epsilon}\ (\texttt{eps\_in\_sqrt=False})

    ``rho = decay``, ``nu_0 = initial_scale``; ``hat nu = nu / (1 - rho^t)``
    with ``bias_correction``, else ``nu``. Centred: ``hat nu`` is replaced by
    ``hat nu - |hat mu|^2`` with ``mu`` the moving average of ``g`` (a
    variance). Then ``u <- -lr u``, and with ``momentum`` ``m``:
    ``v_t = u_t + m v_{t-1}`` is the step (Nesterov: ``u_t + m v_t``).

    Same as ``optax.rmsprop``. PyTorch's ``RMSprop`` puts ``eps`` outside the
    square root (``eps_in_sqrt=False`` here; its default eps is 1e-8, alpha
    0.99) and applies the learning rate after the momentum buffer, which is
    the same for a constant learning rate.
    """
    _base.check_learning_rate(learning_rate)
    _base.check_decay(decay, "decay")
    _base.check_nonnegative(eps, "eps")
    _base.check_nonnegative(initial_scale, "initial_scale")
    if momentum is not None:
        _base.check_decay(momentum, "momentum")
    for name, flag in (("eps_in_sqrt", eps_in_sqrt), ("centered", centered), ("nesterov", nesterov),
                       ("bias_correction", bias_correction)):
        _base.check_flag(flag, name)

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731
        return RmspropState(
            count=jnp.zeros([], jnp.int32),
            nu=jax.tree_util.tree_map(lambda p: jnp.full_like(p, initial_scale), params),
            mu=zeros() if centered else None,
            trace=zeros() if momentum is not None else None,
        )

    def update(grads, state, params=None):
        del params
        _base.check_state(state, RmspropState, "rmsprop")
        _base.check_same_structure(grads, state.nu, "second moment nu")
        count = _base.increment(state.count)
        nu = jax.tree_util.tree_map(lambda g, v: _base.ema_sq(g, v, decay), grads, state.nu)
        nu_hat = jax.tree_util.tree_map(lambda v: _base.debias(v, decay, count), nu) if bias_correction else nu
        mu = None
        if centered:
            mu = jax.tree_util.tree_map(lambda g, m: _base.ema(g, m, decay), grads, state.mu)
            mu_hat = jax.tree_util.tree_map(lambda m: _base.debias(m, decay, count), mu) if bias_correction else mu
            nu_hat = jax.tree_util.tree_map(lambda m, v: _base.add(v, -_base.abs_sq(m)), mu_hat, nu_hat)
        if eps_in_sqrt:
            def inverse_root(v):  # rsqrt as optax computes it; 0 where v + eps rounds to 0 (see _base.safe_div)
                d = v + eps
                return jnp.where(d != 0, lax.rsqrt(jnp.where(d != 0, d, jnp.ones_like(d))), jnp.zeros_like(d))

            scaling = jax.tree_util.tree_map(inverse_root, nu_hat)
        else:
            scaling = jax.tree_util.tree_map(lambda v: _base.safe_div(jnp.ones_like(v), jnp.sqrt(v) + eps), nu_hat)
        updates = jax.tree_util.tree_map(lambda s, g: _base.scale(s, g), scaling, grads)
        updates = _base.scale_by_learning_rate(updates, learning_rate, state.count)
        velocity = None
        if momentum is not None:
            trace = lambda u, v: _base.add(u, _base.scale(momentum, v))  # noqa: E731  (optax.trace's order)
            velocity = jax.tree_util.tree_map(trace, updates, state.trace)
            updates = jax.tree_util.tree_map(trace, updates, velocity) if nesterov else velocity
        return updates, RmspropState(count=count, nu=nu, mu=mu, trace=velocity)

    return _base.transformation(init, update)
