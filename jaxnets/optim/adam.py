"""The Adam family: Adam, AdamW, NAdam, Adamax, AMSGrad.

All keep a moving average of the gradient (first moment ``mu``) and a
per-coordinate scale from the gradient's magnitude (second moment ``nu``, or
its infinity norm for Adamax), and divide one by the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnets.optim import _base


def _check_adam_args(learning_rate, b1, b2, eps, eps_root=0.0) -> None:
    _base.check_learning_rate(learning_rate)
    _base.check_decay(b1, "b1")
    _base.check_decay(b2, "b2")
    _base.check_nonnegative(eps, "eps")
    _base.check_nonnegative(eps_root, "eps_root")


def _zeros(params, dtype=None):
    return jax.tree_util.tree_map(lambda p: jnp.zeros_like(p, dtype=dtype), params)


def _cast(tree, dtype):
    return tree if dtype is None else jax.tree_util.tree_map(lambda t: t.astype(dtype), tree)


class AdamState(NamedTuple):
    """``count``: steps taken (int32). ``mu``: first moment. ``nu``: second moment.

    Shared by :func:`adam`, :func:`adamw` and :func:`nadam`.
    """

    count: jax.Array
    mu: Any
    nu: Any


def _adam_direction(grads, state, b1, b2, eps, eps_root, mu_dtype, nesterov):
    """The Adam update direction (before the learning rate) and the new state."""
    _base.check_same_structure(grads, state.mu, "first moment mu")
    mu = jax.tree_util.tree_map(lambda g, m: _base.ema(g, m, b1), grads, state.mu)
    nu = jax.tree_util.tree_map(lambda g, v: _base.ema_sq(g, v, b2), grads, state.nu)
    count = _base.increment(state.count)
    if nesterov:
        # Look ahead: the next step's debiased momentum, mixed with the current gradient.
        next_count = _base.increment(count)
        mu_hat = jax.tree_util.tree_map(
            lambda m, g: _base.ema(_base.debias(g, b1, count), _base.debias(m, b1, next_count), b1), mu, grads
        )
    else:
        mu_hat = jax.tree_util.tree_map(lambda m: _base.debias(m, b1, count), mu)
    nu_hat = jax.tree_util.tree_map(lambda v: _base.debias(v, b2, count), nu)
    direction = jax.tree_util.tree_map(lambda m, v: _base.safe_div(m, jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
    nu = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), nu, state.nu)
    return direction, AdamState(count=count, mu=_cast(mu, mu_dtype), nu=nu)


def adam(
    learning_rate: _base.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""Adam (Kingma & Ba, 2015).

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) |g_t|^2

        \hat m_t = \frac{m_t}{1 - \beta_1^t}, \qquad
        \hat v_t = \frac{v_t}{1 - \beta_2^t}, \qquad
        p_t = p_{t-1} - \mathrm{lr}\, \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    With ``nesterov=True`` (NAdam, Dozat 2016), ``hat m_t`` becomes
    ``b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t)``.

    Args:
      learning_rate: a number > 0 or a schedule.
      b1, b2: decay rates of the two moments, in [0, 1).
      eps: added outside the square root (as in the paper and PyTorch).
      eps_root: added inside the square root (0 by default); a positive value
        keeps gradients finite when differentiating through the update.
      mu_dtype: dtype to store ``m`` in (default: that of the gradients),
        rounded as optax rounds it: each
        product of the moving average in its operand's dtype, then the sum in
        the common dtype, then the cast; a bfloat16 state matches optax's bit
        for bit at every step.
      nesterov: use NAdam's look-ahead momentum.

    Same as ``optax.adam``, and as PyTorch's ``Adam`` with its defaults.
    """
    _check_adam_args(learning_rate, b1, b2, eps, eps_root)
    mu_dtype = _base.check_dtype(mu_dtype, "mu_dtype")
    _base.check_flag(nesterov, "nesterov")

    def init(params):
        return AdamState(count=jnp.zeros([], jnp.int32), mu=_zeros(params, mu_dtype), nu=_zeros(params))

    def update(grads, state, params=None):
        del params
        _base.check_state(state, AdamState, "nadam" if nesterov else "adam")
        direction, new_state = _adam_direction(grads, state, b1, b2, eps, eps_root, mu_dtype, nesterov)
        return _base.scale_by_learning_rate(direction, learning_rate, state.count), new_state

    return _base.transformation(init, update)


def nadam(
    learning_rate: _base.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
) -> optax.GradientTransformation:
    """NAdam (Dozat, 2016): :func:`adam` with Nesterov momentum (``nesterov=True`` by default).

    Same as ``optax.nadam``. PyTorch's ``NAdam`` also decays the momentum
    coefficient over time (``momentum_decay``), which this version does not.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def adamw(
    learning_rate: _base.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    weight_decay: _base.ScalarOrSchedule = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    .. math::
        p_t = p_{t-1} - \mathrm{lr}\, \Big(\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
              + \lambda\, p_{t-1}\Big)

    with ``lambda = weight_decay`` (a number >= 0 or a schedule). The decay
    term is added to Adam's direction, not to the gradient, so it is not
    rescaled by ``v`` (that is what "decoupled" means; Adam with an L2
    penalty in the loss would rescale it).

    The arguments other than ``mask`` are those of :func:`adam`.

    Args:
      mask: a pytree of bools with the structure of params (or a prefix of
        it), or a callable ``params -> such a tree``: weight decay applies
        where it is True. Typically excludes biases and norm scales.

    Same as ``optax.adamw``. PyTorch's ``AdamW`` multiplies the decay by the
    learning rate in the same way, but its default ``weight_decay`` is 1e-2.
    """
    _check_adam_args(learning_rate, b1, b2, eps, eps_root)
    _base.check_nonnegative(weight_decay, "weight_decay")
    mu_dtype = _base.check_dtype(mu_dtype, "mu_dtype")
    _base.check_flag(nesterov, "nesterov")

    def init(params):
        _base.resolve_mask(mask, params)  # a mask that does not fit params fails here, not mid-training
        return AdamState(count=jnp.zeros([], jnp.int32), mu=_zeros(params, mu_dtype), nu=_zeros(params))

    def update(grads, state, params=None):
        _base.check_state(state, AdamState, "adamw")
        direction, new_state = _adam_direction(grads, state, b1, b2, eps, eps_root, mu_dtype, nesterov)
        direction = _base.add_weight_decay(direction, params, weight_decay, mask, state.count)
        return _base.scale_by_learning_rate(direction, learning_rate, state.count), new_state

    return _base.transformation(init, update)


class AdamaxState(NamedTuple):
    """``count``: steps taken. ``mu``: first moment. ``nu``: exponentially weighted infinity norm ``u``."""

    count: jax.Array
    mu: Any
    nu: Any


def adamax(learning_rate: _base.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    r"""Adamax (Kingma & Ba, 2015, section 7): Adam with the infinity norm.

    .. math::
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \max(|g_t| + \epsilon,\ \beta_2 u_{t-1}), \qquad
        p_t = p_{t-1} - \mathrm{lr}\, \frac{m_t / (1 - \beta_1^t)}{u_t}

    ``u`` needs no bias correction. Same as ``optax.adamax``; PyTorch's
    ``Adamax`` adds ``eps`` the same way. One difference, in low precision:
    with float16 gradients ``eps = 1e-8`` rounds to 0, so a coordinate whose
    gradients have all been 0 has ``u = 0``; optax divides ``0 / 0`` there and
    returns NaN, this version gives it no update (bit for bit the same
    wherever ``u > 0``, so always in float32 with ``eps > 0``). The Adam
    family and RMSProp treat a zero denominator the same way.
    """
    _check_adam_args(learning_rate, b1, b2, eps)

    def init(params):
        return AdamaxState(count=jnp.zeros([], jnp.int32), mu=_zeros(params), nu=_zeros(params))

    def update(grads, state, params=None):
        del params
        _base.check_state(state, AdamaxState, "adamax")
        _base.check_same_structure(grads, state.mu, "first moment mu")
        count = _base.increment(state.count)
        mu = jax.tree_util.tree_map(lambda g, m: _base.ema(g, m, b1), grads, state.mu)

        def infinity_norm(g, u):
            return jnp.maximum(*_base.promote(jnp.abs(g) + eps, _base.scale(b2, u)))

        nu = jax.tree_util.tree_map(infinity_norm, grads, state.nu)
        direction = jax.tree_util.tree_map(lambda m, u: _base.safe_div(_base.debias(m, b1, count), u), mu, nu)
        updates = _base.scale_by_learning_rate(direction, learning_rate, state.count)
        return updates, AdamaxState(count=count, mu=mu, nu=nu)

    return _base.transformation(init, update)


class AmsgradState(NamedTuple):
    """``count``, ``mu``, ``nu`` as in Adam; ``nu_max``: the running maximum of ``hat nu``."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def amsgrad(
    learning_rate: _base.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> optax.GradientTransformation:
    r"""AMSGrad (Reddi et al., 2018): Adam whose denominator never shrinks.

    .. math::
        \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, \hat v_t), \qquad
        p_t = p_{t-1} - \mathrm{lr}\, \frac{\hat m_t}{\sqrt{\hat v^{\max}_t + \epsilon_{root}} + \epsilon}

    ``hat m``, ``hat v`` are bias-corrected unless ``bias_correction_mu`` /
    ``bias_correction_nu`` is False (the paper corrects neither). Same as
    ``optax.amsgrad``; PyTorch's ``Adam(amsgrad=True)`` takes the maximum of
    the uncorrected ``v`` and corrects afterwards. ``mu_dtype`` as in :func:`adam`.
    """
    _check_adam_args(learning_rate, b1, b2, eps, eps_root)
    mu_dtype = _base.check_dtype(mu_dtype, "mu_dtype")
    _base.check_flag(bias_correction_mu, "bias_correction_mu")
    _base.check_flag(bias_correction_nu, "bias_correction_nu")

    def init(params):
        return AmsgradState(
            count=jnp.zeros([], jnp.int32), mu=_zeros(params, mu_dtype), nu=_zeros(params), nu_max=_zeros(params)
        )

    def update(grads, state, params=None):
        del params
        _base.check_state(state, AmsgradState, "amsgrad")
        _base.check_same_structure(grads, state.mu, "first moment mu")
        mu = jax.tree_util.tree_map(lambda g, m: _base.ema(g, m, b1), grads, state.mu)
        nu = jax.tree_util.tree_map(lambda g, v: _base.ema_sq(g, v, b2), grads, state.nu)
        count = _base.increment(state.count)
        mu_hat = jax.tree_util.tree_map(lambda m: _base.debias(m, b1, count), mu) if bias_correction_mu else mu
        nu_eff = jax.tree_util.tree_map(lambda v: _base.debias(v, b2, count), nu) if bias_correction_nu else nu
        nu_max = jax.tree_util.tree_map(lambda a, b: jnp.maximum(*_base.promote(a, b)), state.nu_max, nu_eff)
        direction = jax.tree_util.tree_map(lambda m, v: _base.safe_div(m, jnp.sqrt(v + eps_root) + eps), mu_hat, nu_max)
        updates = _base.scale_by_learning_rate(direction, learning_rate, state.count)
        return updates, AmsgradState(count=count, mu=_cast(mu, mu_dtype), nu=nu, nu_max=nu_max)

    return _base.transformation(init, update)
