"""Mixed precision on digits: the main job's MLP and the CNN in float32, bfloat16 and float16, same seeds.

    python experiments/mixed_precision.py
    python experiments/mixed_precision.py --quick       # 2 epochs, one seed: checks the script
    python experiments/mixed_precision.py --models mlp  # the main job only

Each model is trained with ``jaxnets.fit(..., precision=dtype)``: float32
master weights, every layer computing in the reduced dtype (softmax and the
loss in float32), float16 with dynamic loss scaling (``loss_scale="auto"``).
The MLP is the main job (``digits_mlp.py``: 64-256-10, dropout 0.3, AdamW,
40 epochs), the CNN is ``digits_cnn.py``'s (20 epochs). Every dtype starts
from the same params and sees the same batches and dropout masks (the same
seed), for each of ``--seeds``.

Reported: the final test accuracy per dtype and seed and its mean over the
seeds; the difference from float32 in percentage points; the steps float16
skipped for overflow; and the step time (the median of the jitted training
step over interleaved rounds, on a training batch), as a ratio to float32.
On a CPU, bfloat16 and float16 are usually *slower*: the matrix units that
make them fast on accelerators are absent, and XLA converts around each
product. Writes ``mixed_precision.json``, ``mixed_precision.md`` (the table)
and ``accuracy.png`` (test accuracy per epoch, every dtype, seed ``--seeds``'
first) to ``--out``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (interleaved_medians, parse_config, pyplot, run_folder, run_record, save_figure,  # noqa: E402
                     write_json_atomic)

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass
class Config:
    mlp_epochs: int = 40  # the main job's
    cnn_epochs: int = 20  # digits_cnn.py's
    seeds: str = "0,1,2"
    models: str = "mlp,cnn"  # comma-separated subset
    timing_rounds: int = 7
    timing_steps: int = 50
    quick: bool = False
    out: str = "runs/mixed_precision"
    progress: bool = False


def models():
    """``name -> (model, optimizer, epochs field, images?)``: the main job's MLP and digits_cnn's CNN, as built there."""
    import digits_cnn
    import digits_mlp

    mlp, mlp_opt = digits_mlp.build(digits_mlp.Config())
    cnn, cnn_opt = digits_cnn.build(digits_cnn.Config())
    return {"mlp": (mlp, mlp_opt, "mlp_epochs", False), "cnn": (cnn, cnn_opt, "cnn_epochs", True)}


def step_seconds(model, optimizer, dataset, batch_size: int, rounds: int, steps: int) -> dict:
    """Median seconds per jitted training step for each dtype, interleaved (same batch, same start)."""
    import jax

    from jaxnets import losses, precision, train

    x, y = dataset.x_train[:batch_size], dataset.y_train[:batch_size]
    runs = {}
    for dtype in DTYPES:
        m = model if dtype == "float32" else precision.with_policy(model, dtype)
        opt = precision.loss_scaling(optimizer, "dynamic") if dtype == "float16" else optimizer
        step = train.make_train_step(m, losses.softmax_cross_entropy_with_integer_labels, opt)
        holder = {"state": train.init_train_state(m, opt, (-1,) + tuple(x.shape[1:]), seed=0)}

        def run(step=step, holder=holder):
            state = holder["state"]
            for _ in range(steps):
                state, metrics = step(state, x, y)
            jax.block_until_ready(metrics["loss"])
            holder["state"] = state

        runs[dtype] = run
    return interleaved_medians(runs, rounds, steps)


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    seeds = [int(s) for s in config.seeds.split(",") if s.strip()]
    if not seeds:
        raise ValueError(f"--seeds must list at least one int, got {config.seeds!r}")
    if config.quick:
        config.mlp_epochs, config.cnn_epochs, seeds = 2, 2, seeds[:1]
        config.timing_rounds, config.timing_steps = 2, 2
    import jaxnets
    from jaxnets import data, losses

    ce = losses.softmax_cross_entropy_with_integer_labels
    results, curves = {}, {}
    chosen = [m.strip() for m in config.models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(models()))
    if unknown or not chosen:
        raise ValueError(f"--models must list some of {sorted(models())}, got {config.models!r}")
    for name, (model, optimizer, epochs_field, images) in models().items():
        if name not in chosen:
            continue
        dataset = data.load_digits(test_fraction=0.2, seed=0, as_images=images)
        epochs = getattr(config, epochs_field)
        rows = {}
        for dtype in DTYPES:
            accuracy, skipped, times = [], [], []
            for seed in seeds:
                _, history = jaxnets.fit(model, ce, optimizer, dataset, epochs=epochs, batch_size=64, seed=seed,
                                         precision=None if dtype == "float32" else dtype,
                                         callbacks=[jaxnets.train.ProgressBar(enabled=config.progress)])
                accuracy.append(history["test_accuracy"][-1])
                skipped.append(int(sum(history.get("skipped_steps", [0]))))
                times.append(history["time"][-1])
                if seed == seeds[0]:
                    curves[(name, dtype)] = history["test_accuracy"]
                print(f"{name} {dtype:8s} seed {seed}: test accuracy {accuracy[-1]:.4f}, skipped steps {skipped[-1]}, "
                      f"{times[-1]:.1f} s", flush=True)
            rows[dtype] = {"test_accuracy": accuracy, "mean_test_accuracy": statistics.fmean(accuracy),
                           "skipped_steps": skipped, "fit_seconds": times}
        seconds = step_seconds(model, optimizer, dataset, 64, config.timing_rounds, config.timing_steps)
        for dtype in DTYPES:
            rows[dtype]["step_seconds"] = seconds[dtype]
            rows[dtype]["step_time_vs_float32"] = seconds[dtype] / seconds["float32"]
            rows[dtype]["pp_vs_float32"] = 100 * (rows[dtype]["mean_test_accuracy"] - rows["float32"]["mean_test_accuracy"])
        results[name] = rows

    lines = [f"Mixed precision on digits (seeds {','.join(map(str, seeds))}; MLP {config.mlp_epochs} epochs, "
             f"CNN {config.cnn_epochs} epochs; batch 64)", "",
             "| model | dtype | test accuracy per seed | mean | vs float32 (pp) | skipped steps | step (ms) | step vs float32 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, rows in results.items():
        for dtype, r in rows.items():
            lines.append(f"| {name} | {dtype} | {', '.join(f'{a:.4f}' for a in r['test_accuracy'])} | "
                         f"{r['mean_test_accuracy']:.4f} | {r['pp_vs_float32']:+.2f} | {sum(r['skipped_steps'])} | "
                         f"{1e3 * r['step_seconds']:.3f} | {r['step_time_vs_float32']:.2f}x |")
    table = "\n".join(lines)
    print(table)
    record = {**run_record(config), "seeds": seeds, "results": results,
              "curves": {f"{n}/{d}": c for (n, d), c in curves.items()}, "wall_seconds": time.perf_counter() - t_start}
    with run_folder(config.out) as folder:
        write_json_atomic(os.path.join(folder, "mixed_precision.json"), record)
        with open(os.path.join(folder, "mixed_precision.md"), "w") as f:
            f.write(table + "\n")
        plt = pyplot()
        if plt is not None:
            fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
            for ax, name in zip(axes[0], results):
                for dtype in DTYPES:
                    acc = curves[(name, dtype)]
                    ax.plot(range(1, len(acc) + 1), acc, label=f"{dtype} ({acc[-1]:.4f})")
                ax.set(xlabel="epoch", ylabel="test accuracy", title=f"{name.upper()} on digits (seed {seeds[0]})")
                ax.grid(alpha=0.3)
                ax.legend()
            save_figure(plt, fig, os.path.join(folder, "accuracy.png"))
    print(f"wrote {config.out}/mixed_precision.json, mixed_precision.md" + (", accuracy.png" if plt is not None else ""))
    return record


if __name__ == "__main__":
    main()
