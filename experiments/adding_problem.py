"""The adding problem (Hochreiter & Schmidhuber, 1997): SimpleRNN vs LSTM vs GRU over growing lengths, and gradients through time.

    python experiments/adding_problem.py
    python experiments/adding_problem.py --quick

Each input is a sequence of T pairs ``(value, marker)``: values uniform in
[0, 1), markers 1 at two positions (one in each half of the sequence) and 0
elsewhere. The target is the sum of the two marked values. Predicting the
mean (1) scores a mean squared error of 1/6 ~ 0.167; a model *solves* the
task when its error falls far below that, which needs the first marked value
to be carried over ~T/2 steps.

Models: ``serial(Cell(hidden, return_sequences=False), Dense(1))`` for
``Cell`` in SimpleRNN, LSTM, GRU, trained with ``jaxnets.fit`` (Adam, mean
squared error) at each length in ``lengths``.

Gradients through time: for the longest T, the norm of ``dL/dx_t`` (the
cotangent that the layer's hand-derived BPTT rule delivers to input step t,
mean over a batch) relative to its value at the last step, at initialisation
and after training. The simple RNN multiplies the cotangent by
``diag(1 - h^2) W_h^T`` at every step back, so its norm decays
geometrically; the LSTM's cell path (``dc_{t-1} = f dc_t``) carries it.

Writes ``metrics.json``, ``mse_by_length.png`` and ``gradient_norms.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, run_record, save_figure, write_json_atomic  # noqa: E402

BASELINE_MSE = 1.0 / 6.0


@dataclasses.dataclass
class Config:
    lengths: str = "10,30,100"
    hidden: int = 32
    train_size: int = 4000
    test_size: int = 1000
    learning_rate: float = 3e-3
    batch_size: int = 64
    epochs: int = 15
    seed: int = 0
    quick: bool = False
    out: str = "runs/adding_problem"


def make_data(n: int, length: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    values = rng.random((n, length))
    half = max(length // 2, 1)
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n) if length > 1 else first
    markers = np.zeros((n, length))
    markers[np.arange(n), first] = 1.0
    markers[np.arange(n), second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values * markers).sum(axis=1, keepdims=True).astype(np.float32)
    return x, y


def gradient_norms(model, params, x, y):
    """``||dL/dx_t||`` per step t (mean over the batch), from the hand-derived rules."""
    import jax.numpy as jnp

    from jaxnets import backprop

    out, _, pullback = backprop.vjp(model, params, x)
    _, x_bar = pullback(2 * (out - y) / out.size)  # L = mean((out - y)^2)
    return jnp.mean(jnp.linalg.norm(x_bar, axis=-1), axis=0)  # (T,)


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, lengths="10", train_size=256, test_size=64, epochs=1, hidden=8)
    lengths = [int(t) for t in config.lengths.split(",") if t]
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import train

    cells = {"SimpleRNN": L.SimpleRNN, "LSTM": L.LSTM, "GRU": L.GRU}
    mse = lambda out, target: jnp.mean((out - target) ** 2)  # noqa: E731
    results = {name: {} for name in cells}
    norms = {}
    for length in lengths:
        x_train, y_train = make_data(config.train_size, length, config.seed * 1000 + length)
        x_test, y_test = make_data(config.test_size, length, config.seed * 1000 + length + 1)
        for name, cell in cells.items():
            model = L.serial(cell(config.hidden, return_sequences=False), L.Dense(1))
            steps = config.epochs * math.ceil(config.train_size / config.batch_size)
            optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
                optax.cosine_decay_schedule(config.learning_rate, steps)))
            initial = train.init_train_state(model, optimizer, (-1, length, 2), seed=config.seed)
            started = time.perf_counter()
            state, history = jaxnets.fit(model, mse, optimizer, (x_train, y_train), test=(x_test, y_test),
                                         epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                         callbacks=[], metrics={})
            test_mse = history["test_loss"][-1]
            results[name][str(length)] = {"test_mse": test_mse, "fraction_of_baseline": test_mse / BASELINE_MSE,
                                          "train_seconds": time.perf_counter() - started}
            print(f"T={length:4d} {name:9s}: test MSE {test_mse:.4f} ({test_mse / BASELINE_MSE:.3f} of the baseline 1/6), "
                  f"{time.perf_counter() - started:.1f} s")
            if length == max(lengths):
                xb, yb = jnp.asarray(x_test[:64]), jnp.asarray(y_test[:64])
                norms[name] = {when: np.asarray(gradient_norms(model, p, xb, yb)).tolist()
                               for when, p in (("initial", initial.params), ("trained", state.params))}

    # decay of the gradient over the sequence: first step's norm relative to the last step's
    decay = {name: {when: n[0] / n[-1] for when, n in by.items()} for name, by in norms.items()}
    for name, by in decay.items():
        print(f"T={max(lengths)} {name:9s}: ||dL/dx_1|| / ||dL/dx_T|| = {by['initial']:.2e} at initialisation, "
              f"{by['trained']:.2e} trained")

    os.makedirs(config.out, exist_ok=True)
    plotted = False
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in cells:
            ax.plot(lengths, [results[name][str(t)]["test_mse"] for t in lengths], marker="o", label=name)
        ax.axhline(BASELINE_MSE, color="gray", ls="--", label="predict the mean (1/6)")
        ax.set(xlabel="sequence length T", ylabel="held-out MSE", yscale="log", xscale="log", title="the adding problem")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(plt, fig, os.path.join(config.out, "mse_by_length.png"))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, when in zip(axes, ("initial", "trained")):
            for name, by in norms.items():
                n = np.asarray(by[when])
                ax.plot(np.arange(1, len(n) + 1), n / n[-1], label=name)
            ax.set(xlabel="input step t", yscale="log", title=f"{'at initialisation' if when == 'initial' else 'trained'}")
            ax.grid(alpha=0.3)
            ax.legend()
        axes[0].set_ylabel("||dL/dx_t|| / ||dL/dx_T||")
        fig.suptitle(f"gradients through time (T={max(lengths)}, hand-derived BPTT)")
        save_figure(plt, fig, os.path.join(config.out, "gradient_norms.png"))
        plotted = True
    record = {**run_record(config), "baseline_mse": BASELINE_MSE, "results": results, "gradient_norms": norms,
              "first_over_last_gradient_norm": decay, "plotted": plotted, "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    main()
