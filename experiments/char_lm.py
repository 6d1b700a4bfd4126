"""A character-level language model on the repository's own docs: Transformer and LSTM against a bigram baseline.

    python experiments/char_lm.py
    python experiments/char_lm.py --quick        # a few steps, to check the script runs

Corpus: every ``docs/**/*.md`` and ``README.md`` of this repository, sorted by
path and joined (its size and SHA-256 are recorded: the figures move when
the docs change). The last ``test_fraction`` of the characters is held out.
Training windows of ``length`` characters start every ``stride`` characters
of the training text; the target is the window shifted by one.

Models (trained with ``jaxnets.fit``, Adam, per-position cross-entropy):

* bigram: ``p(c_t | c_{t-1})`` from counts with add-``alpha`` smoothing (exact, no training);
* Transformer: ``Embedding -> PositionalEmbedding -> TransformerBlock(causal) x layers -> LayerNorm -> Dense``;
* LSTM: ``Embedding -> LSTM -> Dense``.

Reported: bits per character on the held-out text (mean over every position
of non-overlapping windows of ``length``, so a character sees on average
``length / 2`` characters of context; the bigram sees one), training time,
and a sample of generated text per model. Writes ``metrics.json`` and
``bits_per_char.png`` to ``--out``.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, pyplot, run_record, save_figure, write_json_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Config:
    # data
    test_fraction: float = 0.1
    length: int = 64  # characters per window
    stride: int = 8  # training windows start every `stride` characters
    alpha: float = 0.1  # the bigram's add-alpha smoothing
    # models
    width: int = 64
    heads: int = 4
    layers: int = 2
    lstm_hidden: int = 192
    # optimisation
    learning_rate: float = 5e-3
    batch_size: int = 64
    epochs: int = 6
    # sampling
    sample_chars: int = 300
    temperature: float = 0.8
    prompt: str = "The layer "
    # run
    seed: int = 0
    quick: bool = False
    out: str = "runs/char_lm"


def load_corpus() -> tuple[str, list[str]]:
    paths = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)) + [os.path.join(ROOT, "README.md")]
    paths = [p for p in paths if os.path.exists(p)]
    texts = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            texts.append(f.read())
    return "\n\n".join(texts), [os.path.relpath(p, ROOT) for p in paths]


def bigram_bits(train_ids, test_ids, vocab: int, alpha: float) -> float:
    import numpy as np

    counts = np.full((vocab, vocab), alpha)
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))
    return float(-np.mean(logp[test_ids[:-1], test_ids[1:]]))


def windows(ids, length: int, stride: int):
    import numpy as np

    starts = np.arange(0, len(ids) - length - 1, stride)
    idx = starts[:, None] + np.arange(length + 1)[None, :]
    w = ids[idx]
    return w[:, :-1], w[:, 1:]


def sample(model, params, prompt_ids, n: int, length: int, temperature: float, key):
    """``n`` characters after the prompt: each step runs the model on the last ``length`` characters."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    @jax.jit
    def next_logits(window, position):
        return model.apply(params, window[None])[0, position]

    buf = list(prompt_ids)
    for k in jax.random.split(key, n):
        context = buf[-length:]
        window = np.zeros(length, np.int32)
        window[: len(context)] = context
        logits = next_logits(jnp.asarray(window), len(context) - 1)
        buf.append(int(jax.random.categorical(k, logits / temperature)))
    return buf[len(prompt_ids):]


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, width=32, heads=2, layers=1, lstm_hidden=32, epochs=1, stride=256,
                                     sample_chars=20)
    import jax
    import numpy as np
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import losses

    text, paths = load_corpus()
    chars = sorted(set(text))
    vocab = len(chars)
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], np.int32)
    split = int(len(ids) * (1 - config.test_fraction))
    train_ids, test_ids = ids[:split], ids[split:]
    x_train, y_train = windows(train_ids, config.length, config.stride)
    x_test, y_test = windows(test_ids, config.length, config.length)
    print(f"corpus: {len(text):,} characters from {len(paths)} files, vocabulary {vocab}; "
          f"{len(x_train)} training windows, {len(x_test)} held-out windows of {config.length}")

    results = {"bigram": {"test_bits_per_char": bigram_bits(train_ids, test_ids, vocab, config.alpha)}}
    print(f"bigram: {results['bigram']['test_bits_per_char']:.3f} bits per character (held out)")
    models = {
        "transformer": L.serial(L.Embedding(vocab, config.width), L.PositionalEmbedding(config.length),
                                *[L.TransformerBlock(config.width, config.heads, causal=True) for _ in range(config.layers)],
                                L.LayerNorm(), L.Dense(vocab)),
        "lstm": L.serial(L.Embedding(vocab, config.width), L.LSTM(config.lstm_hidden), L.Dense(vocab)),
    }
    ce = losses.softmax_cross_entropy_with_integer_labels
    histories = {}
    for name, model in models.items():
        steps = config.epochs * math.ceil(len(x_train) / config.batch_size)
        optimizer = optax.adam(optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(100, steps // 10 + 1), steps))
        started = time.perf_counter()
        state, history = jaxnets.fit(model, ce, optimizer, (x_train, y_train), test=(x_test, y_test),
                                     epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                     callbacks=[], metrics={})
        seconds = time.perf_counter() - started
        bits = [v / math.log(2) for v in history["test_loss"]]
        histories[name] = bits
        text_ids = sample(model, state.params, [index.get(c, 0) for c in config.prompt], config.sample_chars,
                          config.length, config.temperature, jax.random.key(config.seed))
        generated = "".join(chars[i] for i in text_ids)
        results[name] = {"test_bits_per_char": bits[-1], "train_bits_per_char": history["train_loss"][-1] / math.log(2),
                         "train_seconds": seconds, "num_params": jaxnets.count_params(state.params),
                         "sample": config.prompt + generated}
        print(f"{name}: {bits[-1]:.3f} bits per character (held out) after {config.epochs} epochs, {seconds:.1f} s, "
              f"{results[name]['num_params']:,} params")
        print(f"  sample: {config.prompt + generated!r}")
    for name in models:
        results[name]["margin_over_bigram_bits"] = results["bigram"]["test_bits_per_char"] - results[name]["test_bits_per_char"]

    os.makedirs(config.out, exist_ok=True)
    plotted = False
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, bits in histories.items():
            ax.plot(range(1, len(bits) + 1), bits, marker="o", label=name)
        ax.axhline(results["bigram"]["test_bits_per_char"], color="gray", ls="--", label="bigram")
        ax.set(xlabel="epoch", ylabel="held-out bits per character", title="character LM on the jaxnets docs")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(plt, fig, os.path.join(config.out, "bits_per_char.png"))
        plotted = True
    digest = hashlib.sha256(text.encode()).hexdigest()
    record = {**run_record(config), "corpus": {"files": paths, "characters": len(text), "sha256": digest, "vocabulary": vocab},
              "results": results, "test_bits_per_char_by_epoch": histories, "plotted": plotted,
              "wall_seconds": time.perf_counter() - t_start}
    write_json_atomic(os.path.join(config.out, "metrics.json"), record)
    print(f"wrote {os.path.join(config.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    main()
