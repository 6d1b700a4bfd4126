"""A JSON-lines file of the history, one line per row, written as rows come and rewound on resume."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from jaxnets import _checks
from jaxnets.train.callbacks import Callback, Progress

__all__ = ["HistoryFile"]


def _lines(history: dict[str, Any], first: int, last: int) -> str:
    names = list(history)
    return "".join(json.dumps({k: history[k][i] for k in names}, allow_nan=True) + "\n" for i in range(first, last))


class HistoryFile(Callback):
    """Appends each history row to ``path`` as one JSON line, flushed and fsynced, so a crashed run leaves its curve.

    The path is checked before anything is compiled (a folder that does not
    exist, a directory, a file descriptor: errors naming it). On a resumed
    run the file is rewritten, atomically, to the restored history, so it
    never repeats the rows after the last checkpoint.

    Args:
      path: the file (``str`` or ``os.PathLike``); created, or appended to by a fresh run.
      enabled: False writes nothing (e.g. on every process but the first).
    """

    order = 10

    def __init__(self, path: Any, *, enabled: bool = True):
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"history_file must be a path (str or os.PathLike), got {type(path).__name__} {path!r}")
        self.path: str
        self.enabled: bool
        self.written: int
        self.path, self.enabled, self.written = os.fspath(path), _checks.boolean(enabled, "enabled"), 0

    def __repr__(self) -> str:
        return f"HistoryFile({self.path!r})"

    def on_start(self, run: Any) -> None:
        if not self.enabled:
            return None
        folder = os.path.dirname(os.path.abspath(self.path))
        if os.path.isdir(self.path):
            raise ValueError(f"history_file {self.path!r} is a directory: give a file path inside it")
        if not os.path.isdir(folder):
            raise ValueError(f"history_file {self.path!r} is in a folder that does not exist ({folder}): create it first")
        if not os.access(folder, os.W_OK) or (os.path.exists(self.path) and not os.access(self.path, os.W_OK)):
            raise ValueError(f"history_file {self.path!r} cannot be written (permissions or a read-only filesystem)")
        self.written = run.history.rows()
        if self.written:  # resumed: the file holds exactly the restored rows
            self._rewrite(run.history)
        return None

    def _rewrite(self, history: dict[str, Any]) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".history-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(_lines(history, 0, self.written))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def __call__(self, progress: Progress) -> None:
        if not self.enabled:
            return None
        rows = progress.history.rows() if hasattr(progress.history, "rows") else len(progress.history.get("step", []))
        if rows > self.written:
            with open(self.path, "a") as f:
                f.write(_lines(progress.history, self.written, rows))
                f.flush()
                os.fsync(f.fileno())
            self.written = rows
        return None

    def on_end(self, progress: Progress, error: BaseException | None) -> None:
        if self.enabled:  # the rows before an error (a divergence keeps them) are written too
            self(progress)
