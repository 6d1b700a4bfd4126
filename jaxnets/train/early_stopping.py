"""Early stopping: stop when a history metric has not improved for a while."""

from __future__ import annotations

import math
from typing import Any

from jaxnets import _checks
from jaxnets.train.callbacks import Callback, Progress, check_every

__all__ = ["EarlyStopping", "early_stopping"]


class EarlyStopping(Callback):
    """Stops the run when ``metric`` has not improved by more than ``min_delta`` for ``patience`` of its values.

    It reads only the history (NaN rows, where the metric was not computed,
    are skipped), so it behaves the same in a resumed run. ``mode`` is
    ``"min"`` (the default for names ending in ``loss``) or ``"max"``.
    ``every`` as for any callback (default: after every call).
    """

    order = 5

    def __init__(self, metric: str = "test_loss", *, patience: int = 5, mode: str | None = None,
                 min_delta: float = 0.0, every: Any = None):
        if not isinstance(metric, str):
            raise TypeError(f"metric must be a history name such as 'test_loss', got {metric!r}")
        self.metric: str
        self.every: Any
        self.metric, self.every = metric, check_every(every)
        self.patience: int = _checks.positive_int(patience, "patience")
        self.min_delta: float = _checks.positive_float(min_delta, "min_delta", allow_zero=True)
        self.mode: str = mode or ("min" if metric.endswith("loss") else "max")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.__name__: str = f"early_stopping({metric!r}, patience={self.patience})"

    def __repr__(self) -> str:
        return f"EarlyStopping({self.metric!r}, patience={self.patience}, mode={self.mode!r})"

    def __call__(self, progress: Progress) -> bool:
        if self.metric not in progress.history:
            raise ValueError(f"EarlyStopping metric must be one of the history's {sorted(progress.history)}, "
                             f"got {self.metric!r}")
        values = [v for v in progress.history[self.metric] if not math.isnan(v)]
        best_value, best_index = math.inf, 0
        for i, value in enumerate(values):
            value = value if self.mode == "min" else -value
            if value < best_value - self.min_delta:
                best_value, best_index = value, i
        return len(values) - 1 - best_index >= self.patience


def early_stopping(metric: str = "test_loss", *, patience: int = 5, mode: str | None = None,
                   min_delta: float = 0.0) -> EarlyStopping:
    """:class:`EarlyStopping` under its earlier name (a hook for ``fit(callbacks=[...])``)."""
    return EarlyStopping(metric, patience=patience, mode=mode, min_delta=min_delta)
