"""DP-SGD on digits: the stax example ``differentially_private_sgd.py`` on jaxnets, with a privacy accountant.

    python experiments/dp_sgd.py            # defaults below
    python experiments/dp_sgd.py --quick    # 2 epochs: checks the script

jax's ``examples/differentially_private_sgd.py`` trains a small CNN on MNIST
with per-example gradients clipped to ``l2_norm_clip`` and Gaussian noise
of ``noise_multiplier * l2_norm_clip`` added to their sum, plain SGD, and
reports the privacy spent (epsilon at ``delta``) with an RDP accountant.
Here the same network shape (two strided convolutions with max-pools, a
dense layer) runs on the 8x8 digits with ``jaxnets.fit`` and
``gradient=per_example.dp_gradient(...)``; a hook computes epsilon after
every epoch with dp-accounting's RDP accountant (``jaxnets.privacy``, the
``privacy`` extra) and the history goes to a JSON-lines file as it comes.
At the end, epsilon of the whole run is also computed with dp-accounting's
PLD accountant (tighter) and with the hand-written RDP accountant of
``_privacy.py`` (a teaching example: the same RDP, converted to epsilon by
the older, looser bound of Mironov 2017). The same model trained without
privacy is the reference.

Writes to ``--out`` (default ``runs/dp_sgd``), all at once: ``metrics.json``
(config, versions, both histories, epsilon per epoch, the final epsilon by
each accountant), ``history.jsonl`` and ``privacy.png`` (test accuracy
against epsilon, and per epoch).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, require_positive, run_folder, run_record, save_figure, write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    # privacy (the stax example's values)
    l2_norm_clip: float = 1.0
    noise_multiplier: float = 1.1
    delta: float = 1e-5
    # optimisation: plain SGD on full batches (drop_last), as in the original
    learning_rate: float = 0.15
    batch_size: int = 64
    epochs: int = 30
    # run
    seed: int = 0
    out: str = "runs/dp_sgd"
    quick: bool = False
    progress: bool = False


def build():
    import jaxnets.layers as L

    # The stax example's CNN (Conv 16 8x8/2, MaxPool 2/1, Conv 32 4x4/2, MaxPool 2/1, Dense 32, Dense 10), scaled to 8x8 inputs.
    return L.serial(L.Conv2D(16, 3, strides=1, padding="SAME"), L.Relu(), L.MaxPool(2, strides=1),
                    L.Conv2D(32, 3, strides=2, padding="VALID"), L.Relu(), L.MaxPool(2, strides=1),
                    L.Flatten(), L.Dense(32), L.Relu(), L.Dense(10))


def main(argv=None) -> dict:
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, epochs=2)
    import optax

    import _privacy

    import jaxnets
    from jaxnets import data, losses, per_example, privacy, train

    require_positive(config, "l2_norm_clip", "noise_multiplier", "epochs")
    digits = data.load_digits(as_images=True)
    n = digits.x_train.shape[0]
    steps_per_epoch = n // config.batch_size
    q = config.batch_size / n
    model = build()
    ce = losses.softmax_cross_entropy_with_integer_labels
    spent = []

    def account(progress):  # a hook: the privacy spent after each epoch (dp-accounting's RDP), and a log line
        eps = privacy.epsilon(config.noise_multiplier, q, progress.epoch * steps_per_epoch, config.delta)
        spent.append(eps)
        print(f"epoch {progress.epoch:3d}  test accuracy {progress.metrics['test_accuracy']:.4f}  "
              f"epsilon {eps:.3f} (delta {config.delta:g}, RDP)", flush=True)

    started = time.perf_counter()
    with run_folder(config.out) as folder:
        state, history = jaxnets.fit(model, ce, optax.sgd(config.learning_rate), digits, epochs=config.epochs,
                                     batch_size=config.batch_size, drop_last=True, seed=config.seed,
                                     gradient=per_example.dp_gradient(config.l2_norm_clip, config.noise_multiplier),
                                     callbacks=[account, train.HistoryFile(os.path.join(folder, "history.jsonl")),
                                                train.ProgressBar(enabled=config.progress)])
        _, plain = jaxnets.fit(model, ce, optax.sgd(config.learning_rate), digits, epochs=config.epochs,
                               batch_size=config.batch_size, drop_last=True, seed=config.seed, callbacks=[])
        steps = config.epochs * steps_per_epoch
        final = {"rdp": spent[-1],
                 "pld": privacy.epsilon(config.noise_multiplier, q, steps, config.delta, accountant="pld"),
                 "hand_written_rdp": _privacy.epsilon(q, config.noise_multiplier, steps, config.delta)[0]}
        result = {**run_record(config), "sampling_rate": q, "steps": steps,
                  "epsilon": spent, "final_epsilon": spent[-1], "final_epsilon_by_accountant": final,
                  "final_test_accuracy": history["test_accuracy"][-1],
                  "non_private_test_accuracy": plain["test_accuracy"][-1], "history": history,
                  "non_private_history": plain, "seconds": time.perf_counter() - started}
        write_json_atomic(os.path.join(folder, "metrics.json"), result)
        plot(result, os.path.join(folder, "privacy.png"))
    final = result["final_epsilon_by_accountant"]
    print(f"DP-SGD: test accuracy {result['final_test_accuracy']:.4f} at epsilon {final['rdp']:.2f} (RDP), "
          f"{final['pld']:.2f} (PLD), delta {config.delta:g} (dp-accounting; the hand-written RDP accountant's "
          f"older conversion gives {final['hand_written_rdp']:.2f}); without privacy {result['non_private_test_accuracy']:.4f}")
    return result


def plot(result: dict, path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax_eps, ax_epoch) = plt.subplots(1, 2, figsize=(10, 4))
    ax_eps.plot(result["epsilon"], result["history"]["test_accuracy"], marker=".")
    ax_eps.set(xlabel=f"epsilon (delta {result['config']['delta']:g})", ylabel="test accuracy", title="privacy spent")
    epochs = result["history"]["epoch"]
    ax_epoch.plot(epochs, result["history"]["test_accuracy"], label="DP-SGD")
    ax_epoch.plot(epochs, result["non_private_history"]["test_accuracy"], label="SGD, no privacy")
    ax_epoch.set(xlabel="epoch", ylabel="test accuracy", title="accuracy per epoch")
    for ax in (ax_eps, ax_epoch):
        ax.grid(alpha=0.3)
    ax_epoch.legend()
    save_figure(plt, fig, path)
    return True


if __name__ == "__main__":
    main()
