"""A training run for tests/test_checkpoint.py to kill and resume: ``python checkpoint_child.py CKPT OUT KILL``.

KILL is ``none`` (train to the end and write OUT/result.npz and OUT/history.json),
``epoch:K`` (SIGKILL itself after epoch K's results reached the host, before its checkpoint),
or ``save:K`` (SIGKILL itself while the asynchronous save of epoch K is in flight).
"""

import json
import os
import signal
import sys

import jax
import numpy as np
import optax

import jaxnets
import jaxnets.layers as L
from jaxnets import checkpoint, data, losses

EPOCHS = 6


def main(ckpt, out, kill):
    digits = data.load_digits()
    subset = (digits.x_train[:512], digits.y_train[:512])
    model = L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10))
    hooks = []
    mode, _, at = kill.partition(":")
    if mode == "epoch":
        hooks.append(lambda p: os.kill(os.getpid(), signal.SIGKILL) if p.epoch == int(at) else None)
    if mode == "save":
        original = checkpoint.Checkpoints.save

        def save(self, epoch, *args, **kwargs):
            if epoch == int(at):
                self.wait()  # the previous save is on disk: the kill below must leave it readable
                kwargs["final"] = True  # taken, though the writer rests after that save (a mid-run save would be skipped)
            taken = original(self, epoch, *args, **kwargs)
            if epoch == int(at):
                os.kill(os.getpid(), signal.SIGKILL)  # the save is still being written in the background
            return taken

        checkpoint.Checkpoints.save = save
    state, history = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, optax.adam(1e-3), subset,
                                 test=(digits.x_test, digits.y_test), epochs=EPOCHS, batch_size=64, seed=3,
                                 checkpoint_dir=ckpt, checkpoint_keep=2, hooks=hooks, progress=False, verbose=True)
    leaves = jax.tree_util.tree_leaves((state.params, state.opt_state, state.step, jax.random.key_data(state.key)))
    os.makedirs(out, exist_ok=True)
    np.savez(os.path.join(out, "result.npz"), *[np.asarray(leaf) for leaf in leaves])
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({k: v for k, v in history.items() if k != "time"}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
