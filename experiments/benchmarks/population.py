"""Population throughput: many W1 models trained at once under vmap, against one model alone.

    python experiments/benchmarks/population.py                  # 1, 8, 32, 128 members (CPU)
    python experiments/benchmarks/population.py --sizes 1 8 64 256 1024
    python experiments/benchmarks/population.py --quick          # checks the script, not the speed

W1 model (MLP 64-128-128-10, digits, batch 64). A population of ``P``
members, each with its own seed (params, shuffling) and its own Adam
learning rate (``optax.inject_hyperparams``), trains with one vmapped
``jaxnets.make_epoch`` per call: the program ``jaxnets.fit_population``
runs, without its evaluation passes. The reference is one model alone,
trained with ``make_epoch`` and plain ``optax.adam`` (the fastest way to
train one model in jaxnets). All sizes are timed in one process,
interleaved over ``--rounds`` rounds; the figure is member-steps per
second, and its ratio to the reference's steps per second.
Writes ``population.json`` and ``population.md`` to ``--out``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _workloads as W
from _common import interleaved_medians, write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    sizes, rounds = ([1, 2], 1) if args.quick else (args.sizes, args.rounds)

    from jaxnets import data, losses, train

    digits = data.load_digits()
    xs, ys = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    n, batch = xs.shape[0], W.W1["batch"]
    steps = -(-n // batch)
    ce = losses.softmax_cross_entropy_with_integer_labels
    model = W.jaxnets_model(W.W1["sizes"])
    injected = optax.inject_hyperparams(optax.adam)

    single_opt = optax.adam(1e-3)
    single = {"state": train.init_train_state(model, single_opt, digits.input_shape, seed=0)}
    single_epoch = train.make_epoch(model, ce, single_opt, num_examples=n, batch_size=batch)
    population_epoch = jax.jit(jax.vmap(train.make_epoch(model, ce, injected(learning_rate=1e-3), num_examples=n,
                                                         batch_size=batch, jit=False), in_axes=(0, None, None)),
                               donate_argnums=0)

    def init_member(key, learning_rate):
        return train.init_train_state(model, injected(learning_rate=learning_rate), digits.input_shape, key=key)

    populations = {}
    for size in sizes:
        keys = jnp.stack([jax.random.key(s) for s in range(size)])
        rates = jnp.asarray(np.geomspace(3e-4, 3e-3, size), jnp.float32)
        populations[size] = jax.jit(jax.vmap(init_member))(keys, rates)

    def run_single():
        state, logged = single_epoch(single["state"], xs, ys)
        jax.block_until_ready(logged["loss"])
        single["state"] = state

    def run_population(size):
        def run():
            state, logged = population_epoch(populations[size], xs, ys)
            jax.block_until_ready(logged["loss"])
            populations[size] = state

        return run

    contenders = {"one model alone (reference)": run_single, **{f"P={s}": run_population(s) for s in sizes}}
    medians = interleaved_medians(contenders, rounds, 1)  # seconds per epoch
    reference = steps / medians["one model alone (reference)"]
    rows = [{"members": 1, "contender": "one model alone (reference)", "ms_per_epoch": medians["one model alone (reference)"] * 1e3,
             "member_steps_per_s": reference, "ratio_to_alone": 1.0}]
    for size in sizes:
        rate = size * steps / medians[f"P={size}"]
        rows.append({"members": size, "contender": f"population of {size}", "ms_per_epoch": medians[f"P={size}"] * 1e3,
                     "member_steps_per_s": rate, "ratio_to_alone": rate / reference})
    result = {"benchmark": "population", "workload": "W1 (MLP 64-128-128-10, digits, batch 64), Adam with per-member learning rate",
              **W.environment(),
              "rounds": rounds, "steps_per_epoch": steps, "quick": args.quick, "rows": rows}
    text = W.table(rows, [("contender", "contender", ""), ("ms per epoch", "ms_per_epoch", ".1f"),
                          ("member-steps per s", "member_steps_per_s", ".0f"), ("ratio to one alone", "ratio_to_alone", ".2f")])
    print(f"Population on {result['device']}: {rounds} rounds, medians over one epoch ({steps} steps)")
    print(text)
    write_results(args.out, "population", result, text)
    return result


if __name__ == "__main__":
    main()
