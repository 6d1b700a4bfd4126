"""A DCGAN on scikit-learn's 8x8 digits: two networks with BatchNorm, two optimizers, one fused program on the loop.

    python experiments/dcgan_digits.py
    python experiments/dcgan_digits.py --quick     # a few epochs, to check the script runs

Data: the training split of ``jaxnets.data.load_digits(as_images=True)``
(1,437 images, NHWC ``(8, 8, 1)``), pixels 0..16 mapped to ``[-1, 1]``.

Networks (DCGAN's arrangement, sized for 8x8):

* generator ``z (latent,) -> Dense(4*4*2c) -> BatchNorm -> ReLU -> Reshape(4, 4, 2c)
  -> ConvTranspose(c, 4x4, stride 2) -> BatchNorm -> ReLU -> Conv(1, 3x3) -> tanh`` (8x8x1);
* discriminator ``Conv(c, 3x3, stride 2) -> LeakyReLU(0.2) -> Conv(2c, 3x3, stride 2)
  -> BatchNorm -> LeakyReLU(0.2) -> Flatten -> Dense(1)`` (a logit).

Training, all on :func:`jaxnets.train.loop` (no hand-written loop): the
state is ``{"generator": TrainState, "discriminator": TrainState}``, each
with its own Adam and its BatchNorm statistics; one step is two
:func:`jaxnets.train.make_step` steps in turn (the discriminator on real and
generated images, then the generator, non-saturating loss, against the
discriminator's *new* params), and :func:`jaxnets.train.with_ema` keeps a
moving average of the generator's params inside the same compiled step.
Batches come from :class:`jaxnets.train.ArraySource` (shuffled epochs); the
noise is drawn on the device from each state's step key.

Reported: losses per epoch, a sample grid (real, generator, EMA generator),
and a classifier score of the samples: a logistic regression trained on the
labelled training digits gives ``p(y | x)``; the score is
``exp(E_x KL(p(y|x) || p(y)))`` (an Inception-score analogue: 10 at best,
1 for samples the classifier cannot tell apart), beside its value on the
held-out real digits and on noise. Also measured, interleaved in the same
process: steps per second of the loop against the same step as a hand loop
of jitted steps. Writes ``metrics.json``, ``samples.png`` and ``losses.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved_medians, parse_config, pyplot, require_positive, run_record, save_figure, \
    write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    # model
    latent: int = 32  # noise dimensions
    channels: int = 32  # c: the generator's last and the discriminator's first convolution
    bn_momentum: float = 0.9  # BatchNorm's running statistics (weight of the old value)
    # optimisation (DCGAN's Adam)
    learning_rate: float = 5e-4
    beta1: float = 0.5
    batch_size: int = 64
    epochs: int = 100
    ema_decay: float = 0.99
    epochs_per_call: int = 5  # epochs fused per host round-trip
    # evaluation
    samples: int = 500  # generated images scored by the classifier
    # speed: loop vs hand loop of jitted steps, interleaved (each times one call of the run)
    timing_rounds: int = 3
    # run
    seed: int = 0
    quick: bool = False
    out: str = "runs/dcgan_digits"


QUICK = dict(channels=8, epochs=4, epochs_per_call=2, samples=100, timing_rounds=1)


def build(config):
    import jaxnets.layers as L

    c = config.channels
    gen = L.serial(L.Dense(4 * 4 * 2 * c), L.BatchNorm(momentum=config.bn_momentum), L.Relu(), L.Reshape((4, 4, 2 * c)),
                   L.ConvTranspose(c, (4, 4), strides=2), L.BatchNorm(momentum=config.bn_momentum), L.Relu(),
                   L.Conv(1, (3, 3)), L.Tanh())
    disc = L.serial(L.Conv(c, (3, 3), strides=2), L.LeakyRelu(0.2), L.Conv(2 * c, (3, 3), strides=2),
                    L.BatchNorm(momentum=config.bn_momentum), L.LeakyRelu(0.2), L.Flatten(), L.Dense(1))
    return gen, disc


def classifier_score(probs):
    """``exp(mean KL(p(y|x) || p(y)))`` of class probabilities ``(n, 10)``."""
    import numpy as np

    p = np.clip(probs, 1e-12, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def grid(images, rows: int, cols: int):
    """``(rows*cols, 8, 8, 1)`` in [-1, 1] as one ``(rows*9-1, cols*9-1)`` picture, a blank line between digits."""
    import numpy as np

    out = np.full((rows * 9 - 1, cols * 9 - 1), np.nan)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        out[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = images[i, :, :, 0]
    return out


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, **{k: v for k, v in QUICK.items()
                                                if getattr(config, k) == getattr(Config, k)})
    require_positive(config, "latent", "channels", "bn_momentum", "learning_rate", "beta1", "batch_size", "epochs",
                     "epochs_per_call", "samples", allow_zero=("ema_decay", "timing_rounds"))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from sklearn.linear_model import LogisticRegression

    import jaxnets
    from jaxnets import data, train

    digits = data.load_digits(as_images=True, standardize=False, seed=config.seed)
    images = (digits.x_train / 8.0 - 1.0).astype(np.float32)  # 0..16 -> [-1, 1]
    held_out = (digits.x_test / 8.0 - 1.0).astype(np.float32)
    source = train.ArraySource(images, config.batch_size, drop_last=True)
    spe = source.steps_per_epoch
    print(f"data: {len(images)} training digits of {images.shape[1:]}, {spe} steps of {config.batch_size} per epoch")

    # ---- two networks, two optimizers, one step ----
    gen, disc = build(config)
    g_opt = optax.adam(config.learning_rate, b1=config.beta1)
    d_opt = optax.adam(config.learning_rate, b1=config.beta1)
    bce = optax.sigmoid_binary_cross_entropy
    b = config.batch_size

    def d_objective(params, batch, key, model_state):
        # real and generated images in separate batches (as DCGAN does): BatchNorm's batch statistics of a
        # generated batch are then the same here and in the generator's step
        real, state = disc.apply_with_state(params, model_state, batch["real"], train=True)
        fake, state = disc.apply_with_state(params, state, batch["fake"], train=True)
        loss = bce(real[:, 0], jnp.ones(b)).mean() + bce(fake[:, 0], jnp.zeros(b)).mean()
        return loss, {"model_state": state, "d_real": jax.nn.sigmoid(real).mean(), "d_fake": jax.nn.sigmoid(fake).mean()}

    def g_objective(params, batch, key, model_state):
        noise = jax.random.normal(key, (b, config.latent))
        fake, g_state = gen.apply_with_state(params, model_state, noise, train=True)
        logits, d_state = disc.apply_with_state(batch["d_params"], batch["d_state"], fake, train=True)
        return bce(logits[:, 0], jnp.ones(b)).mean(), {"model_state": g_state, "d_state": d_state}

    d_step = train.make_step(d_objective, d_opt, jit=False)
    g_step = train.make_step(g_objective, g_opt, jit=False)

    def gan_step(state, real):
        g, d = state["generator"], state["discriminator"]
        noise = jax.random.normal(jax.random.fold_in(train.model_key(g), 1), (b, config.latent))
        fake, _ = gen.apply_with_state(g.params, g.model_state, noise, train=True)  # statistics move in the G step
        d, d_metrics = d_step(d, {"real": real, "fake": jax.lax.stop_gradient(fake)})
        g, g_metrics = g_step(g, {"d_params": d.params, "d_state": d.model_state})  # against D's new params
        d = d._replace(model_state=g_metrics.pop("d_state"))  # D's statistics moved on the G step's fakes
        return {"generator": g, "discriminator": d}, {"d_loss": d_metrics["loss"], "g_loss": g_metrics["loss"],
                                                      "d_real": d_metrics["d_real"], "d_fake": d_metrics["d_fake"]}

    def generator_params(s):
        return s["generator"].params

    step = train.with_ema(gan_step, config.ema_decay, of=generator_params)
    g_key, d_key, data_key, sample_key = jax.random.split(jax.random.key(config.seed), 4)
    fresh = train.ema_state({"generator": train.init_train_state(gen, g_opt, (-1, config.latent), key=g_key),
                             "discriminator": train.init_train_state(disc, d_opt, (-1, 8, 8, 1), key=d_key)},
                            of=generator_params)
    counts = {n: jaxnets.count_params(fresh.state[n].params) for n in ("generator", "discriminator")}
    print(f"generator {counts['generator']:,} params, discriminator {counts['discriminator']:,} params")

    per_call = config.epochs_per_call * spe
    t_train = time.perf_counter()
    state, history = train.loop(step, fresh, source, epochs=config.epochs, steps_per_call=min(per_call, config.epochs * spe),
                                log_every=spe, key=data_key, watch=("d_loss", "g_loss"))
    train_seconds = time.perf_counter() - t_train
    history = dict(history)
    print("epoch  d_loss  g_loss  D(real)  D(fake)")
    for i in range(0, len(history["epoch"]), max(1, len(history["epoch"]) // 10)):
        print(f"{history['epoch'][i]:5d}  {history['train_d_loss'][i]:6.3f}  {history['train_g_loss'][i]:6.3f}  "
              f"{history['train_d_real'][i]:7.3f}  {history['train_d_fake'][i]:7.3f}")

    # ---- samples (evaluation mode: the running statistics) and their classifier score ----
    g = state.state["generator"]
    z = jax.random.normal(sample_key, (config.samples, config.latent))
    raw = np.asarray(gen.apply_with_state(g.params, g.model_state, z, train=False)[0])
    ema = np.asarray(gen.apply_with_state(state.ema, g.model_state, z, train=False)[0])
    classifier = LogisticRegression(max_iter=2000).fit(images.reshape(len(images), -1), digits.y_train)
    noise = np.random.default_rng(config.seed).uniform(-1, 1, held_out.shape).astype(np.float32)
    scores = {name: classifier_score(classifier.predict_proba(x.reshape(len(x), -1)))
              for name, x in (("real_held_out", held_out), ("generator", raw), ("ema_generator", ema), ("noise", noise))}
    accuracy = float(classifier.score(held_out.reshape(len(held_out), -1), digits.y_test))
    print("classifier score (10 at best): " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
          + f"  (the classifier's held-out accuracy {accuracy:.3f})")

    # ---- speed: the loop against a hand loop of jitted steps, interleaved ----
    speed = None
    if config.timing_rounds:
        timed = min(per_call, config.epochs * spe)  # one call of the training run: its program is already compiled
        order = source.inputs(source.data, None, data_key, jnp.int32(0), jnp.int32(0), timed)  # the loop's batches

        @jax.jit
        def by_hand_step(s, x, order, t):
            return step(s, x[order[t]])

        def looped():
            s, _ = train.loop(step, fresh, source, steps=timed, steps_per_call=timed, log_every=spe, key=data_key,
                              watch=("d_loss", "g_loss"))  # the training run's program: nothing recompiles
            jax.block_until_ready(s)

        def by_hand():
            s = jax.tree_util.tree_map(jnp.copy, fresh)
            for t in range(timed):
                s, metrics = by_hand_step(s, source.data, order, jnp.int32(t))
            jax.block_until_ready(s)

        medians = interleaved_medians({"loop": looped, "hand_loop": by_hand}, config.timing_rounds, timed)
        speed = {"loop_steps_per_second": 1 / medians["loop"], "hand_loop_steps_per_second": 1 / medians["hand_loop"],
                 "loop_over_hand_loop": medians["hand_loop"] / medians["loop"], "steps_per_run": timed,
                 "rounds": config.timing_rounds, "note": "medians of interleaved rounds"}
        print(f"speed: loop {speed['loop_steps_per_second']:.1f} steps/s, hand loop of jitted steps "
              f"{speed['hand_loop_steps_per_second']:.1f} steps/s (loop / hand = {speed['loop_over_hand_loop']:.2f}x)")

    # ---- figures and numbers ----
    os.makedirs(config.out, exist_ok=True)
    plotted = False
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
        panels = (("real (training digits)", images), (f"generator (score {scores['generator']:.2f})", raw),
                  (f"EMA of the generator (score {scores['ema_generator']:.2f})", ema))
        for ax, (title, pictures) in zip(axes, panels):
            ax.imshow(grid(pictures, 8, 8), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.axis("off")
        save_figure(plt, fig, os.path.join(config.out, "samples.png"))
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("train_d_loss", "train_g_loss"):
            ax.plot(history["epoch"], history[name], label=name.replace("train_", ""))
        ax.set(xlabel="epoch", ylabel="binary cross-entropy (mean over the epoch's steps)", title="DCGAN on digits")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(plt, fig, os.path.join(config.out, "losses.png"))
        plotted = True
    moved = {n: float(np.abs(np.asarray(jax.tree_util.tree_leaves(state.state[n].model_state)[0])).max())
             for n in ("generator", "discriminator")}
    record = {**run_record(config), "num_params": counts, "steps": int(state.state["generator"].step),
              "train_seconds": train_seconds, "classifier_scores": scores, "classifier_accuracy": accuracy,
              "sample_range": [float(min(raw.min(), ema.min())), float(max(raw.max(), ema.max()))],
              "sample_shape": list(ema.shape), "batchnorm_mean_moved": moved, "speed": speed, "plotted": plotted,
              "history": history, "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}" + (", samples.png, losses.png" if plotted else ""))
    return record


if __name__ == "__main__":
    main()
