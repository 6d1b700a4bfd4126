"""End to end: the main job's wall time from process start, and its peak memory.

    python experiments/benchmarks/end_to_end.py             # 5 runs of experiments/digits_mlp.py
    python experiments/benchmarks/end_to_end.py --quick     # 1 run of 2 epochs: checks the script

Each run starts ``python experiments/digits_mlp.py`` as a fresh process (no
progress bar, output to a temporary folder) and measures, on this process's
clock:

* seconds from starting the process to the first epoch whose test accuracy
  is at least ``--target`` (0.97): the epoch's time in the job's history plus
  the moment ``fit`` started, which the job records;
* seconds from starting the process to its exit (imports, data, compiling,
  training, evaluation, writing the metrics and the plot);
* the peak resident memory of the process (``ru_maxrss`` from ``wait4``).

Reports the median over ``--runs`` runs. Writes ``end_to_end.json`` and
``end_to_end.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _workloads as W
from _common import write_results

MAIN_JOB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "digits_mlp.py")


def one_run(extra_args, target: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, MAIN_JOB, "--no-progress", "--out", out, *extra_args]
        started = time.time()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.time() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed with exit code {process.returncode}:\n{output.decode()}")
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
    history = metrics["history"]
    reached = [i for i, a in enumerate(history["test_accuracy"]) if a >= target]
    offset = metrics["fit_started_unix"] - started
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes (Linux reports KiB)
    return {"wall_seconds": wall,
            "seconds_to_target": offset + history["time"][reached[0]] if reached else None,
            "epoch_reaching_target": history["epoch"][reached[0]] if reached else None,
            "final_test_accuracy": metrics["final_test_accuracy"], "train_seconds": metrics["train_seconds"],
            "seconds_before_fit": offset, "peak_rss_mib": peak / 2 ** 20}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    runs, extra = (1, ["--epochs", "2"]) if args.quick else (args.runs, [])

    results = [one_run(extra, args.target) for _ in range(runs)]
    keys = ["seconds_before_fit", "seconds_to_target", "wall_seconds", "train_seconds", "peak_rss_mib", "final_test_accuracy"]
    median = {k: (statistics.median(r[k] for r in results) if all(r[k] is not None for r in results) else None) for k in keys}
    labels = {"seconds_before_fit": "process start to fit (imports, data)", "seconds_to_target": f"process start to test accuracy >= {args.target}",
              "wall_seconds": "process start to exit", "train_seconds": "fit (compile + train + evaluate)",
              "peak_rss_mib": "peak memory (MiB)", "final_test_accuracy": "final test accuracy"}
    rows = [{"measure": labels[k], "median": "n/a" if median[k] is None else f"{median[k]:.4f}" if k == "final_test_accuracy" else f"{median[k]:.2f}",
             "runs": ", ".join("n/a" if r[k] is None else f"{r[k]:.2f}" for r in results)} for k in keys]
    result = {"benchmark": "end_to_end", "command": f"python experiments/digits_mlp.py {' '.join(extra)}".strip(),
              **W.environment(), "runs": results, "median": median,
              "target": args.target, "quick": args.quick}
    text = W.table(rows, [("measure", "measure", ""), ("median", "median", ""), ("each run", "runs", "")])
    print(f"End to end: {result['command']}, {runs} fresh processes, {result['cpus']} CPUs")
    print(text)
    write_results(args.out, "end_to_end", result, text)
    return result


if __name__ == "__main__":
    main()
