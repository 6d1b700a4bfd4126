"""The history of a run (aligned columns, one row per logged point) and the error of a diverged run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["History", "NonFiniteError", "LOCATE_ADVICE"]

#: The divergence error's advice; one constant, so the locator's name can change in one place.
LOCATE_ADVICE = ("run jaxnets.debug.locate_nonfinite(model, params, x, y, loss=loss, state=model_state) on a batch, with the "
                 "params of the last finite state (error.state), to name the first layer whose output or gradient is not finite")


def _value(v: Any) -> int | float:
    """A Python int for integral counters (``step``, ``epoch``), else a float."""
    return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(v)


class History(dict[str, list[Any]]):
    """``{name: [values]}`` with one row per logged point, every column as long as ``history["step"]``.

    A row is added at every log point (:meth:`add_row`); a callback that runs
    then (an evaluation) adds its values to that row (:meth:`set_last`). A
    value a row lacks is NaN, so the columns stay aligned: with an evaluation
    every 500 steps and a log row every 100, ``test_loss`` is NaN in four rows
    of five. It is a plain ``dict`` otherwise (JSON, pickling, ``dict(history)``).
    """

    def rows(self) -> int:
        return len(self.get("step", self.get("epoch", [])))

    def add_row(self, row: dict[str, Any]) -> None:
        """Append a row (``{name: value}``); a column the row lacks gets NaN, a new column NaN in the rows before."""
        n = self.rows()
        for name in row:
            if name not in self:
                self[name] = [math.nan] * n
        for name, column in self.items():
            column.append(_value(row[name]) if name in row else math.nan)

    def set_last(self, values: dict[str, Any]) -> None:
        """Write ``values`` into the last row (a callback's metrics at a log point)."""
        n = self.rows()
        if n == 0:
            raise ValueError("set_last needs a row: the history is empty")
        for name, value in values.items():
            if name not in self:
                self[name] = [math.nan] * n
            self[name][-1] = _value(value)

    def truncate(self, rows: int) -> None:
        for column in self.values():
            del column[rows:]

    @classmethod
    def of(cls, columns: Any) -> "History":
        return cls({k: [_value(v) for v in values] for k, values in dict(columns or {}).items()})


class NonFiniteError(ValueError):
    """Training diverged: a loss or the state became NaN/Inf. Carries what was learned before.

    Attributes:
      epoch, step: where the first non-finite value appeared (the epoch, 1-based,
        when the run counts epochs; the absolute step counter).
      state: the last finite state (before the segment that diverged).
      history: the history up to that state.
    """

    def __init__(self, message: str, *, epoch: int | None, step: int | None, state: Any, history: dict[str, Any]):
        super().__init__(message)
        self.epoch: int | None
        self.step: int | None
        self.state: Any
        self.history: dict[str, Any]
        self.epoch, self.step, self.state, self.history = epoch, step, state, history
