"""Streamed data: training from host memory, memory-mapped files or a grain source, in scanned chunks.

``fit`` moves an in-memory data set to the device once and runs each epoch
as one program. A data set larger than device memory cannot go that way; a
:class:`Stream` keeps it on the host (NumPy arrays, ``np.memmap``,
``np.load(..., mmap_mode="r")``, or any random-access source with
``__len__`` and ``__getitem__``, such as a grain ``RandomAccessDataSource``
or ``MapDataset``) and ``fit(model, loss, optimizer, data=stream)`` trains
from it:

* **Order.** Epoch ``e`` visits the examples in the order of
  :func:`jaxnets.train.epoch_indices` of the state that starts it: the
  permutation keyed by ``fold_in(key, 2 step + 1)``, computed on the device
  and read back once per epoch (4 bytes an example). It is the order the
  in-memory epoch uses, so streamed training of a data set that would also fit
  in memory gives the params ``fit`` gives on the same arrays in memory (the
  tests check it), and it depends only on the key and the step counter, so a
  run resumed from a checkpoint reads exactly the examples the uninterrupted
  run reads.
* **Chunks.** Every ``steps_per_chunk`` steps of the epoch form a chunk: a
  host thread gathers their rows (sorted within the chunk, so a memory-mapped
  file is read front to back), checks them, and transfers them as one
  ``(steps, batch, ...)`` array per leaf, while the device trains on the
  previous chunk (``prefetch`` chunks wait ready). Each chunk runs as one
  jitted ``lax.scan`` of the general step (:func:`jaxnets.train.make_step`)
  with the state donated, compiled once (twice when the epoch's last chunk is
  shorter), so Python dispatches once per chunk, not once per step.
* **Devices and processes.** With a ``sharding`` of the chunk (a
  ``NamedSharding`` whose spec is ``P(None, "data")``: steps unsplit, the
  batch split over the data axis), every process reads only the rows of its
  own devices' part of each batch and the chunk is assembled with
  ``jax.make_array_from_process_local_data``.
* **Checks.** The first record fixes the structure, shapes and dtypes
  (checked when the stream is made, before any device work); every chunk is
  checked against it on the host (a record that changes shape or dtype midway
  is named with its index and both shapes), for NaN/Inf, and for labels
  outside the model's classes.

What ``fit`` logs per epoch: ``train_loss`` (mean of the steps' losses, as
in memory), ``train_<name>`` for an objective's aux metrics, and the
``test`` evaluation, which stays in device memory (held-out sets are small).
With a ``loss``, ``train_<metric>`` evaluation passes over the training set
are not run (they would read the whole stream a second time per epoch).

Example::

    x = np.load("images.npy", mmap_mode="r")      # (n, 784) float32, never loaded whole
    y = np.load("labels.npy", mmap_mode="r")
    data = jaxnets.streaming.from_arrays(x, y, steps_per_chunk=32)
    state, history = jaxnets.fit(model, loss, optimizer, data, test=(x_test, y_test), epochs=5, batch_size=512)
"""

from __future__ import annotations

import copy
import functools
import os
import queue
import threading
import time
from typing import Any, Callable, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.train import Source, epoch_indices, fingerprint, steps_per_epoch

__all__ = ["Stream", "from_arrays", "from_source"]

_RECORD_MSG = ("data records must all have the structure, shapes and dtypes of record 0, but record {index} (one of "
               "records {lo}..{hi} read for steps {first}..{last} of this epoch) differs at {field}: record 0 has "
               "{want}, record {index} has {got}")


def _canonical(dtype: np.dtype) -> np.dtype:
    """The dtype the device will hold (float64 -> float32 unless x64 is on), so host and device agree."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _field(path) -> str:
    name = _inputs.path_name(path)
    return f"field {name}" if name else "the record itself"


class _ArrayReader:
    """Rows of a pytree of host arrays (NumPy, memory-mapped) that share a leading axis."""

    def __init__(self, tree: Any):
        self.treedef: Any
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
        if not leaves:
            raise ValueError("data holds no arrays (from_arrays needs at least one array with a leading example axis)")
        sizes: dict[str, int] = {}
        for path, leaf in leaves:
            label = "data" + jax.tree_util.keystr(path)
            if isinstance(leaf, jax.Array):
                raise TypeError(f"{label} must be a NumPy array in host memory or a memory-mapped file (np.memmap, "
                                f"np.load(path, mmap_mode='r')), got a jax.Array already on the device: pass arrays on "
                                f"the device to fit(data=(x, y)) directly")
            if not isinstance(leaf, np.ndarray):
                raise TypeError(f"{label} must be a NumPy array (np.ndarray, np.memmap, np.load(path, mmap_mode='r')), "
                                f"got {type(leaf).__name__}")
            if leaf.ndim < 1:
                raise ValueError(f"{label} must have a leading example axis, got a scalar")
            if not (np.issubdtype(leaf.dtype, np.number) or leaf.dtype == np.bool_):
                raise TypeError(f"{label} must hold numbers, got dtype {leaf.dtype}")
            sizes[label] = leaf.shape[0]
        if len(set(sizes.values())) != 1:
            raise ValueError(f"data arrays must have the same number of examples (leading axis), got {sizes}")
        self.leaves: list[np.ndarray] = [leaf for _, leaf in leaves]
        self.paths: list[Any] = [path for path, _ in leaves]
        self.length: int = next(iter(sizes.values()))
        # memory-mapped files: their size and modification time, checked before every chunk is read
        self.files: dict[str, tuple[int, int, int]] = {}
        for leaf in self.leaves:
            name = getattr(leaf, "filename", None)
            if name is not None and os.path.exists(name):
                info = os.stat(name)
                self.files[name] = (info.st_size, info.st_mtime_ns, info.st_ino)

    def check_unchanged(self) -> None:
        """A memory-mapped file that shrank, grew or was rewritten since the stream was made: a ValueError, not SIGBUS."""
        for name, (size, mtime, inode) in self.files.items():
            try:
                info = os.stat(name)
            except OSError as error:
                raise ValueError(f"the stream's file {name} is gone ({error}): it was removed during training") from None
            if (info.st_size, info.st_mtime_ns, info.st_ino) != (size, mtime, inode):
                change = "shrank" if info.st_size < size else "grew" if info.st_size > size else "was rewritten"
                raise ValueError(f"the stream's file {name} {change} during training ({size} -> {info.st_size} bytes): "
                                 f"reading it on would train on other data (or crash on a truncated mapping); "
                                 f"make a new stream of the file as it is now, and resume from a checkpoint")

    def read(self, rows: np.ndarray, where: tuple[Any, ...]) -> Any:
        """``rows`` (any shape, ints) of every leaf, as ``rows.shape + feature shape`` arrays in the device dtype."""
        flat = rows.reshape(-1)
        order = np.argsort(flat, kind="stable")  # read the file front to back, then put the rows back in order
        wanted = flat[order]
        out = []
        for leaf in self.leaves:
            got = np.asarray(leaf[wanted])
            block = np.empty(got.shape, _canonical(got.dtype))
            block[order] = got
            out.append(block.reshape(rows.shape + leaf.shape[1:]))
        return jax.tree_util.tree_unflatten(self.treedef, out)


class _RecordReader:
    """Records of a random-access source (``__len__``, ``__getitem__`` -> a pytree of arrays or numbers)."""

    def __init__(self, source: Any):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise TypeError(f"source must be a random-access data source with __len__ and __getitem__ (a grain "
                            f"RandomAccessDataSource or MapDataset, a list of records), got {type(source).__name__}")
        self.source: Any
        self.length: int
        self.source, self.length = source, len(source)
        if self.length == 0:
            raise ValueError("source is empty (0 records)")
        first = source[0]
        self.treedef: Any
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(first)
        if not leaves:
            raise ValueError("source record 0 holds no arrays")
        self.paths: list[Any]
        self.specs: list[tuple[tuple[int, ...], np.dtype]]
        self.paths, self.specs = [], []
        for path, leaf in leaves:
            value = np.asarray(leaf) if isinstance(leaf, (np.ndarray, np.generic, int, float, bool, jax.Array)) else None
            if value is None or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
                raise TypeError(f"source records must be pytrees of arrays or numbers, but record 0 holds "
                                f"{type(leaf).__name__} {_short(leaf)} at {_field(path)}")
            self.paths.append(path)
            self.specs.append((value.shape, value.dtype))

    def check_unchanged(self) -> None:
        """A source reads its records itself: nothing to check here."""

    def read(self, rows: np.ndarray, where: tuple[Any, ...]) -> Any:
        flat = rows.reshape(-1)
        columns = [[] for _ in self.specs]
        for i in flat.tolist():
            record = self.source[i]
            leaves, treedef = jax.tree_util.tree_flatten(record)
            if treedef != self.treedef:
                raise ValueError(_RECORD_MSG.format(index=i, lo=int(flat.min()), hi=int(flat.max()), first=where[0],
                                                    last=where[1], field="its structure", want=self.treedef, got=treedef))
            for j, (leaf, (shape, dtype)) in enumerate(zip(leaves, self.specs)):
                value = np.asarray(leaf)
                if value.shape != shape or value.dtype != dtype:
                    raise ValueError(_RECORD_MSG.format(index=i, lo=int(flat.min()), hi=int(flat.max()), first=where[0],
                                                        last=where[1], field=_field(self.paths[j]),
                                                        want=f"shape {shape} dtype {dtype}",
                                                        got=f"shape {value.shape} dtype {value.dtype}"))
                columns[j].append(value)
        out = [np.stack(c).astype(_canonical(dtype), copy=False).reshape(rows.shape + shape)
               for c, (shape, dtype) in zip(columns, self.specs)]
        return jax.tree_util.tree_unflatten(self.treedef, out)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Stream:
    """Training data kept on the host and streamed to the device in chunks of steps (module docstring).

    Made by :func:`from_arrays` or :func:`from_source`; pass it to
    :func:`jaxnets.fit` as ``data``.

    Attributes:
      num_examples: the number of records.
      example: record 0 as a batch of one (host arrays), fixing the records'
        structure, shapes and dtypes.
      steps_per_chunk, steps_per_epoch, prefetch, sharding, check_finite: the options.
      timings: totals over every epoch streamed so far: ``chunks``;
        ``read_s``, host seconds gathering and checking rows; ``transfer_s``,
        seconds issuing their transfer; ``wait_s``, seconds the training
        loop waited for a chunk. A ``wait_s`` that grows with the run means
        the input, not the device, sets the pace (raise ``prefetch`` or
        ``steps_per_chunk``, or read faster storage).
    """

    def __init__(self, reader: _ArrayReader | _RecordReader, *, steps_per_chunk: int = 16, steps_per_epoch: int | None = None, prefetch: int = 2,
                 sharding: Any = None, check_finite: bool = True, kind: str = "arrays"):
        self._reader = reader
        self.num_examples: int = reader.length
        if self.num_examples == 0:
            raise ValueError("data is empty (0 examples)")
        self.steps_per_chunk: int = _checks.positive_int(steps_per_chunk, "steps_per_chunk")
        self.steps_per_epoch: int | None = None if steps_per_epoch is None else _checks.positive_int(steps_per_epoch, "steps_per_epoch")
        self.prefetch: int = _checks.positive_int(prefetch, "prefetch")
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            raise TypeError(f"sharding must be a jax.sharding.Sharding of the (steps, batch, ...) chunk, e.g. "
                            f"NamedSharding(mesh, P(None, 'data')), got {sharding!r}")
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
        self.sharding: jax.sharding.Sharding | None
        self.check_finite: bool
        self.kind: str
        self.sharding, self.check_finite, self.kind = sharding, check_finite, kind
        self.timings: dict[str, float] = {"chunks": 0, "read_s": 0.0, "transfer_s": 0.0, "wait_s": 0.0}
        self.example: Any = reader.read(np.zeros((1,), np.int64), (0, 0))

    def __repr__(self) -> str:
        shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), self.example)
        return (f"Stream({self.kind}: {self.num_examples} examples of {shapes}, steps_per_chunk={self.steps_per_chunk}"
                + (f", steps_per_epoch={self.steps_per_epoch}" if self.steps_per_epoch else "") + ")")

    def check_unchanged(self) -> None:
        """Raise a ValueError if a memory-mapped file behind the stream changed since it was made."""
        self._reader.check_unchanged()

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the stream (its length, epoch size, and a digest of a few records), so
        that a resume on another stream fails instead of drifting."""
        n = self.num_examples
        sample = self._reader.read(np.unique(np.array([0, n // 2, n - 1], np.int64)), (0, 0))
        return {"kind": self.kind, "num_examples": n, "steps_per_epoch": self.steps_per_epoch,
                "sample": fingerprint(sample)}

    # --- the source protocol ----------------------------------------------------------------------------------------

    def bind(self, *, batch_size: int, drop_last: bool = False, placement: Any = None, pair: bool = True) -> "BoundStream":
        """This stream as a :class:`jaxnets.train.Source` of batches of ``batch_size``: what ``fit`` trains on.

        With a ``placement`` (``fit(placement=...)``), chunks are split over its
        data axis (``P(None, axis)``) unless the stream has its own sharding
        (over the same mesh). ``pair``: records must be ``(x, y)`` (training
        with a loss). Everything is checked here, before any device work.
        """
        stream = self
        if placement is not None:
            if placement.members:
                raise TypeError("a Stream trains one model; fit_population takes arrays in memory")
            stream = copy.copy(self)
            wanted = jax.sharding.NamedSharding(placement.mesh, jax.sharding.PartitionSpec(None, placement.axis))
            if stream.sharding is None:
                stream.sharding = wanted
            elif not (isinstance(stream.sharding, jax.sharding.NamedSharding) and stream.sharding.mesh == placement.mesh):
                raise ValueError(f"the stream's sharding {stream.sharding} is not over fit's mesh "
                                 f"{dict(placement.mesh.shape)} (axis {placement.axis!r}): leave the stream's sharding "
                                 f"out (fit splits it as {wanted.spec}), or give one over the same mesh")
        return BoundStream(stream, _checks.positive_int(batch_size, "batch_size"), drop_last, pair)


def from_arrays(*arrays: Any, steps_per_chunk: int = 16, steps_per_epoch: int | None = None, prefetch: int = 2,
                sharding: Any = None, check_finite: bool = True) -> Stream:
    """A :class:`Stream` of host arrays: ``from_arrays(x, y)`` (pairs, for a loss) or ``from_arrays(tree)``.

    The arrays stay where they are (host memory, or a file through
    ``np.memmap`` / ``np.load(path, mmap_mode="r")``): each chunk reads only
    its rows, in sorted order, so a memory-mapped file is paged in as needed.

    Args:
      *arrays: ``x, y`` (each a NumPy array or a pytree of them), or one
        pytree of NumPy arrays (an objective's batches); every leaf has the
        same leading example axis ``n >= 1``.
      steps_per_chunk: steps per transfer and per scanned program. More steps
        amortise dispatch and transfer latency; fewer use less device memory
        (``prefetch + 1`` chunks of ``steps_per_chunk * batch_size`` rows
        live on the device at once).
      steps_per_epoch: cap each epoch at this many steps (by default a full
        pass): the epoch is then the first ``steps_per_epoch`` batches of its
        permutation, a sample without replacement, so a very large data set
        is evaluated, checkpointed and early-stopped more often than once a pass.
      prefetch: chunks read and transferred ahead of the one training.
      sharding: a ``jax.sharding.Sharding`` of the ``(steps, batch, ...)``
        chunk (``NamedSharding(mesh, P(None, "data"))``); each process reads
        only its rows. Default: the default device.
      check_finite: refuse NaN/Inf in each chunk (on the host, before its transfer).

    Raises:
      TypeError: a leaf that is not a NumPy array of numbers (a jax.Array on the device included).
      ValueError: no arrays, a scalar, leaves of different lengths, 0 examples.
    """
    if not arrays:
        raise TypeError("from_arrays needs arrays: from_arrays(x, y) or from_arrays(tree)")
    tree = arrays[0] if len(arrays) == 1 else tuple(arrays)
    if isinstance(tree, list):
        tree = tuple(tree)
    return Stream(_ArrayReader(tree), steps_per_chunk=steps_per_chunk, steps_per_epoch=steps_per_epoch,
                  prefetch=prefetch, sharding=sharding, check_finite=check_finite, kind="arrays")


def from_source(source: Any, *, steps_per_chunk: int = 16, steps_per_epoch: int | None = None, prefetch: int = 2,
                sharding: Any = None, check_finite: bool = True) -> Stream:
    """A :class:`Stream` of a random-access source: a grain ``RandomAccessDataSource`` or ``MapDataset``, or a list.

    ``source[i]`` is record ``i``: a pytree of arrays or numbers (a pair
    ``(x, y)`` to train with a loss). The order is jaxnets' per-epoch
    permutation (module docstring), not the source's: a grain sampler or a
    ``MapDataset.shuffle`` is not needed (and a shuffled ``MapDataset`` is
    simply read in jaxnets' order of its indices). Records are read one by
    one in the prefetching thread, stacked, and checked against record 0.

    Args:
      source: anything with ``__len__`` and ``__getitem__(int)``.
      steps_per_chunk, steps_per_epoch, prefetch, sharding, check_finite: as for :func:`from_arrays`.

    Raises:
      TypeError: no ``__len__``/``__getitem__``; record 0 not a pytree of arrays or numbers.
      ValueError: an empty source.
    """
    return Stream(_RecordReader(source), steps_per_chunk=steps_per_chunk, steps_per_epoch=steps_per_epoch,
                  prefetch=prefetch, sharding=sharding, check_finite=check_finite, kind=type(source).__name__)


# --- reading ahead ------------------------------------------------------------------------------------------------


def _process_rows(sharding, steps: int, batch_size: int) -> tuple[int, int]:
    """The batch rows ``[lo, hi)`` this process's devices hold under ``sharding`` (a contiguous block)."""
    try:
        index_map = sharding.addressable_devices_indices_map((steps, batch_size))
    except Exception as error:  # noqa: BLE001 - jax raises several types for a rank or divisibility mismatch
        raise ValueError(f"sharding must split (steps, batch) chunks of shape ({steps}, {batch_size}), e.g. "
                         f"NamedSharding(mesh, P(None, 'data')) with batch_size divisible by the data axis; "
                         f"got {sharding}: {error}") from error
    rows = set()
    for index in index_map.values():
        if index[0] != slice(None) and index[0].indices(steps) != (0, steps, 1):
            raise ValueError(f"sharding must not split the steps axis of a chunk (spec P(None, 'data')), got {sharding}")
        rows.update(range(*index[1].indices(batch_size)))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
        raise ValueError(f"sharding must give each process a contiguous block of the batch, got rows {sorted(rows)}")
    return lo, hi


class _Chunk(NamedTuple):
    step: int  # the run's step at which the chunk starts
    length: int  # its steps
    batches: Any  # device pytree (steps, batch, ...)


_DONE = object()


class _Reader:
    """A thread that reads, checks and transfers the chunks of steps ``first .. last - 1`` of a run, ``prefetch`` ahead."""

    def __init__(self, stream: Stream, order, first: int, last: int, steps_per_epoch: int, classes: int | None):
        self.stream, self.order, self.first, self.last = stream, order, first, last
        self.spe, self.classes = steps_per_epoch, classes
        self.queue: queue.Queue = queue.Queue(maxsize=stream.prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jaxnets-stream-reader", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            stream, k, step = self.stream, self.stream.steps_per_chunk, self.first
            epoch, order = None, None
            while step < self.last:
                e, into = divmod(step, self.spe)
                if e != epoch:
                    epoch, order = e, self.order(e)  # (steps, batch) host indices
                length = min(k, self.spe - into, self.last - step)
                rows = cast(np.ndarray, order)[into:into + length]  # set at the first step (epoch None before)
                lo, hi = (0, rows.shape[1]) if stream.sharding is None else _process_rows(stream.sharding, k, rows.shape[1])
                began = time.perf_counter()
                stream.check_unchanged()
                host = stream._reader.read(rows[:, lo:hi], (into, into + length - 1))
                self._check(host, rows[:, lo:hi], into)
                read = time.perf_counter()
                if stream.sharding is None:
                    batches = jax.device_put(host)
                else:
                    batches = jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(
                        stream.sharding, a, rows.shape + a.shape[2:]), host)
                stream.timings["read_s"] += read - began
                stream.timings["transfer_s"] += time.perf_counter() - read
                stream.timings["chunks"] += 1
                if not self._put(_Chunk(step, length, batches)):
                    return
                step += length
            self._put(_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            self._put(error)

    def _check(self, host: Any, rows: np.ndarray, first: int) -> None:
        stream = self.stream
        last = first + rows.shape[0] - 1
        if stream.check_finite:
            for path, leaf in jax.tree_util.tree_flatten_with_path(host)[0]:
                # one pass without a temporary: a sum is finite unless a value is not (or it overflows, then look closer)
                if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf.sum()) and not np.isfinite(leaf).all():
                    at = np.argwhere(~np.isfinite(leaf))[0]
                    record = int(rows[at[0], at[1]]) if leaf.ndim >= 2 else -1
                    raise ValueError(f"data record {record} holds a non-finite value (NaN or Inf) at "
                                     f"{_field(path)} (read for steps {first}..{last} of this epoch); clean or impute "
                                     f"the data before training")
        if self.classes is not None:
            y = host[1]
            bad = (y < 0) | (y >= self.classes)
            if bad.any():
                at = np.argwhere(bad)[0]
                raise ValueError(f"data labels must lie in [0, {self.classes}) for {self.classes} classes, got "
                                 f"{int(y[tuple(at)])} in record {int(rows[at[0], at[1]])} (read for steps "
                                 f"{first}..{last} of this epoch)")

    def get(self) -> Any:
        began = time.perf_counter()
        try:
            return self._get()
        finally:
            self.stream.timings["wait_s"] += time.perf_counter() - began

    def _get(self) -> Any:
        while True:
            try:
                item = self.queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the stream's reading thread ended without a result") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()



# --- the bound stream: the source protocol -------------------------------------------------------------------------


class _Position(NamedTuple):
    """What :func:`jaxnets.train.epoch_indices` reads of a state: its key and its step counter."""

    key: jax.Array
    step: jax.Array


@functools.lru_cache(maxsize=32)
def _order_program(num_examples: int, batch_size: int, drop_last: bool):
    return jax.jit(lambda key, step: epoch_indices(_Position(key, step), num_examples, batch_size, drop_last=drop_last))


class BoundStream(Source):
    """A :class:`Stream` bound to a batch size: a :class:`jaxnets.train.Source` whose feed is read ahead on the host.

    Epoch ``e`` of a run is the order :func:`jaxnets.train.epoch_indices`
    gives at step ``origin + e S`` (read back from the device once per epoch,
    4 bytes an example), cut at ``steps_per_epoch``; each call of the loop
    trains on one chunk of up to ``steps_per_chunk`` steps within an epoch,
    read, checked and transferred by a thread while the device trains on the
    one before. The program scans the chunk as it came (:meth:`inputs`).
    """

    def __init__(self, stream: Stream, batch_size: int, drop_last: bool, pair: bool):
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
        self.stream: Stream
        self.batch_size: int
        self.drop_last: bool
        self.stream, self.batch_size, self.drop_last = stream, batch_size, drop_last
        full = steps_per_epoch(stream.num_examples, batch_size, drop_last)
        self.steps_per_epoch: int = full if stream.steps_per_epoch is None else min(full, stream.steps_per_epoch)
        if pair and not (isinstance(stream.example, tuple) and len(stream.example) == 2):
            raise TypeError(f"data records must be pairs (x, y) to train with a loss, got records of structure "
                            f"{jax.tree_util.tree_structure(stream.example)}; train other records with an objective")
        if stream.sharding is not None:
            _process_rows(stream.sharding, stream.steps_per_chunk, batch_size)  # a sharding that does not fit fails now
        self.example: Any = jax.tree_util.tree_map(jnp.asarray, stream.example)  # record 0, a batch of one
        self.classes: int | None = None
        self._reader: _Reader | None = None

    def __repr__(self) -> str:
        return f"{self.stream!r} in batches of {self.batch_size}"

    def signature(self) -> tuple[Any, ...]:
        return ("stream", self.batch_size, self.steps_per_epoch)

    def set_classes(self, classes: int | None) -> None:
        """Check that every chunk's integer labels lie in ``[0, classes)``."""
        self.classes = classes

    def describe(self) -> dict[str, Any]:
        return {**self.stream.describe(), "batch_size": self.batch_size, "drop_last": self.drop_last}

    def max_length(self, position: int, origin: int) -> int:
        into = (position - origin) % self.steps_per_epoch
        return min(self.stream.steps_per_chunk, self.steps_per_epoch - into)

    def start(self, key: jax.Array, position: int, origin: int, end: int) -> None:
        self.close()
        program = _order_program(self.stream.num_examples, self.batch_size, self.drop_last)
        key, spe = jnp.array(key, copy=True), self.steps_per_epoch

        def order(epoch: int) -> np.ndarray:
            return np.asarray(jax.device_get(program(key, jnp.int32(origin + epoch * spe))))[:spe]

        self._reader = _Reader(self.stream, order, position - origin, end - origin, spe, self.classes)

    def feed(self, key: jax.Array, position: int, origin: int, length: int) -> Any:
        if self._reader is None:
            raise RuntimeError("the stream was not started (the loop calls start before the first call)")
        item = self._reader.get()
        if item is _DONE or item.step != position - origin or item.length != length:
            got = item if item is _DONE else (item.step, item.length)
            raise RuntimeError(f"the stream's reader is out of step: expected step {position - origin} "
                               f"({length} steps), got {got}")
        return item.batches

    def inputs(self, data: Any, feed: Any, key: jax.Array, position: jax.Array, origin: jax.Array, length: int) -> Any:
        return feed

    def batch(self, data: Any, x: Any) -> Any:
        return x

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
