"""The general loop: any step over any state, for steps or epochs, K steps per host round-trip, callbacks between.

:func:`loop` runs ``step(state, batch) -> (state, metrics)`` (pure; from
:func:`jaxnets.train.make_step`, or two of them composed for a GAN) over the
batches of a :class:`jaxnets.train.Source`. Each host round-trip is one
compiled call (:mod:`jaxnets.train.program`) of up to ``steps_per_call``
steps; Python runs only between calls, where the callbacks run
(:mod:`jaxnets.train.callbacks`). The program is compiled once per
configuration (step, source, segment length) and reused by later calls and
later loops with the same one.

Positions: the run starts at the state's step counter (``state.step`` for a
:class:`TrainState`, else 0, or ``start``), called its *origin*; ``steps`` and
``epochs`` count from it, resumed steps included. Keys: the source draws
from ``key`` (default: the state's own key, for a ``TrainState``), folded
with the step counter, so a resumed run computes what the uninterrupted one
computes.

History: a row every ``log_every`` steps (default: every epoch, or every
call) holding ``step`` (steps done), ``epoch`` (when the source has epochs),
``time`` (seconds since the loop began), the means over the row's steps of
the step's scalar metrics prefixed ``train_`` (``train_loss``), the steps
skipped by a loss scale (``skipped_steps``, summed), and the values at the
row's end of the loss scale and of the optimizer's injected hyperparameters
(``learning_rate``). Callbacks add their own (``test_loss``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any, Callable, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.train import program as program_module
from jaxnets.train.callbacks import Progress, Resume, as_callback, period
from jaxnets.train.history import LOCATE_ADVICE, History, NonFiniteError
from jaxnets.train.state import copy_state as _copy, step_counter as _counter

__all__ = ["loop", "Run"]

_PROGRAMS: dict[Any, Any] = {}


class Run:
    """What callbacks know of the run: its configuration, source, origin, target and history."""

    def __init__(self, config: dict[str, Any], source: Any, origin: int, end: int, history: History, steps_per_epoch: int | None):
        self.config, self.source, self.origin, self.end = config, source, origin, end
        self.history, self.steps_per_epoch = history, steps_per_epoch
        self.state: Any = None
        self.position = origin

    def progress(self, state: Any, position: int) -> Progress:
        done, spe = position - self.origin, self.steps_per_epoch
        rows = self.history.rows()
        metrics = {k: v[-1] for k, v in self.history.items() if rows and not (isinstance(v[-1], float) and math.isnan(v[-1]))}
        epochs = self.config["loop"].get("epochs")
        return Progress(done // spe if spe else 0, epochs, metrics, self.history, state, done, self.end - self.origin,
                        position, self)


def _compiled(step, source, length, max_count, watch, check, freeze, jit):
    signature = source.signature() if hasattr(source, "signature") else None
    try:  # never an id: a dead source's id can be a new one's
        watched = None if watch is None else tuple(watch)
        key = None if signature is None else (step, type(source), signature, length, max_count, watched, check,
                                              freeze)
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _PROGRAMS:
        return _PROGRAMS[key]
    if key is not None:  # the cached program must not keep this source's device data alive
        source = copy.copy(source)
        source.data = None
    built = program_module.build(step, source, length=length, max_count=max_count, watch=watch, check_finite=check,
                                 freeze=freeze)
    built = jax.jit(built, donate_argnums=0) if jit else built
    if key is not None:
        if len(_PROGRAMS) > 64:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = built
    return built


def _every_step_skipped(run, state, here: int, steps: int, on_nonfinite: str, history, spe) -> None:
    """A row whose every step a loss scale skipped: gradients never finite, whatever the scale; a divergence."""
    first = here - steps
    epoch = (first - run.origin) // spe + 1 if spe else None
    unit, at = ("epoch", f"epoch {epoch}, steps {first}..{here - 1}") if spe and steps == spe else \
        ("row", f"steps {first}..{here - 1}")
    message = (f"training diverged at {at}: every step of that {unit} had non-finite gradients, each skipped by the "
               f"loss scale: not an overflow the scale can fix")
    if on_nonfinite == "raise":
        run.state, run.position = state, here  # skipped steps left the params as they were: this state is finite
        raise NonFiniteError(f"{message}; the params are those before it (error.state). To find the cause, "
                             f"{LOCATE_ADVICE}", epoch=epoch, step=first, state=state, history=history)
    warnings.warn(f"{message}; training goes on (on_nonfinite='warn')", RuntimeWarning, stacklevel=3)


def _check_options(start, watch, prefix, config, jit) -> None:
    """The loop's plain options: each a TypeError/ValueError naming it, before anything runs."""
    if start is not None:
        if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
            raise TypeError(f"start must be an int (the absolute step to start at), got {start!r}")
        if start < 0:
            raise ValueError(f"start must be >= 0 (the absolute step to start at), got {start}")
    if watch is not None and (isinstance(watch, str) or not isinstance(watch, (tuple, list))
                              or not all(isinstance(w, str) for w in watch)):
        raise TypeError(f"watch must be None or a sequence of metric names such as ('loss',), got {watch!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str such as 'train_', got {prefix!r}")
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict (the run's configuration) or None, got {type(config).__name__}")
    _checks.boolean(jit, "jit")


def loop(step: Callable[..., Any], state: Any, source: Any, *, steps: int | None = None, epochs: int | None = None,
         callbacks: Sequence[Any] = (), steps_per_call: int | None = None, log_every: int | None = None,
         key: jax.Array | None = None, start: int | None = None, on_nonfinite: str = "raise",
         watch: Sequence[str] | None = None, prefix: str = "train_", config: dict[str, Any] | None = None,
         jit: bool = True) -> tuple[Any, History]:
    """Runs ``step`` over ``source`` for ``steps`` or ``epochs``; returns ``(state, history)`` (module docstring).

    Args:
      step: pure ``(state, batch) -> (state, metrics)``; metrics are scalars.
      state: any pytree (a :class:`TrainState`, a dict of them); donated to
        the first call after a copy, so the caller's arrays stay valid.
      source: a :class:`jaxnets.train.Source` (:class:`ArraySource`,
        :class:`Sampler`, :class:`jaxnets.streaming.Stream`).
      steps, epochs: how long the run is, from its origin (exactly one).
      callbacks: callback objects or plain ``hook(progress)`` functions.
      steps_per_call: steps fused per host round-trip (default: one epoch,
        or 100 steps); callbacks due sooner end a call sooner.
      log_every: steps per history row (default: one epoch, or ``steps_per_call``).
      key: the source's key (default: ``state.key``; required for a state without one).
      start: the absolute step to start at (default: ``state.step``, or the
        first step counter inside the state, a dict of TrainStates; else 0).
        Callbacks that restore (a checkpoint) start first, then the others in ``order``.
      on_nonfinite: ``"raise"`` (stop at the first non-finite segment, raise
        :class:`NonFiniteError` holding the last finite state), ``"warn"`` or ``"ignore"``.
      watch: the metrics whose non-finite value is a divergence, each one the
        step returns (default: ``"loss"`` when the step returns one; the
        state's floating leaves are always checked).
      prefix: prepended to the step's metric names in the history.
      config: the run's configuration, recorded by checkpoints and compared on resume.
      jit: compile the calls (False runs them eagerly, for debugging).
    """
    if not callable(step):
        raise TypeError(f"step must be callable as step(state, batch) -> (state, metrics), got {step!r}")
    if not (hasattr(source, "inputs") and hasattr(source, "batch")):
        raise TypeError(f"source must implement jaxnets.train.Source (ArraySource, Sampler, a Stream), got {source!r}")
    if on_nonfinite not in ("raise", "warn", "ignore"):
        raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {on_nonfinite!r}")
    if (steps is None) == (epochs is None):
        raise TypeError("loop needs exactly one of steps and epochs, got " + ("both" if steps is not None else "neither"))
    _check_options(start, watch, prefix, config, jit)
    spe: int | None = source.steps_per_epoch
    if epochs is not None:
        epochs = _checks.positive_int(epochs, "epochs")
        if spe is None:
            raise ValueError(f"epochs={epochs} needs a source with epochs; {source!r} has none: give steps")
        total = epochs * spe
    else:
        total = _checks.positive_int(steps, "steps")
    steps_per_call = (cast(int, spe) if epochs is not None else min(total, 100)) if steps_per_call is None \
        else _checks.positive_int(steps_per_call, "steps_per_call")
    log_every = (cast(int, spe) if epochs is not None else steps_per_call) if log_every is None \
        else _checks.positive_int(log_every, "log_every")
    if key is None and not hasattr(state, "key"):
        raise TypeError("key must be given (a jax.random key for the source) when the state has no key of its own")
    if key is not None:
        key = _inputs.as_key(key)
    else:
        _checks.prng_key(state.key, "state.key")
    callbacks = sorted((as_callback(c) for c in (callbacks if isinstance(callbacks, (list, tuple)) else [callbacks])),
                       key=lambda c: getattr(c, "order", 0))
    periods = [period(getattr(c, "every", None), spe, f"{type(c).__name__}.every") for c in callbacks]
    if start is None:
        start = _counter(state)
    _inputs.check_not_donated(state, "state")
    config = {"loop": {"steps": steps, "epochs": epochs, "steps_per_call": steps_per_call, "log_every": log_every,
                       "steps_per_epoch": spe}, "source": source.describe(), **(config or {})}
    run = Run(config, source, start, start + total, History({"step": [], **({"epoch": []} if spe else {})}), spe)
    state = _copy(state)  # the program donates its input: the caller's arrays stay valid
    position = start
    run.state = state  # what a restoring callback restores into (its structure, shapes, key kinds)
    began = time.perf_counter()
    try:
        for c in sorted(callbacks, key=lambda c: not getattr(c, "restores", False)):  # a checkpoint restores first
            resumed = c.on_start(run)
            if isinstance(resumed, Resume):
                state, position, run.origin, run.history = resumed.state, resumed.position, resumed.origin, History.of(resumed.history)
                run.end, run.position, run.state = run.origin + total, position, state
                if position > run.end:
                    raise ValueError(f"the run resumed from {resumed.source} at step {position - run.origin} of its "
                                     f"origin, past the {total} steps asked for: ask for at least as many steps "
                                     f"(epochs) as the checkpoint holds, or start a new run in another folder")
    except BaseException:
        source.close()
        raise
    history = run.history
    seg = math.gcd(log_every, steps_per_call, *[p for p in periods if p])
    warned, error, acc = False, None, {"sums": {}, "lasts": {}, "steps": 0}
    source.start(state.key if key is None else key, position, run.origin, run.end)
    try:
        while position < run.end:
            done = position - run.origin
            due = [p - done % p for p in periods if p] + [steps_per_call - done % steps_per_call, run.end - position]
            length = min(due)
            limit = source.max_length(position, run.origin)
            seg_len = min(seg, length) if limit is None else min(seg, length, limit)
            count = length // seg_len if limit is None else 1
            program = _compiled(step, source, seg_len, max(1, steps_per_call // seg_len) if limit is None else 1,
                                watch, on_nonfinite != "ignore", on_nonfinite == "raise", jit)
            feed = source.feed(state.key if key is None else key, position, run.origin, count * seg_len)
            state, out = program(state, key, np.int32(position), np.int32(run.origin), np.int32(count),
                                 source.data, feed)
            out = jax.device_get(out)
            seconds = time.perf_counter() - began
            for i in range(int(out["done"])):
                flag = int(out["nonfinite"][i])
                if flag >= 0:
                    where = position + i * seg_len + flag
                    epoch = (where - run.origin) // spe + 1 if spe else None
                    at = (f"epoch {epoch}, step {where} (step {(where - run.origin) % spe} of the epoch)" if spe
                          else f"step {where}")
                    message = (f"training diverged: the loss (or a watched metric of {tuple(watch or ('loss',))}) or the state "
                               f"became NaN/Inf at {at}")
                    if on_nonfinite == "raise":
                        position += i * seg_len
                        run.state, run.position = state, position
                        raise NonFiniteError(f"{message}; the loop stopped and kept the last finite state (step "
                                             f"{position}: error.state, error.history). To find the cause, "
                                             f"{LOCATE_ADVICE}. Lower the learning rate, or pass on_nonfinite='warn' "
                                             f"to train on", epoch=epoch, step=where, state=state, history=history)
                    if not warned:
                        warned = True
                        warnings.warn(f"{message}; training goes on (on_nonfinite='warn')", RuntimeWarning, stacklevel=2)
                for name, value in out["sums"].items():
                    acc["sums"][name] = acc["sums"].get(name, 0.0) + float(value[i])
                acc["lasts"] = {name: float(value[i]) for name, value in out["lasts"].items()}
                acc["steps"] += seg_len
                here = position + (i + 1) * seg_len
                if (here - run.origin) % log_every == 0 or here == run.end:
                    if acc["sums"].get("skipped_steps", 0.0) >= acc["steps"] and on_nonfinite != "ignore":
                        _every_step_skipped(run, state, here, acc["steps"], on_nonfinite, history, spe)
                    row = {"step": here - run.origin, **({"epoch": (here - run.origin) / spe} if spe else {})}
                    if spe and (here - run.origin) % spe == 0:
                        row["epoch"] = (here - run.origin) // spe
                    row.update(program_module.row_values(acc["sums"], acc["lasts"], acc["steps"], prefix))
                    row["time"] = seconds
                    history.add_row(row)
                    acc = {"sums": {}, "lasts": {}, "steps": 0}
            position += int(out["done"]) * seg_len
            run.state, run.position = state, position
            progress = run.progress(state, position)
            stop = False
            for c, p in zip(callbacks, periods):
                if p is None or (position - run.origin) % p == 0 or position == run.end:
                    try:
                        stop = bool(c(progress)) or stop
                    except Exception as caught:
                        caught.add_note(f"raised by the callback {getattr(c, '__name__', c)!r} after step "
                                        f"{position - run.origin} of the run (epoch {progress.epoch})")
                        raise
                    progress = run.progress(state, position)
            if stop:
                break
    except BaseException as caught:
        error = caught
        if not hasattr(caught, "state") and not isinstance(caught, KeyboardInterrupt):
            try:
                cast(Any, caught).state, cast(Any, caught).history = run.state if run.state is not None else state, history
                caught.add_note(f"raised during jaxnets.train.loop at step {run.position - run.origin} of the run; "
                                "error.state and error.history hold the last good state and its history")
            except (AttributeError, TypeError):  # an exception type that takes no attributes
                pass
        raise
    finally:
        try:
            final = run.progress(run.state if run.state is not None else state, run.position)
            for c in callbacks:
                c.on_end(final, error)
        finally:
            source.close()
    return state, history
