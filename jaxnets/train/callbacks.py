"""The callback protocol: observers the loop runs on the host between compiled calls, on a schedule.

A callback is any object with these methods (subclass :class:`Callback`
for the defaults); the loop itself knows none of the concrete ones
(:class:`~jaxnets.train.Evaluate`, :class:`~jaxnets.train.EarlyStopping`,
:class:`~jaxnets.train.HistoryFile`, :class:`~jaxnets.train.TensorBoard`,
:class:`~jaxnets.train.ProgressBar`, :class:`jaxnets.checkpoint.Checkpoint`):

* ``every``: when it runs: ``None`` (after every call), an int of steps, or
  ``(n, "steps")`` / ``(n, "epochs")``. The loop ends a call wherever a
  callback is due, so a callback due every 200 steps sees the state after
  exactly 200, 400, ... steps, whatever ``steps_per_call`` is.
* ``on_start(run) -> Resume | None``: before anything is compiled: check
  paths, open files, or restore a run (a checkpoint returns a
  :class:`Resume`).
* ``__call__(progress) -> bool | None``: when due; True asks the loop to stop.
* ``on_end(progress, error)``: once, however the run ends (``error`` is the
  exception, or None): flush, save, close.

``order`` sorts them (lower runs first): evaluations (-10) write their
metrics into the current history row before recorders (+10: files,
TensorBoard, checkpoints, the progress bar) read it. A plain function
``hook(progress) -> bool | None`` is a callback run after every call.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from jaxnets.train.history import History

__all__ = ["Callback", "Progress", "Resume", "Hook", "as_callback", "period", "check_every"]


class Progress(NamedTuple):
    """What a callback sees between compiled calls.

    Attributes:
      epoch: whole epochs done in this run (resumed ones included); for a
        source without epochs, 0.
      epochs: epochs asked for (None for a run given in steps).
      metrics: the last history row, ``{name: float}``.
      history: the history so far (``{name: [values]}``, rows aligned; see :func:`jaxnets.train.loop`).
      state: the state after ``step`` steps (do not keep it: the next call
        donates its buffers; copy what you need with ``jnp.copy``).
      step: steps done in this run (resumed ones included).
      steps: steps asked for.
      position: the absolute step counter (``origin + step``).
      run: the :class:`jaxnets.train.loop`'s run record (configuration, source, origin).
    """

    epoch: int
    epochs: int | None
    metrics: dict[str, Any]
    history: History
    state: Any
    step: int = 0
    steps: int = 0
    position: int = 0
    run: Any = None


class Resume(NamedTuple):
    """What a restoring callback's ``on_start`` returns: where the run goes on from."""

    state: Any
    position: int
    origin: int
    history: dict[str, Any]
    source: str = ""  # where it came from, for messages


def period(every: Any, steps_per_epoch: int | None, name: str = "every") -> int | None:
    """``every`` in steps: None, an int of steps, or ``(n, "steps" | "epochs")``."""
    if every is None:
        return None
    unit = "steps"
    if isinstance(every, tuple) and len(every) == 2:
        every, unit = every
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{name} must be a positive int of steps or (n, 'steps' | 'epochs'), got {every!r}")
    if unit == "steps":
        return every
    if unit == "epochs":
        if steps_per_epoch is None:
            raise ValueError(f"{name}={(every, unit)!r} counts epochs, but this source has none: give it in steps")
        return every * steps_per_epoch
    raise ValueError(f"{name} must count 'steps' or 'epochs', got {unit!r}")


def check_every(every: Any, name: str = "every") -> Any:
    """``every`` checked when a callback is made (the epochs it counts are checked against the source at the start)."""
    period(every, 1, name)
    return every


class Callback:
    """Defaults of the protocol (module docstring): runs after every call, does nothing."""

    every: Any = None
    order: int = 0

    def on_start(self, run: Any) -> Resume | None:
        return None

    def __call__(self, progress: Progress) -> bool | None:
        return None

    def on_end(self, progress: Progress, error: BaseException | None) -> None:
        return None


class Hook(Callback):
    """A plain function ``hook(progress) -> bool | None`` as a callback, run after every call (or ``every``)."""

    def __init__(self, fn: Callable[[Progress], Any], every: Any = None):
        if not callable(fn):
            raise TypeError(f"a hook must be callable as hook(progress) -> bool | None, got {fn!r}")
        check_every(every)
        self.fn: Callable[[Progress], Any]
        self.every: Any
        self.fn, self.every = fn, every
        self.__name__: str = getattr(fn, "__name__", repr(fn))

    def __repr__(self) -> str:
        return f"Hook({self.__name__})"

    def __call__(self, progress: Progress) -> bool | None:
        return self.fn(progress)


def as_callback(obj: Any) -> Any:
    """A callback object as it is; a plain function as a :class:`Hook`; anything else a TypeError."""
    if all(hasattr(obj, name) for name in ("on_start", "on_end")) and callable(obj):
        return obj
    if callable(obj):
        return Hook(obj)
    raise TypeError(f"callbacks must be Callback objects (on_start, __call__, on_end) or functions "
                    f"hook(progress) -> bool | None, got {obj!r}")
