"""A progress bar (tqdm, the ``progress`` extra) or, without tqdm, a line per row."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from jaxnets.train.callbacks import Callback, Progress

__all__ = ["ProgressBar"]


def describe(metrics: dict[str, Any], skip: tuple[str, ...] = ("step", "epoch", "time")) -> str:
    """The metrics as ``name=value`` pairs (NaN and the ``skip`` columns left out)."""
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in skip and not math.isnan(v))


class ProgressBar(Callback):
    """Shows the run's progress after every call: a tqdm bar in epochs (or steps), the last row's metrics beside it.

    Args:
      lines: also print one line per call (``verbose``); without tqdm, lines are printed anyway.
      bar: show the tqdm bar (False with ``lines=True``: lines alone, for logs).
      enabled: False shows nothing (e.g. on every process but the first).
    """

    order = 20

    def __init__(self, *, lines: bool = False, bar: bool = True, enabled: bool = True):
        for name, value in (("lines", lines), ("bar", bar), ("enabled", enabled)):
            if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):  # verbose=1 passes
                raise TypeError(f"{name} must be True or False, got {value!r}")
        self.lines: bool
        self.enabled: bool
        self.bar: Any  # a tqdm bar, or None
        self.unit: str
        self.lines, self.enabled, self.bar, self.unit = bool(lines), bool(enabled), None, "step"
        self.show_bar: bool = bool(bar)
        self.scale: int
        self.total: int

    def on_start(self, run: Any) -> None:
        if not self.enabled:
            return None
        spe, epochs = run.steps_per_epoch, run.config["loop"].get("epochs")
        self.unit, self.scale = ("epoch", spe) if epochs is not None else ("step", 1)
        self.total = (run.end - run.origin) // self.scale
        if not self.show_bar:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the progress extra is not installed: print a line per call instead
            self.bar, self.lines = None, True
            return None
        self.bar = tqdm(total=self.total, initial=(run.position - run.origin) // self.scale, unit=self.unit,
                        dynamic_ncols=True)
        return None

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return None
        done = progress.step // self.scale
        line = describe(progress.metrics)
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=False)
            self.bar.update(done - self.bar.n)
        if self.lines:
            print(f"{self.unit} {done:3d}/{self.total} {line}", flush=True)
        return None

    def on_end(self, progress: Progress | None, error: BaseException | None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
