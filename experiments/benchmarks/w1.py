"""W1: the cost of jaxnets' training step, and what fused epochs save, on the digits MLP.

    python experiments/benchmarks/w1.py            # full run
    python experiments/benchmarks/w1.py --quick    # a few steps: checks the script, not the speed

MLP 64-128-128-10 on digits (1,437 training images), batch 64, Adam 1e-3.
Contenders, timed in one process, interleaved over ``--rounds`` rounds
(median seconds per training step):

* raw JAX step in a Python loop (the reference): ``_workloads.raw_step_fn``,
  jitted with donated buffers, fed the same device-resident batch each step;
* jaxnets step in the same loop: ``jaxnets.make_train_step``;
* raw JAX fused epoch: a hand-written ``lax.scan`` over batches gathered by a
  ``jax.random.permutation`` of the data (one call per epoch; the same key each call);
* jaxnets fused epoch: ``jaxnets.make_epoch`` (one call per epoch), with its
  finiteness check (the default);
* the same without the check (``check_finite=False``): the check's cost;
* jaxnets, 10 fused epochs per call: ``make_epoch`` in a ``fori_loop``;
* the general loop (``jaxnets.train.loop`` over an ``ArraySource``, one loop
  call per round: its setup, a copy of the state, and one host round-trip per
  epoch included), with no callback, with three idle callbacks run after
  every epoch, and with 10 epochs (230 steps) fused per round-trip: what
  ``fit`` runs.

Also reports XLA's cost analysis (flops, bytes accessed) of the two steps.
Writes ``w1.json`` and ``w1.md`` to ``--out``.
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
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--epochs-per-round", type=int, default=3)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    rounds, epochs_per_round = (2, 1) if args.quick else (args.rounds, args.epochs_per_round)

    from jaxnets import data, losses, train

    digits = data.load_digits()
    xs, ys = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    n, batch = xs.shape[0], W.W1["batch"]
    steps_per_epoch = -(-n // batch)
    optimizer = optax.adam(1e-3)
    ce = losses.softmax_cross_entropy_with_integer_labels
    model = W.jaxnets_model(W.W1["sizes"])
    x, y = xs[:batch], ys[:batch]

    def fresh_state():
        return train.init_train_state(model, optimizer, digits.input_shape, seed=0)

    raw_step = jax.jit(W.raw_step_fn(optimizer), donate_argnums=(0, 1))
    raw_epoch = jax.jit(W.raw_epoch_fn(optimizer, xs, ys, batch), donate_argnums=(0, 1))
    step = train.make_train_step(model, ce, optimizer)
    epoch_fn = train.make_epoch(model, ce, optimizer, num_examples=n, batch_size=batch, jit=False)
    epoch = jax.jit(epoch_fn, donate_argnums=0)
    unchecked = jax.jit(train.make_epoch(model, ce, optimizer, num_examples=n, batch_size=batch, check_finite=False,
                                         jit=False), donate_argnums=0)
    ten_epochs = jax.jit(lambda s, xs, ys: jax.lax.fori_loop(0, 10, lambda i, s: epoch_fn(s, xs, ys)[0], s),
                         donate_argnums=0)

    def ten(state, xs, ys):
        state = ten_epochs(state, xs, ys)
        return state, state.step

    loop_steps = epochs_per_round * steps_per_epoch
    pure_step = train.make_step(train.objective_from_loss(model, ce), optimizer, jit=False)
    source = train.ArraySource((xs, ys), batch)

    def general(epochs, per_call, callbacks):
        holder = {"state": fresh_state()}

        def run():
            holder["state"], _ = train.loop(pure_step, holder["state"], source, epochs=epochs,
                                            steps_per_call=per_call * steps_per_epoch, callbacks=callbacks)
            jax.block_until_ready(holder["state"].params)

        return run

    idle = [train.Hook(lambda p: None, every=(1, "epochs")) for _ in range(3)]
    raw_params = W.raw_params(fresh_state().params)
    raw_fused_params = W.raw_params(fresh_state().params)
    runs = {
        "raw loop": W.looped(raw_step, (raw_params, optimizer.init(raw_params)), (x, y), loop_steps),
        "jaxnets loop": W.looped(step, (fresh_state(),), (x, y), loop_steps),
        "raw fused": W.looped(raw_epoch, (raw_fused_params, optimizer.init(raw_fused_params)), (jax.random.key(1),),
                              epochs_per_round),
        "jaxnets fused": W.looped(epoch, (fresh_state(),), (xs, ys), epochs_per_round),
        "jaxnets unchecked": W.looped(unchecked, (fresh_state(),), (xs, ys), epochs_per_round),
        "jaxnets ten": W.looped(ten, (fresh_state(),), (xs, ys), 1),
        "loop": general(epochs_per_round, 1, []),
        "loop idle": general(epochs_per_round, 1, idle),
        "loop ten": general(10, 10, []),
    }

    contenders = {  # name -> (run one round, steps per round)
        "raw JAX step, Python loop (reference)": (runs["raw loop"], loop_steps),
        "jaxnets step, Python loop": (runs["jaxnets loop"], loop_steps),
        "raw JAX fused epoch": (runs["raw fused"], loop_steps),
        "jaxnets fused epoch (make_epoch)": (runs["jaxnets fused"], loop_steps),
        "jaxnets fused epoch, no finiteness check": (runs["jaxnets unchecked"], loop_steps),
        "jaxnets, 10 fused epochs per call": (runs["jaxnets ten"], 10 * steps_per_epoch),
        "general loop, an epoch per call": (runs["loop"], loop_steps),
        "general loop, an epoch per call, 3 idle callbacks": (runs["loop idle"], loop_steps),
        "general loop, 10 epochs per call": (runs["loop ten"], 10 * steps_per_epoch),
    }
    medians = interleaved_medians({name: run for name, (run, _) in contenders.items()}, rounds, 1)
    per_step = {name: medians[name] / contenders[name][1] for name in contenders}
    reference = per_step["raw JAX step, Python loop (reference)"]
    rows = [{"contender": name, "us_per_step": t * 1e6, "ratio_to_reference": t / reference} for name, t in per_step.items()]

    probe = fresh_state()  # (lowering reads only shapes; the trained buffers were donated)
    costs = {"raw JAX step": W.cost(raw_step.lower(W.raw_params(probe.params), optimizer.init(W.raw_params(probe.params)), x, y).compile()),
             "jaxnets step": W.cost(step.lower(probe, x, y).compile())}
    epoch_costs = {"checked": W.cost(epoch.lower(probe, xs, ys).compile()),
                   "unchecked": W.cost(unchecked.lower(probe, xs, ys).compile())}
    # XLA counts a loop body once, so the check's extra work is compared with the epoch's steps counted out.
    costs["fused epoch extra for the finiteness check"] = {
        k: (epoch_costs["checked"][k] - epoch_costs["unchecked"][k]) / (steps_per_epoch * costs["jaxnets step"][k])
        for k in ("flops", "bytes")}
    check_cost = (per_step["jaxnets fused epoch (make_epoch)"] / per_step["jaxnets fused epoch, no finiteness check"]) - 1
    idle_cost = per_step["general loop, an epoch per call, 3 idle callbacks"] / per_step["general loop, an epoch per call"] - 1
    result = {"benchmark": "w1", "finiteness_check_cost": check_cost, "idle_callbacks_cost": idle_cost, "workload": "MLP 64-128-128-10, digits, batch 64, Adam 1e-3",
              **W.environment(),
              "rounds": rounds, "epochs_per_round": epochs_per_round, "steps_per_epoch": steps_per_epoch,
              "quick": args.quick, "rows": rows, "xla_cost": costs}
    text = W.table(rows, [("contender", "contender", ""), ("us per step", "us_per_step", ".1f"),
                          ("ratio to reference", "ratio_to_reference", ".3f")])
    text += (f"\n\nXLA cost analysis per step: raw {costs['raw JAX step']['flops']:.0f} flops, "
             f"{costs['raw JAX step']['bytes']:.0f} bytes; jaxnets {costs['jaxnets step']['flops']:.0f} flops, "
             f"{costs['jaxnets step']['bytes']:.0f} bytes.\n\nFiniteness check: {100 * check_cost:+.2f}% of a fused epoch's time "
             f"(XLA: {100 * costs['fused epoch extra for the finiteness check']['flops']:+.3f}% flops, "
             f"{100 * costs['fused epoch extra for the finiteness check']['bytes']:+.3f}% bytes).\n\nThree idle callbacks "
             f"after every epoch: {100 * idle_cost:+.2f}% of the general loop's time.")
    print(f"W1 on {result['device']}: {rounds} rounds, median per step")
    print(text)
    write_results(args.out, "w1", result, text)
    return result


if __name__ == "__main__":
    main()
