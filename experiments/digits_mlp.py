"""The main job: an MLP on scikit-learn's digits, trained with jitted, scan-fused epochs.

    python experiments/digits_mlp.py            # defaults below
    python experiments/digits_mlp.py --seed 3 --epochs 60

Prints the per-epoch history and the final test accuracy, and writes to
``--out`` (default ``runs/digits_mlp``): ``metrics.json`` (config, command,
history, final figures) and ``curves.png`` (loss and accuracy per epoch).
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
    test_fraction: float = 0.2  # stratified hold-out of digits (360 of 1,797 images)
    # model: 64 -> hidden -> 10
    hidden: int = 256
    drop_prob: float = 0.3
    # optimisation
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    batch_size: int = 64
    epochs: int = 40
    # run
    seed: int = 0  # the root key: params init, shuffling, dropout
    out: str = "runs/digits_mlp"
    progress: bool = True


def check(config: Config) -> None:
    require_positive(config, "learning_rate", "batch_size", "epochs", "hidden", allow_zero=("weight_decay",))


def build(config: Config):
    import optax

    import jaxnets.layers as L

    model = L.serial(L.Dense(config.hidden), L.Relu(), L.Dropout(config.drop_prob), L.Dense(10))
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
    return model, optimizer


def main(argv=None) -> dict:
    t_start = time.perf_counter()  # the script's own clock starts before importing JAX
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    check(config)
    from jaxnets import data

    dataset = data.load_digits(test_fraction=config.test_fraction, seed=0)
    model, optimizer = build(config)
    return run_classifier(config, model, optimizer, dataset, title="MLP on digits", t_start=t_start)


if __name__ == "__main__":
    main()
