"""Checkpoints of whole runs (orbax), and params in safetensors.

:class:`Checkpoints` saves a run's whole :class:`jaxnets.TrainState` (params,
optimizer state, model state, step counter and the typed random key, stored
as its key data), its history and its configuration, with
`orbax-checkpoint <https://orbax.readthedocs.io>`_: each save is written to a
temporary folder and renamed when complete, so a process killed during a
save leaves the previous checkpoint readable; saves are asynchronous (the
state is copied to host memory, then written while training goes on). It
keeps the last ``keep`` checkpoints and, with ``best``, the best by a
history metric. :func:`jaxnets.fit` uses it through ``checkpoint_dir=``;
since every step's random numbers derive from the state's key and counter,
a resumed run computes bitwise what the uninterrupted run computes.

:func:`save_params` / :func:`load_params` write and read the params alone
in `safetensors <https://huggingface.co/docs/safetensors>`_, named by their
dict paths (``dense_0/w``), readable from PyTorch and other tools.

Both need the ``checkpoint`` extra: ``pip install 'jaxnets[checkpoint]'``.

Example::

    state, history = jaxnets.fit(model, loss, optimizer, data, epochs=20, checkpoint_dir="runs/ckpt")
    # killed at epoch 12? the same call resumes from the last checkpoint and ends where the first would have.
    checkpoint.save_params("model.safetensors", state.params)
    params = checkpoint.load_params("model.safetensors", like=state.params)
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from typing import Any

import jax
import numpy as np

from jaxnets import _run
from jaxnets.train import TrainState

__all__ = ["Checkpoints", "save_params", "load_params"]

_EXTRA_MSG = "{what} needs the checkpoint extra: pip install 'jaxnets[checkpoint]' ({error})"


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what="checkpointing", error=error)) from None
    return ocp


def _to_host(state: TrainState) -> dict:
    """The state as a dict of NumPy copies (the training program donates its buffers; a copy survives it)."""
    return {"params": state.params, "opt_state": state.opt_state, "model_state": state.model_state,
            "step": state.step, "key_data": jax.random.key_data(state.key)}


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


class Checkpoints:
    """A folder of checkpoints of one run: save, keep the last few and the best, restore the latest readable one.

    Args:
      directory: the folder (created if missing).
      keep: how many of the latest checkpoints to keep (positive).
      best: a history name (``"test_loss"``); the best checkpoint by its
        last value is kept as well.
      best_mode: ``"min"`` (default for names ending in ``loss``) or ``"max"``.
      async_save: write in a background thread (default): ``save`` returns
        once the state is copied to host memory. If a save comes due while
        the previous one is still being written, only the newest waits (an
        older pending one is dropped), so training never waits for the disk
        and the latest checkpoint is at most one write old. ``wait`` and
        ``close`` block until the newest state given is on disk. With
        ``async_save=False`` every save is written before ``save`` returns.
        Across processes (``jax.process_count() > 1``) saves are always
        written before ``save`` returns: every process takes part in each
        orbax save, and a background writer that drops superseded saves
        could drop different ones in different processes.
    """

    def __init__(self, directory: str, *, keep: int = 3, best: str | None = None, best_mode: str | None = None,
                 async_save: bool = True):
        ocp = _orbax()
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir must be a path, got {directory!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"checkpoint_keep must be a positive int, got {keep!r}")
        if best is not None and not isinstance(best, str):
            raise TypeError(f"checkpoint_best must be a history name such as 'test_loss', got {best!r}")
        best_mode = best_mode or ("min" if best and best.endswith("loss") else "max")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory, self.best, self.best_mode = os.path.abspath(os.fspath(directory)), best, best_mode
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if best is not None:
            sign = 1.0 if best_mode == "max" else -1.0  # orbax keeps the highest
            policies.append(ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: sign * m[best], n=1))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True)  # asynchrony: our own thread
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.async_save = bool(async_save) and jax.process_count() == 1
        self._cond = threading.Condition()
        self._pending = None  # the newest save not yet started
        self._busy = False
        self._error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self.skipped: list[int] = []  # epochs whose save was superseded by a newer one before it started

    def epochs(self) -> list[int]:
        """The epochs that have a checkpoint, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: TrainState, history: dict, config: dict | None = None) -> None:
        """Save ``state``, ``history`` and ``config`` as checkpoint ``epoch`` (in the background unless ``async_save=False``)."""
        self._raise_failed()
        host = _copy_to_host(_to_host(state))
        history = json.loads(json.dumps(history))  # a copy now: the caller appends to its history while this is written
        meta = {**(config or {}), "shapes": {k: [list(v[0]), v[1]] for k, v in _run.shapes_by_path(host).items()},
                "key_impl": str(jax.random.key_impl(state.key))}
        metrics = None
        if self.best is not None:
            if self.best not in history:
                raise ValueError(f"checkpoint_best must be one of the history's names {sorted(history)}, got {self.best!r}")
            metrics = {self.best: float(history[self.best][-1])}
        item = (int(epoch), host, history, meta, metrics)
        if not self.async_save:
            self._write(item)
            return
        with self._cond:
            if self._pending is not None:
                self.skipped.append(self._pending[0])
            self._pending = item
            if self._worker is None:
                self._worker = threading.Thread(target=self._writer, name="jaxnets-checkpoint-writer", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def _write(self, item) -> None:
        ocp = self._ocp
        epoch, host, history, meta, metrics = item
        self.manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host), history=ocp.args.JsonSave(history), config=ocp.args.JsonSave(meta)),
            metrics=metrics)
        self.manager.wait_until_finished()

    def _writer(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    self._cond.wait()
                item, self._pending, self._busy = self._pending, None, True
            try:
                self._write(item)
            except BaseException as error:  # noqa: BLE001 - reported to the training thread at its next call
                self._error = error
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _raise_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"saving a checkpoint in {self.directory} failed: {type(error).__name__}: {error}") from error

    def restore(self, like: TrainState, epoch: int | None = None) -> tuple[TrainState, dict, dict] | None:
        """``(state, history, config)`` of checkpoint ``epoch`` (default the latest readable one), or None if there is none.

        ``like`` is a state of the run (a fresh one will do): the checkpoint
        must hold the same structure, shapes and dtypes, or a ValueError lists
        the differing paths (nothing is overwritten). An unreadable
        (truncated, corrupt) checkpoint is reported in a warning naming its
        folder, and the one before it is used.
        """
        ocp = self._ocp
        epochs = self.epochs() if epoch is None else [int(epoch)]
        if not epochs:
            return None
        expected = {k: [list(v[0]), v[1]] for k, v in _run.shapes_by_path(_to_host(like)).items()}
        abstract = jax.tree_util.tree_map(lambda a: np.zeros(np.shape(a), a.dtype), _to_host(like))
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
            if failures:
                warnings.warn("unreadable checkpoint(s) skipped:\n" + "\n".join(failures) + f"\nresuming from {folder}",
                              RuntimeWarning, stacklevel=2)
            host = got["state"]
            key = jax.random.wrap_key_data(jax.numpy.asarray(host["key_data"]), impl=jax.random.key_impl(like.key))
            state = TrainState(host["params"], host["opt_state"], host["model_state"], host["step"], key)
            state = jax.tree_util.tree_map(jax.numpy.asarray, state)
            state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), jax.tree_util.tree_leaves(state))
            return state, dict(got["history"]), meta
        raise ValueError(f"no readable checkpoint in {self.directory}:\n" + "\n".join(failures))

    def wait(self) -> None:
        """Block until the newest state given to ``save`` is on disk; raise if a background save failed."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()
        self._raise_failed()

    def close(self) -> None:
        """Wait for the newest save, then release orbax's resources."""
        try:
            self.wait()
        finally:
            self.manager.close()


def save_params(path: str, params: Any) -> None:
    """Write ``params`` to a safetensors file, one tensor per leaf named by its path (``dense_0/w``).

    Written to a temporary file in the same folder and renamed: the file is
    complete or absent.
    """
    try:
        from safetensors.numpy import save_file
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what="save_params", error=error)) from None
    _run.check_not_donated(params, "params")
    flat = {_run.path_name(p): np.ascontiguousarray(np.asarray(leaf)) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    if not flat:
        raise ValueError("params has no arrays to save")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={"format": "jaxnets params"})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_params(path: str, like: Any) -> Any:
    """Read params written by :func:`save_params` (or any safetensors file named by paths) into ``like``'s structure.

    Args:
      path: the file.
      like: params, or their shapes (``jax.eval_shape(lambda k: model.init(k, shape)[1], jax.random.key(0))``):
        every leaf's path must be in the file, with the same shape.

    Returns:
      ``like``'s structure holding the file's arrays (as JAX arrays, in the file's dtype cast to ``like``'s).

    Raises:
      ValueError: a missing name, an extra name or a shape mismatch, naming the path and both shapes.
    """
    try:
        from safetensors.numpy import load_file
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what="load_params", error=error)) from None
    if not os.path.exists(path):
        raise FileNotFoundError(f"no params file at {path}")
    try:
        tensors = load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    leaves, tree = jax.tree_util.tree_flatten_with_path(like)
    out, problems = [], []
    names = set()
    for p, leaf in leaves:
        name = _run.path_name(p)
        names.add(name)
        if name not in tensors:
            problems.append(f"  {name}: missing from the file (expected shape {tuple(np.shape(leaf))})")
            continue
        got = tensors[name]
        if tuple(got.shape) != tuple(np.shape(leaf)):
            problems.append(f"  {name}: expected shape {tuple(np.shape(leaf))}, the file has {tuple(got.shape)}")
            continue
        out.append(jax.numpy.asarray(got, dtype=leaf.dtype))
    extra = sorted(set(tensors) - names)
    problems += [f"  {name}: in the file (shape {tuple(tensors[name].shape)}) but not in the params" for name in extra]
    if problems:
        raise ValueError(f"{path} does not fit the params:\n" + "\n".join(problems))
    return jax.tree_util.tree_unflatten(tree, out)
