"""Shared pieces of the hand-written optimizers: checks, scaling, moments, masks.

Only ``optax.GradientTransformation`` (its ``ExtraArgs`` form) and optax's
schedule convention (a callable of the step count) are used from optax; the
update equations are written out in each optimizer's module.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxnets import _checks


ScalarOrSchedule = Any  # a float, a scalar array, or a callable count -> float


SCALAR_HYPERPARAMETER = "{name} must be a scalar (a number, a 0-d array or a schedule), got an array of shape {shape}"


def _concrete(value: Any, name: str) -> tuple[np.ndarray, bool] | None:
    """``(value, is_array)`` for a hyperparameter whose value is known now; None for dynamic ones.

    Schedules (callables) and traced values (under ``jit``/``vmap``, or
    ``optax.inject_hyperparams`` inside a compiled step) are dynamic: their
    values cannot be checked here, but a traced value's dtype and shape are
    static and are checked all the same. A Python number gives
    ``is_array=False``. A concrete 0-d array (``optax.inject_hyperparams`` in
    eager mode rebuilds the optimizer with 0-d array hyperparameters at every
    update) gives ``is_array=True``. An array of any other shape is refused: it
    would broadcast against the params, a per-coordinate hyperparameter
    nobody asked for (a population's members each get a scalar, under ``vmap``).
    """
    if callable(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a scalar number, got {value!r}")
    if isinstance(value, numbers.Real):
        return np.asarray(float(value)), False
    if isinstance(value, (jax.Array, np.ndarray, jax.core.Tracer)):
        dtype = np.dtype(value.dtype)
        if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"):
            raise TypeError(f"{name} must be a real number, got an array of dtype {dtype.name}")
        if np.ndim(value) != 0:
            raise ValueError(SCALAR_HYPERPARAMETER.format(name=name, shape=tuple(np.shape(value))))
        if isinstance(value, jax.core.Tracer):
            return None
        return np.asarray(value, np.float64), True
    raise TypeError(f"{name} must be a scalar number, got {value!r}")


def _first_bad(values: np.ndarray, ok: np.ndarray, is_array_value: bool) -> str:
    """The first offending value, with its index when there are several entries."""
    index = tuple(int(i) for i in np.argwhere(~ok)[0])
    where = f" at index {index if len(index) != 1 else index[0]}" if values.ndim else ""
    value = float(values[index])
    return f"{value:.7g}{where}" if is_array_value else f"{value}{where}"


def check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
    """A learning rate is a positive finite number, or a schedule (callable of the count).

    An array learning rate may also be 0 (``optax.inject_hyperparams`` passes a
    warm-up schedule's value, which starts at 0), never negative or non-finite.
    """
    got = _concrete(learning_rate, "learning_rate")
    if got is None:
        return
    values, is_array = got
    ok = np.isfinite(values) & ((values >= 0) if is_array else (values > 0))
    if not ok.all():
        expected = "finite and >= 0" if is_array else "a finite number > 0 or a schedule"
        raise ValueError(f"learning_rate must be {expected}, got {_first_bad(values, ok, is_array)}")


def check_decay(value: Any, name: str) -> None:
    """Decay rates (betas, momentum) lie in [0, 1)."""
    got = _concrete(value, name)
    if got is None:
        return
    values, is_array = got
    ok = (values >= 0.0) & (values < 1.0)
    if not ok.all():
        raise ValueError(f"{name} must be in [0, 1), got {_first_bad(values, ok, is_array)}")


def check_nonnegative(value: Any, name: str) -> None:
    """eps, eps_root, weight decay, initial accumulators: finite and >= 0 (or a schedule)."""
    got = _concrete(value, name)
    if got is None:
        return
    values, is_array = got
    ok = np.isfinite(values) & (values >= 0.0)
    if not ok.all():
        raise ValueError(f"{name} must be a finite number >= 0, got {_first_bad(values, ok, is_array)}")


def check_dtype(dtype: Any, name: str):
    """None, or a floating (or complex) dtype to store a moment in (an integer or bool moment would round every update away)."""
    if dtype is None:
        return None
    try:
        canonical = jax.dtypes.canonicalize_dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a dtype or None, got {dtype!r}") from None
    if not (jnp.issubdtype(canonical, jnp.floating) or jnp.issubdtype(canonical, jnp.complexfloating)):
        raise TypeError(f"{name} must be a floating (or complex, for complex params) dtype or None, got {canonical.name}")
    return canonical


def check_flag(value: Any, name: str) -> bool:
    """A switch (``nesterov``, ``centered``, ...) is True or False; a string or None is refused."""
    return _checks.boolean(value, name)


def check_grad_leaves(grads: Any) -> None:
    """Every leaf of ``grads`` is a floating or complex array (or a Python float): an integer or bool
    gradient would be rounded into the state; a string or None is no gradient. Dtypes are static: no cost under jit."""
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        where = jax.tree_util.keystr(path)
        if isinstance(g, float):
            continue
        if not isinstance(g, (jax.Array, np.ndarray, jax.core.Tracer)):
            raise TypeError(f"grads{where} must be an array, got {type(g).__name__} {g!r:.60}")
        dtype = np.dtype(g.dtype)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
            raise TypeError(f"grads{where} must have a floating (or complex) dtype, got {dtype.name}")


def check_same_structure(grads: Any, reference: Any, what: str) -> None:
    """Raise a ValueError printing both structures when ``grads`` and ``reference`` differ, and one
    naming the leaf's path and both shapes when a leaf's shape differs (never broadcast)."""
    check_grad_leaves(grads)
    a = jax.tree_util.tree_structure(grads)
    b = jax.tree_util.tree_structure(reference)
    if a != b:
        raise ValueError(f"grads must have the structure of the {what}:\n  grads: {a}\n  {what}: {b}")
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(reference)):
        if np.shape(g) != np.shape(r):
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"grads{where} must have the shape of the {what}{where}, {tuple(np.shape(r))}, "
                f"got {tuple(np.shape(g))} (gradients are not broadcast)"
            )


def check_state(state: Any, expected: type, optimizer: str) -> None:
    """Raise a TypeError naming both types when ``state`` was made by another optimizer's ``init``."""
    if not isinstance(state, expected):
        raise TypeError(
            f"state must be the {expected.__name__} that {optimizer}'s init returns, got "
            f"{type(state).__name__} (a state made by another optimizer?)"
        )


def standard_dtype(*operands: Any):
    """The dtype JAX's *standard* promotion gives an operation on ``operands``.

    Python numbers are weak (``0.9 * x`` keeps ``x``'s dtype); arrays are
    not (a float32 hyperparameter from ``optax.inject_hyperparams`` times a
    bfloat16 moment is float32). optax computes under standard promotion;
    the helpers below reproduce its dtypes with explicit casts, so the
    optimizers also run for users who turn on strict promotion.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*operands)


def promote(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both arrays in their common dtype (what standard promotion would pick), explicitly."""
    dtype = standard_dtype(a, b)
    return a.astype(dtype), b.astype(dtype)


def scale(c: Any, x: jax.Array) -> jax.Array:
    """``c * x`` in the dtype standard promotion gives (``x``'s dtype for a Python number ``c``)."""
    dtype = standard_dtype(c, x)
    return jnp.asarray(c, dtype) * x.astype(dtype)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` in their common dtype."""
    a, b = promote(a, b)
    return a + b


def div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` in their common dtype."""
    a, b = promote(a, b)
    return a / b


def abs_sq(g: jax.Array) -> jax.Array:
    """``|g|^2`` elementwise: ``g * g`` for real ``g``, ``Re(conj(g) g)`` for complex."""
    if jnp.iscomplexobj(g):
        return (g.conj() * g).real
    return g * g


def ema(g: jax.Array, moment: jax.Array, decay: Any) -> jax.Array:
    """Exponential moving average ``(1 - decay) g + decay m``, rounded as optax rounds it.

    Each product is computed in its own operand's dtype and only the sum in
    the common one: with a float32 gradient and a bfloat16 moment (``mu_dtype``),
    ``decay * m`` is rounded to bfloat16 before it is added, exactly as
    ``optax.tree.update_moment`` does under standard promotion. (Widening
    ``m`` to float32 first would be slightly more accurate, but would drift
    from optax by one bfloat16 rounding per step from step 2 on.)
    """
    return add(scale(1 - decay, g), scale(decay, moment))


def ema_sq(g: jax.Array, moment: jax.Array, decay: Any) -> jax.Array:
    """Exponential moving average of ``|g|^2``: ``(1 - decay) |g|^2 + decay v``, rounded as :func:`ema`."""
    return ema(abs_sq(g), moment, decay)


def debias(moment: jax.Array, decay: Any, count: jax.Array) -> jax.Array:
    """Bias correction ``m / (1 - decay^t)``.

    The denominator is computed in the default float precision (``decay^t``
    in bfloat16 rounds to 1 for small ``t``), then cast to the moment's dtype.
    """
    base = jnp.asarray(decay, jnp.result_type(decay, float))
    correction = 1 - lax.pow(base, count)  # an integer power, as optax computes it
    return moment / correction.astype(moment.dtype)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    top = jnp.iinfo(jnp.int32).max
    return jnp.where(count < top, count + 1, jnp.asarray(top, jnp.int32))


def scheduled(schedule: Callable[..., Any], count: jax.Array, name: str, *, lower: float = 0.0) -> Any:
    """A schedule's value at ``count``, checked: a scalar (its shape is static, checked under ``jit`` too), and,
    when its value is concrete (eager updates), finite and ``>= lower``."""
    value = schedule(count)
    if np.ndim(value) != 0:
        raise ValueError(f"{name} schedule must return a scalar, got shape {tuple(np.shape(value))} at step {count}")
    if not isinstance(value, jax.core.Tracer):
        v = float(np.asarray(value, np.float64))
        if not (np.isfinite(v) and v >= lower):
            raise ValueError(f"{name} schedule must return finite values >= {lower:g}, got {v:.7g} at step {int(count)}")
    return value


def scale_by_learning_rate(updates: Any, learning_rate: ScalarOrSchedule, count: jax.Array) -> Any:
    """``-learning_rate * u``; a schedule is evaluated at the number of steps taken so far."""
    if callable(learning_rate):
        step = -1 * scheduled(learning_rate, count, "learning_rate")
        return jax.tree_util.tree_map(lambda u: jnp.array(step, dtype=u.dtype) * u, updates)
    step = -1 * learning_rate
    return jax.tree_util.tree_map(lambda u: scale(step, u), updates)


def safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` in their common dtype, and 0 where ``b == 0``.

    The denominators of the adaptive optimizers (``sqrt(v) + eps``, Adamax's
    ``u``) are 0 only where every gradient so far was 0 *and* ``eps`` rounds
    to 0 in the state's dtype (1e-8 is below float16's smallest subnormal,
    6e-8): optax then divides 0 by 0 and returns NaN. Such a coordinate gets
    no update here instead. Where ``b > 0`` (always, in float32 with ``eps > 0``)
    this is ``a / b`` bit for bit, so the twins stay equal to optax; the inner
    ``where`` keeps gradients through the update finite.
    """
    a, b = promote(a, b)
    nonzero = b != 0
    return jnp.where(nonzero, a / jnp.where(nonzero, b, jnp.ones_like(b)), jnp.zeros_like(a))


def resolve_mask(mask: Any, params: Any, name: str = "mask") -> Any:
    """A full tree of bools, one per params leaf, from a mask tree (or prefix) or a callable."""
    if mask is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    tree = mask(params) if callable(mask) else mask
    for path, m in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, (bool, np.bool_))):
        if not isinstance(m, (bool, np.bool_)):
            raise TypeError(f"{name} must be None, a callable params -> tree of bools, or a tree of bools with the structure "
                            f"of params (or a prefix of it), got {type(m).__name__} {m!r:.40} at {name}{jax.tree_util.keystr(path)}")
    try:
        return jax.tree_util.tree_map(
            lambda m, sub: jax.tree_util.tree_map(lambda _: bool(m), sub), tree, params,
            is_leaf=lambda x: isinstance(x, (bool, np.bool_)),
        )
    except (ValueError, TypeError):
        raise ValueError(
            f"{name} must have the structure of params (or a prefix of it) with bool leaves:\n"
            f"  {name}: {jax.tree_util.tree_structure(tree)}\n  params: {jax.tree_util.tree_structure(params)}"
        ) from None


def add_weight_decay(updates: Any, params: Any, weight_decay: ScalarOrSchedule, mask: Any, count: jax.Array) -> Any:
    """``u + weight_decay * p`` on the leaves the mask selects (decoupled weight decay)."""
    if params is None:
        raise ValueError("this optimizer applies weight decay and needs params: call update(grads, state, params)")
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(updates):
        raise ValueError(f"params must have the structure of grads:\n  params: {jax.tree_util.tree_structure(params)}\n"
                         f"  grads: {jax.tree_util.tree_structure(updates)}")
    if isinstance(weight_decay, (int, float)) and weight_decay == 0.0:
        return updates
    s = scheduled(weight_decay, count, "weight_decay") if callable(weight_decay) else weight_decay
    selected = resolve_mask(mask, params)
    return jax.tree_util.tree_map(lambda u, p, m: add(u, scale(s, p)) if m else u, updates, params, selected)


def transformation(init: Callable[..., Any], update: Callable[..., Any]) -> optax.GradientTransformationExtraArgs:
    """Wraps init/update as an optax transformation whose update ignores extra keyword arguments."""

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args  # accepted and ignored, as optax's own optimizers do
        return update(updates, state, params)

    return optax.GradientTransformationExtraArgs(init, update_fn)
