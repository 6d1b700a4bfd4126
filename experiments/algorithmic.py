"""Algorithmic tasks for a small Transformer: reverse and sort a sequence of digits.

    python experiments/algorithmic.py
    python experiments/algorithmic.py --quick

Each example is ``length`` random digits (0-9); the target at position t is
the t-th digit of the reversed (``reverse``) or sorted (``sort``) sequence.
Both need every position to look at others: reversing reads position
``length - 1 - t`` (a pattern of positions only), sorting must count, for
each position, how many digits are smaller (content-based attention).

Model (bidirectional, no mask): ``Embedding -> PositionalEmbedding ->
TransformerBlock x layers -> LayerNorm -> Dense(10)``, trained with
``jaxnets.fit`` (Adam, per-position cross-entropy) on ``train_size`` fresh
random sequences; evaluated on ``test_size`` others. Reported: per-position
accuracy and *sequence* accuracy (every digit right). Writes ``metrics.json``
and ``accuracy.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, run_record, save_figure, write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    tasks: str = "reverse,sort"
    length: int = 8
    train_size: int = 20000
    test_size: int = 2000
    width: int = 64
    heads: int = 4
    layers: int = 2
    learning_rate: float = 3e-3
    batch_size: int = 128
    epochs: int = 12
    seed: int = 0
    quick: bool = False
    out: str = "runs/algorithmic"


def make_task(name: str, n: int, length: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, (n, length)).astype(np.int32)
    y = x[:, ::-1].copy() if name == "reverse" else np.sort(x, axis=1)
    return x, y.astype(np.int32)


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, train_size=512, test_size=128, epochs=1, width=32, heads=2, layers=1)
    tasks = [t for t in config.tasks.split(",") if t]
    unknown = sorted(set(tasks) - {"reverse", "sort"})
    if unknown:
        raise ValueError(f"tasks must be among reverse, sort; got {unknown}")
    import jax.numpy as jnp
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import losses, train

    results, curves = {}, {}
    for i, task in enumerate(tasks):
        x_train, y_train = make_task(task, config.train_size, config.length, seed=config.seed * 100 + 2 * i)
        x_test, y_test = make_task(task, config.test_size, config.length, seed=config.seed * 100 + 2 * i + 1)
        model = L.serial(L.Embedding(10, config.width), L.PositionalEmbedding(config.length),
                         *[L.TransformerBlock(config.width, config.heads) for _ in range(config.layers)],
                         L.LayerNorm(), L.Dense(10))
        steps = config.epochs * math.ceil(config.train_size / config.batch_size)
        optimizer = optax.adam(optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(200, steps // 10 + 1), steps))
        started = time.perf_counter()
        state, history = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, optimizer,
                                     (x_train, y_train), test=(x_test, y_test), epochs=config.epochs,
                                     batch_size=config.batch_size, seed=config.seed, callbacks=[])
        seconds = time.perf_counter() - started
        predicted = jnp.argmax(train.predict(model, state.params, jnp.asarray(x_test)), axis=-1)
        sequence_accuracy = float(jnp.mean(jnp.all(predicted == jnp.asarray(y_test), axis=-1)))
        results[task] = {"test_position_accuracy": history["test_accuracy"][-1], "test_sequence_accuracy": sequence_accuracy,
                         "train_seconds": seconds, "num_params": jaxnets.count_params(state.params)}
        curves[task] = history["test_accuracy"]
        print(f"{task}: position accuracy {history['test_accuracy'][-1]:.4f}, sequence accuracy {sequence_accuracy:.4f} "
              f"({config.test_size} held-out sequences of {config.length}), {seconds:.1f} s")

    os.makedirs(config.out, exist_ok=True)
    plotted = False
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for task, acc in curves.items():
            ax.plot(range(1, len(acc) + 1), acc, marker="o", label=f"{task} (per position)")
        ax.set(xlabel="epoch", ylabel="held-out accuracy", title=f"Transformer on digit sequences of {config.length}")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(plt, fig, os.path.join(config.out, "accuracy.png"))
        plotted = True
    record = {**run_record(config), "results": results, "test_accuracy_by_epoch": curves, "plotted": plotted,
              "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    main()
