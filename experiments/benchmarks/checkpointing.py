"""The cost of checkpointing every epoch of the main job, with orbax's asynchronous saves.

    python experiments/benchmarks/checkpointing.py            # full run
    python experiments/benchmarks/checkpointing.py --quick    # a few epochs: checks the script, not the speed

The main job (``experiments/digits_mlp.py``: MLP 64-256-10, dropout 0.3,
AdamW, batch 64, 40 epochs) is trained with ``jaxnets.fit`` without
checkpoints and with ``checkpoint_dir=..., checkpoint_every=1`` (the whole
state, history and configuration saved after every epoch, the last 3
kept), alternately, ``--repeats`` times each, after one warm-up call of each
that compiles the program (``fit`` reuses it afterwards). Each timing is a
whole ``fit`` call into a fresh folder, the final save waited for. Reports
the median seconds of each and their ratio. Writes ``checkpointing.json``
and ``checkpointing.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import _workloads as W
from _common import write_results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    repeats, epochs = (1, 2) if args.quick else (args.repeats, args.epochs)

    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import data, losses

    digits = data.load_digits()
    model = L.serial(L.Dense(256), L.Relu(), L.Dropout(0.3), L.Dense(10))
    optimizer = optax.adamw(1e-3, weight_decay=1e-4)
    ce = losses.softmax_cross_entropy_with_integer_labels
    scratch = tempfile.mkdtemp(prefix="jaxnets-checkpointing-")

    def run(checkpoints: bool, i: int) -> float:
        folder = f"{scratch}/{i}-{int(checkpoints)}"
        start = time.perf_counter()
        jaxnets.fit(model, ce, optimizer, digits, epochs=epochs, batch_size=64, seed=0, progress=False,
                    checkpoint_dir=folder if checkpoints else None, checkpoint_every=1)
        seconds = time.perf_counter() - start  # fit returns after its last save is on disk
        shutil.rmtree(folder, ignore_errors=True)
        return seconds

    try:
        run(False, -1), run(True, -1)  # compile (the program is shared) and import orbax
        times = {"without checkpoints": [], "checkpoint every epoch": []}
        for i in range(repeats):
            times["without checkpoints"].append(run(False, i))
            times["checkpoint every epoch"].append(run(True, i))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    reference = medians["without checkpoints"]
    rows = [{"contender": k, "seconds": v, "ratio": v / reference, "all_seconds": times[k]} for k, v in medians.items()]
    result = {"benchmark": "checkpointing", "workload": f"digits MLP 64-256-10, AdamW, batch 64, {epochs} epochs",
              **W.environment(), "repeats": repeats, "epochs": epochs, "quick": args.quick, "rows": rows,
              "overhead": medians["checkpoint every epoch"] / reference - 1}
    text = W.table(rows, [("contender", "contender", ""), ("seconds per fit", "seconds", ".3f"), ("ratio", "ratio", ".3f")])
    text += f"\n\nCheckpointing every epoch costs {100 * result['overhead']:+.1f}% of the training time."
    print(text)
    write_results(args.out, "checkpointing", result, text)
    return result


if __name__ == "__main__":
    main()
