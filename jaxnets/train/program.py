"""The one program builder: segments of a step over a source's batches, fused into one compiled call.

:func:`build` returns the pure function the loop compiles,

    program(state, key, position, origin, count, data, feed) -> (state, out)

It runs ``count`` (traced, at most ``max_count``) *segments* of ``length``
steps each. Segment ``i`` starts at step ``p = position + i length``; the
source gives its inputs (:meth:`jaxnets.train.Source.inputs`) and each
step's batch, and ``lax.scan`` runs the step over them. Per segment the
program reduces every scalar metric to its sum and its last value (the loop
turns them into means, counts or the value at the end), notes the
optimizer's hyperparameters (``optax.inject_hyperparams``: the learning rate
of a schedule) and checks finiteness: ``out["nonfinite"][i]`` is -1 when
every watched metric and every floating leaf of the state stayed finite,
else the index in the segment of the first step that was not (the last
step's when only the state was not). With ``freeze`` the program stops at
such a segment and returns the state before it, the last finite one.

The source's ``data`` and the call's ``feed`` are arguments, never
constants; the state is donated by the loop's jit. Every source, in memory,
streamed or sampled, runs through this one function.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.core
import jax.numpy as jnp
import optax

__all__ = ["build", "hyperparams", "row_values", "LAST", "SUM"]

#: metrics reduced to their value at the end of a segment rather than a mean (the loss scale; hyperparameters)
LAST = ("loss_scale",)
#: metrics reduced to their sum (steps skipped by a loss scale)
SUM = ("skipped_steps",)


def hyperparams(state: Any) -> dict[str, Any]:
    """The scalar hyperparameters of every ``optax.inject_hyperparams`` state inside ``state``, by name.

    One optimizer's are named as optax names them (``learning_rate``); with
    several (a GAN's two), each is prefixed by its path (``generator/learning_rate``).
    """
    leaves = jax.tree_util.tree_leaves(state)
    bad = [leaf for leaf in leaves if isinstance(leaf, (str, bytes))]
    if isinstance(state, (str, bytes)) or bad:
        raise TypeError(f"state must be a pytree of arrays (a TrainState), got {type(state).__name__}"
                        + (f" holding {bad[0]!r:.40}" if bad and not isinstance(state, (str, bytes)) else ""))
    if not leaves:
        raise ValueError(f"state holds no arrays (a TrainState, or any pytree of them), got {state!r:.60}")
    found = []

    def visit(path, node):
        if isinstance(node, optax.InjectHyperparamsState) or type(node).__name__ == "InjectStatefulHyperparamsState":
            found.append((path, node.hyperparams))
            return
        if isinstance(node, (jax.Array, jax.ShapeDtypeStruct)) or node is None:
            return
        for sub_path, child in _children(node):
            visit(path + (sub_path,), child)

    visit((), state)
    out = {}
    for path, values in found:
        prefix = "/".join(str(p) for p in path if not str(p).isdigit() and str(p) not in ("opt_state",))
        for name, value in values.items():
            if jnp.shape(value) == () and jnp.issubdtype(jnp.result_type(value), jnp.inexact):
                out[f"{prefix}/{name}" if len(found) > 1 and prefix else name] = jnp.asarray(value)
    return out


def _children(node: Any):
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return [(f, getattr(node, f)) for f in getattr(node, "_fields")]
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    return []


def _finite_state(state: Any) -> jax.Array:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(state)
              if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])) if leaves else jnp.bool_(True)


def build(step: Callable[..., Any], source: Any, *, length: int, max_count: int, watch: Sequence[str] | None = None,
          check_finite: bool = True, freeze: bool = True, log_hyperparams: bool = True) -> Callable[..., Any]:
    """The program of ``max_count`` segments of ``length`` steps of ``step`` over ``source`` (module docstring).

    Args:
      step: pure ``(state, batch) -> (state, metrics)``; scalar metrics are
        reduced, anything else in ``metrics`` is an error.
      source: a :class:`jaxnets.train.Source`.
      length: steps per segment (static).
      max_count: segments per call at most (static); ``count`` picks how many run.
      watch: metrics whose non-finite value marks a diverged segment, each
        one the step returns (a name it does not return is an error: a typo
        would turn the check off); None watches ``"loss"`` when the step
        returns one. (``"skipped_steps"``, when present, marks a segment
        whose every step was skipped by the loss scale.)
      check_finite: check the watched metrics and the state's floating leaves.
      freeze: stop at a non-finite segment and return the state before it.
      log_hyperparams: add :func:`hyperparams` of the state, as ``LAST`` values.
    """

    def segment(state, key, p, origin, data, feed):
        xs = source.inputs(data, feed, key, p, origin, length)
        state, logged = jax.lax.scan(lambda s, x: step(s, source.batch(data, x)), state, xs)
        for name, value in logged.items():
            if jnp.shape(value) != (length,):
                raise ValueError(f"the step's metric {name!r} must be a scalar per step, got shape "
                                 f"{jnp.shape(value)[1:]}; a step that composes others takes their non-scalar "
                                 f"outputs out of the metrics before returning them")
        sums = {k: jnp.sum(v.astype(jnp.result_type(float))) for k, v in logged.items()}
        lasts = {k: v[-1].astype(jnp.result_type(float)) for k, v in logged.items()}
        if log_hyperparams:
            lasts.update({k: v.astype(jnp.result_type(float)) for k, v in hyperparams(state).items()})
        bad = jnp.zeros((length,), bool)
        if watch is not None:
            missing = [name for name in watch if name not in logged]
            if missing:
                raise ValueError(f"watch names {missing} that the step does not return: its metrics are "
                                 f"{sorted(logged)}; watch only those (a misspelt name would check nothing)")
        for name in ("loss",) if watch is None else watch:
            if name in logged:
                bad = bad | ~jnp.isfinite(logged[name])
        last = jnp.where(_finite_state(state), -1, length - 1)
        nonfinite = jnp.where(bad.any(), jnp.argmax(bad), last).astype(jnp.int32)
        return state, sums, lasts, nonfinite

    def program(state, key, position, origin, count, data, feed):
        key = state.key if key is None else key
        feed_at = (lambda i: None) if feed is None else (lambda i: jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, i * length, length), feed))
        # The segment is traced once, to a jaxpr that gives the metrics' names for the carry and that the loop's
        # body evaluates: tracing the step again there would double the time to compile a large model.
        flat, in_tree = jax.tree_util.tree_flatten((state, key, position, origin, data, feed_at(0)))
        traced, shapes = jax.make_jaxpr(lambda *leaves: segment(*jax.tree_util.tree_unflatten(in_tree, leaves)),
                                        return_shape=True)(*flat)
        out_tree = jax.tree_util.tree_structure(shapes)

        def run_segment(*args):
            leaves = jax.tree_util.tree_leaves(args)
            return jax.tree_util.tree_unflatten(out_tree, jax.core.eval_jaxpr(traced.jaxpr, traced.consts, *leaves))

        dtype = jnp.result_type(float)
        sums = {k: jnp.zeros((max_count,), dtype) for k in shapes[1]}
        lasts = {k: jnp.zeros((max_count,), dtype) for k in shapes[2]}
        flags = jnp.full((max_count,), -1, jnp.int32)

        def cond(carry):
            i, *_, stop = carry  # without freezing the counter alone decides (unbatched under vmap: no all-reduce)
            return (i < count) & ~stop if check_finite and freeze else i < count

        def body(carry):
            i, state, sums, lasts, flags, _ = carry
            new, s, last, nonfinite = run_segment(state, key, position + i * length, origin, data, feed_at(i))
            ok = nonfinite < 0
            if check_finite and freeze:  # keep the last finite state: nothing learned is lost
                new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
            sums = {k: sums[k].at[i].set(s[k]) for k in sums}
            lasts = {k: lasts[k].at[i].set(last[k]) for k in lasts}
            flags = flags.at[i].set(nonfinite if check_finite else -1)
            return i + 1, new, sums, lasts, flags, (~ok) & check_finite & freeze

        init = (jnp.int32(0), state, sums, lasts, flags, jnp.bool_(False))
        i, state, sums, lasts, flags, _ = jax.lax.while_loop(cond, body, init)
        constrain = getattr(step, "constrain_state", None)  # a placed step's sharding (jaxnets.distributed)
        if constrain is not None:
            state = constrain(state)
        return state, {"sums": sums, "lasts": lasts, "nonfinite": flags, "done": i}

    return program


def row_values(sums: dict[str, Any], lasts: dict[str, Any], steps: int, prefix: str) -> dict[str, Any]:
    """A history row from a span's metric sums and last values: means (prefixed), ``SUM``s, ``LAST``s, hyperparameters."""
    row = {}
    for name, total in sums.items():
        if name in SUM:
            row[name] = total
        elif name in LAST:
            row[name] = lasts[name]
        else:
            row[prefix + name] = total / steps
    row.update({k: v for k, v in lasts.items() if k not in sums})  # hyperparameters
    return row
