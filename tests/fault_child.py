"""A run for tests/test_faults.py to SIGKILL and resume: ``python fault_child.py KIND CKPT OUT``.

KIND is ``epochs`` (fit on digits by epochs), ``steps`` (an iteration-based language model on the general loop, a
Sampler of random windows) or ``gan`` (two networks, two optimizers, BatchNorm in both, one dict state). Each call
of the loop checkpoints and prints ``step N``; a finished run writes OUT/result.npz and OUT/history.json.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnets
import jaxnets.layers as L
from jaxnets import checkpoint, data, losses, train

CE = losses.softmax_cross_entropy_with_integer_labels


def announce(progress):
    print(f"step {progress.step}", flush=True)
    time.sleep(0.05)  # a run long enough for a kill at a random moment to land inside it


def run_epochs(ckpt):
    digits = data.load_digits()
    model = L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10))
    return jaxnets.fit(model, CE, optax.adam(1e-3), (digits.x_train[:384], digits.y_train[:384]),
                       test=(digits.x_test[:128], digits.y_test[:128]), epochs=8, seed=3,
                       callbacks=[announce, checkpoint.Checkpoint(ckpt, keep=2)])


def run_steps(ckpt):
    corpus = jnp.asarray(np.random.default_rng(0).integers(0, 12, 2000), jnp.int32)

    def windows(key, step, corpus):
        start = jax.random.randint(key, (16,), 0, corpus.shape[0] - 9)
        tokens = corpus[start[:, None] + jnp.arange(9)]
        return {"x": tokens[:, :-1], "y": tokens[:, 1:]}

    model = L.serial(L.Embedding(12, 16), L.Dropout(0.1), L.Dense(12))
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=optax.cosine_decay_schedule(3e-3, 60))

    def objective(params, batch, key, model_state):
        return CE(model.apply(params, batch["x"], key=key, train=True), batch["y"]), {}

    state = train.init_train_state(model, opt, (-1, 8), seed=1)
    return train.loop(train.make_step(objective, opt, jit=False), state, train.Sampler(windows, data=corpus),
                      steps=60, steps_per_call=5, callbacks=[announce, checkpoint.Checkpoint(ckpt)])


def run_gan(ckpt):
    gen = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dense(2))
    disc = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dense(1))
    g_opt, d_opt = optax.adam(1e-3), optax.sgd(0.05, momentum=0.9)
    bce = optax.sigmoid_binary_cross_entropy

    def d_objective(params, batch, key, model_state):
        logits, new = disc.apply_with_state(params, model_state, jnp.concatenate([batch["real"], batch["fake"]]), train=True)
        return bce(logits[:, 0], jnp.concatenate([jnp.ones(16), jnp.zeros(16)])).mean(), {"model_state": new}

    def g_objective(params, batch, key, model_state):
        fake, new = gen.apply_with_state(params, model_state, batch["noise"], train=True)
        logits, d_state = disc.apply_with_state(batch["d_params"], batch["d_state"], fake, train=True)
        return bce(logits[:, 0], jnp.ones(16)).mean(), {"model_state": new, "fake": fake, "d_state": d_state}

    g_step, d_step = train.make_step(g_objective, g_opt, jit=False), train.make_step(d_objective, d_opt, jit=False)

    def gan_step(state, batch):
        g, d = state["gen"], state["disc"]
        g, g_out = g_step(g, {"noise": batch["noise"], "d_params": d.params, "d_state": d.model_state})
        d = d._replace(model_state=g_out.pop("d_state"))
        d, d_out = d_step(d, {"real": batch["real"], "fake": jax.lax.stop_gradient(g_out.pop("fake"))})
        return {"gen": g, "disc": d}, {"g_loss": g_out["loss"], "d_loss": d_out["loss"]}

    def sample(key, step):
        k1, k2 = jax.random.split(key)
        return {"noise": jax.random.normal(k1, (16, 3)), "real": 1.0 + 0.3 * jax.random.normal(k2, (16, 2))}

    state = {"gen": train.init_train_state(gen, g_opt, (-1, 3), seed=1),
             "disc": train.init_train_state(disc, d_opt, (-1, 2), seed=2)}
    return train.loop(gan_step, state, train.Sampler(sample), steps=50, steps_per_call=5, key=jax.random.key(4),
                      watch=("g_loss", "d_loss"), callbacks=[announce, checkpoint.Checkpoint(ckpt)])


def main(kind, ckpt, out):
    state, history = {"epochs": run_epochs, "steps": run_steps, "gan": run_gan}[kind](ckpt)
    leaves = [jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf
              for leaf in jax.tree_util.tree_leaves(state)]
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "result.npz"), *[np.asarray(leaf) for leaf in leaves])
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({k: v for k, v in history.items() if k != "time"}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
