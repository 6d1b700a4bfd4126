"""The figures no CPU can give, in one short run on an accelerator (GPU or TPU): under 5 minutes.

    python experiments/benchmarks/device_check.py            # on the accelerator
    python experiments/benchmarks/device_check.py --quick    # tiny sizes: checks the script (CPU is fine)

Five parts, each timed in one process against its reference, interleaved
over ``--rounds`` rounds (medians):

1. **W2 in float32 and bfloat16**: the MLP 784-1024-1024-10 step (batch 512,
   Adam) as raw JAX, as jaxnets, and as jaxnets under the ``"bfloat16"``
   precision policy (``precision.with_policy``: bfloat16 compute, float32
   master weights), with the achieved matmul GFLOP/s against a float32 and a
   bfloat16 ``jnp.dot`` of 4096x4096 (the device's peak for each dtype).
2. **Fused epoch against a per-step loop**: W1 (the digits MLP) as
   ``make_train_step`` in a Python loop and as ``make_epoch`` (one call per
   epoch): on an accelerator each call costs a launch, which fusing saves.
3. **A population of 256**: ``experiments/benchmarks/population.py`` with 1
   and 256 members (member-steps per second).
4. **Native convolution against im2col**: ``experiments/benchmarks/resnet.py``
   (per step and fused; ``impl="auto"`` should pick the faster).
5. **The GPT step**: ``experiments/benchmarks/transformer.py`` (raw JAX,
   jaxnets with autodiff and hand rules, flax.linen where installed).

Prints each part's table and a summary; writes ``device_check.json`` and
``device_check.md`` (and each part's own files) to ``--out``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import _workloads as W
from _common import interleaved_medians, write_results

PARTS = ("w2", "epoch", "population", "conv", "gpt")


def peak_gflops(dtype, size: int, rounds: int, calls: int) -> float:
    """GFLOP/s of a ``size`` x ``size`` ``jnp.dot`` in ``dtype`` (float32 accumulation for bfloat16 is XLA's choice)."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    dot = jax.jit(jnp.dot)

    def run():
        for _ in range(calls):
            out = dot(a, a)
        jax.block_until_ready(out)

    return 2 * size ** 3 / interleaved_medians({"dot": run}, rounds, calls)["dot"] / 1e9


def w2_precision(quick: bool, rounds: int) -> dict:
    from jaxnets import losses, precision, train

    sizes, batch, steps, matmul = ((784, 64, 64, 10), 64, 2, 256) if quick else (W.W2["sizes"], W.W2["batch"], 20, 4096)
    optimizer = optax.adam(1e-3)
    ce = losses.softmax_cross_entropy_with_integer_labels
    x = jax.random.normal(jax.random.key(1), (batch, sizes[0]))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, sizes[-1])
    model = W.jaxnets_model(sizes)
    bf16 = precision.with_policy(model, "bfloat16")
    state = train.init_train_state(model, optimizer, (-1, sizes[0]), seed=0)
    bf16_state = train.init_train_state(bf16, optimizer, (-1, sizes[0]), seed=0)
    raw_params = W.raw_params(state.params)
    contenders = {
        "raw JAX step, float32 (reference)": W.looped(jax.jit(W.raw_step_fn(optimizer), donate_argnums=(0, 1)),
                                                      (raw_params, optimizer.init(raw_params)), (x, y), steps),
        "jaxnets step, float32": W.looped(train.make_train_step(model, ce, optimizer), (state,), (x, y), steps),
        "jaxnets step, bfloat16 policy": W.looped(train.make_train_step(bf16, ce, optimizer), (bf16_state,), (x, y), steps),
    }
    medians = interleaved_medians(contenders, rounds, steps)
    flops = W.matmul_flops_per_step(sizes, batch)
    peaks = {"float32": peak_gflops(jnp.float32, matmul, rounds, 3), "bfloat16": peak_gflops(jnp.bfloat16, matmul, rounds, 3)}
    ref = medians["raw JAX step, float32 (reference)"]
    rows = []
    for name, t in medians.items():
        peak = peaks["bfloat16" if "bfloat16" in name else "float32"]
        rows.append({"contender": name, "ms_per_step": t * 1e3, "ratio_to_reference": t / ref,
                     "gflops": flops / t / 1e9, "fraction_of_peak": flops / t / 1e9 / peak})
    table = W.table(rows, [("contender", "contender", ""), ("ms per step", "ms_per_step", ".3f"),
                           ("ratio", "ratio_to_reference", ".3f"), ("GFLOP/s", "gflops", ".1f"),
                           ("of its dtype's peak", "fraction_of_peak", ".3f")])
    table += (f"\n\nmatmul peak ({matmul}x{matmul} jnp.dot): float32 {peaks['float32']:.1f} GFLOP/s, "
              f"bfloat16 {peaks['bfloat16']:.1f} GFLOP/s")
    return {"rows": rows, "peak_gflops": peaks, "table": table,
            "bfloat16_speedup": medians["jaxnets step, float32"] / medians["jaxnets step, bfloat16 policy"]}


def fused_epoch(quick: bool, rounds: int) -> dict:
    from jaxnets import data, losses, train

    digits = data.load_digits()
    xs, ys = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    if quick:
        xs, ys = xs[:256], ys[:256]
    batch = W.W1["batch"]
    n = xs.shape[0]
    per_epoch = -(-n // batch)
    optimizer = optax.adam(1e-3)
    ce = losses.softmax_cross_entropy_with_integer_labels
    model = W.jaxnets_model(W.W1["sizes"])
    state = train.init_train_state(model, optimizer, digits.input_shape, seed=0)
    step = train.make_train_step(model, ce, optimizer)
    epoch = train.make_epoch(model, ce, optimizer, num_examples=n, batch_size=batch)
    epoch_state = jax.tree_util.tree_map(jnp.copy, state)
    holder = {"state": epoch_state}

    def run_epoch():
        holder["state"], metrics = epoch(holder["state"], xs, ys)
        jax.block_until_ready(metrics)

    medians = interleaved_medians({"per-step loop (reference)": W.looped(step, (state,), (xs[:batch], ys[:batch]), per_epoch),
                                   "fused epoch (make_epoch)": run_epoch}, rounds, per_epoch)
    ref = medians["per-step loop (reference)"]
    rows = [{"contender": name, "us_per_step": t * 1e6, "ratio_to_reference": t / ref} for name, t in medians.items()]
    table = W.table(rows, [("contender", "contender", ""), ("us per step", "us_per_step", ".1f"),
                           ("ratio", "ratio_to_reference", ".3f")])
    return {"rows": rows, "table": table, "steps_per_epoch": per_epoch}


def _delegate(module_name: str, argv: list) -> dict:
    """Run another benchmark script's ``main`` and keep its rows and table."""
    import importlib

    result = importlib.import_module(module_name).main(argv)
    rows = result["rows"]
    columns = [("contender", "contender", "")] + [(k, k, ".3f") for k in rows[0] if k != "contender"]
    return {"rows": rows, "table": W.table(rows, columns)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    quick = ["--quick"] if args.quick else ["--rounds", str(rounds)]
    sub = quick + ["--out", args.out]
    runners = {
        "w2": lambda: w2_precision(args.quick, rounds),
        "epoch": lambda: fused_epoch(args.quick, rounds),
        "population": lambda: _delegate("population", (["--quick"] if args.quick else
                                                       ["--sizes", "1", "256", "--rounds", str(rounds)]) + ["--out", args.out]),
        "conv": lambda: _delegate("resnet", sub + ["--no-flax"]),
        "gpt": lambda: _delegate("transformer", sub),
    }
    parts, seconds = {}, {}
    for name in args.parts:
        t = time.perf_counter()
        parts[name] = runners[name]()
        seconds[name] = time.perf_counter() - t
        print(f"\n## {name} ({seconds[name]:.0f} s)\n{parts[name]['table']}", flush=True)
    device = W.environment()
    text = f"device check on {device['device']} ({device['backend']}), jax {device['jax']}\n"
    text += "\n".join(f"\n## {name} ({seconds[name]:.0f} s)\n\n{part['table']}" for name, part in parts.items())
    print(f"\ntotal {sum(seconds.values()):.0f} s")
    result = {"benchmark": "device_check", **device, "quick": args.quick, "rounds": rounds, "seconds": seconds,
              "parts": {name: {k: v for k, v in part.items() if k != "table"} for name, part in parts.items()},
              "rows": [dict(row, part=name) for name, part in parts.items() for row in part["rows"]]}
    write_results(args.out, "device_check", result, text)
    return result


if __name__ == "__main__":
    main()
