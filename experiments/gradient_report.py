"""Gradient-check report: every built-in layer and three composite models, hand rules vs jax.grad vs finite differences.

    python experiments/gradient_report.py
    python experiments/gradient_report.py --quick     # four layers, to check the script runs

Truncated backpropagation through time (``truncate=``) is not the gradient
of the loss, so finite differences cannot check it; tests/test_sequence.py
checks it against ``jax.grad`` of the truncated forward pass.

For each layer, the hand-derived rule's cotangents of the params and of the
input (``layer.backward`` with a random output cotangent ``r``) are checked as
the gradient of ``L = sum(layer(x) * r)``; for each model, ``jaxnets.backprop.grad``
is checked as the gradient of the cross-entropy on a batch of digits. In
bfloat16 the rule (run in bfloat16) is compared with ``jax.grad`` in
bfloat16 and with the float64 truth at the same rounded point, within the
tolerance ``gradcheck.dtype_tolerance`` derives from bfloat16's unit
roundoff and the reduction size (0.059 to 0.117 here; each row's is in the JSON). Errors
are relative (``||g - g_ref|| / ||g_ref||``, the worst leaf), against
``jax.grad`` in float32 and float64 and against central finite differences
in float64. Writes ``gradient_report.json`` and ``gradient_report.md`` to ``--out``.

Integer lengths and boolean masks get no cotangent, and ``check_layer``
differentiates float inputs only, so a layer taking one (``lengths_input``,
``mask_input``) is checked through :func:`fixed`: the same layer and rule
with those inputs held at given values (a fully masked query, a length of 0,
one beyond the sequence).

Convolution rows name their ``impl`` when they set it: the rule is the same
for both (im2col's adjoint), so an ``impl="xla"`` row checks it against
XLA's convolution as the forward pass and an ``impl="im2col"`` row against
the gathered windows.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

import jaxnets.layers as L
from jaxnets import backprop, data, gradcheck, initializers, losses

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import run_folder, versions, write_json_atomic  # noqa: E402


def fixed(layer, *inputs):
    """``(wrapped, float shapes)``: ``layer`` with its array ``inputs`` (lengths, masks) held fixed.

    ``inputs`` are the layer's inputs in order: a shape (a random float input
    that check_layer differentiates) or an array (held at that value). The
    wrapper's rule is ``layer.backward``, whose cotangents of the fixed inputs
    must be ``None``.
    """
    free = [i for i, a in enumerate(inputs) if isinstance(a, tuple)]
    held = {i: a for i, a in enumerate(inputs) if not isinstance(a, tuple)}

    def full(x):
        xs = iter((x,) if len(free) == 1 else x)
        return tuple(held[i] if i in held else next(xs) for i in range(len(inputs)))

    def init(key, shape):
        shapes = full(shape)
        return layer.init_with_state(key, tuple(tuple(a.shape) if i in held else a for i, a in enumerate(shapes)))[1]

    def apply(params, x, *, key=None, train=False):
        return layer.apply(params, full(x), key=key, train=train)

    def backward(params, x, y_bar, *, key=None, train=False):
        p_bar, x_bars = layer.backward(params, {}, full(x), y_bar, key=key, train=train)
        if any(x_bars[i] is not None for i in held):
            raise ValueError(f"{layer.spec}: the rule returned a cotangent for a held (integer or boolean) input")
        got = tuple(x_bars[i] for i in free)
        return p_bar, got[0] if len(free) == 1 else got

    shapes = tuple(inputs[i] for i in free)
    wrapped = L.define_layer(layer.name, init, apply, backward=backward, spec=f"{layer.spec}, inputs {sorted(held)} held")
    return wrapped, shapes[0] if len(free) == 1 else shapes


_LENGTHS = jnp.array([7, 2, 0, 4])  # beyond T = 5, in the middle, empty, one short
_MASK = jax.random.bernoulli(jax.random.key(3), 0.6, (2, 1, 5, 5)).at[0, 0, 2].set(False)  # query 2 of example 0 sees no key
_KEYS_VALID = jnp.array([[True] * 6, [True] * 3 + [False] * 3])  # the second example's last 3 keys are padding
_STEPS_VALID = jnp.array([[True, False, True, True, False], [False] * 5])  # a hole; an example with no valid step

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
    "PReLU (per channel)": (L.PReLU(0.1, per_channel=True), (4, 6), True),
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
    "Elementwise (sin)": (L.Elementwise(jnp.sin, "sin", vjp=lambda x, y_bar: y_bar * jnp.cos(x)), (4, 6), True),
    "Lambda (autodiff rule)": (L.Lambda(lambda x: jnp.cumsum(x, axis=-1)[..., ::2], name="cumsum_even"), (4, 6), True),
    "define_layer (tanh dense)": (L.define_layer(
        "tanh_dense", lambda key, shape: {"w": jax.random.normal(key, (shape[-1], 3))},
        lambda p, x: jnp.tanh(x @ p["w"]),
        backward=lambda p, x, y_bar: (lambda g: ({"w": x.T @ g}, g @ p["w"].T))(y_bar * (1 - jnp.tanh(x @ p["w"]) ** 2))),
        (4, 5), True),
    "Conv (3-D)": (L.Conv(2, (2, 2, 2)), (2, 3, 4, 3, 2), True),
    "ConvTranspose (1-D, VALID)": (L.ConvTranspose(2, (3,), strides=2, padding="VALID"), (2, 4, 3), True),
    "GlobalAvgPool": (L.GlobalAvgPool(), (2, 3, 4, 3), True),
    "GlobalMaxPool": (L.GlobalMaxPool(), (2, 3, 4, 3), True),
    "Reshape": (L.Reshape((3, -1)), (2, 2, 6), True),
    "MultiHeadAttention (causal)": (L.MultiHeadAttention(2, causal=True), (2, 5, 8), True),
    "MultiHeadAttention (cross)": (L.MultiHeadAttention(2, cross=True, out_features=5), ((2, 4, 8), (2, 6, 3)), True),
    "SimpleRNN": (L.SimpleRNN(5), (2, 6, 3), True),
    "SimpleRNN (last)": (L.SimpleRNN(5, return_sequences=False), (2, 6, 3), True),
    "LSTM": (L.LSTM(5, initial_state="learned"), (2, 6, 3), True),
    "LSTM (initial state as input)": (L.LSTM(4, initial_state="input"), ((2, 5, 3), (2, 4), (2, 4)), True),
    "GRU": (L.GRU(5), (2, 6, 3), True),
    "GRU (last, learned h0)": (L.GRU(4, return_sequences=False, initial_state="learned"), (2, 7, 3), True),
    "LSTM (final carry)": (L.LSTM(4, return_state=True), (2, 5, 3), True),
    "SimpleRNNCell": (L.SimpleRNNCell(4), ((2, 4), (2, 3)), True),
    "LSTMCell": (L.LSTMCell(4), (((2, 4), (2, 4)), (2, 3)), True),
    "GRUCell": (L.GRUCell(4), ((2, 4), (2, 3)), True),
    "SequencePool (mean)": (L.SequencePool("mean"), (2, 5, 3), True),
    "SequencePool (last)": (L.SequencePool("last"), (2, 5, 3), True),
    "MultiHeadAttention (rotary)": (L.MultiHeadAttention(2, rotary=True), (2, 5, 8), True),
    "PositionalEmbedding": (L.PositionalEmbedding(7), (2, 5, 3), True),
    "SinusoidalEncoding": (L.SinusoidalEncoding(), (2, 5, 4), True),
    "RotaryEmbedding": (L.RotaryEmbedding(), (2, 5, 4), True),
    "TransformerBlock (causal)": (L.TransformerBlock(8, 2, causal=True, mlp_features=12), (2, 5, 8), True),
    "MultiHeadAttention (attention dropout, train)": (L.MultiHeadAttention(2, causal=True, drop_prob=0.3), (2, 5, 8), True),
    "TransformerBlock (dropout 0.2, GPT-2 init, train)": (L.TransformerBlock(
        8, 2, causal=True, mlp_features=12, drop_prob=0.2, w_init=initializers.normal(0.3), residual_scale=0.5), (2, 5, 8), True),
    "TiedEmbedding (GPT: positions, block, LayerNorm, tied head)": (L.TiedEmbedding(
        9, 6, L.PositionalEmbedding(8), L.TransformerBlock(6, 2, causal=True, drop_prob=0.1), L.LayerNorm()), (3, 5), True),
    "serial": (L.serial(L.Dense(5), L.Tanh(), L.Dropout(0.2), L.Dense(3)), (4, 6), True),
    "residual": (L.residual(L.LayerNorm(), L.Dense(6), L.Silu()), (4, 6), True),
    "parallel": (L.parallel(L.Dense(3), L.Sigmoid()), ((4, 5), (4, 2)), True),
    "FanOut": (L.FanOut(2), (4, 3), True),
    "FanInSum": (L.FanInSum(), ((4, 3), (4, 3)), True),
    "FanInConcat": (L.FanInConcat(), ((4, 3), (4, 2)), True),
    # options whose rule (or the forward it is checked against) takes another path
    "Dense (no bias)": (L.Dense(6, use_bias=False), (4, 5), True),
    "Conv2D (SAME, xla)": (L.Conv2D(3, 3, impl="xla"), (2, 6, 6, 2), True),
    "Conv2D (padding=1, im2col)": (L.Conv2D(3, 3, padding=1, impl="im2col"), (2, 5, 5, 2), True),
    "Conv2D (padding=1, xla)": (L.Conv2D(3, 3, padding=1, impl="xla"), (2, 5, 5, 2), True),
    "Conv2D (per-side padding ((1, 0), (2, 1)), stride 2, im2col)": (L.Conv2D(
        3, 3, strides=2, padding=((1, 0), (2, 1)), impl="im2col"), (2, 6, 5, 2), True),
    "Conv2D (per-side padding ((1, 0), (2, 1)), stride 2, xla)": (L.Conv2D(
        3, 3, strides=2, padding=((1, 0), (2, 1)), impl="xla"), (2, 6, 5, 2), True),
    "Conv1D (dilation 2, im2col)": (L.Conv1D(3, 3, dilation=2, impl="im2col"), (2, 9, 2), True),
    "Conv1D (dilation 2, xla)": (L.Conv1D(3, 3, dilation=2, impl="xla"), (2, 9, 2), True),
    "Conv2D (dilation (2, 1), VALID, stride 2, im2col)": (L.Conv2D(
        3, 3, strides=2, padding="VALID", dilation=(2, 1), impl="im2col"), (2, 8, 6, 2), True),
    "Conv2D (feature_groups 2, im2col)": (L.Conv2D(4, 3, feature_groups=2, impl="im2col"), (2, 5, 5, 4), True),
    "Conv2D (feature_groups 2, xla)": (L.Conv2D(4, 3, feature_groups=2, impl="xla"), (2, 5, 5, 4), True),
    "Conv1D (depthwise: feature_groups = in, 2 per channel, im2col)": (L.Conv1D(
        6, 3, feature_groups=3, impl="im2col"), (2, 7, 3), True),
    "Conv1D (depthwise: feature_groups = in, 2 per channel, xla)": (L.Conv1D(
        6, 3, feature_groups=3, impl="xla"), (2, 7, 3), True),
    "ConvTranspose2D (SAME, xla)": (L.ConvTranspose2D(2, 3, strides=2, impl="xla"), (2, 4, 3, 2), True),
    "ConvTranspose2D (padding=1, im2col)": (L.ConvTranspose2D(2, 3, strides=2, padding=1, impl="im2col"), (2, 4, 3, 2), True),
    "ConvTranspose2D (padding=1, xla)": (L.ConvTranspose2D(2, 3, strides=2, padding=1, impl="xla"), (2, 4, 3, 2), True),
    "ConvTranspose2D (per-side padding, dilation 2, feature_groups 2, im2col)": (L.ConvTranspose2D(
        4, 3, strides=2, padding=((0, 1), (3, 2)), dilation=2, feature_groups=2, impl="im2col"), (2, 3, 4, 4), True),
    "ConvTranspose2D (per-side padding, dilation 2, feature_groups 2, xla)": (L.ConvTranspose2D(
        4, 3, strides=2, padding=((0, 1), (3, 2)), dilation=2, feature_groups=2, impl="xla"), (2, 3, 4, 4), True),
    "MaxPool (SAME, overlapping windows)": (L.MaxPool(3, strides=2, padding="SAME"), (2, 6, 7, 2), True),
    "LayerNorm (no scale)": (L.LayerNorm(use_scale=False), (4, 6), True),
    "BatchNorm (train, 4-D input, no bias)": (L.BatchNorm(use_bias=False), (3, 4, 3, 2), True),
    "PReLU (one shared slope)": (L.PReLU(0.1), (4, 6), True),
    "Softmax (axis -2)": (L.Softmax(axis=-2), (3, 4, 5), True),
    "Lambda (hand rule)": (L.Lambda(lambda x: 2 * x[..., ::2], name="double_even",
                                    backward=lambda x, y_bar: jnp.zeros_like(x).at[..., ::2].set(2 * y_bar)), (4, 6), True),
    "define_layer (residuals=True)": (L.define_layer(
        "tanh_dense", lambda key, shape: {"w": jax.random.normal(key, (shape[-1], 3))},
        lambda p, x: (lambda y: (y, {"y": y}))(jnp.tanh(x @ p["w"])),
        backward=lambda p, x, saved, y_bar: (lambda g: ({"w": x.T @ g}, g @ p["w"].T))(y_bar * (1 - saved["y"] ** 2)),
        residuals=True), (4, 5), True),
    "define_layer (stateful, residuals=True)": (L.define_layer(
        "scale", lambda key, shape: ({"scale": jax.random.normal(key, (shape[-1],))}, {"count": jnp.zeros(())}),
        lambda p, s, x: (jnp.sin(x) * p["scale"], {"count": s["count"] + 1}, jnp.sin(x)),
        backward=lambda p, s, x, saved, y_bar: ({"scale": jnp.sum(y_bar * saved, axis=0)}, y_bar * p["scale"] * jnp.cos(x)),
        stateful=True, residuals=True), (4, 3), True),
    "SimpleRNN (lengths, final carry)": (*fixed(L.SimpleRNN(4, lengths_input=True, return_state=True),
                                                (4, 5, 3), _LENGTHS), True),
    "LSTM (lengths)": (*fixed(L.LSTM(4, lengths_input=True), (4, 5, 3), _LENGTHS), True),
    "LSTM (lengths, final carry, initial state as input)": (*fixed(L.LSTM(
        4, lengths_input=True, return_state=True, initial_state="input"), (4, 5, 3), _LENGTHS, (4, 4), (4, 4)), True),
    "GRU (lengths, last, learned h0)": (*fixed(L.GRU(
        4, lengths_input=True, return_sequences=False, initial_state="learned"), (4, 5, 3), _LENGTHS), True),
    "GRU (initial state as input, final carry)": (L.GRU(4, initial_state="input", return_state=True), ((2, 5, 3), (2, 4)), True),
    "MultiHeadAttention (mask input)": (*fixed(L.MultiHeadAttention(2, mask_input=True), (2, 5, 8), _MASK), True),
    "MultiHeadAttention (mask input and causal)": (*fixed(L.MultiHeadAttention(2, mask_input=True, causal=True),
                                                          (2, 5, 8), _MASK), True),
    "MultiHeadAttention (cross, padding mask input)": (*fixed(L.MultiHeadAttention(2, cross=True, mask_input=True),
                                                              (2, 4, 8), (2, 6, 3), L.padding_mask(_KEYS_VALID)), True),
    "MultiHeadAttention (cross, attention dropout, train)": (L.MultiHeadAttention(2, cross=True, drop_prob=0.3),
                                                             ((2, 4, 8), (2, 6, 3)), True),
    "MultiHeadAttention (cross, rotary)": (L.MultiHeadAttention(2, cross=True, rotary=True), ((2, 4, 8), (2, 6, 3)), True),
    "MultiHeadAttention (no bias, head_dim 3, scale 0.5)": (L.MultiHeadAttention(
        2, use_bias=False, head_dim=3, scale=0.5), (2, 5, 8), True),
    "TransformerBlock (rotary, attention dropout only, train)": (L.TransformerBlock(
        8, 2, rotary=True, mlp_features=12, attention_drop_prob=0.25), (2, 5, 8), True),
    "SequencePool (mean, mask input)": (*fixed(L.SequencePool("mean", mask_input=True), (2, 5, 3), _STEPS_VALID), True),
    "SequencePool (last, mask input)": (*fixed(L.SequencePool("last", mask_input=True), (2, 5, 3), _STEPS_VALID), True),
    # Tanh before BatchNorm: a bias straight before it has gradient exactly 0 (the batch mean cancels a shift),
    # and rounding noise on 0 (5e-7 in float32, above its atol 1e-7) is no relative error of the rule
    "serial (BatchNorm inside, train)": (L.serial(L.Dense(5), L.Tanh(), L.BatchNorm(), L.Relu(), L.Dense(3)), (6, 4), True),
    "FanInConcat (axis -2)": (L.FanInConcat(axis=-2), ((2, 3, 4), (2, 2, 4)), True),
}

MODELS = {
    "MLP 64-32-32-10": (L.serial(L.Dense(32), L.Tanh(), L.Dense(32), L.Gelu(), L.Dense(10)), (-1, 64), False),
    "CNN conv-pool-conv-dense": (L.serial(L.Conv2D(4, 3), L.Elu(), L.MaxPool(2), L.Conv2D(8, 3, strides=2, padding="VALID"),
                                          L.Silu(), L.Flatten(), L.Dense(10)), (-1, 8, 8, 1), True),
    "residual MLP (LayerNorm)": (L.serial(L.Dense(16), L.residual(L.LayerNorm(), L.Dense(16), L.Tanh(), L.Dense(16)),
                                          L.residual(L.Dense(16), L.Softplus()), L.Dense(10)), (-1, 64), False),
}

COLUMNS = ["float32 vs jax.grad", "float64 vs jax.grad", "float64 vs finite diff.", "float64 jax.grad vs finite diff.",
           "bfloat16 vs jax.grad", "bfloat16 vs float64 truth"]


DTYPES = ("float32", "float64", "bfloat16")


def layer_report(layer, shape, train, key):
    return gradcheck.check_layer(layer, shape, key=key, train=train, integer_input=layer.name in ("embedding", "tied_embedding"), dtypes=DTYPES)


def model_report(model, input_shape, images, key, digits):
    _, params, state = model.init_with_state(key, input_shape)
    x = digits.x_train[:32]
    x = jnp.asarray(x.reshape(32, 8, 8, 1) if images else x)
    y = jnp.asarray(digits.y_train[:32])
    ce = losses.softmax_cross_entropy_with_integer_labels
    hand = backprop.grad(model, ce)
    return gradcheck.check_grads(lambda p, x, y, s: hand(p, x, y, state=s),
                                 lambda p, x, y, s: ce(model.apply_with_state(p, s, x, train=True)[0], y), params, x, y, state,
                                 dtypes=DTYPES)


def bf16_tolerance(report) -> dict:
    """The row's bfloat16 rtol (``gradcheck.dtype_tolerance`` of its largest reduction), for the JSON."""
    return {"bfloat16 rtol": report.tolerances["bfloat16 vs jax.grad"][0]}


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
                     **{c: report.max_relative_error(c) for c in COLUMNS}, **bf16_tolerance(report)})
    if not args.quick:
        digits = data.load_digits()
        for name, (model, input_shape, images) in MODELS.items():
            report = model_report(model, input_shape, images, key, digits)
            rows.append({"what": name, "kind": "model", "passed": report.passed,
                         **{c: report.max_relative_error(c) for c in COLUMNS}, **bf16_tolerance(report)})
    lines = ["| layer or model | f32 vs jax.grad | f64 vs jax.grad | f64 vs finite diff. | f64 jax.grad vs finite diff. "
             "| bf16 vs jax.grad | bf16 vs f64 truth | passed |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]
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
