"""Convolution implementations on the digits CNN: XLA's native conv against im2col.

    python experiments/benchmarks/conv_impl.py            # full run
    python experiments/benchmarks/conv_impl.py --quick    # a few steps (the tests run this)

The reference is a hand-written raw-JAX training step (``lax.conv_general_dilated``,
``jax.grad``, ``optax.adam``) called in a Python loop. Against it, in the same
process and interleaved over several rounds: the jaxnets step with
``impl="xla"`` and ``impl="im2col"``, each called in a Python loop and fused
into one ``lax.scan`` per epoch (as ``fit`` runs it). Prints median times per
step and their ratio to the reference; writes ``conv_impl.json`` and
``conv_impl.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import optax
from jax import lax

import jaxnets.layers as L
from jaxnets import data, losses, train

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import interleaved_medians, write_results  # noqa: E402

BATCH = 64


def raw_jax_step_factory(optimizer):
    """The reference: the same CNN written directly in JAX (NHWC, 3x3 SAME convs)."""
    dn = ("NHWC", "HWIO", "NHWC")

    def forward(p, x):
        h = jax.nn.relu(lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME", dimension_numbers=dn) + p["b1"])
        h = jax.nn.relu(lax.conv_general_dilated(h, p["c2"], (1, 1), "SAME", dimension_numbers=dn) + p["b2"])
        h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        h = h.reshape(h.shape[0], -1)
        return h @ p["w"] + p["b"]

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(forward(p, x), y).mean())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def model(impl: str) -> L.Layer:
    return L.serial(
        L.Conv2D(16, 3, impl=impl), L.Relu(), L.Conv2D(32, 3, impl=impl), L.Relu(),
        L.MaxPool(2), L.Flatten(), L.Dense(10),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, to check the script runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    steps = 3 if args.quick else 22  # 22 steps of 64 = one epoch of the digits training set

    d = data.load_digits(as_images=True)
    xs, ys = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    batches = jnp.arange(steps * BATCH).reshape(steps, BATCH) % xs.shape[0]
    optimizer = optax.adam(1e-3)
    ce = losses.softmax_cross_entropy_with_integer_labels

    # Reference: raw JAX, one jitted step per batch in a Python loop.
    _, p = model("xla").init(jax.random.key(0), d.input_shape)
    raw_params = {"c1": p["conv_0"]["w"], "b1": p["conv_0"]["b"], "c2": p["conv_1"]["w"], "b2": p["conv_1"]["b"],
                  "w": p["dense_0"]["w"], "b": p["dense_0"]["b"]}
    raw_step = raw_jax_step_factory(optimizer)
    raw_state = {"params": raw_params, "opt": optimizer.init(raw_params)}

    def run_raw():
        params, opt_state = raw_state["params"], raw_state["opt"]
        for i in range(steps):
            params, opt_state, loss = raw_step(params, opt_state, xs[batches[i]], ys[batches[i]])
        jax.block_until_ready(loss)
        raw_state["params"], raw_state["opt"] = params, opt_state

    contenders = {"raw JAX step, Python loop (reference)": run_raw}
    for impl in ("xla", "im2col"):
        m = model(impl)
        state = {"s": train.init_train_state(m, optimizer, d.input_shape, seed=0)}
        step = train.make_train_step(m, ce, optimizer)
        pure = train.make_train_step(m, ce, optimizer, jit=False)
        epoch = jax.jit(lambda s, pure=pure: lax.scan(lambda c, idx: pure(c, xs[idx], ys[idx]), s, batches), donate_argnums=0)

        def run_loop(step=step, state=state):
            s = state["s"]
            for i in range(steps):
                s, logged = step(s, xs[batches[i]], ys[batches[i]])
            jax.block_until_ready(logged["loss"])
            state["s"] = s

        def run_epoch(epoch=epoch, state=state):
            s, logged = epoch(state["s"])
            jax.block_until_ready(logged["loss"])
            state["s"] = s

        contenders[f"jaxnets impl={impl}, Python loop"] = run_loop
        contenders[f"jaxnets impl={impl}, scanned epoch"] = run_epoch

    medians = interleaved_medians(contenders, rounds, steps)
    ref = medians[next(iter(contenders))]  # the first contender is the reference
    rows = [{"contender": name, "ms_per_step": t * 1e3, "ratio_to_reference": t / ref} for name, t in medians.items()]
    result = {"benchmark": "conv_impl", "backend": jax.default_backend(), "devices": [str(dv) for dv in jax.devices()],
              "jax": jax.__version__, "batch": BATCH, "steps_per_round": steps, "rounds": rounds, "quick": args.quick, "rows": rows}
    lines = ["| contender | ms per step | ratio to reference |", "| --- | ---: | ---: |"]
    lines += [f"| {r['contender']} | {r['ms_per_step']:.2f} | {r['ratio_to_reference']:.2f} |" for r in rows]
    table = "\n".join(lines)
    print(f"digits CNN, batch {BATCH}, {steps} steps x {rounds} rounds, backend {jax.default_backend()}")
    print(table)
    write_results(args.out, "conv_impl", result, table)
    return result


if __name__ == "__main__":
    main()
