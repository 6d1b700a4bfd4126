"""Gradient-check report: every built-in layer and three composite models, hand rules vs jax.grad vs finite differences.

    python experiments/gradient_report.py
    python experiments/gradient_report.py --quick     # four layers, to check the script runs

For each layer, the hand-derived rule's cotangents of the params and of the
input (``layer.backward`` with a random output cotangent ``r``) are checked as
the gradient of ``L = sum(layer(x) * r)``; for each model, ``jaxnets.backprop.grad``
is checked as the gradient of the cross-entropy on a batch of digits. Errors
are relative (``||g - g_ref|| / ||g_ref||``, the worst leaf), against
``jax.grad`` in float32 and float64 and against central finite differences
in float64. Writes ``gradient_report.json`` and ``gradient_report.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

import jaxnets.layers as L
from jaxnets import backprop, data, gradcheck, losses

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_folder, versions, write_json_atomic  # noqa: E402

# name -> (layer, input shape, train mode); inputs are random normals (integers for Embedding)
LAYERS = {
    "Dense": (L.Dense(6), (4, 5), True),
    "Conv1D": (L.Conv1D(3, 3, strides=2), (2, 9, 2), True),
    "Conv2D": (L.Conv2D(3, 3), (2, 6, 6, 2), True),
    "Conv2D (VALID, stride 2)": (L.Conv2D(3, (3, 2), strides=2, padding="VALID"), (2, 7, 6, 2), True),
    "ConvTranspose2D": (L.ConvTranspose2D(2, 3, strides=2), (2, 4, 3, 2), True),
    "MaxPool": (L.MaxPool(2), (2, 6, 6, 2), True),
    "AvgPool (SAME)": (L.AvgPool(3, strides=2, padding="SAME"), (2, 7, 7, 2), True),
    "Flatten": (L.Flatten(), (3, 2, 4), True),
    "Dropout (train)": (L.Dropout(0.3), (4, 6), True),
    "LayerNorm": (L.LayerNorm(), (4, 6), True),
    "BatchNorm (train)": (L.BatchNorm(), (8, 5), True),
    "BatchNorm (eval)": (L.BatchNorm(), (8, 5), False),
    "Embedding": (L.Embedding(9, 4), (3, 5), True),
    "Relu": (L.Relu(), (4, 6), True),
    "LeakyRelu": (L.LeakyRelu(0.1), (4, 6), True),
    "Elu": (L.Elu(), (4, 6), True),
    "Gelu": (L.Gelu(), (4, 6), True),
    "Gelu (tanh)": (L.Gelu(approximate=True), (4, 6), True),
    "Sigmoid": (L.Sigmoid(), (4, 6), True),
    "Tanh": (L.Tanh(), (4, 6), True),
    "Softplus": (L.Softplus(), (4, 6), True),
    "Silu": (L.Silu(), (4, 6), True),
    "Softmax": (L.Softmax(), (4, 6), True),
    "LogSoftmax": (L.LogSoftmax(), (4, 6), True),
    "Identity": (L.Identity(), (4, 6), True),
}

MODELS = {
    "MLP 64-32-32-10": (L.serial(L.Dense(32), L.Tanh(), L.Dense(32), L.Gelu(), L.Dense(10)), (-1, 64), False),
    "CNN conv-pool-conv-dense": (L.serial(L.Conv2D(4, 3), L.Elu(), L.MaxPool(2), L.Conv2D(8, 3, strides=2, padding="VALID"),
                                          L.Silu(), L.Flatten(), L.Dense(10)), (-1, 8, 8, 1), True),
    "residual MLP (LayerNorm)": (L.serial(L.Dense(16), L.residual(L.LayerNorm(), L.Dense(16), L.Tanh(), L.Dense(16)),
                                          L.residual(L.Dense(16), L.Softplus()), L.Dense(10)), (-1, 64), False),
}

COLUMNS = ["float32 vs jax.grad", "float64 vs jax.grad", "float64 vs finite diff.", "float64 jax.grad vs finite diff."]


def layer_report(layer, shape, train, key):
    k_init, k_x, k_r, k_drop = jax.random.split(key, 4)
    _, params, state = layer.init_with_state(k_init, (-1,) + shape[1:])
    integer_input = layer.name == "embedding"
    x = jax.random.randint(k_x, shape, 0, 9) if integer_input else jax.random.normal(k_x, shape)
    out = layer.apply_with_state(params, state, x, key=k_drop, train=train)[0]
    r = jax.random.normal(k_r, out.shape)
    point = {"params": params} if integer_input else {"params": params, "x": x}

    def loss(pt, r, state):
        inp = x if integer_input else pt["x"]
        return jnp.sum(layer.apply_with_state(pt["params"], state, inp, key=k_drop, train=train)[0] * r)

    def hand(pt, r, state):
        inp = x if integer_input else pt["x"]
        p_bar, x_bar = layer.backward(pt["params"], state, inp, r, key=k_drop, train=train)
        return {"params": p_bar} if integer_input else {"params": p_bar, "x": x_bar}

    return gradcheck.check_grads(hand, loss, point, r, state)


def model_report(model, input_shape, images, key, digits):
    _, params, state = model.init_with_state(key, input_shape)
    x = digits.x_train[:32]
    x = jnp.asarray(x.reshape(32, 8, 8, 1) if images else x)
    y = jnp.asarray(digits.y_train[:32])
    ce = losses.softmax_cross_entropy_with_integer_labels
    hand = backprop.grad(model, ce)
    return gradcheck.check_grads(lambda p, x, y, s: hand(p, x, y, state=s),
                                 lambda p, x, y, s: ce(model.apply_with_state(p, s, x, train=True)[0], y), params, x, y, state)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four layers, no models: checks the script runs")
    parser.add_argument("--out", default="runs/gradient_report")
    args = parser.parse_args(argv)
    rows = []
    key = jax.random.key(0)
    quick = ("Dense", "Conv1D", "Flatten", "LayerNorm")  # a product, im2col, a reshape, a normaliser
    chosen = [(name, LAYERS[name]) for name in quick] if args.quick else LAYERS.items()
    for name, (layer, shape, train) in chosen:
        report = layer_report(layer, shape, train, key)
        rows.append({"what": name, "kind": "layer", "passed": report.passed,
                     **{c: report.max_relative_error(c) for c in COLUMNS}})
    if not args.quick:
        digits = data.load_digits()
        for name, (model, input_shape, images) in MODELS.items():
            report = model_report(model, input_shape, images, key, digits)
            rows.append({"what": name, "kind": "model", "passed": report.passed,
                         **{c: report.max_relative_error(c) for c in COLUMNS}})
    lines = ["| layer or model | f32 vs jax.grad | f64 vs jax.grad | f64 vs finite diff. | f64 jax.grad vs finite diff. | passed |",
             "| --- | ---: | ---: | ---: | ---: | :---: |"]
    for r in rows:
        lines.append(f"| {r['what']} | " + " | ".join(f"{r[c]:.1e}" for c in COLUMNS) + f" | {'yes' if r['passed'] else 'NO'} |")
    table = "\n".join(lines)
    print("Hand-derived gradients: worst relative error over leaves (params and input)")
    print(table)
    print(f"all passed: {all(r['passed'] for r in rows)}")
    with run_folder(args.out) as folder:  # both files appear together or not at all
        write_json_atomic(os.path.join(folder, "gradient_report.json"),
                          {**versions(), "rows": rows, "tolerances": gradcheck.DEFAULT_TOLERANCES})
        with open(os.path.join(folder, "gradient_report.md"), "w") as f:
            f.write(table + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
