"""Where a GPT training step spends its time: XLA:CPU's compiled jaxnets step against eager PyTorch, by kind of work.

    python experiments/benchmarks/gpt_profile.py            # transformer.py's full GPT
    python experiments/benchmarks/gpt_profile.py --quick    # a tiny model: checks the script

Three parts, on transformer.py's model and batch:

1. the jaxnets step (``train.make_train_step``, autodiff) under
   ``jax.profiler.trace``: the time of every XLA thunk, summed per thunk
   name and grouped by the compiled HLO: matrix products (XLA:CPU's
   ``ynn_fusion``/``dot`` thunks whose output is a product: row projections,
   attention's batched products, weight gradients) against everything else
   (element-wise and reduction fusions). Thunks may overlap on the CPU's
   threads, so the sums can exceed the step's wall time;
2. where PyTorch is installed, its eager step under ``torch.profiler``:
   self CPU time per operator (``aten::mm``/``addmm`` products, the fused
   ``scaled_dot_product_attention`` kernel, ``gelu``, the rest). The
   profiler's own overhead inflates these a little;
3. one matrix product of each of the step's projection shapes, timed alone
   in jitted JAX and (where installed) PyTorch: the two GEMM libraries
   compared with nothing else around them.

Writes ``gpt_profile.json`` and ``gpt_profile.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _torch
import _workloads as W
import transformer as T
from _common import interleaved_medians, write_results


def _xla_profile(step, state, x, y, calls):
    """``{group: ms per step}`` of the compiled step's thunks, and its median wall time per step."""
    compiled = step.lower(state, x, y).compile()
    shapes = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = ([a-z0-9]+\[[0-9,]*\])", compiled.as_text(), re.M))
    for _ in range(2):
        state, out = compiled(state, x, y)
    jax.block_until_ready(out)
    walls = []
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(calls):
                t = time.perf_counter()
                state, out = compiled(state, x, y)
                jax.block_until_ready(out)
                walls.append(time.perf_counter() - t)
        trace = json.load(gzip.open(next(pathlib.Path(d).rglob("*.trace.json.gz"))))
    groups = collections.Counter()
    for e in trace["traceEvents"]:
        name = e.get("name", "")
        if e.get("ph") != "X" or name not in shapes:
            continue
        dims = [int(n) for n in re.findall(r"\d+", shapes[name].split("[")[1])]
        product = name.startswith(("ynn_fusion", "dot")) and len(dims) >= 2
        groups["attention products (batched)" if product and len(dims) == 4 else
               "other products (projections, weight gradients)" if product else
               "element-wise and reductions"] += e["dur"] / 1e3 / calls
    return dict(groups), float(np.median(walls)) * 1e3


def _torch_profile(run, calls):
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            run()
    groups = collections.Counter()
    for e in prof.key_averages():
        key = e.key
        group = ("products (mm, addmm, bmm)" if key in ("aten::mm", "aten::addmm", "aten::bmm") else
                 "fused attention (forward and backward)" if "scaled_dot_product" in key else
                 "gelu (forward and backward)" if "gelu" in key else "the rest")
        groups[group] += e.self_cpu_time_total / 1e3 / calls / run.calls
    return dict(groups)


def _matmuls(shapes, torch, rounds):
    """GFLOP/s of one product of each shape, JAX and PyTorch timed in turn (``interleaved_medians``)."""
    rows, product = [], jax.jit(jnp.matmul)
    for m, k, n in shapes:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        contenders = {"jax": lambda ja=ja, jb=jb: product(ja, jb).block_until_ready()}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            contenders["torch"] = lambda ta=ta, tb=tb: torch.mm(ta, tb)  # eager: done when it returns
        seconds = interleaved_medians(contenders, rounds, 1)
        flops = 2 * m * k * n
        row = {"product": f"({m}, {k}) @ ({k}, {n})", "jax_gflops": flops / seconds["jax"] / 1e9}
        if torch is not None:
            row["torch_gflops"] = flops / seconds["torch"] / 1e9
            row["jax_time_over_torch"] = seconds["jax"] / seconds["torch"]
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--calls", type=int, default=3, help="profiled steps")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even where installed")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    size = T.QUICK if args.quick else T.FULL
    calls, rounds = (1, 2) if args.quick else (args.calls, 20)

    from jaxnets import losses, train

    optimizer = optax.adamw(3e-4, weight_decay=0.1)
    model = T.jaxnets_model(size)
    state = train.init_train_state(model, optimizer, (-1, size["context"]), seed=0)
    corpus = jnp.asarray(np.random.default_rng(0).integers(0, size["vocab"], 20_000), jnp.int32)
    x, y = T.windows_fn(size)(jax.random.key(1), corpus)
    raw = T.raw_params(state.params)
    step = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, optimizer)
    xla, wall = _xla_profile(step, state, x, y, calls)
    torch = None if args.no_torch else _torch.torch_or_none()
    torch_groups, torch_wall = None, None
    if torch is not None:
        _, run = _torch.gpt(raw, size, x, y, 1)
        run()
        t = time.perf_counter()
        for _ in range(calls):
            run()
        torch_wall = (time.perf_counter() - t) / calls * 1e3
        torch_groups = _torch_profile(run, calls)
    rows_of = size["batch"] * size["context"]
    d = size["width"]
    matmuls = _matmuls([(rows_of, d, 4 * d), (rows_of, 4 * d, d), (rows_of, d, d), (d, rows_of, 4 * d)], torch, rounds)

    lines = [f"GPT {size}; backend {jax.default_backend()}; PyTorch {torch.__version__ if torch else 'not run'}", "",
             f"jaxnets step (XLA), wall {wall:.1f} ms per step; thunk time per step:", ""]
    lines += [W.table([{"work": k, "ms": v} for k, v in sorted(xla.items())], [("work", "work", ""), ("ms", "ms", ".1f")])]
    if torch_groups is not None:
        lines += ["", f"PyTorch eager step, wall {torch_wall:.1f} ms per step; profiled self CPU time per step:", ""]
        lines += [W.table([{"work": k, "ms": v} for k, v in sorted(torch_groups.items())],
                          [("work", "work", ""), ("ms", "ms", ".1f")])]
    columns = [("product", "product", ""), ("JAX GFLOP/s", "jax_gflops", ".1f")]
    if torch is not None:
        columns += [("PyTorch GFLOP/s", "torch_gflops", ".1f"), ("JAX time / PyTorch's", "jax_time_over_torch", ".2f")]
    lines += ["", "One product alone:", "", W.table(matmuls, columns)]
    text = "\n".join(lines)
    print(text)
    result = {"benchmark": "gpt_profile", **W.environment(), "size": size, "quick": args.quick, "xla_ms": xla,
              "xla_wall_ms": wall, "torch_ms": torch_groups, "torch_wall_ms": torch_wall, "matmuls": matmuls,
              "torch": torch.__version__ if torch else None}
    write_results(args.out, "gpt_profile", result, text)
    return result


if __name__ == "__main__":
    main()
