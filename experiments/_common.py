"""Shared plumbing for experiment scripts: argument parsing, run folders, plots.

Experiments import the library; the library never imports experiments.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator


def parse_config(config_cls, description: str, argv=None):
    """Build an argparse CLI from a dataclass of defaults; ``--name value`` overrides a field."""
    parser = argparse.ArgumentParser(description=description)
    for field in dataclasses.fields(config_cls):
        default = field.default
        kind = type(default)
        if kind is bool:
            parser.add_argument(f"--{field.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=default, help=f"default: {default}")
    return config_cls(**vars(parser.parse_args(argv)))


def require_positive(config, *names: str, allow_zero: tuple = ()) -> None:
    """Each named config field must be a number > 0 (>= 0 for those in ``allow_zero``); else a ValueError naming it."""
    for name in names + tuple(allow_zero):
        value = getattr(config, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        ok = ok and (value >= 0 if name in allow_zero else value > 0)
        if not ok:
            bound = ">= 0" if name in allow_zero else "> 0"
            raise ValueError(f"--{name.replace('_', '-')} must be a number {bound}, got {value!r}")


def fsync_path(path: str) -> None:
    """Flush a file's or a directory's data and metadata to the disk (a directory's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` through a temporary file beside ``path`` and a rename: never a half-written file.

    The file is fsynced before the rename and its directory after it, so a
    crash or a power loss leaves the old file or the whole new one, never an
    empty or truncated one (a rename alone orders nothing on disk).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_path(folder)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON atomically and durably (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(obj, indent=2))


@contextlib.contextmanager
def run_folder(out: str) -> Iterator[str]:
    """A run's output folder, written atomically: its files appear together or not at all.

    Yields a fresh staging folder beside ``out`` (``.<name>.tmp-*``); when the
    block ends without an exception the staging folder is renamed to ``out``
    (a previous ``out`` is moved aside first and then removed). On an
    exception the staging folder is removed; one left by a killed process is
    removed by the next run into the same ``out``. So ``out`` always holds
    one whole run, and no temporary file outlives the next run. Every file in
    the staging folder, the folder itself, and after the rename the parent
    folder are fsynced, so the run survives a crash or a power loss whole.
    """
    out = os.path.abspath(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    for stale in glob.glob(os.path.join(parent, f".{name}.tmp-*")) + glob.glob(os.path.join(parent, f".{name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    os.chmod(staging, 0o755)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for root, _, files in os.walk(staging):
        for file in files:
            fsync_path(os.path.join(root, file))
        fsync_path(root)
    aside = None
    if os.path.exists(out):
        aside = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.rmdir(aside)  # only the name is needed
        os.rename(out, aside)
    os.rename(staging, out)
    fsync_path(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def versions() -> dict:
    """The versions a result depends on, and the device it ran on."""
    import jax
    import jaxlib
    import numpy
    import optax

    device = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__, "numpy": numpy.__version__, "backend": jax.default_backend(),
            "device_kind": device.device_kind, "device_count": jax.device_count()}


def run_record(config) -> dict:
    """What reproduces a run: the config, the command line, versions, the device."""
    return {
        "config": dataclasses.asdict(config),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        **versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt, fig, path: str) -> None:
    """Lay out, write as a 120-dpi PNG, and close (so long runs do not accumulate figures)."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history: dict, path: str, title: str) -> bool:
    """Loss and accuracy curves per epoch as a PNG; False if matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = history["epoch"]
    for key in ("train_loss", "test_loss"):
        if key in history:
            ax_loss.plot(epochs, history[key], label=key.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    for key in ("train_accuracy", "test_accuracy"):
        if key in history:
            ax_acc.plot(epochs, history[key], label=key.replace("_", " "))
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)  # inside a run folder (run_folder): it appears with the run's other files
    plt.close(fig)
    return True


def run_classifier(config, model, optimizer, dataset, *, title: str, t_start: float) -> dict:
    """Train ``model`` on ``dataset`` with ``fit``; print the history; save metrics.json and curves.png.

    ``config`` needs ``epochs``, ``batch_size``, ``seed``, ``progress`` and ``out``.
    """
    import jaxnets
    from jaxnets import losses

    print(f"data:  {dataset}")
    print(f"model: {model}")
    fit_started_unix = time.time()  # lets experiments/benchmarks/end_to_end.py place epochs on its own clock
    state, history = jaxnets.fit(
        model, losses.softmax_cross_entropy_with_integer_labels, optimizer, dataset,
        epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
        callbacks=[jaxnets.train.ProgressBar(enabled=config.progress)],
    )
    num_params = jaxnets.count_params(state.params)
    print(f"params: {num_params:,}")
    print("epoch  train_loss  train_acc  test_loss  test_acc   time_s")
    for i, epoch in enumerate(history["epoch"]):
        print(f"{epoch:5d}  {history['train_loss'][i]:10.4f}  {history['train_accuracy'][i]:9.4f}  "
              f"{history['test_loss'][i]:9.4f}  {history['test_accuracy'][i]:8.4f}  {history['time'][i]:7.2f}")
    wall = time.perf_counter() - t_start
    result = {
        **run_record(config),
        "final_test_accuracy": history["test_accuracy"][-1],
        "final_test_loss": history["test_loss"][-1],
        "train_seconds": history["time"][-1],
        "fit_started_unix": fit_started_unix,
        "wall_seconds": wall,
        "num_params": num_params,
        "history": history,
    }
    with run_folder(config.out) as folder:
        write_json_atomic(os.path.join(folder, "metrics.json"), result)
        plotted = plot_history(history, os.path.join(folder, "curves.png"), f"{title} (seed {config.seed})")
    print(f"final test accuracy: {result['final_test_accuracy']:.4f}  "
          f"(training {result['train_seconds']:.2f} s, script {wall:.2f} s)")
    print(f"wrote {os.path.join(config.out, 'metrics.json')}")
    print(f"wrote {os.path.join(config.out, 'curves.png')}" if plotted else "no plot: pip install 'jaxnets[plots]'")
    return result


def interleaved_medians(contenders: dict, rounds: int, steps: int) -> dict:
    """Median seconds per step of each contender, a callable that runs ``steps`` steps and blocks.

    Each is called once to compile and warm up; then every round times each
    contender in turn, so drifts in machine load hit all of them alike.
    """
    import statistics

    for run in contenders.values():
        run()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            t = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def write_results(out: str, name: str, result: dict, table: str) -> None:
    """``<out>/<name>.json`` (written atomically) and ``<out>/<name>.md`` (the table)."""
    write_atomic(os.path.join(out, f"{name}.md"), table + "\n")
    write_json_atomic(os.path.join(out, f"{name}.json"), {**versions(), **result})
