"""Run an optimizer beside a reference and measure how far their parameters drift apart."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
import optax

from jaxnets import _checks


class Problem(NamedTuple):
    """A test problem: starting params, the loss, its gradient ``(params, step) -> grads``, the minimiser."""

    params: Any
    loss: Callable[[Any], jax.Array]
    grad_fn: Callable[[Any, jax.Array], Any]
    solution: Any


def quadratic_problem(dim: int = 10, *, condition: float = 10.0, seed: int = 0, dtype: DTypeLike = jnp.float32) -> Problem:
    """``f(x) = 1/2 (x - x*)^T A (x - x*)`` with ``A`` diagonal, eigenvalues from 1 to ``condition``.

    Params are a dict ``{"x": (dim,)}``; the minimum is ``f(x*) = 0``.
    """
    dim = _checks.positive_int(dim, "dim")
    condition = _checks.positive_float(condition, "condition")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
    dtype = _checks.dtype_like(dtype, "dtype", floating_only=True)
    k_start, k_opt = jax.random.split(jax.random.key(seed))
    a = jnp.linspace(1.0, condition, dim, dtype=dtype)
    target = jax.random.normal(k_opt, (dim,), dtype)

    def loss(p):
        d = p["x"] - target
        return 0.5 * jnp.sum(a * d * d)

    return Problem({"x": jax.random.normal(k_start, (dim,), dtype)}, loss, lambda p, step: jax.grad(loss)(p), {"x": target})


def rosenbrock_problem(a: float = 1.0, b: float = 100.0, *, dtype: DTypeLike = jnp.float32) -> Problem:
    """``f(x, y) = (a - x)^2 + b (y - x^2)^2`` from ``(-1.2, 1)``; minimum 0 at ``(a, a^2)``.

    Params are a tuple of two scalars, so optimizers are exercised on a
    non-dict pytree.
    """
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise TypeError(f"a must be a real number, got {a!r}")
    b = _checks.positive_float(b, "b")
    dtype = _checks.dtype_like(dtype, "dtype", floating_only=True)

    def loss(p):
        x, y = p
        return (a - x) ** 2 + b * (y - x * x) ** 2

    start = (jnp.asarray(-1.2, dtype), jnp.asarray(1.0, dtype))
    return Problem(start, loss, lambda p, step: jax.grad(loss)(p), (jnp.asarray(a, dtype), jnp.asarray(a * a, dtype)))


class Comparison(NamedTuple):
    """Per-step deviation of an optimizer's parameters from a reference's.

    Attributes:
      max_abs: ``(steps,)``: ``max |p - p_ref|`` over every parameter entry.
      max_rel: ``(steps,)``: ``||p - p_ref||_2 / ||p_ref||_2`` with all
        leaves flattened into one vector (the norm of the difference over the
        norm of the reference). A per-leaf ratio would turn rounding noise
        into large numbers on leaves that converge to zero.
      params: the optimizer's final params.
      reference_params: the reference's final params.
    """

    max_abs: np.ndarray
    max_rel: np.ndarray
    params: Any
    reference_params: Any

    @property
    def worst_abs(self) -> float:
        return float(np.max(self.max_abs))

    @property
    def worst_rel(self) -> float:
        return float(np.max(self.max_rel))

    def __str__(self) -> str:
        steps = len(self.max_abs)
        worst = int(np.argmax(self.max_rel))
        return (f"Comparison over {steps} steps: max abs deviation {self.worst_abs:.3e}, "
                f"max rel deviation {self.worst_rel:.3e} (at step {worst + 1})")


def _deviation(params, reference):
    """``max |p - p_ref|`` over every entry, and ``||p - p_ref||_2 / ||p_ref||_2`` over the whole tree."""
    diffs = [jnp.ravel(p - r) for p, r in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference))]
    refs = [jnp.ravel(r) for r in jax.tree_util.tree_leaves(reference)]
    diff, ref = jnp.concatenate(diffs), jnp.concatenate(refs)
    abs_dev = jnp.max(jnp.abs(diff)) if diff.size else jnp.zeros((), jnp.abs(diff).dtype)
    ref_norm = jnp.linalg.norm(ref)
    rel_dev = jnp.where(ref_norm > 0, jnp.linalg.norm(diff) / jnp.where(ref_norm > 0, ref_norm, 1), jnp.linalg.norm(diff))
    return abs_dev, rel_dev


def compare(
    optimizer: optax.GradientTransformation,
    reference: optax.GradientTransformation,
    params: Any,
    grad_fn: Callable[[Any, jax.Array], Any],
    steps: int = 200,
) -> Comparison:
    """Run ``optimizer`` and ``reference`` from the same ``params`` with identical gradients.

    At each step the gradient is ``grad_fn(reference_params, step)``, taken
    on the *reference* trajectory and fed to both, so any drift comes from
    the optimizers' arithmetic alone, not from different gradients. The whole
    run is one compiled ``lax.scan``.

    Args:
      optimizer, reference: any two ``optax.GradientTransformation``.
      params: starting params (any pytree).
      grad_fn: ``(params, step) -> grads`` with the structure of params
        (``step`` is an int32 scalar: use it to pick a batch).
      steps: number of updates.

    Returns:
      A :class:`Comparison`.
    """
    steps = _checks.positive_int(steps, "steps")
    for name, opt in (("optimizer", optimizer), ("reference", reference)):
        if not (hasattr(opt, "init") and hasattr(opt, "update")):
            raise TypeError(f"{name} must be an optax.GradientTransformation, got {opt!r}")
    _checks.callable_arg(grad_fn, "grad_fn", "grad_fn(params, step) -> grads")

    @jax.jit
    def run(params):
        def body(carry, step):
            p, s, p_ref, s_ref = carry
            g = grad_fn(p_ref, step)
            u, s = optimizer.update(g, s, p)
            u_ref, s_ref = reference.update(g, s_ref, p_ref)
            p, p_ref = optax.apply_updates(p, u), optax.apply_updates(p_ref, u_ref)
            return (p, s, p_ref, s_ref), _deviation(p, p_ref)

        init = (params, optimizer.init(params), params, reference.init(params))
        (p, _, p_ref, _), (abs_dev, rel_dev) = jax.lax.scan(body, init, jnp.arange(steps, dtype=jnp.int32))
        return p, p_ref, abs_dev, rel_dev

    p, p_ref, abs_dev, rel_dev = run(params)
    return Comparison(np.asarray(abs_dev), np.asarray(rel_dev), p, p_ref)
