"""The benchmark workloads, written twice: as jaxnets models and as hand-written raw JAX (the references).

W1: MLP 64-128-128-10 on digits, batch 64, Adam 1e-3.
W2: MLP 784-1024-1024-10 on random data, batch 512, Adam 1e-3.

The raw-JAX step is what a careful user writes without a library: a dict of
arrays, a forward function, ``jax.value_and_grad``, ``optax`` update, jitted
with the params and optimizer state donated. It uses the same loss formula
as jaxnets (``logsumexp(z) - z_y``, optax's too) so that the comparison
measures the library, not a choice of formula.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

W1 = {"name": "W1", "sizes": (64, 128, 128, 10), "batch": 64}
W2 = {"name": "W2", "sizes": (784, 1024, 1024, 10), "batch": 512}


def jaxnets_model(sizes):
    import jaxnets.layers as L

    layers = []
    for width in sizes[1:-1]:
        layers += [L.Dense(width), L.Relu()]
    return L.serial(*layers, L.Dense(sizes[-1]))


def raw_params(jaxnets_params) -> dict:
    """The jaxnets params as the flat dict the raw step uses (copied: the raw step donates its buffers)."""
    return {f"{name}_{i}": jnp.copy(jaxnets_params[f"dense_{i}"][name])
            for i in range(len(jaxnets_params)) for name in ("w", "b")}


def raw_forward(params, x):
    depth = len(params) // 2
    for i in range(depth):
        x = x @ params[f"w_{i}"] + params[f"b_{i}"]
        if i < depth - 1:
            x = jax.nn.relu(x)
    return x


def raw_loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(raw_forward(params, x), y).mean()


def raw_step_fn(optimizer):
    """The pure raw step ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(raw_loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def raw_epoch_fn(optimizer, x_all, y_all, batch):
    """A hand-written fused epoch: ``jax.random.permutation``, gather, ``lax.scan`` of the raw step."""
    step = raw_step_fn(optimizer)
    n = x_all.shape[0]
    steps = -(-n // batch)

    def epoch(params, opt_state, key):
        order = jax.random.permutation(key, n)
        batches = order[jnp.arange(steps * batch) % n].reshape(steps, batch)

        def body(carry, idx):
            params, opt_state, loss = step(*carry, x_all[idx], y_all[idx])
            return (params, opt_state), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), batches)
        return params, opt_state, losses.mean()

    return epoch


def environment() -> dict:
    """Where a benchmark ran, recorded with its results: backend, device, versions, CPU count."""
    import platform

    return {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "jax": jax.__version__,
            "python": platform.python_version(), "cpus": os.cpu_count()}


def looped(step, carry: tuple, inputs: tuple, calls: int):
    """A contender for ``interleaved_medians``: ``calls`` calls of ``step`` in a Python loop, then a block.

    ``step(*carry, *inputs)`` returns ``(*carry, out)``: the carry (params and
    optimizer state, or a TrainState) feeds the next call, as a training loop
    does with donated buffers; the loop blocks on the last ``out``.
    """
    holder = {"carry": tuple(carry)}

    def run():
        current = holder["carry"]
        for _ in range(calls):
            *current, out = step(*current, *inputs)
        jax.block_until_ready(out)
        holder["carry"] = tuple(current)

    return run


def cost(compiled) -> dict:
    """XLA's cost analysis of a compiled program: ``{"flops", "bytes"}`` (bytes accessed)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"flops": float(analysis["flops"]), "bytes": float(analysis["bytes accessed"])}


def compile_timed(fn, *args) -> tuple:
    """Lower and compile a jitted ``fn`` for ``args``: ``(compiled, info)``.

    ``compiled`` is the program, callable on arguments like ``args`` (timed
    runs call it, so nothing compiles twice); ``info`` its cost analysis and
    ``compile_s``, the seconds lowering and compiling took.
    """
    import time

    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, {**cost(compiled), "compile_s": time.perf_counter() - t}


def optax_step(loss_fn, optimizer, *, has_aux=False):
    """The plain training step of a loss: ``value_and_grad``, ``optimizer.update``, ``apply_updates``.

    ``loss_fn(params, *extra, x, y)``; with ``has_aux`` it returns ``(loss,
    new_extra)`` (BatchNorm statistics, threaded like the optimizer state).
    The step is ``(params, *extra, opt_state, x, y) -> (params, *extra, opt_state, loss)``.
    """
    def step(params, *args):
        *extra, opt_state, x, y = args
        if has_aux:
            (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *extra, x, y)
            extra = [new]
        else:
            loss, grads = jax.value_and_grad(loss_fn)(params, *extra, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), *extra, opt_state, loss)

    return step


def step_report(per_step: dict, fused: dict, compiled: dict) -> tuple:
    """``(rows, costs, text)`` of a per-step and a fused comparison: each against its first contender, the reference.

    ``per_step`` and ``fused`` map names to median seconds per step;
    ``compiled`` maps step names to :func:`compile_timed` infos.
    """
    rows = []
    for times in (per_step, fused):
        ref = next(iter(times.values()))
        rows += [{"contender": name, "ms_per_step": t * 1e3, "ratio_to_reference": t / ref} for name, t in times.items()]
    costs = {name: {k: c[k] for k in ("flops", "bytes", "compile_s")} for name, c in compiled.items()}
    text = table(rows, [("contender", "contender", ""), ("ms per step", "ms_per_step", ".2f"),
                        ("ratio to its reference", "ratio_to_reference", ".3f")])
    text += "\n\n" + table([{"step": name, **c} for name, c in costs.items()],
                            [("step", "step", ""), ("compile s", "compile_s", ".2f"), ("XLA flops", "flops", ".3g"),
                             ("XLA bytes accessed", "bytes", ".3g")])
    return rows, costs, text


def matmul_flops_per_step(sizes, batch) -> int:
    """Multiply-adds of the matrix products of one training step, times 2.

    Forward ``B*in*out`` per layer; backward the same twice (weight gradient
    and input gradient), except the first layer's input gradient, which
    nobody needs.
    """
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(batch * a * b for a, b in pairs)
    return 2 * (3 * forward - batch * sizes[0] * sizes[1])


def table(rows, columns) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns``: (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format(row[k], f) if f else str(row[k]) for _, k, f in columns) + " |")
    return "\n".join(lines)
