"""W2 data parallel: the jaxnets step on one device against the same step split over N devices, in one run.

    python experiments/benchmarks/w2_parallel.py               # 2 devices (forced CPU devices on a CPU machine)
    python experiments/benchmarks/w2_parallel.py --devices 4
    python experiments/benchmarks/w2_parallel.py --quick       # small sizes: checks the script, not the speed

MLP 784-1024-1024-10 on random data, batch 512 (global), Adam 1e-3, as W2.
Both contenders are :func:`jaxnets.make_train_step`'s jitted step on the
same values: once on the first device, once with the state replicated and
the batch split over a mesh of ``--devices`` devices
(:func:`jaxnets.distributed.shard` / :func:`~jaxnets.distributed.shard_batch`;
XLA adds the gradient all-reduce). Timed interleaved over ``--rounds``
rounds (medians); the figure is the throughput ratio, one-device step time
over data-parallel step time (above 1: the split is faster).

On a CPU machine the devices are forced host devices
(``--xla_force_host_platform_device_count``), set here before JAX starts;
a third contender splits the params and Adam's state too (FSDP: each device
updates its half of every matrix; on jax 0.10.2 the partitioner then keeps
the weights where they are and moves activations instead, 4 all-gathers,
2 all-reduces and an all-to-all per step, the activations being the
smaller at batch 512);
they share the machine's cores, so on 2 cores 2 devices can at best match
one device that already uses both cores for its products: the figure
measures the cost of the split and the all-reduce. A fourth contender, a
diagnosis and not training, runs the split without the all-reduce (each
device steps on its own rows with its own gradients, through
``jax.shard_map``): the gap between it and the data-parallel step is what
the all-reduce costs. (On XLA:CPU the simulated devices' all-reduce is a
rendezvous of their threads in one thread pool; with as many threads as
cores, a device that arrives first holds a thread while it waits.) Writes
``w2_parallel.json`` and ``w2_parallel.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()

    import jax
    import jax.numpy as jnp
    import optax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _workloads as W
    from _common import interleaved_medians, write_results

    from jaxnets import distributed, losses, train

    if len(jax.devices()) < args.devices:
        raise ValueError(f"--devices {args.devices} needs as many devices, JAX sees {len(jax.devices())} (was JAX "
                         f"started before this script set XLA_FLAGS? run it as its own process)")
    if args.quick:
        sizes, batch, rounds, steps = (784, 64, 64, 10), 64, 2, 2
    else:
        sizes, batch, rounds, steps = W.W2["sizes"], W.W2["batch"], args.rounds, args.steps
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    optimizer = optax.adam(1e-3)
    model = W.jaxnets_model(sizes)
    step = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, optimizer)
    one_device = jax.devices()[0]
    def fresh():  # the same values for each contender, in buffers of its own (each loop donates its state)
        return train.init_train_state(model, optimizer, (-1, sizes[0]), seed=0)

    state = jax.device_put(fresh(), one_device)
    x1, y1 = jax.device_put((x, y), one_device)
    mesh = distributed.data_mesh(jax.devices()[:args.devices])
    placed = distributed.shard(fresh(), distributed.state_shardings(fresh(), mesh))
    xs, ys = distributed.shard_batch((x, y), mesh)
    sharded = distributed.shard(fresh(), distributed.state_shardings(fresh(), mesh, "fsdp"))
    # the diagnosis: the same split with the all-reduce left out (each device steps on its own rows with its own
    # gradients: not training, a measure of what the split costs before any communication)
    pure = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, optimizer, jit=False)
    spec = jax.sharding.PartitionSpec
    alone = jax.jit(jax.shard_map(pure, mesh=mesh, in_specs=(spec(), spec("data"), spec("data")),
                                  out_specs=(spec(), spec()), check_vma=False), donate_argnums=0)
    unreduced = distributed.shard(fresh(), distributed.state_shardings(fresh(), mesh))
    medians = interleaved_medians({"one": W.looped(step, (state,), (x1, y1), steps),
                                   "parallel": W.looped(step, (placed,), (xs, ys), steps),
                                   "fsdp": W.looped(step, (sharded,), (xs, ys), steps),
                                   "split": W.looped(alone, (unreduced,), (xs, ys), steps)}, rounds, steps)
    ratio = medians["one"] / medians["parallel"]
    rows = [{"contender": label, "ms_per_step": medians[name] * 1e3, "examples_per_s": batch / medians[name],
             "throughput_ratio": medians["one"] / medians[name]}
            for label, name in (("jaxnets step, one device", "one"),
                                (f"jaxnets step, data parallel on {args.devices} devices", "parallel"),
                                (f"jaxnets step, data parallel on {args.devices} devices, FSDP state", "fsdp"),
                                (f"diagnosis: the split on {args.devices} devices without the all-reduce", "split"))]
    result = {"benchmark": "w2_parallel", "workload": f"MLP {'-'.join(map(str, sizes))}, random data, batch {batch}, Adam 1e-3",
              **W.environment(), "devices": args.devices, "cpus": os.cpu_count(), "rounds": rounds, "steps_per_round": steps,
              "quick": args.quick, "rows": rows, "throughput_ratio": ratio,
              "throughput_ratio_fsdp": medians["one"] / medians["fsdp"],
              "throughput_ratio_without_allreduce": medians["one"] / medians["split"]}
    text = W.table(rows, [("contender", "contender", ""), ("ms per step", "ms_per_step", ".3f"),
                          ("examples/s", "examples_per_s", ".0f"), ("throughput ratio to one device", "throughput_ratio", ".3f")])
    print(f"W2 data parallel on {args.devices} of {len(jax.devices())} {jax.default_backend()} devices ({os.cpu_count()} cores): "
          f"{rounds} rounds x {steps} steps, medians")
    print(text)
    write_results(args.out, "w2_parallel", result, text)
    return result


if __name__ == "__main__":
    main()
