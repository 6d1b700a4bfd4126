"""Checkpoints of whole runs (orbax), verified on restore; params in safetensors.

:class:`Checkpoint` is the loop's checkpoint callback
(``jaxnets.fit(..., callbacks=[Checkpoint("runs/ckpt")])`` or any
:func:`jaxnets.train.loop`): it saves the whole state (any pytree: a
:class:`jaxnets.TrainState`, a GAN's dict of them; typed random keys stored as
their key data), the run's position, its history and its configuration, and
resumes the run from the folder's latest (or best) readable checkpoint.
Since every step's random numbers derive from the state's key and the step
counter, a resumed run computes bitwise what the uninterrupted run computes.

:class:`Checkpoints` is the folder underneath, with `orbax-checkpoint
<https://orbax.readthedocs.io>`_:

* **atomic**: each save is written to a temporary folder and renamed when
  complete, so a process killed during a save leaves the previous one readable;
* **verified**: every saved array carries a CRC-32 of its bytes, checked on
  restore; a checkpoint whose array data changed on disk (a flipped byte), or
  that is truncated or unreadable, is skipped with a warning naming it, and the
  one before it is used;
* **in the background**: the state is copied to host memory, then written by a
  thread while training goes on. The writer is busy at most a share of the
  time (``writer_share``, 10% by default): after a save that took ``t``
  seconds it rests ``t (1 / share - 1)``. A save due while the writer is busy
  or resting replaces any older one waiting (but the best by ``best``, which
  waits its turn); without ``best`` the callback's saves due then are skipped
  before the state is copied (the first due after the rest is taken), so a
  skipped save costs the training nothing. The run's last state is written at
  its end without rest.
  On a small model whose epochs are shorter than a save (the main job: 8 ms
  epochs, 100-200 ms saves on 2 CPU cores) this keeps checkpointing "every
  epoch" near 5% of the training time, and a kill loses the steps since the
  last written save (a few seconds there); when epochs are longer than about
  ten saves, every save is written;
* **kept**: the last ``keep`` checkpoints and the best by a history metric,
  counted over every checkpoint in the folder (those of earlier, resumed runs too);
* **one run at a time**: a folder is locked by the run writing it; a second
  run on the same folder is refused with a message naming the holder.

:func:`save_params` / :func:`load_params` write and read the params alone in
`safetensors <https://huggingface.co/docs/safetensors>`_, named by their dict
paths (``dense_0/w``), readable from PyTorch and other tools.

Both need the ``checkpoint`` extra: ``pip install 'jaxnets[checkpoint]'``.

Example::

    state, history = jaxnets.fit(model, loss, optimizer, data, epochs=20, callbacks=[Checkpoint("runs/ckpt")])
    # killed at epoch 12? the same call resumes from the last checkpoint and ends where the first would have.
    checkpoint.save_params("model.safetensors", state.params)
    params = checkpoint.load_params("model.safetensors", like=state.params)
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import threading
import time
import warnings
import zlib
from typing import Any, cast

import jax
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.params_file import load_params, save_params
from jaxnets.train import Callback, Progress, Resume
from jaxnets.train.callbacks import check_every
from jaxnets.train import retired as _retired

__all__ = ["Checkpoint", "Checkpoints", "save_params", "load_params"]

_EXTRA_MSG = "{what} needs the checkpoint extra: pip install 'jaxnets[checkpoint]' ({error})"
_LOCK = ".jaxnets-lock"


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what="checkpointing", error=error)) from None
    return ocp


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _to_host(state: Any) -> Any:
    """The state with every typed key as its key data (orbax stores arrays, not keys)."""
    return jax.tree_util.tree_map(lambda a: jax.random.key_data(a) if _is_key(a) else a, state)


def _copy_to_host(tree: Any) -> Any:
    """NumPy copies of every leaf's global value; a leaf split across processes (FSDP) is gathered first.

    Every process calls it at the same point (the gather is a collective), and
    every process then holds the whole state, as it does on one machine.
    """
    def host(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.array(multihost_utils.process_allgather(a, tiled=True), copy=True)
        return np.array(a, copy=True)

    return jax.tree_util.tree_map(host, tree)


def _pack(host: Any) -> np.ndarray:
    """Every leaf's bytes, in tree order, as one uint8 array: one array for orbax to write, not one per leaf (the
    per-array cost dominates a small model's save). The shapes and dtypes recorded beside it unpack it."""
    parts = [np.ascontiguousarray(leaf).reshape(-1).view(np.uint8) for leaf in jax.tree_util.tree_leaves(host)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)


def _unpack(blob: np.ndarray, like_host: Any) -> Any:
    leaves, out, offset = jax.tree_util.tree_leaves(like_host), [], 0
    for leaf in leaves:
        dtype, shape = np.dtype(leaf.dtype), np.shape(leaf)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        out.append(np.frombuffer(blob[offset:offset + size].tobytes(), dtype).reshape(shape))
        offset += size
    if offset != blob.size:
        raise ValueError(f"the array data holds {blob.size} bytes, the state needs {offset}")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like_host), out)


def _checksums(host: Any) -> dict[str, Any]:
    return {_inputs.path_name(p): zlib.crc32(np.ascontiguousarray(leaf).tobytes())
            for p, leaf in jax.tree_util.tree_flatten_with_path(host)[0]}


def _check_id(epoch: Any) -> None:
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, np.integer)):
        raise TypeError(f"epoch must be an int >= 0 (the checkpoint's id), got {epoch!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be an int >= 0 (the checkpoint's id), got {epoch}")


def _lock(directory: str):
    """An exclusive lock on the folder for this process (released when it ends, however it ends)."""
    import fcntl

    path = os.path.join(directory, _LOCK)
    handle = open(path, "a")  # never written: opening it changes nothing in the folder
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(f"the checkpoint folder {directory} is in use by another run (it holds the lock on "
                         f"{path}): two runs writing one folder would overwrite each other's checkpoints. Give this "
                         f"run its own folder, or wait for the other to end") from None
    return handle


class Checkpoints:
    """A folder of checkpoints of one run: save, keep the last few and the best, restore the latest readable one.

    Args:
      directory: the folder (created if missing; a file or an unwritable folder is refused here).
      keep: how many of the latest checkpoints to keep (positive).
      best: a history name (``"test_loss"``); the best checkpoint by its
        value at the save is kept as well.
      best_mode: ``"min"`` (default for names ending in ``loss``) or ``"max"``.
      async_save: write in a background thread (default): ``save`` returns
        once the state is copied to host memory; ``wait`` and ``close`` block
        until the newest state given is on disk. Across processes saves are
        always written before ``save`` returns (orbax saves are collective).
      writer_share: the largest share of the time the background writer may
        be busy, in (0, 1] (module docstring); 1 writes each save as soon as
        the one before it is on disk.
      lock: hold an exclusive lock on the folder while open (default; only
        process 0 locks across processes).
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3, best: str | None = None, best_mode: str | None = None,
                 async_save: bool = True, lock: bool = True, writer_share: float = 0.1):
        ocp = _orbax()
        if isinstance(directory, bool) or not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"checkpoint directory must be a path, got {directory!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoint keep must be a positive int, got {keep!r}")
        if best is not None and not isinstance(best, str):
            raise TypeError(f"checkpoint best must be a history name such as 'test_loss', got {best!r}")
        best_mode = best_mode or ("min" if best and best.endswith("loss") else "max")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        async_save, lock = _checks.boolean(async_save, "async_save"), _checks.boolean(lock, "lock")
        self.directory: str
        self.best: str | None
        self.best_mode: str | None
        self.keep: int
        self.directory, self.best, self.best_mode, self.keep = os.path.abspath(os.fspath(directory)), best, best_mode, keep
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"checkpoint directory {self.directory} is a file: give a folder")
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise ValueError(f"checkpoint directory {self.directory} cannot be created: {error}") from error
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ValueError(f"checkpoint directory {self.directory} cannot be written (permissions or a read-only "
                             f"filesystem)")
        self._lock = _lock(self.directory) if lock and jax.process_index() == 0 else None
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True,
                                               cleanup_tmp_directories=True)  # retention and asynchrony: our own
        self._ocp = ocp
        self.manager: Any = ocp.CheckpointManager(self.directory, options=options)  # orbax's
        self.async_save = bool(async_save) and jax.process_count() == 1
        if isinstance(writer_share, bool) or not isinstance(writer_share, (int, float)) or not 0 < writer_share <= 1:
            raise ValueError(f"writer_share must be a number in (0, 1], got {writer_share!r}")
        self.writer_share = float(writer_share)
        self._ready_at = 0.0  # when the writer may start the next save (time.monotonic)
        self._flush = False  # wait/close: write what is pending now, without rest
        self._cond = threading.Condition()
        self._pending: list = []  # saves not yet started: the newest, after the best one it superseded, if any
        self._busy = False
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._metrics: dict[int, float] = {}  # best-metric value of each checkpoint in the folder (read lazily)
        self.skipped: list[int] = []  # ids whose save was superseded by a newer one before it started

    def epochs(self) -> list[int]:
        """The ids (epochs, or steps for a run counted in steps) that have a checkpoint, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: Any, history: dict[str, Any], config: dict[str, Any] | None = None, *,
             final: bool = True) -> bool:
        """Save ``state``, ``history`` and ``config`` as checkpoint ``epoch`` (in the background unless ``async_save=False``).

        With ``final=False`` (a save due in the middle of a run), a folder without
        ``best`` that is writing or resting in the background skips the save
        without copying the state, since a newer save would supersede it before the
        writer is ready (the module docstring). The next save due after the rest is
        taken. Returns whether the save was taken (written or queued).
        """
        self._raise_failed()
        _check_id(epoch)
        if not isinstance(history, dict):
            raise TypeError(f"history must be a dict of lists ({{name: [values]}}), got {type(history).__name__}")
        if not final and self.async_save and self.best is None:
            with self._cond:
                if self._busy or time.monotonic() < self._ready_at:  # nothing of the state is read
                    self.skipped.append(int(epoch))
                    return False
        _inputs.check_not_donated(state, "state")
        host = _copy_to_host(_to_host(state))
        history = json.loads(json.dumps(history))  # a copy now: the caller appends to its history while this is written
        meta = dict(config or {})  # the shapes and checksums are computed by the writer, off the training thread
        if self.best is not None:
            if self.best not in history:
                raise ValueError(f"checkpoint best must be one of the history's names {sorted(history)}, got {self.best!r}")
            values = [v for v in history[self.best] if not (isinstance(v, float) and math.isnan(v))]
            meta["best_value"] = float(values[-1]) if values else None
        item = (int(epoch), host, history, meta)
        if self.skipped and self.skipped[-1] == int(epoch):  # skipped mid-run, taken now (the run's final save)
            self.skipped.pop()
        if not self.async_save:
            try:
                self._write(item)
            except OSError as error:  # a full disk, a folder gone read-only: the same message as a background save's
                self._error = error
                self._raise_failed()
            return True
        with self._cond:
            self._pending = self._supersede(self._pending, item)
            if self._worker is None:
                self._worker = threading.Thread(target=self._writer, name="jaxnets-checkpoint-writer", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return True

    def _supersede(self, pending: list, item) -> list:
        """What waits after ``item`` arrives: ``item``, and the best-scoring waiting save if it scores better."""
        def value(entry):
            v = entry[3].get("best_value")
            return None if v is None or math.isnan(v) else (v if self.best_mode == "min" else -v)

        scored = [(v, e) for e in pending if (v := value(e)) is not None]
        keep = [min(scored, key=lambda ve: ve[0])[1]] if scored else []
        new = value(item)
        if scored and new is not None and min(v for v, _ in scored) >= new:
            keep = []
        self.skipped.extend(e[0] for e in pending if all(e is not k for k in keep))
        return keep + [item]

    def _write(self, item) -> None:
        ocp = self._ocp
        epoch, host, history, meta = item
        meta = {**meta, "shapes": {k: [list(v[0]), v[1]] for k, v in _inputs.shapes_by_path(host).items()},
                "checksums": _checksums(host)}
        try:
            if epoch in self.manager.all_steps():  # an unreadable one the run resumed before, or one a resume superseded
                self.manager.delete(epoch)
            self.manager.save(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"packed": _pack(host)}), history=ocp.args.JsonSave(history),
                config=ocp.args.JsonSave(meta)),
                force=True)
            self.manager.wait_until_finished()
        except BaseException:
            self._clean_tmp()
            raise
        if meta.get("best_value") is not None:
            self._metrics[epoch] = meta["best_value"]
        self._prune()

    def _clean_tmp(self) -> None:
        for name in os.listdir(self.directory):
            if "tmp" in name and os.path.isdir(os.path.join(self.directory, name)):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def best_epoch(self) -> int | None:
        """The id of the best checkpoint in the folder by ``best`` (None without ``best`` or values)."""
        if self.best is None:
            return None
        for e in self.epochs():
            if e not in self._metrics:
                value = self._read_meta(e).get("best_value")
                self._metrics[e] = value if value is not None else math.nan
        values = {e: v for e, v in self._metrics.items() if e in set(self.epochs()) and not math.isnan(v)}
        if not values:
            return None
        return (min if self.best_mode == "min" else max)(values, key=lambda e: (values[e], e))

    def _read_meta(self, epoch: int) -> dict[str, Any]:
        try:
            return self.manager.restore(epoch, args=self._ocp.args.Composite(config=self._ocp.args.JsonRestore()))["config"]
        except Exception:  # noqa: BLE001 - an unreadable checkpoint has no metric
            return {}

    def _prune(self) -> None:
        """Keep the latest ``keep`` and the best, over every checkpoint in the folder."""
        if jax.process_index() != 0 and jax.process_count() > 1:
            return
        epochs = self.epochs()
        kept = set(epochs[-self.keep:])
        best = self.best_epoch()
        if best is not None:
            kept.add(best)
        for e in epochs:
            if e not in kept:
                self.manager.delete(e)

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending or (not self._flush and time.monotonic() < self._ready_at):
                    self._cond.wait(None if not self._pending else self._ready_at - time.monotonic())
                item, self._busy = self._pending.pop(0), True
            began = time.monotonic()
            try:
                self._write(item)
            except BaseException as error:  # noqa: BLE001 - reported to the training thread at its next call
                self._error = error
            finally:
                with self._cond:
                    self._busy = False
                    self._ready_at = time.monotonic() + (time.monotonic() - began) * (1 / self.writer_share - 1)
                    self._cond.notify_all()

    def _raise_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            hint = " (the disk is full)" if isinstance(error, OSError) and error.errno == errno.ENOSPC else ""
            raise RuntimeError(f"saving a checkpoint in {self.directory} failed{hint}: {type(error).__name__}: {error}; "
                               f"the earlier checkpoints there stay readable") from error

    def restore(self, like: Any, epoch: int | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
        """``(state, history, meta)`` of checkpoint ``epoch`` (default the latest readable one), or None if there is none.

        ``like`` is a state of the run (a fresh one will do): the checkpoint
        must hold the same structure, shapes and dtypes, or a ValueError lists
        the differing paths (nothing is overwritten). An unreadable
        (truncated, corrupt) checkpoint, or one whose arrays do not match the
        checksums written with them, is reported in a warning naming its
        folder, and the one before it is used.
        """
        ocp = self._ocp
        if epoch is not None:
            _check_id(epoch)
        if not jax.tree_util.tree_leaves(like):
            raise ValueError(f"like must be a state of the run (its structure, shapes and dtypes), got {like!r:.60}")
        epochs = self.epochs() if epoch is None else [int(epoch)]
        if not epochs:
            return None
        expected = {k: [list(v[0]), v[1]] for k, v in _inputs.shapes_by_path(_to_host(like)).items()}
        like_host = jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), a.dtype), _to_host(like))
        abstract = {"packed": np.zeros((sum(a.nbytes for a in jax.tree_util.tree_leaves(like_host)),), np.uint8)}
        failures = []
        for e in reversed(epochs):
            folder = os.path.join(self.directory, str(e))
            try:
                meta = self.manager.restore(e, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
            except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
                failures.append(f"{folder}: {type(error).__name__}: {error}")
                continue
            if meta.get("shapes") != expected:
                diff = [f"  {p}: this run has {expected.get(p, 'nothing')}, the checkpoint {meta['shapes'].get(p, 'nothing')}"
                        for p in sorted(set(expected) | set(meta.get("shapes", {})))
                        if expected.get(p) != meta.get("shapes", {}).get(p)]
                raise ValueError(f"the checkpoint {folder} holds another model's or optimizer's state "
                                 f"(nothing was overwritten):\n" + "\n".join(diff[:20]))
            try:
                got = self.manager.restore(e, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()))
            except Exception as error:  # noqa: BLE001
                failures.append(f"{folder}: {type(error).__name__}: {error}")
                continue
            try:
                host = _unpack(np.asarray(got["state"]["packed"]), like_host)
            except ValueError as error:
                failures.append(f"{folder}: {error}")
                continue
            sums = _checksums(host)
            bad = [p for p, crc in meta.get("checksums", {}).items() if sums.get(p) != crc]
            if bad or "checksums" not in meta:
                failures.append(f"{folder}: the array data does not match its checksums (changed on disk) at "
                                f"{', '.join(bad[:5]) or 'every leaf (no checksums written)'}")
                continue
            if failures:
                warnings.warn("unreadable checkpoint(s) skipped:\n" + "\n".join(failures) + f"\nresuming from {folder}",
                              RuntimeWarning, stacklevel=2)
            leaves = [jax.random.wrap_key_data(jax.numpy.asarray(h), impl=jax.random.key_impl(l)) if _is_key(l)
                      else jax.numpy.asarray(h) for h, l in zip(jax.tree_util.tree_leaves(host), jax.tree_util.tree_leaves(like))]
            state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
            return state, dict(got["history"]), meta
        raise ValueError(f"no readable checkpoint in {self.directory}:\n" + "\n".join(failures))

    def wait(self) -> None:
        """Block until the newest state given to ``save`` is on disk; raise if a background save failed."""
        with self._cond:
            self._flush = True  # no rest for what is pending now
            self._cond.notify_all()
            while self._pending or self._busy:
                self._cond.wait()
            self._flush = False
        self._raise_failed()

    def close(self) -> None:
        """Wait for the newest save, then release orbax's resources and the folder's lock."""
        try:
            self.wait()
        finally:
            self.manager.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def _check_options(keep: Any, best: Any, best_mode: Any, async_save: Any) -> None:
    """:class:`Checkpoints`' options, as its constructor checks them (for a :class:`Checkpoint` made before its folder)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"checkpoint keep must be a positive int, got {keep!r}")
    if best is not None and not isinstance(best, str):
        raise TypeError(f"checkpoint best must be a history name such as 'test_loss', got {best!r}")
    if best_mode not in (None, "min", "max"):
        raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    _checks.boolean(async_save, "async_save")


#: configuration entries that may change when a run resumes (how long it runs, how it is shown)
_MAY_CHANGE = ("loop/steps", "loop/epochs", "loop/steps_per_call")  # steps per call change no number (tested)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(config, dict):
        out = {}
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
        return out
    return {prefix.rstrip("/"): config}


class Checkpoint(Callback):
    """The checkpoint callback: save the run every ``every``, resume it from the folder when it starts again.

    Args:
      directory: the folder (or a :class:`Checkpoints`), checked before
        anything is compiled.
      every: when to save (``(1, "epochs")``, ``(500, "steps")``; default
        after every call); the run's last state is always saved at its end,
        and at a stop, an error or a divergence (the last finite state).
      keep, best, best_mode, async_save, writer_share: as for :class:`Checkpoints`.
      save: ``"always"`` or ``"improved"`` (only when ``best`` improved on
        every earlier checkpoint in the folder; the end of the run too).
      resume: ``"latest"`` (default) or ``"best"`` checkpoint of the folder,
        or None: a fresh run, whatever the folder holds (its saves replace
        checkpoints of the same number; the retention counts them all).
      check_config: refuse to resume from a checkpoint whose run had another
        configuration (model, optimizer, loss, data, batch size, seed, steps
        per call; :func:`jaxnets.train.loop`'s ``config``), naming what
        differs. ``False`` resumes anyway.
    """

    order = 30
    restores = True

    def __init__(self, directory: Any, *, every: Any = None, keep: int = 3, best: str | None = None,
                 best_mode: str | None = None, save: str = "always", resume: str = "latest",
                 async_save: bool = True, check_config: bool = True, writer_share: float = 0.1):
        if save not in ("always", "improved"):
            raise ValueError(f"save must be 'always' or 'improved', got {save!r}")
        if resume not in ("latest", "best", None):
            raise ValueError(f"resume must be 'latest', 'best' or None (a fresh run), got {resume!r}")
        given = isinstance(directory, Checkpoints)  # a folder opened already holds its own options
        if given and best is not None and best != directory.best:
            raise ValueError(f"best={best!r} differs from the Checkpoints folder's own best={directory.best!r}: "
                             f"the folder's options are its own; give best= to Checkpoints(...) only")
        if (save == "improved" or resume == "best") and (directory.best if given else best) is None:
            why = (f"a best metric, but the Checkpoints folder {directory.directory} was opened without one: open it "
                   f"as Checkpoints(..., best='test_loss')" if given else "best= (a history name such as 'test_loss')")
            raise ValueError(f"save={save!r}, resume={resume!r} need {why}")
        if not isinstance(directory, Checkpoints):  # the folder's own options, checked now (the folder opens at the start)
            _check_options(keep, best, best_mode, async_save)
        check_every(every)
        self.every: Any
        self.every, self.save_mode, self.resume_mode = every, save, resume
        self.check_config: bool = _checks.boolean(check_config, "check_config")
        self.folder = directory if isinstance(directory, Checkpoints) else None
        self._args: dict[str, Any] = dict(keep=keep, best=best, best_mode=best_mode, async_save=async_save,
                                          writer_share=writer_share)
        self.directory: Any = directory  # as given: a path, or the Checkpoints folder
        self.saved_at: int | None = None
        self.run: Any = None  # the loop's Run, from on_start
        #: where the run resumed (its absolute step), or None for a fresh one; set when the run starts
        self.resumed_at: int | None = None
        if self.folder is None:  # checked now: a bad path fails before anything else happens
            self._check_path(directory)

    @classmethod
    def from_fit(cls, directory: Any, *, every: int = 1, keep: int = 3, best: str | None = None) -> "Checkpoint":
        """The checkpoint of 0.1's ``fit(checkpoint_dir=, checkpoint_every=, checkpoint_keep=, checkpoint_best=)``."""
        return cls(directory, every=(every, "epochs"), keep=keep, best=best)

    @staticmethod
    def _check_path(directory: Any) -> None:
        if isinstance(directory, bool) or not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"checkpoint directory must be a path or a Checkpoints, got {type(directory).__name__} "
                            f"{directory!r}")
        path = os.path.abspath(os.fspath(directory))
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"checkpoint directory {path} is a file: give a folder")

    def __repr__(self) -> str:
        return f"Checkpoint({getattr(self.folder, 'directory', self.directory)!r}, every={self.every!r})"

    def _id(self, progress: Progress) -> int:
        spe = progress.run.steps_per_epoch
        counts_epochs = progress.run.config["loop"].get("epochs") is not None
        return progress.step // spe if counts_epochs and spe and progress.step % spe == 0 else progress.step

    def on_start(self, run: Any) -> Resume | None:
        self.run = run
        if self.folder is None:
            self.folder = Checkpoints(self.directory, **self._args)
        self.resumed_at = None
        if run.state is None or self.resume_mode is None:
            return None
        choice = self.folder.best_epoch() if self.resume_mode == "best" else None
        restored = self.folder.restore(run.state, epoch=choice)
        if restored is None:
            return None
        state, history, meta = restored
        if self.check_config:
            now, then = _flatten(run.config), _flatten(meta.get("run", {}))
            differ = [k for k in sorted(set(now) | set(then)) if k not in _MAY_CHANGE and now.get(k) != then.get(k)]
            if differ:
                lines = "\n".join(f"  {k}: the checkpoint has {then.get(k, 'nothing')!r}, this run {now.get(k, 'nothing')!r}"
                                   for k in differ[:12])
                raise ValueError(f"the checkpoint in {self.folder.directory} was written by a run with another "
                                 f"configuration (nothing was overwritten):\n{lines}\nResume it with the same "
                                 f"configuration, start this run in another folder, or pass "
                                 f"Checkpoint(..., check_config=False) to continue it anyway")
        self.saved_at = self.resumed_at = int(meta["position"])
        return Resume(state, int(meta["position"]), int(meta["origin"]), history, self.folder.directory)

    def best_state(self, like: Any) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """``(state, history, meta)`` of the folder's best checkpoint by ``best`` (e.g. to sample from the best params
        after the run); ``like`` gives the structure (the state the loop returned will do)."""
        folder = self.folder if self.folder is not None and self.folder._lock is not None else \
            Checkpoints(getattr(self.folder, "directory", self.directory), lock=False, **{**self._args, "async_save": False})
        best = folder.best_epoch()
        if best is None:
            raise ValueError(f"no checkpoint in {folder.directory} has a value of best={folder.best!r}")
        return cast(tuple[Any, dict[str, Any], dict[str, Any]], folder.restore(like, epoch=best))  # an epoch given: never None

    def _improved(self, progress: Progress) -> bool:
        best = cast(Checkpoints, self.folder).best  # the folder: set by on_start, as every use below
        values = [v for v in progress.history.get(cast(str, best), []) if not math.isnan(v)]  # best None: no values
        if not values:
            return False
        previous = cast(Checkpoints, self.folder).best_epoch()
        if previous is None:
            return True
        old = cast(Checkpoints, self.folder)._metrics.get(previous)
        return old is None or (values[-1] < old if cast(Checkpoints, self.folder).best_mode == "min" else values[-1] > old)

    def _save(self, progress: Progress, final: bool = False) -> None:
        if self.saved_at == progress.position:
            return
        meta = {"run": progress.run.config, "position": progress.position, "origin": progress.run.origin,
                "step": progress.step}
        if cast(Checkpoints, self.folder).save(self._id(progress), progress.state, dict(progress.history), meta,
                                               final=final):
            self.saved_at = progress.position

    def __call__(self, progress: Progress) -> None:
        if self.save_mode == "always" or self._improved(progress):
            self._save(progress)
        return None

    def on_end(self, progress: Progress, error: BaseException | None) -> None:
        if self.folder is None:
            return
        failed_save = isinstance(error, OSError) or isinstance(getattr(error, "__cause__", None), OSError)
        try:
            try:
                at_end = progress.position == progress.run.end
                if progress.step > 0 and (self.save_mode == "always" or at_end) and not failed_save:
                    self._save(progress, final=True)  # the last (finite) state: the end, a stop, an error, a divergence
            finally:
                self.folder.close()
        except Exception as late:  # noqa: BLE001 - a save failing now (a full disk) must not lose the training
            if error is not None:  # the run's own error goes on, carrying its state; this one becomes a note
                error.add_note(f"the checkpoint's final save failed too: {type(late).__name__}: {late}")
                return
            if not hasattr(late, "state"):
                setattr(late, "state", progress.state)
                setattr(late, "history", progress.history)
                late.add_note(f"raised by the checkpoint's final save after step {progress.step} of the run; "
                              "error.state and error.history hold the last good state and its history")
            raise


_retired.register_checkpoint(Checkpoint.from_fit)  # fit(checkpoint_dir=...) for one more release
