"""A small ResNet training step: jaxnets' convolutions (auto, xla, im2col) against raw JAX, flax.linen and PyTorch.

    python experiments/benchmarks/resnet.py            # full run
    python experiments/benchmarks/resnet.py --quick    # a tiny net, two rounds: checks the script

The model: a 3x3 stem convolution (16 channels), three stages of one basic
block each (16, 32, 64 channels; two 3x3 convolutions with BatchNorm, a 1x1
projection shortcut where the stage halves the resolution), global average
pooling, a dense classifier; no convolution biases (BatchNorm follows
each); BatchNorm momentum 0.9 in training mode; SGD with momentum 0.9,
lr 0.1; softmax cross-entropy. Input 32x32x3 (CIFAR's shape; random
images, since no data set can be downloaded here), batch 64, 10 classes.

Contenders, in one process, interleaved over ``--rounds`` rounds (median
seconds per training step):

* raw JAX (the reference): ``lax.conv_general_dilated`` (NHWC, HWIO),
  BatchNorm by hand, ``jax.value_and_grad``, ``optax.sgd``; jitted with the
  params, BatchNorm statistics and optimizer state donated. It reads the
  jaxnets model's own param and state dicts, so its first loss equals
  jaxnets' (checked);
* jaxnets with ``impl="auto"`` (the default), ``"xla"`` and ``"im2col"``:
  ``train.make_train_step``;
* flax.linen, where installed: ``nn.Conv``, ``nn.BatchNorm`` (its
  ``batch_stats`` collection mutable), the same optax step;
* PyTorch eager, where installed (``_torch.py``): ``nn.Conv2d`` (NCHW, XLA's
  "SAME" padding), ``nn.BatchNorm2d``, ``torch.optim.SGD``, on the jaxnets
  model's initial weights (its first loss is checked against raw JAX's);
  per step only.

Per step: a Python loop of jitted steps on one device-resident batch. Fused:
``--fused`` steps per call, each drawing a random batch of a stored set of
1,024 images on the device: a ``lax.scan`` of the step for raw JAX and flax,
``jaxnets.train.loop`` over a ``Sampler`` for jaxnets (what ``fit`` runs).
Also reports each step's compile time and XLA's cost analysis. Without
PyTorch its row is left out and the header says so. Writes
``resnet.json`` and ``resnet.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

import _torch
import _workloads as W
from _common import interleaved_medians, write_results

FULL = {"image": 32, "channels": (16, 32, 64), "batch": 64, "classes": 10}
QUICK = {"image": 8, "channels": (4, 8), "batch": 4, "classes": 3}
MOMENTUM, EPS = 0.9, 1e-5


def jaxnets_model(size, impl: str):
    import jaxnets.layers as L

    def bn():
        return L.BatchNorm(momentum=MOMENTUM, eps=EPS)

    def block(c, stride):
        main = L.serial(L.Conv2D(c, 3, strides=stride, use_bias=False, impl=impl), bn(), L.Relu(),
                        L.Conv2D(c, 3, use_bias=False, impl=impl), bn())
        short = L.serial(L.Conv2D(c, 1, strides=stride, use_bias=False, impl=impl), bn()) if stride != 1 else L.Identity()
        return L.serial(L.FanOut(2), L.parallel(main, short), L.FanInSum(), L.Relu())

    channels = size["channels"]
    stages = [block(c, 1 if i == 0 else 2) for i, c in enumerate(channels)]
    return L.serial(L.Conv2D(channels[0], 3, use_bias=False, impl=impl), bn(), L.Relu(), *stages,
                    L.GlobalAvgPool(), L.Dense(size["classes"]))


def _conv(x, w, stride):
    return lax.conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(p, s, x):
    """Training-mode BatchNorm: batch statistics, and the running ones moved towards them."""
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    y = (x - mean) * lax.rsqrt(var + EPS) * p["scale"] + p["bias"]
    return y, {"mean": MOMENTUM * s["mean"] + (1 - MOMENTUM) * mean, "var": MOMENTUM * s["var"] + (1 - MOMENTUM) * var}


def raw_forward(p, s, x):
    """The ResNet on the jaxnets model's param and state dicts (plain nested dicts of arrays)."""
    new = {}
    h, new["batch_norm_0"] = _bn(p["batch_norm_0"], s["batch_norm_0"], _conv(x, p["conv_0"]["w"], 1))
    h = jax.nn.relu(h)
    stage = 0
    while f"serial_{stage}" in p:
        bp, bs = p[f"serial_{stage}"]["parallel_0"], s[f"serial_{stage}"]["parallel_0"]
        stride = 1 if stage == 0 else 2
        m, st0 = _bn(bp["serial_0"]["batch_norm_0"], bs["serial_0"]["batch_norm_0"], _conv(h, bp["serial_0"]["conv_0"]["w"], stride))
        m, st1 = _bn(bp["serial_0"]["batch_norm_1"], bs["serial_0"]["batch_norm_1"],
                     _conv(jax.nn.relu(m), bp["serial_0"]["conv_1"]["w"], 1))
        block_state = {"serial_0": {"batch_norm_0": st0, "batch_norm_1": st1}}
        if "serial_1" in bp:
            short, st2 = _bn(bp["serial_1"]["batch_norm_0"], bs["serial_1"]["batch_norm_0"],
                             _conv(h, bp["serial_1"]["conv_0"]["w"], stride))
            block_state["serial_1"] = {"batch_norm_0": st2}
        else:
            short = h
        h = jax.nn.relu(m + short)
        new[f"serial_{stage}"] = {"parallel_0": block_state}
        stage += 1
    return h.mean((1, 2)) @ p["dense_0"]["w"] + p["dense_0"]["b"], new


def raw_step_fn(optimizer):
    def loss_fn(params, state, x, y):
        logits, new_state = raw_forward(params, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    return W.optax_step(loss_fn, optimizer, has_aux=True)


def flax_resnet(size):
    """The same ResNet in flax.linen as its users write it, or None when flax is not installed."""
    try:
        import flax.linen as nn
    except ImportError:
        return None

    def norm():
        return nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)

    class Block(nn.Module):
        channels: int
        stride: int

        @nn.compact
        def __call__(self, x):
            s = (self.stride, self.stride)
            m = nn.relu(norm()(nn.Conv(self.channels, (3, 3), s, use_bias=False)(x)))
            m = norm()(nn.Conv(self.channels, (3, 3), use_bias=False)(m))
            short = x if self.stride == 1 else norm()(nn.Conv(self.channels, (1, 1), s, use_bias=False)(x))
            return nn.relu(m + short)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            channels = size["channels"]
            h = nn.relu(norm()(nn.Conv(channels[0], (3, 3), use_bias=False)(x)))
            for i, c in enumerate(channels):
                h = Block(c, 1 if i == 0 else 2)(h)
            return nn.Dense(size["classes"])(h.mean((1, 2)))

    return ResNet()


def flax_step_fn(module, optimizer):
    def loss_fn(params, stats, x, y):
        logits, new = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

    return W.optax_step(loss_fn, optimizer, has_aux=True)


def draw_fn(batch):
    def draw(key, images, labels):
        i = jax.random.randint(key, (batch,), 0, images.shape[0])
        return images[i], labels[i]

    return draw


def scanned(step, draw, count):
    """``count`` steps of ``step(params, stats, opt_state, x, y)`` in one ``lax.scan``, batch ``i`` from ``fold_in(key, i)``."""
    def run(params, stats, opt_state, key, images, labels):
        def body(carry, i):
            *carry, loss = step(*carry, *draw(jax.random.fold_in(key, i), images, labels))
            return tuple(carry), loss

        (params, stats, opt_state), losses = lax.scan(body, (params, stats, opt_state), jnp.arange(count))
        return params, stats, opt_state, losses.mean()

    return jax.jit(run, donate_argnums=(0, 1, 2))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round of the per-step contenders")
    parser.add_argument("--fused", type=int, default=5, help="steps per call of the fused contenders")
    parser.add_argument("--no-flax", action="store_true", help="leave flax.linen out even where installed")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even where installed")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    rounds, steps, fused = (2, 2, 2) if args.quick else (args.rounds, args.steps, args.fused)

    from jaxnets import count_params, losses, train

    optimizer = optax.sgd(0.1, momentum=0.9)
    ce = losses.softmax_cross_entropy_with_integer_labels
    shape = (size["image"], size["image"], 3)
    images = jax.random.normal(jax.random.key(0), (1024,) + shape)
    labels = jax.random.randint(jax.random.key(1), (1024,), 0, size["classes"])
    draw = draw_fn(size["batch"])
    x, y = draw(jax.random.key(2), images, labels)
    copy = lambda tree: jax.tree_util.tree_map(jnp.copy, tree)  # noqa: E731  (the timed runs donate what they get)

    states = {impl: train.init_train_state(jaxnets_model(size, impl), optimizer, (-1,) + shape, seed=0)
              for impl in ("auto", "xla", "im2col")}
    models = {impl: jaxnets_model(size, impl) for impl in states}
    start = states["auto"]
    raw = raw_step_fn(optimizer)
    raw_step = jax.jit(raw, donate_argnums=(0, 1, 2))
    raw_carry = (copy(start.params), copy(start.model_state), optimizer.init(start.params))
    raw_fused_carry = copy(raw_carry)

    raw_loss = float(jax.jit(raw)(*raw_carry, x, y)[3])
    jn_loss = float(ce(models["auto"].apply_with_state(start.params, start.model_state, x, train=True)[0], y))
    if not math.isclose(raw_loss, jn_loss, rel_tol=1e-5):
        raise AssertionError(f"the raw-JAX ResNet is not the jaxnets ResNet: loss {raw_loss} against {jn_loss}")

    compiled = {}
    raw_step, compiled["raw JAX step"] = W.compile_timed(raw_step, *raw_carry, x, y)
    steps_of = {}
    for impl in states:
        steps_of[impl], compiled[f"jaxnets step, impl={impl!r}"] = W.compile_timed(
            train.make_train_step(models[impl], ce, optimizer), states[impl], x, y)
    fused_starts = {impl: copy(s) for impl, s in states.items()}
    contenders = {"raw JAX step (reference)": W.looped(raw_step, raw_carry, (x, y), steps)}
    contenders.update({f"jaxnets step, impl={impl!r}": W.looped(steps_of[impl], (states[impl],), (x, y), steps)
                       for impl in states})
    module = None if args.no_flax else flax_resnet(size)
    if module is not None:
        variables = module.init(jax.random.key(0), x)
        flax_carry = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))
        flax_fused_carry = copy(flax_carry)
        flax_step, compiled["flax.linen step"] = W.compile_timed(
            jax.jit(flax_step_fn(module, optimizer), donate_argnums=(0, 1, 2)), *flax_carry, x, y)
        contenders["flax.linen step"] = W.looped(flax_step, flax_carry, (x, y), steps)
    torch = None if args.no_torch else _torch.torch_or_none()
    if torch is not None:
        torch_loss, contenders["PyTorch eager step"] = _torch.resnet(start.params, start.model_state, size, x, y,
                                                                     MOMENTUM, EPS, steps)
        if not math.isclose(torch_loss, raw_loss, rel_tol=1e-4):
            raise AssertionError(f"the PyTorch ResNet is not the raw-JAX ResNet: loss {torch_loss} against {raw_loss}")
    per_step = interleaved_medians(contenders, rounds, steps)

    key = jax.random.key(3)
    source = train.Sampler(lambda k, step, data: dict(zip("xy", draw(k, *data))), data=(images, labels))

    def loop_of(impl):
        objective = train.objective_from_loss(models[impl], ce)
        step_fn = train.make_step(lambda p, b, k, s: objective(p, (b["x"], b["y"]), k, s), optimizer, jit=False)

        def run():
            out, _ = train.loop(step_fn, fused_starts[impl], source, steps=fused, steps_per_call=fused, log_every=fused)
            jax.block_until_ready(out)
        return run

    fused_contenders = {"raw JAX, fused (reference)": W.looped(scanned(raw, draw, fused), raw_fused_carry,
                                                               (key, images, labels), 1)}
    fused_contenders.update({f"jaxnets train.loop, impl={impl!r}": loop_of(impl) for impl in states})
    if module is not None:
        fused_contenders["flax.linen, fused"] = W.looped(scanned(flax_step_fn(module, optimizer), draw, fused),
                                                         flax_fused_carry, (key, images, labels), 1)
    fused_times = interleaved_medians(fused_contenders, rounds, fused)

    rows, costs, text = W.step_report(per_step, fused_times, compiled)
    print(f"ResNet {size}, SGD momentum; {count_params(fused_starts['auto'].params):,} params; {steps} steps x {rounds} rounds per "
          f"step, {fused} steps per fused call; backend {jax.default_backend()}; flax {'yes' if module else 'not run'}; "
          f"PyTorch {torch.__version__ + ' eager, ' + str(torch.get_num_threads()) + ' threads' if torch else 'not run'}")
    print(text)
    result = {"benchmark": "resnet", **W.environment(), "size": size, "rounds": rounds, "steps_per_round": steps,
              "fused_steps": fused, "quick": args.quick, "rows": rows, "xla_cost": costs,
              "initial_loss": {"raw": raw_loss, "jaxnets": jn_loss},
              "torch": torch.__version__ if torch else None}
    write_results(args.out, "resnet", result, text)
    return result


if __name__ == "__main__":
    main()
