"""The stax VAE (``examples/mnist_vae.py``) on jaxnets and digits: an objective, a per-batch transform, a random evaluation.

    python experiments/stax_vae.py            # defaults below
    python experiments/stax_vae.py --quick    # 2 epochs: checks the script

jax's example trains a variational autoencoder on MNIST: an encoder
``Dense(512), Softplus, Dense(512), Softplus, FanOut(2), parallel(Dense(10),
serial(Dense(10), Softplus))`` giving the mean and variance of a 10-d
Gaussian latent, a decoder ``Dense(512), Softplus, Dense(512), Softplus,
Dense(784)`` giving Bernoulli logits, the ELBO as the objective (one
reparameterised sample per image), every batch binarised afresh
(``bernoulli(key, images)``), Adam 1e-3, batch 32, 100 epochs, and a test
ELBO that is itself random (binarisation and sample). Here the same
networks (with 64 pixels) train with ``jaxnets.fit``: the ELBO is an
``objective`` over a params dict holding both networks, the binarisation a
``transform`` run inside the fused epoch, and the test ELBO an
``eval_objective`` that gets its own key. A hook logs each epoch.

Writes to ``--out`` (default ``runs/stax_vae``), all at once:
``metrics.json`` (config, versions, history, the test ELBO under 5
evaluation keys) and ``vae.png`` (ELBO per epoch; digits sampled from the prior).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, run_folder, run_record, save_figure, write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    hidden: int = 512  # the example's widths
    latent: int = 10
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 100
    seed: int = 0
    out: str = "runs/stax_vae"
    quick: bool = False
    progress: bool = False


def build(config: Config):
    import jaxnets.layers as L

    encoder = L.serial(L.Dense(config.hidden), L.Softplus(), L.Dense(config.hidden), L.Softplus(), L.FanOut(2),
                       L.parallel(L.Dense(config.latent), L.serial(L.Dense(config.latent), L.Softplus())))
    decoder = L.serial(L.Dense(config.hidden), L.Softplus(), L.Dense(config.hidden), L.Softplus(), L.Dense(64))
    return encoder, decoder


def objectives(encoder, decoder):
    """The negative ELBO per image as an objective, the binarising transform, and the random test objective."""
    import jax
    import jax.numpy as jnp

    def negative_elbo(params, batch, key, model_state):
        images = batch["image"]
        mu, sigmasq = encoder.apply(params["encoder"], images)
        z = mu + jnp.sqrt(sigmasq) * jax.random.normal(key, mu.shape)  # one reparameterised sample per image
        logits = decoder.apply(params["decoder"], z)
        log_px = -jnp.sum(jnp.logaddexp(0.0, jnp.where(images > 0.5, -1.0, 1.0) * logits))  # Bernoulli log-likelihood
        kl = -0.5 * jnp.sum(1.0 + jnp.log(sigmasq) - mu ** 2 - sigmasq)
        n = images.shape[0]
        return -(log_px - kl) / n, {"kl": kl / n}

    def binarise(key, batch):
        return {"image": jax.random.bernoulli(key, batch["image"]).astype(batch["image"].dtype)}

    def test_objective(params, batch, key, model_state):  # random: a fresh binarisation and latent sample
        binarise_key, sample_key = jax.random.split(key)
        return negative_elbo(params, binarise(binarise_key, batch), sample_key, model_state)

    return negative_elbo, binarise, test_objective


def main(argv=None) -> dict:
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, epochs=2, hidden=64)
    import jax
    import numpy as np
    import optax

    import jaxnets
    from jaxnets import data

    digits = data.load_digits(standardize=False)
    train_images = {"image": (digits.x_train / 16.0).astype(np.float32)}  # pixel intensities in [0, 1]
    test_images = {"image": (digits.x_test / 16.0).astype(np.float32)}
    encoder, decoder = build(config)
    negative_elbo, binarise, test_objective = objectives(encoder, decoder)
    k_enc, k_dec, k_train, k_samples = jax.random.split(jax.random.key(config.seed), 4)
    params = {"encoder": encoder.init(k_enc, (-1, 64))[1], "decoder": decoder.init(k_dec, (-1, config.latent))[1]}
    optimizer = optax.adam(config.learning_rate)
    started = time.perf_counter()

    def log(progress):
        m = progress.metrics
        print(f"epoch {progress.epoch:3d}  train ELBO {-m['train_loss']:8.3f}  test ELBO {-m['test_loss']:8.3f}  "
              f"({time.perf_counter() - started:.1f} s)", flush=True)

    state, history = jaxnets.fit(None, optimizer=optimizer, data=train_images, test=test_images,
                                 objective=negative_elbo, eval_objective=test_objective, transform=binarise,
                                 state=jaxnets.TrainState.create(params, optimizer, key=k_train),
                                 epochs=config.epochs, batch_size=config.batch_size, callbacks=[log, jaxnets.train.ProgressBar(enabled=config.progress)])
    draws = [-jaxnets.evaluate(None, state.params, test_images, objective=test_objective, key=jax.random.key(i))["loss"]
             for i in range(5)]
    samples = jax.nn.sigmoid(decoder.apply(state.params["decoder"], jax.random.normal(k_samples, (100, config.latent))))
    result = {**run_record(config), "final_test_elbo": -history["test_loss"][-1],
              "test_elbo_over_5_keys": {"mean": float(np.mean(draws)), "std": float(np.std(draws)), "values": draws},
              "seconds": time.perf_counter() - started, "history": history}
    with run_folder(config.out) as folder:
        write_json_atomic(os.path.join(folder, "metrics.json"), result)
        plot(history, np.asarray(samples), os.path.join(folder, "vae.png"))
    print(f"test ELBO {result['test_elbo_over_5_keys']['mean']:.3f} +- {result['test_elbo_over_5_keys']['std']:.3f} "
          f"nats per image (5 evaluation keys)")
    return result


def plot(history: dict, samples, path: str) -> bool:
    import numpy as np

    plt = pyplot()
    if plt is None:
        return False
    fig, (ax_elbo, ax_img) = plt.subplots(1, 2, figsize=(10, 4.5))
    ax_elbo.plot(history["epoch"], [-v for v in history["train_loss"]], label="train (binarised afresh each batch)")
    ax_elbo.plot(history["epoch"], [-v for v in history["test_loss"]], label="test (random evaluation)")
    ax_elbo.set(xlabel="epoch", ylabel="ELBO (nats per image)", title="ELBO")
    ax_elbo.grid(alpha=0.3)
    ax_elbo.legend()
    tiles = np.pad(samples.reshape(10, 10, 8, 8), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=1.0)  # a white frame each
    grid = tiles.transpose(0, 2, 1, 3).reshape(100, 100)  # 10x10 tiles of 10x10
    ax_img.imshow(grid, cmap="gray")
    ax_img.set(title="decoded samples from the prior (means)", xticks=[], yticks=[])
    save_figure(plt, fig, path)
    return True


if __name__ == "__main__":
    main()
