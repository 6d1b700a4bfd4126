"""TensorBoard curves (tensorboardX, the ``tensorboard`` extra): each history row as scalars at its step."""

from __future__ import annotations

import math
import os
from typing import Any

from jaxnets import _checks
from jaxnets.train.callbacks import Callback, Progress

__all__ = ["TensorBoard"]


class TensorBoard(Callback):
    """Writes every new history row to a TensorBoard event file in ``logdir`` (``tensorboard --logdir ...`` shows it).

    Each column but ``step``, ``epoch`` and ``time`` becomes a scalar series
    at the row's absolute step; NaN cells (a metric not computed at that row)
    are left out. Needs ``pip install 'jaxnets[tensorboard]'`` (tensorboardX).

    Args:
      logdir: the folder (created; checked writable before anything is compiled).
      enabled: False writes nothing (e.g. on every process but the first).
    """

    order = 10

    def __init__(self, logdir: Any, *, enabled: bool = True):
        if isinstance(logdir, bool) or not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"logdir must be a path, got {type(logdir).__name__} {logdir!r}")
        self.logdir: str
        self.enabled: bool
        self.writer: Any  # a tensorboardX SummaryWriter once started, else None
        self.written: int
        self.origin: int
        self.logdir, self.enabled, self.writer, self.written = os.fspath(logdir), _checks.boolean(enabled, "enabled"), None, 0

    def __repr__(self) -> str:
        return f"TensorBoard({self.logdir!r})"

    def on_start(self, run: Any) -> None:
        if not self.enabled:
            return None
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ImportError(f"TensorBoard needs the tensorboard extra: pip install 'jaxnets[tensorboard]' ({error})") from None
        if os.path.exists(self.logdir) and not os.path.isdir(self.logdir):
            raise ValueError(f"logdir {self.logdir!r} is a file: give a folder")
        os.makedirs(self.logdir, exist_ok=True)
        if not os.access(self.logdir, os.W_OK):
            raise ValueError(f"logdir {self.logdir!r} cannot be written (permissions or a read-only filesystem)")
        self.writer = SummaryWriter(self.logdir)
        self.written, self.origin = run.history.rows(), run.origin
        return None

    def __call__(self, progress: Progress) -> None:
        if self.writer is None:
            return None
        history, rows = progress.history, progress.history.rows()
        for i in range(self.written, rows):
            step = self.origin + int(history["step"][i])
            for name, column in history.items():
                if name not in ("step", "epoch", "time") and not math.isnan(column[i]):
                    self.writer.add_scalar(name, column[i], global_step=step)
        self.written = rows
        self.writer.flush()
        return None

    def on_end(self, progress: Progress, error: BaseException | None) -> None:
        if self.writer is not None:
            self(progress)
            self.writer.close()
            self.writer = None
