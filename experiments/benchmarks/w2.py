"""W2: jaxnets' step against raw JAX on a compute-bound MLP, and against the machine's matmul peak.

    python experiments/benchmarks/w2.py
    python experiments/benchmarks/w2.py --quick    # small sizes: checks the script, not the speed

MLP 784-1024-1024-10 on random data, batch 512, Adam 1e-3. Timed in one
process, interleaved over ``--rounds`` rounds (medians):

* raw JAX step in a Python loop (the reference), and the jaxnets step;
* the step's matrix products alone: the same eight products (three forward,
  three weight gradients ``H^T D``, two input gradients ``D W^T``) on random
  operands in one jitted function: the ceiling for this step on this machine;
* the float32 matmul peak: a jitted 2048x2048 ``jnp.dot`` (2 * 2048^3 flops).

Achieved FLOP/s counts the step's matrix products only (forward, weight and
input gradients; ``_workloads.matmul_flops_per_step``) and divides by the
step time, so everything else in the step (bias, relu, softmax, Adam) counts
against it. Writes ``w2.json`` and ``w2.md`` to ``--out``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import _workloads as W
from _common import interleaved_medians, write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, batch, matmul, rounds, steps = (784, 64, 64, 10), 64, 256, 2, 2
    else:
        sizes, batch, matmul, rounds, steps = W.W2["sizes"], W.W2["batch"], 2048, args.rounds, args.steps

    from jaxnets import losses, train

    kx, ky, ka = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    a = jax.random.normal(ka, (matmul, matmul), jnp.float32)
    optimizer = optax.adam(1e-3)
    model = W.jaxnets_model(sizes)
    state = train.init_train_state(model, optimizer, (-1, sizes[0]), seed=0)
    raw_params = W.raw_params(state.params)
    raw_step = jax.jit(W.raw_step_fn(optimizer), donate_argnums=(0, 1))
    step = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, optimizer)
    dot = jax.jit(jnp.dot)
    weights = [jax.random.normal(jax.random.fold_in(ka, i), (m, n)) for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:]))]
    hidden = [x] + [jax.random.normal(jax.random.fold_in(kx, i), (batch, n)) for i, n in enumerate(sizes[1:-1])]
    deltas = [jax.random.normal(jax.random.fold_in(ky, i), (batch, n)) for i, n in enumerate(sizes[1:])]

    @jax.jit
    def products(weights, hidden, deltas):
        forward = [h @ w for h, w in zip(hidden, weights)]
        weight_grads = [h.T @ d for h, d in zip(hidden, deltas)]
        input_grads = [d @ w.T for d, w in zip(deltas[1:], weights[1:])]  # none for the data
        return forward, weight_grads, input_grads

    def step_products():
        for _ in range(steps):
            out = products(weights, hidden, deltas)
        jax.block_until_ready(out)

    def matmuls():
        for _ in range(steps):
            out = dot(a, a)
        jax.block_until_ready(out)

    medians = interleaved_medians({"raw": W.looped(raw_step, (raw_params, optimizer.init(raw_params)), (x, y), steps),
                                   "jaxnets": W.looped(step, (state,), (x, y), steps), "products": step_products,
                                   "matmul": matmuls}, rounds, steps)
    peak = 2 * matmul ** 3 / medians["matmul"]
    flops = W.matmul_flops_per_step(sizes, batch)
    rows = []
    for label, name in (("raw JAX step (reference)", "raw"), ("jaxnets step", "jaxnets"),
                        ("the step's 8 matrix products alone", "products")):
        achieved = flops / medians[name]
        rows.append({"contender": label, "ms_per_step": medians[name] * 1e3, "ratio_to_reference": medians[name] / medians["raw"],
                     "gflops": achieved / 1e9, "fraction_of_peak": achieved / peak})
    result = {"benchmark": "w2", "workload": f"MLP {'-'.join(map(str, sizes))}, random data, batch {batch}, Adam 1e-3",
              **W.environment(),
              "rounds": rounds, "steps_per_round": steps, "quick": args.quick, "matmul_size": matmul,
              "matmul_peak_gflops": peak / 1e9, "matmul_flops_per_step": flops, "rows": rows}
    text = W.table(rows, [("contender", "contender", ""), ("ms per step", "ms_per_step", ".3f"),
                          ("ratio to reference", "ratio_to_reference", ".3f"), ("GFLOP/s (matmuls)", "gflops", ".1f"),
                          ("fraction of matmul peak", "fraction_of_peak", ".3f")])
    text += f"\n\nfloat32 matmul peak ({matmul}x{matmul} jnp.dot, same run): {peak / 1e9:.1f} GFLOP/s."
    print(f"W2 on {result['device']}: {rounds} rounds x {steps} steps, medians")
    print(text)
    write_results(args.out, "w2", result, text)
    return result


if __name__ == "__main__":
    main()
