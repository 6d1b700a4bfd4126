"""The cost of checkpointing every epoch of the main job, with orbax's asynchronous saves.

    python experiments/benchmarks/checkpointing.py            # full run
    python experiments/benchmarks/checkpointing.py --quick    # a few epochs: checks the script, not the speed

The main job (``experiments/digits_mlp.py``: MLP 64-256-10, dropout 0.3,
AdamW, batch 64, 40 epochs) is trained with ``jaxnets.fit`` without
checkpoints and with ``callbacks=[checkpoint.Checkpoint(folder, every=(1, "epochs"))]`` (the whole
state, history and configuration saved after every epoch, the last 3
kept), alternately, ``--repeats`` times each, after one warm-up call of each
that compiles the program (``fit`` reuses it afterwards), each into a fresh
folder. Two times per call: the training time (when the last epoch's
results reached the host, ``history["time"][-1]``: what checkpointing costs
the training itself, the saves being written in the background), and the
whole ``fit`` call (which also waits for the last save to reach the disk).
Reports the median seconds of each and their ratios. Writes ``checkpointing.json``
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
    parser.add_argument("--every", type=int, default=1, help="epochs between saves")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    repeats, epochs = (1, 2) if args.quick else (args.repeats, args.epochs)

    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import checkpoint, data, losses

    digits = data.load_digits()
    model = L.serial(L.Dense(256), L.Relu(), L.Dropout(0.3), L.Dense(10))
    optimizer = optax.adamw(1e-3, weight_decay=1e-4)
    ce = losses.softmax_cross_entropy_with_integer_labels
    scratch = tempfile.mkdtemp(prefix="jaxnets-checkpointing-")

    def run(checkpoints: bool, i: int) -> tuple[float, float]:
        folder = f"{scratch}/{i}-{int(checkpoints)}"
        start = time.perf_counter()
        saving = [checkpoint.Checkpoint(folder, every=(args.every, "epochs"))] if checkpoints else []
        _, history = jaxnets.fit(model, ce, optimizer, digits, epochs=epochs, batch_size=64, seed=0, callbacks=saving)
        seconds = time.perf_counter() - start  # fit returns after its last save is on disk
        shutil.rmtree(folder, ignore_errors=True)
        return history["time"][-1], seconds

    try:
        run(False, -1), run(True, -1)  # compile (the program is shared) and import orbax
        label = "checkpoint every epoch" if args.every == 1 else f"checkpoint every {args.every} epochs"
        times = {"without checkpoints": [], label: []}
        for i in range(repeats):
            times["without checkpoints"].append(run(False, i))
            times[label].append(run(True, i))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {k: (statistics.median(t for t, _ in v), statistics.median(w for _, w in v)) for k, v in times.items()}
    reference = medians["without checkpoints"]
    rows = [{"contender": k, "train_seconds": t, "train_ratio": t / reference[0], "fit_seconds": w,
             "fit_ratio": w / reference[1], "all": times[k]} for k, (t, w) in medians.items()]
    result = {"benchmark": "checkpointing", "workload": f"digits MLP 64-256-10, AdamW, batch 64, {epochs} epochs",
              **W.environment(), "repeats": repeats, "epochs": epochs, "quick": args.quick, "rows": rows,
              "overhead": rows[1]["train_ratio"] - 1, "overhead_with_final_flush": rows[1]["fit_ratio"] - 1}
    text = W.table(rows, [("contender", "contender", ""), ("training s", "train_seconds", ".3f"),
                          ("ratio", "train_ratio", ".3f"), ("fit call s (last save flushed)", "fit_seconds", ".3f"),
                          ("ratio", "fit_ratio", ".3f")])
    text += (f"\n\n{label.capitalize()} costs {100 * result['overhead']:+.1f}% of the training time "
             f"({100 * result['overhead_with_final_flush']:+.1f}% of the fit call, which waits for the last save).")
    print(text)
    write_results(args.out, "checkpointing", result, text)
    return result


if __name__ == "__main__":
    main()
