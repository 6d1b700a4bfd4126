"""Sequence models: training steps on hand-derived rules against autodiff, and jaxnets attention against raw JAX.

    python experiments/benchmarks/sequence.py
    python experiments/benchmarks/sequence.py --quick

Three workloads, each a jitted training step (Adam 1e-3), compared in one
process, interleaved over rounds, median seconds per step:

* **Transformer block**: ``serial(TransformerBlock(64, 4, causal=True), Dense(16))``
  on (32, 64, 64), per-position cross-entropy. Autodiff
  (``make_train_step(model)``) against the hand rules
  (``make_train_step(backprop.hand_gradients(model))``, ``jax.custom_vjp``).
* **LSTM**: ``serial(LSTM(128), Dense(16))`` on (32, 64, 32), the same two.
* **Attention**: ``MultiHeadAttention(4, causal=True)`` on (32, 64, 64), mean
  squared error to a target, against the same block written in raw JAX
  (projections by hand, ``jax.nn.dot_product_attention(..., is_causal=True)``,
  ``jax.value_and_grad``, ``optax.adam``): the reference.

Ratios are medians of one run; on a shared CPU they move with the load, so
record the machine's load beside them. Writes ``sequence.json`` and
``sequence.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import optax

import _workloads as W
import jaxnets.layers as L
from _common import interleaved_medians, write_results
from jaxnets import backprop, losses, train


def _raw_attention_step(optimizer, num_heads):
    """The attention block and its training step in raw JAX, on jaxnets' params dict."""

    def forward(p, x):
        b, t, d = x.shape
        h = p["query"]["w"].shape[1] // num_heads
        q = (x @ p["query"]["w"] + p["query"]["b"]).reshape(b, t, num_heads, h)
        k = (x @ p["key"]["w"]).reshape(b, t, num_heads, h)
        v = (x @ p["value"]["w"] + p["value"]["b"]).reshape(b, t, num_heads, h)
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, num_heads * h)
        return o @ p["out"]["w"] + p["out"]["b"]

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(lambda p: jnp.mean((forward(p, x) - y) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1)), forward


def _mse(outputs, targets):
    return jnp.mean((outputs - targets) ** 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    rounds, steps = (2, 2) if args.quick else (args.rounds, args.steps)
    batch, length, width = (4, 8, 16) if args.quick else (32, 64, 64)
    optimizer = optax.adam(1e-3)
    ce = losses.softmax_cross_entropy_with_integer_labels
    keys = jax.random.split(jax.random.key(0), 4)

    def pair(model, x, y, loss):
        """Autodiff and hand-rule steps of one model, as contenders."""
        out = {}
        for label, m in (("autodiff", model), ("hand rules", backprop.hand_gradients(model))):
            state = train.init_train_state(m, optimizer, (-1,) + x.shape[1:], seed=0)
            out[label] = W.looped(train.make_train_step(m, loss, optimizer), (state,), (x, y), steps)
        return out

    workloads = {}
    # Transformer block
    x = jax.random.normal(keys[0], (batch, length, width))
    y = jax.random.randint(keys[1], (batch, length), 0, 16)
    block = L.serial(L.TransformerBlock(width, 4, causal=True), L.Dense(16))
    workloads["Transformer block"] = pair(block, x, y, ce)
    # LSTM
    hidden = 32 if args.quick else 128
    x_lstm = jax.random.normal(keys[2], (batch, length, width // 2))
    workloads["LSTM"] = pair(L.serial(L.LSTM(hidden), L.Dense(16)), x_lstm, y, ce)
    # Attention against raw JAX
    attention = L.MultiHeadAttention(4, causal=True)
    target = jax.random.normal(keys[3], (batch, length, width))
    state = train.init_train_state(attention, optimizer, (-1, length, width), seed=0)
    raw_step, raw_forward = _raw_attention_step(optimizer, 4)
    params = jax.tree_util.tree_map(jnp.copy, state.params)
    max_diff = float(jnp.max(jnp.abs(raw_forward(params, x) - attention.apply(params, x))))
    attention_contenders = {"raw JAX, jax.nn.dot_product_attention (reference)":
                            W.looped(raw_step, (params, optimizer.init(params)), (x, target), steps)}
    attention_contenders.update({f"jaxnets MultiHeadAttention, {k}": v for k, v in pair(attention, x, target, _mse).items()})
    workloads["Attention"] = attention_contenders

    rows, ratios = [], {}
    for name, contenders in workloads.items():
        medians = interleaved_medians(contenders, rounds, steps)
        ref = medians[next(iter(contenders))]
        for contender, t in medians.items():
            rows.append({"workload": name, "contender": contender, "ms_per_step": t * 1e3, "ratio_to_first": t / ref})
        if name != "Attention":
            ratios[f"{name}: hand rules / autodiff"] = medians["hand rules"] / medians["autodiff"]
        else:
            for contender, t in list(medians.items())[1:]:
                ratios[f"{contender} / raw JAX"] = t / ref
    lines = ["| workload | contender | ms per step | ratio to first |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['workload']} | {r['contender']} | {r['ms_per_step']:.2f} | {r['ratio_to_first']:.3f} |" for r in rows]
    table = "\n".join(lines)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"batch {batch}, length {length}, width {width}; {steps} steps x {rounds} rounds, backend {jax.default_backend()}, "
          f"load average {load}")
    print(table)
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    print(f"attention outputs, jaxnets vs raw JAX: max |difference| {max_diff:.2e}")
    result = {"benchmark": "sequence", **W.environment(), "load_average_1min": load, "rounds": rounds,
              "steps_per_round": steps, "quick": args.quick, "shape": [batch, length, width], "rows": rows,
              "ratios": ratios, "attention_max_abs_difference": max_diff}
    write_results(args.out, "sequence", result, table)
    return result


if __name__ == "__main__":
    main()
