"""Hand-derived backprop against autodiff: training step time and accuracy on the digits MLP.

    python experiments/benchmarks/hand_backprop.py
    python experiments/benchmarks/hand_backprop.py --quick

W1: MLP 64-128-128-10, batch 64, Adam 1e-3. Compared in one process,
interleaved over rounds, median seconds per step:

* reference: a hand-written raw-JAX step (``jax.value_and_grad``, ``optax.adam``);
* jaxnets, autodiff: ``jaxnets.make_train_step(model, ...)``;
* jaxnets, hand rules: ``jaxnets.make_train_step(backprop.hand_gradients(model), ...)``,
  where ``jax.grad`` runs the hand-derived rules through ``jax.custom_vjp``.

Then both jaxnets variants train for ``--epochs`` with ``fit`` from the same
seed, and their test accuracies are compared. Writes ``hand_backprop.json``
and ``hand_backprop.md`` to ``--out``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import _workloads as W
import jaxnets
from _common import interleaved_medians, write_results
from jaxnets import backprop, data, losses, train


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    rounds, steps, epochs = (2, 5, 2) if args.quick else (args.rounds, args.steps, args.epochs)

    digits = data.load_digits()
    ce = losses.softmax_cross_entropy_with_integer_labels
    optimizer = optax.adam(1e-3)
    model = W.jaxnets_model(W.W1["sizes"])
    hand_model = backprop.hand_gradients(model)
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])

    state = train.init_train_state(model, optimizer, digits.input_shape, seed=0)
    raw_params = W.raw_params(state.params)
    raw_step = jax.jit(W.raw_step_fn(optimizer), donate_argnums=(0, 1))
    hand_state = train.init_train_state(hand_model, optimizer, digits.input_shape, seed=0)
    contenders = {
        "raw JAX step, autodiff (reference)": W.looped(raw_step, (raw_params, optimizer.init(raw_params)), (x, y), steps),
        "jaxnets step, autodiff": W.looped(train.make_train_step(model, ce, optimizer), (state,), (x, y), steps),
        "jaxnets step, hand-derived rules": W.looped(train.make_train_step(hand_model, ce, optimizer), (hand_state,), (x, y), steps),
    }
    medians = interleaved_medians(contenders, rounds, steps)
    ref = medians[next(iter(contenders))]  # the first contender is the reference
    rows = [{"contender": name, "us_per_step": t * 1e6, "ratio_to_reference": t / ref} for name, t in medians.items()]
    hand_over_auto = medians["jaxnets step, hand-derived rules"] / medians["jaxnets step, autodiff"]

    accuracy = {}
    for label, m in (("autodiff", model), ("hand", hand_model)):
        _, history = jaxnets.fit(m, ce, optimizer, digits, epochs=epochs, batch_size=64, seed=0, callbacks=[])
        accuracy[label] = history["test_accuracy"][-1]

    lines = ["| contender | us per step | ratio to reference |", "| --- | ---: | ---: |"]
    lines += [f"| {r['contender']} | {r['us_per_step']:.1f} | {r['ratio_to_reference']:.3f} |" for r in rows]
    table = "\n".join(lines)
    print(f"W1: MLP 64-128-128-10, batch 64, Adam 1e-3; {steps} steps x {rounds} rounds, backend {jax.default_backend()}")
    print(table)
    print(f"hand-derived step / autodiff step: {hand_over_auto:.3f}")
    print(f"test accuracy after {epochs} epochs (seed 0): autodiff {accuracy['autodiff']:.4f}, hand rules {accuracy['hand']:.4f}")
    result = {"benchmark": "hand_backprop", **W.environment(), "rounds": rounds,
              "steps_per_round": steps, "quick": args.quick, "rows": rows, "hand_over_autodiff": hand_over_auto,
              "epochs": epochs, "test_accuracy": accuracy}
    write_results(args.out, "hand_backprop", result, table)
    return result


if __name__ == "__main__":
    main()
