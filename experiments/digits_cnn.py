"""A small CNN on scikit-learn's digits as 8x8x1 images.

    python experiments/digits_cnn.py
    python experiments/digits_cnn.py --channels 32 --epochs 30

conv 3x3 (SAME) -> relu -> conv 3x3 -> relu -> max-pool 2x2 -> flatten ->
dense -> relu -> dropout -> dense(10). Writes ``metrics.json`` and
``curves.png`` to ``--out`` (default ``runs/digits_cnn``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, require_positive, run_classifier  # noqa: E402


@dataclasses.dataclass
class Config:
    # data
    test_fraction: float = 0.2
    # model
    channels: int = 16  # first conv; the second has twice as many
    hidden: int = 128
    drop_prob: float = 0.3
    # optimisation
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 20
    # run
    seed: int = 0
    out: str = "runs/digits_cnn"
    progress: bool = True


def build(config: Config):
    import optax

    import jaxnets.layers as L
    require_positive(config, "learning_rate", "channels")
    c = config.channels
    model = L.serial(
        L.Conv2D(c, 3), L.Relu(),             # (b, 8, 8, c)
        L.Conv2D(2 * c, 3), L.Relu(),         # (b, 8, 8, 2c)
        L.MaxPool(2),                         # (b, 4, 4, 2c)
        L.Flatten(),                          # (b, 32c)
        L.Dense(config.hidden), L.Relu(), L.Dropout(config.drop_prob),
        L.Dense(10),
    )
    return model, optax.adam(config.learning_rate)


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    from jaxnets import data

    dataset = data.load_digits(test_fraction=config.test_fraction, seed=0, as_images=True)
    model, optimizer = build(config)
    return run_classifier(config, model, optimizer, dataset, title="CNN on digits", t_start=t_start)


if __name__ == "__main__":
    main()
