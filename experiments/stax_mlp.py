"""The stax MLP classifier (``examples/mnist_classifier.py``) on jaxnets and digits, with fit's hooks.

    python experiments/stax_mlp.py            # defaults below
    python experiments/stax_mlp.py --quick    # 2 epochs: checks the script

jax's example trains ``Dense(1024), Relu, Dense(1024), Relu, Dense(10),
LogSoftmax`` with SGD and momentum 0.9 in batches of 128, printing train and
test accuracy after each epoch from a hand-written loop. Here the same
network is one ``jaxnets.serial`` and the loop is ``jaxnets.fit``: a hook
prints the example's per-epoch line, another stops early when the test
loss has not improved for ``patience`` epochs, and the history is appended
to a JSON-lines file as it comes. The digits images are 8x8 (64 inputs);
with 1,437 training images an epoch is 12 steps, so the learning rate is
larger than the example's 0.001 and there are more epochs.

Writes to ``--out`` (default ``runs/stax_mlp``), all at once:
``metrics.json``, ``history.jsonl`` and ``curves.png``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, plot_history, run_folder, run_record, write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    hidden: int = 1024  # the example's width
    learning_rate: float = 0.01
    momentum: float = 0.9  # the example's momentum_mass
    batch_size: int = 128  # the example's batch size
    epochs: int = 60
    patience: int = 10  # early stopping on the test loss
    seed: int = 0
    out: str = "runs/stax_mlp"
    quick: bool = False
    progress: bool = False


def main(argv=None) -> dict:
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, epochs=2, hidden=128)
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import data, losses, train

    digits = data.load_digits()
    model = L.serial(L.Dense(config.hidden), L.Relu(), L.Dense(config.hidden), L.Relu(), L.Dense(10))
    started = time.perf_counter()

    def report(progress):  # the example's per-epoch line
        m = progress.metrics
        print(f"Epoch {progress.epoch} in {time.perf_counter() - started:0.2f} sec")
        print(f"Training set accuracy {m['train_accuracy']:.4f}")
        print(f"Test set accuracy {m['test_accuracy']:.4f}", flush=True)

    with run_folder(config.out) as folder:
        state, history = jaxnets.fit(
            model, losses.softmax_cross_entropy_with_integer_labels,
            optax.sgd(config.learning_rate, momentum=config.momentum), digits, epochs=config.epochs,
            batch_size=config.batch_size, seed=config.seed,
            callbacks=[report, train.EarlyStopping("test_loss", patience=config.patience),
                       train.ProgressBar(enabled=config.progress)],
            history_file=os.path.join(folder, "history.jsonl"))
        result = {**run_record(config), "epochs_run": len(history["epoch"]),
                  "final_test_accuracy": history["test_accuracy"][-1], "best_test_accuracy": max(history["test_accuracy"]),
                  "num_params": jaxnets.count_params(state.params), "history": history}
        write_json_atomic(os.path.join(folder, "metrics.json"), result)
        plot_history(history, os.path.join(folder, "curves.png"), f"stax MLP classifier on digits (seed {config.seed})")
    print(f"stopped after {result['epochs_run']} epochs; final test accuracy {result['final_test_accuracy']:.4f}")
    return result


if __name__ == "__main__":
    main()
