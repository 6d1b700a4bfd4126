"""Epochs over data in device memory: the shuffled order, the batches of each step, and an epoch as one program.

Batching (:func:`epoch_indices`): an epoch has ``ceil(n / batch_size)``
steps, all of the same shape. The last batch is completed with the first
examples of the same shuffled order, so every example is used at least once
per epoch and no step recompiles. (Padding with masked rows instead would
bias BatchNorm's batch statistics.) With ``drop_last=True`` an epoch has
``floor(n / batch_size)`` steps and the ``n % batch_size`` examples at the end
of that epoch's order are skipped for that epoch.

An epoch is one pure function, :func:`scan_epoch` (:func:`make_epoch` for the
common case): a pseudo-random permutation of the example indices computed on
the device (:func:`permutation`), then ``lax.scan`` of the step over batches
gathered on the device. The general loop (:func:`jaxnets.train.loop`) runs the
same epochs through :class:`jaxnets.train.ArraySource`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks, _inputs
from jaxnets.layers import Layer
from jaxnets.train.state import TrainState, shuffle_key
from jaxnets.train.step import Metrics, donating_jit, make_step, objective_from_loss

__all__ = ["permutation", "epoch_indices", "steps_per_epoch", "scan_epoch", "make_epoch", "first_nonfinite",
           "SCALE_METRICS"]


def _mix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which each input bit flips each output bit w.p. ~1/2."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _unmix32(x: jax.Array) -> jax.Array:
    """The inverse of :func:`_mix32`: each step undone in reverse order."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7ED1B41D)  # 0xC2B2AE35 ** -1 mod 2**32
    x = x ^ (x >> np.uint32(13)) ^ (x >> np.uint32(26))
    x = x * np.uint32(0xA5CB9243)  # 0x85EBCA6B ** -1 mod 2**32
    return x ^ (x >> np.uint32(16))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly shuffled ``0 .. n-1``, from one sort of ``n`` distinct uint32 values.

    ``jax.random.permutation`` draws random sort keys and sorts them with the
    indices as a payload; XLA's CPU sort of key-value pairs costs more than a
    training step of a small model (about 280 us for 1,437 indices on 2
    cores). Here the sort keys are a keyed bijection of the indices,
    ``h(i) = mix(mix(i xor k1) xor k2)`` with ``mix`` MurmurHash3's 32-bit
    finaliser and ``k1, k2`` the key's bits, so they are distinct (no ties,
    no payload). One single-operand sort orders them, and ``h^-1`` turns the
    sorted values back into indices: about 40 us for the same 1,437.

    Args:
      key: a ``jax.random`` key.
      n: number of indices (a Python int, below ``2**31``).

    Returns:
      ``(n,)`` int32 holding each of ``0 .. n-1`` once. The same key gives the
      same order on every backend. The tests check that every index is
      equally likely at every position, and every ordered pair equally likely
      to be adjacent (chi-squared tests over many keys).
    """
    _checks.prng_key(key, "key")
    n = _checks.positive_int(n, "n")
    if n >= 2**31:  # checked before anything is allocated
        raise ValueError(f"n must be below 2**31 (indices are int32), got {n}")
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)  # 2 words (threefry) or 4 (rbg)
    k1, k2 = words[0], _mix32(words[1:].sum(dtype=jnp.uint32) ^ words[0])
    hashed = _mix32(_mix32(jnp.arange(n, dtype=jnp.uint32) ^ k1) ^ k2)
    return (_unmix32(_unmix32(jnp.sort(hashed)) ^ k2) ^ k1).astype(jnp.int32)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """Steps of an epoch of ``num_examples`` in batches of ``batch_size``: ``ceil(n / b)``, or ``floor(n / b)`` with ``drop_last``."""
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    drop_last = _checks.boolean(drop_last, "drop_last")
    if batch_size > num_examples:
        raise ValueError(f"batch_size must be at most the number of examples ({num_examples}), got {batch_size}")
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)


def first_nonfinite(losses: jax.Array, params: Any, skipped: jax.Array | None = None) -> jax.Array:
    """Index of the first step whose loss is NaN/Inf; the last step's if only the final params are; else -1.

    With ``skipped`` (each step's count of steps skipped by a loss scale), an
    epoch whose every step was skipped is non-finite too (at step 0): its
    gradients were never finite, whatever the scale, which is a divergence
    that only the skipping kept out of the params.
    """
    _checks.float_array(losses, "losses", scalars=False)
    if jnp.ndim(losses) != 1 or jnp.shape(losses)[0] == 0:
        raise ValueError(f"losses must be a vector of each step's loss (steps,) with at least one step, got shape "
                         f"{jnp.shape(losses)}")
    if skipped is not None and jnp.shape(skipped) != jnp.shape(losses):
        raise ValueError(f"skipped must have the shape of losses {jnp.shape(losses)} (one count per step), got "
                         f"{jnp.shape(skipped)}")
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        _checks.array_like(leaf, f"params{jax.tree_util.keystr(path)}")
    bad = ~jnp.isfinite(losses)
    if skipped is not None:
        bad = bad | jnp.all(skipped > 0)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    params_ok = jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])) if leaves else jnp.bool_(True)
    last = jnp.where(params_ok, -1, losses.shape[0] - 1)
    return jnp.where(bad.any(), jnp.argmax(bad), last).astype(jnp.int32)


class _KeyAndStep(Protocol):
    """What :func:`epoch_indices` reads of a state: a :class:`TrainState`, or any record with these two fields."""

    @property
    def key(self) -> jax.Array: ...

    @property
    def step(self) -> jax.Array: ...


def epoch_indices(state: _KeyAndStep | TrainState, num_examples: int, batch_size: int, *, drop_last: bool = False) -> jax.Array:
    """The example indices of each step of the epoch that starts at ``state``.

    The order is :func:`permutation` under the state's epoch key. Without
    ``drop_last`` the last batch wraps around to the start of the same order;
    with it, the examples that do not fill a batch are skipped this epoch.

    Returns:
      ``(steps, batch_size)`` int32; row ``i`` holds the indices of step ``i``.
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    steps = steps_per_epoch(num_examples, batch_size, drop_last)
    order = permutation(shuffle_key(state), num_examples)
    if steps * batch_size > num_examples:  # wrap around: complete the last batch from the start of the order
        order = jnp.concatenate([order, order[: steps * batch_size - num_examples]])
    return order[: steps * batch_size].reshape(steps, batch_size)  # (steps, batch)


# Loss-scaling metrics of a step (precision.loss_scaling) and how an epoch reduces them: the skipped steps are
# counted, the scale is the one the epoch ends with. Every other metric is the mean over the epoch's steps.
SCALE_METRICS: dict[str, Callable[[jax.Array], jax.Array]] = {"skipped_steps": jnp.sum, "loss_scale": lambda v: v[-1]}


def scan_epoch(
    step: Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]],
    *,
    batch_size: int,
    drop_last: bool = False,
    check_finite: bool = True,
    jit: bool = True,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Any]]]:
    """One epoch of a general step as one program: ``(state, data) -> (state, mean metrics)``.

    ``data`` is a pytree whose leaves hold all examples on the device (leading
    axis ``n``, fixed when the program is traced). The batches are
    :func:`epoch_indices` of the incoming state; ``step`` (pure, from
    :func:`make_step` with ``jit=False``) runs over them in a ``lax.scan``.

    Returns:
      The state after the epoch and the means of the step's metrics over the
      epoch's steps; with ``check_finite``, also ``"nonfinite_step"``: -1 if
      every loss and the final params are finite, else the index (in this
      epoch) of the first step whose loss was not (the last step's when only
      the final params are not).
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not callable(step):
        raise TypeError(f"step must be callable as step(state, batch) -> (state, metrics), got {step!r}")
    drop_last, check_finite = _checks.boolean(drop_last, "drop_last"), _checks.boolean(check_finite, "check_finite")
    jit = _checks.boolean(jit, "jit")

    def epoch(state: TrainState, data: Any) -> tuple[TrainState, dict[str, Any]]:
        if not jax.tree_util.tree_leaves(data):
            raise ValueError(f"data holds no arrays (a pytree of arrays with a leading example axis), got {data!r:.60}")
        batches = epoch_indices(state, _inputs.leading(data), batch_size, drop_last=drop_last)
        state, logged = jax.lax.scan(lambda s, idx: step(s, _inputs.take(data, idx)), state, batches)
        means = {k: SCALE_METRICS.get(k, jnp.mean)(v) for k, v in logged.items()}
        if check_finite:
            means["nonfinite_step"] = first_nonfinite(logged["loss"], state.params, logged.get("skipped_steps"))
        return state, means

    return donating_jit(epoch) if jit else epoch


def make_epoch(
    model: Layer,
    loss: Callable[[Any, Any], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    num_examples: int,
    batch_size: int,
    drop_last: bool = False,
    metrics: Metrics | None = None,
    check_finite: bool = True,
    jit: bool = True,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, dict[str, Any]]]:
    """One epoch of the common case as one program: ``(state, x, y) -> (state, mean metrics)``.

    :func:`scan_epoch` of :func:`make_train_step`'s step on ``data = (x, y)``.

    Args:
      num_examples: ``x.shape[0]`` (checked: it fixes the number of steps).
      batch_size, drop_last: see :func:`epoch_indices`.
      metrics, jit: as for :func:`make_train_step` (jitted with the state donated).
      check_finite: add ``"nonfinite_step"`` to the metrics (see :func:`scan_epoch`).
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    steps_per_epoch(num_examples, batch_size, drop_last)
    jit = _checks.boolean(jit, "jit")
    general = make_step(objective_from_loss(model, loss, metrics=metrics), optimizer, jit=False)
    scanned = scan_epoch(general, batch_size=batch_size, drop_last=drop_last, check_finite=check_finite, jit=False)

    def epoch(state: TrainState, x: Any, y: Any) -> tuple[TrainState, dict[str, Any]]:
        if _inputs.leading(x) != num_examples or _inputs.leading(y) != num_examples:
            raise ValueError(f"this epoch was built for num_examples={num_examples}, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        return scanned(state, (x, y))

    return donating_jit(epoch) if jit else epoch
