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
import os
import sys

import jax
import jax.numpy as jnp
import optax

import jaxnets
import jaxnets.layers as L
from jaxnets import backprop, data, losses, train

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import interleaved_medians, write_results  # noqa: E402


def raw_step_factory(optimizer):
    def forward(p, x):
        h = jax.nn.relu(x @ p["w0"] + p["b0"])
        h = jax.nn.relu(h @ p["w1"] + p["b1"])
        return h @ p["w2"] + p["b2"]

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


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
    model = L.serial(L.Dense(128), L.Relu(), L.Dense(128), L.Relu(), L.Dense(10))
    hand_model = backprop.hand_gradients(model)
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])

    state = train.init_train_state(model, optimizer, digits.input_shape, seed=0)
    p = jax.tree_util.tree_map(jnp.copy, state.params)  # the raw step donates its buffers: give it its own
    raw = {"params": {"w0": p["dense_0"]["w"], "b0": p["dense_0"]["b"], "w1": p["dense_1"]["w"], "b1": p["dense_1"]["b"],
                      "w2": p["dense_2"]["w"], "b2": p["dense_2"]["b"]}}
    raw["opt"] = optimizer.init(raw["params"])
    raw_step = raw_step_factory(optimizer)
    holders = {
        "autodiff": {"step": train.make_train_step(model, ce, optimizer), "state": state},
        "hand": {"step": train.make_train_step(hand_model, ce, optimizer),
                 "state": train.init_train_state(hand_model, optimizer, digits.input_shape, seed=0)},
    }

    def run_raw(n):
        params, opt_state = raw["params"], raw["opt"]
        for _ in range(n):
            params, opt_state, loss = raw_step(params, opt_state, x, y)
        jax.block_until_ready(loss)
        raw["params"], raw["opt"] = params, opt_state

    def runner(holder):
        def run(n):
            s = holder["state"]
            for _ in range(n):
                s, logged = holder["step"](s, x, y)
            jax.block_until_ready(logged["loss"])
            holder["state"] = s

        return run

    contenders = {"raw JAX step, autodiff (reference)": run_raw,
                  "jaxnets step, autodiff": runner(holders["autodiff"]),
                  "jaxnets step, hand-derived rules": runner(holders["hand"])}
    medians = interleaved_medians({name: (lambda run=run: run(steps)) for name, run in contenders.items()}, rounds, steps)
    ref = medians[next(iter(contenders))]  # the first contender is the reference
    rows = [{"contender": name, "us_per_step": t * 1e6, "ratio_to_reference": t / ref} for name, t in medians.items()]
    hand_over_auto = medians["jaxnets step, hand-derived rules"] / medians["jaxnets step, autodiff"]

    accuracy = {}
    for label, m in (("autodiff", model), ("hand", hand_model)):
        _, history = jaxnets.fit(m, ce, optimizer, digits, epochs=epochs, batch_size=64, seed=0, progress=False)
        accuracy[label] = history["test_accuracy"][-1]

    lines = ["| contender | us per step | ratio to reference |", "| --- | ---: | ---: |"]
    lines += [f"| {r['contender']} | {r['us_per_step']:.1f} | {r['ratio_to_reference']:.3f} |" for r in rows]
    table = "\n".join(lines)
    print(f"W1: MLP 64-128-128-10, batch 64, Adam 1e-3; {steps} steps x {rounds} rounds, backend {jax.default_backend()}")
    print(table)
    print(f"hand-derived step / autodiff step: {hand_over_auto:.3f}")
    print(f"test accuracy after {epochs} epochs (seed 0): autodiff {accuracy['autodiff']:.4f}, hand rules {accuracy['hand']:.4f}")
    result = {"benchmark": "hand_backprop", "backend": jax.default_backend(), "jax": jax.__version__, "rounds": rounds,
              "steps_per_round": steps, "quick": args.quick, "rows": rows, "hand_over_autodiff": hand_over_auto,
              "epochs": epochs, "test_accuracy": accuracy}
    write_results(args.out, "hand_backprop", result, table)
    return result


if __name__ == "__main__":
    main()
