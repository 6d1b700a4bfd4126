"""The path to a pod, on paper: what the gradient all-reduce and the input cost per step at given bandwidths.

    python experiments/scaling_model.py
    python experiments/scaling_model.py --devices 8,64,256 --flops-per-second 4e14

For each benchmark model (W1, W2, the main job's MLP, the digits CNN) the
script takes from the model itself, not from a guess:

* the params count and the gradient bytes per step (float32, and bfloat16
  when gradients are reduced in 16 bits);
* the step's flops, from XLA's cost analysis of the compiled training step
  (forward, backward and Adam) at the model's benchmark batch size.

and models, for data parallelism over ``N`` devices with a global batch of
``N x`` the per-device batch:

* the all-reduce of a ring (or of the bandwidth-optimal algorithms XLA and
  NCCL use on a torus or a switch): each device sends and receives
  ``2 (N - 1) / N`` times the gradient bytes, so the time is
  ``2 (N - 1) / N x bytes / bandwidth`` (latency terms left out: they add
  ``2 (N - 1)`` hops of a few microseconds, which matter only for W1-sized
  models);
* the compute time of one device's share, ``flops / throughput`` at the
  given sustained throughput (``--flops-per-second``; default 1e14, a third
  to a tenth of a modern accelerator's 16-bit peak);
* the input: bytes per example times the examples per second the compute
  time allows, against the host's read bandwidth;
* the batch per device at which the all-reduce takes as long as the compute
  (the compute grows with the batch, the all-reduce does not): below it,
  more devices mostly add communication.

It prints a markdown table (and writes it with JSON to ``--out``): the
all-reduce time at each bandwidth as a fraction of the compute time (the
fraction that cannot hide behind the backward pass when XLA overlaps them
is at most this), and the input bandwidth each device needs. Nothing here
is measured on a pod: these are the consequences of the byte counts under
the stated bandwidths, for planning.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# name -> bytes per second each way per device
BANDWIDTHS = {"10 Gb/s Ethernet": 1.25e9, "100 Gb/s InfiniBand": 12.5e9, "ICI/NVLink 100 GB/s": 100e9,
              "NVLink 450 GB/s": 450e9}


def workloads():
    """``name -> (model, input shape per example, input bytes per example, batch per device)``."""
    import _workloads as W

    import jaxnets.layers as L

    cnn = L.serial(L.Conv2D(16, 3), L.Relu(), L.Conv2D(32, 3), L.Relu(), L.MaxPool(2), L.Flatten(),
                   L.Dense(128), L.Relu(), L.Dropout(0.3), L.Dense(10))
    main = L.serial(L.Dense(256), L.Relu(), L.Dropout(0.3), L.Dense(10))
    return {
        "W1 (64-128-128-10)": (W.jaxnets_model(W.W1["sizes"]), (64,), 64 * 4, W.W1["batch"]),
        "W2 (784-1024-1024-10)": (W.jaxnets_model(W.W2["sizes"]), (784,), 784 * 4, W.W2["batch"]),
        "main job (64-256-10)": (main, (64,), 64 * 4, 64),
        "digits CNN": (cnn, (8, 8, 1), 64 * 4, 64),
    }


def step_cost(model, shape, batch: int) -> tuple[int, float]:
    """``(params count, flops per step)``: XLA's count for the compiled step (forward, backward, Adam)."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxnets
    from jaxnets import losses, train

    optimizer = optax.adam(1e-3)
    state = train.init_train_state(model, optimizer, (-1,) + shape, seed=0)
    step = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, optimizer)
    x = jnp.zeros((batch,) + shape, jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    cost = step.lower(state, x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return jaxnets.count_params(state.params), float(cost["flops"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="8,64,256")
    parser.add_argument("--flops-per-second", type=float, default=1e14)
    parser.add_argument("--out", default="runs/scaling_model")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.devices.split(",")]
    if not counts or min(counts) < 2:
        raise ValueError(f"--devices must list device counts >= 2, got {args.devices!r}")
    if not args.flops_per_second > 0:
        raise ValueError(f"--flops-per-second must be positive, got {args.flops_per_second}")
    from _common import write_results

    rows = []
    for name, (model, shape, example_bytes, batch) in workloads().items():
        params, flops = step_cost(model, shape, batch)
        compute = flops / args.flops_per_second
        for n in counts:
            row = {"model": name, "params": params, "devices": n, "batch_per_device": batch,
                   "flops_per_step_per_device": flops, "compute_s": compute,
                   "input_bytes_per_s_per_device": example_bytes * batch / compute}
            for label, bandwidth in BANDWIDTHS.items():
                for dtype, width in (("float32", 4), ("bfloat16", 2)):
                    seconds = 2 * (n - 1) / n * params * width / bandwidth
                    row[f"allreduce_s[{label}][{dtype}]"] = seconds
            rows.append(row)
    lines = [f"Data parallel over N devices: the float32 gradient all-reduce as a multiple of one device's compute "
             f"time per step (compute at {args.flops_per_second:.0e} flop/s sustained)", "",
             "| model | params | N | compute per step | " + " | ".join(BANDWIDTHS) + " | input per device | "
             "batch per device where all-reduce = compute at 100 GB/s |",
             "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in BANDWIDTHS) + " | ---: | ---: |"]
    for r in rows:
        ratios = " | ".join(f"{r[f'allreduce_s[{label}][float32]'] / r['compute_s']:.3g}x" for label in BANDWIDTHS)
        even = r["batch_per_device"] * r["allreduce_s[ICI/NVLink 100 GB/s][float32]"] / r["compute_s"]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['devices']} | {1e6 * r['compute_s']:.2f} us | {ratios} | "
                     f"{r['input_bytes_per_s_per_device'] / 1e9:.2f} GB/s | {even:,.0f} |")
    table = "\n".join(lines)
    print(table)
    write_results(args.out, "scaling_model", {"flops_per_second": args.flops_per_second, "bandwidths": BANDWIDTHS,
                                               "rows": rows}, table)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    main()
