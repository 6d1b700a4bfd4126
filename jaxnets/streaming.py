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
import math
import queue
import threading
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _run
from jaxnets.evaluation import batched_outputs, normalized_objective, objective_means, resolve_metrics, score
from jaxnets.train import SCALE_METRICS, epoch_indices, make_step, objective_from_loss

__all__ = ["Stream", "from_arrays", "from_source"]

_RECORD_MSG = ("data records must all have the structure, shapes and dtypes of record 0, but record {index} (one of "
               "records {lo}..{hi} read for steps {first}..{last} of this epoch) differs at {field}: record 0 has "
               "{want}, record {index} has {got}")


def _canonical(dtype: np.dtype) -> np.dtype:
    """The dtype the device will hold (float64 -> float32 unless x64 is on), so host and device agree."""
    return np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _field(path) -> str:
    name = _run.path_name(path)
    return f"field {name}" if name else "the record itself"


class _ArrayReader:
    """Rows of a pytree of host arrays (NumPy, memory-mapped) that share a leading axis."""

    def __init__(self, tree: Any):
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
        if not leaves:
            raise ValueError("data holds no arrays (from_arrays needs at least one array with a leading example axis)")
        sizes = {}
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
        self.leaves = [leaf for _, leaf in leaves]
        self.paths = [path for path, _ in leaves]
        self.length = next(iter(sizes.values()))

    def read(self, rows: np.ndarray, where: tuple) -> Any:
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
        self.source, self.length = source, len(source)
        if self.length == 0:
            raise ValueError("source is empty (0 records)")
        first = source[0]
        leaves, self.treedef = jax.tree_util.tree_flatten_with_path(first)
        if not leaves:
            raise ValueError("source record 0 holds no arrays")
        self.paths, self.specs = [], []
        for path, leaf in leaves:
            value = np.asarray(leaf) if isinstance(leaf, (np.ndarray, np.generic, int, float, bool, jax.Array)) else None
            if value is None or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
                raise TypeError(f"source records must be pytrees of arrays or numbers, but record 0 holds "
                                f"{type(leaf).__name__} {_short(leaf)} at {_field(path)}")
            self.paths.append(path)
            self.specs.append((value.shape, value.dtype))

    def read(self, rows: np.ndarray, where: tuple) -> Any:
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

    def __init__(self, reader, *, steps_per_chunk: int = 16, steps_per_epoch: int | None = None, prefetch: int = 2,
                 sharding: Any = None, check_finite: bool = True, kind: str = "arrays"):
        self._reader = reader
        self.num_examples = reader.length
        if self.num_examples == 0:
            raise ValueError("data is empty (0 examples)")
        self.steps_per_chunk = _checks.positive_int(steps_per_chunk, "steps_per_chunk")
        self.steps_per_epoch = None if steps_per_epoch is None else _checks.positive_int(steps_per_epoch, "steps_per_epoch")
        self.prefetch = _checks.positive_int(prefetch, "prefetch")
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            raise TypeError(f"sharding must be a jax.sharding.Sharding of the (steps, batch, ...) chunk, e.g. "
                            f"NamedSharding(mesh, P(None, 'data')), got {sharding!r}")
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
        self.sharding, self.check_finite, self.kind = sharding, check_finite, kind
        self.place_test = None  # set by placed(): where fit(mesh=...) puts the test data
        self.timings = {"chunks": 0, "read_s": 0.0, "transfer_s": 0.0, "wait_s": 0.0}
        self.example = reader.read(np.zeros((1,), np.int64), (0, 0))

    def __repr__(self) -> str:
        shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), self.example)
        return (f"Stream({self.kind}: {self.num_examples} examples of {shapes}, steps_per_chunk={self.steps_per_chunk}"
                + (f", steps_per_epoch={self.steps_per_epoch}" if self.steps_per_epoch else "") + ")")

    def describe(self) -> dict:
        """What a checkpoint records about the stream, so that a resume from another stream fails, not drifts."""
        return {"kind": self.kind, "num_examples": self.num_examples, "steps_per_epoch": self.steps_per_epoch,
                "order": "epoch_indices(step at the epoch's start): fold_in(key, 2 step + 1) permutation"}

    def check_resume(self, saved: dict) -> None:
        """A checkpoint written while training on another stream (another length or epoch size) is refused."""
        before = saved.get("stream")
        now = self.describe()
        if before is None:
            return
        for name in ("num_examples", "steps_per_epoch"):
            if before.get(name) != now[name]:
                raise ValueError(f"the checkpoint was written training on a stream with {name}={before.get(name)}, "
                                 f"this stream has {name}={now[name]}: the resumed run would read other examples than "
                                 f"the interrupted one (nothing was overwritten)")

    # --- what fit calls --------------------------------------------------------------------------------------------

    def placed(self, placement: Any) -> "Stream":
        """This stream for ``fit(mesh=...)``: chunks split over the placement's data axis (``P(None, axis)``).

        A stream given its own ``sharding`` keeps it. The copy shares
        ``timings`` with this stream, so the caller's object still counts.
        """
        if placement.members:
            raise TypeError("a Stream trains one model; fit_population takes arrays in memory")
        placed = copy.copy(self)
        wanted = jax.sharding.NamedSharding(placement.mesh, jax.sharding.PartitionSpec(None, placement.axis))
        if placed.sharding is None:
            placed.sharding = wanted
        elif not (isinstance(placed.sharding, jax.sharding.NamedSharding) and placed.sharding.mesh == placement.mesh):
            raise ValueError(f"the stream's sharding {placed.sharding} is not over fit's mesh {dict(placement.mesh.shape)} "
                             f"(data_axis={placement.axis!r}): leave the stream's sharding out (fit splits it as "
                             f"{wanted.spec}), or give one over the same mesh")
        placed.place_test = placement.data  # the held-out data replicated on the mesh, as fit places it in memory
        return placed

    def prepare_run(self, test: Any, *, objective_mode: bool, epochs: int, batch_size: int, epochs_per_call: int,
                    drop_last: bool) -> _run.Run:
        """The run of :func:`jaxnets.fit` on this stream, checked before anything runs on the device.

        ``Run.data`` holds record 0 as a batch of one on the device: enough for
        ``fit`` to find the input shape and the default metrics; the program
        streams the rest.
        """
        epochs = _checks.positive_int(epochs, "epochs")
        batch_size = _checks.positive_int(batch_size, "batch_size")
        epochs_per_call = _checks.positive_int(epochs_per_call, "epochs_per_call")
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
        _run.steps_per_epoch(self.num_examples, batch_size, drop_last)
        if not objective_mode and not (isinstance(self.example, tuple) and len(self.example) == 2):
            raise TypeError(f"data records must be pairs (x, y) to train with a loss, got records of structure "
                            f"{jax.tree_util.tree_structure(self.example)}; train other records with an objective")
        if self.sharding is not None:
            _process_rows(self.sharding, self.steps_per_chunk, batch_size)  # a sharding that does not fit fails now
        if hasattr(test, "x_test"):
            test = (test.x_test, test.y_test)
        if test is not None:
            test, _ = _run.check_data(test, "test", pair=not objective_mode)
            want = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), self.example)
            got = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), test)
            if want != got:
                raise ValueError(f"test must have the structure and feature shapes of the streamed records {want}, got {got}")
            test = self.place_test(test) if self.place_test is not None else jax.tree_util.tree_map(jnp.asarray, test)
        example = jax.tree_util.tree_map(jnp.asarray, self.example)
        return _run.Run(example, test, self.num_examples, epochs, batch_size, min(epochs_per_call, epochs))

    def program(self, model, optimizer, run: _run.Run, options: tuple) -> Callable:
        """The callable ``(state, count, data, test) -> (state, out)`` that ``jaxnets._run.drive`` calls.

        It has the contract of ``jaxnets._run.chunk_program``'s program
        (``count`` epochs, their results, the first non-finite step of each,
        the last finite state kept with ``on_nonfinite="raise"``), but runs
        on the host: a scanned program per chunk, a jitted evaluation per
        epoch, one read of the results per epoch.
        """
        opts = dict(options)
        if opts["on_nonfinite"] not in ("raise", "warn", "ignore"):
            raise ValueError(f"on_nonfinite must be 'raise', 'warn' or 'ignore', got {opts['on_nonfinite']!r}")
        try:
            parts = _compiled_parts(model, optimizer, options)
        except TypeError:  # something unhashable in the configuration: build it for this call only
            parts = _parts(model, optimizer, options)
        classes = _num_classes(model, run) if opts["loss"] is not None else None
        steps = _run.steps_per_epoch(self.num_examples, run.batch_size, opts["drop_last"])
        if self.steps_per_epoch is not None:
            steps = min(steps, self.steps_per_epoch)
        return functools.partial(_train_epochs, self, parts, run, steps, classes, opts["on_nonfinite"])


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


# --- the compiled parts -------------------------------------------------------------------------------------------


class _Parts(NamedTuple):
    chunk: Callable  # jitted (state, batches) -> (state, logged per step), state donated
    evaluate: Callable  # jitted (state, test) -> {name: scalar}
    order: Callable  # jitted (key, step) -> (steps, batch) indices


class _Position(NamedTuple):
    """What :func:`jaxnets.train.epoch_indices` reads of a state: its key and its step counter."""

    key: jax.Array
    step: jax.Array


def _parts(model, optimizer, options: tuple) -> _Parts:
    opts = dict(options)
    loss, metrics = opts["loss"], opts["metrics"]
    if loss is not None:
        metrics = resolve_metrics(dict(metrics)) if metrics is not None else {}
        objective = objective_from_loss(model, loss)
    else:
        objective = normalized_objective(opts["objective"])
        eval_objective = objective if opts["eval_objective"] is None else normalized_objective(opts["eval_objective"])
    step = make_step(objective, optimizer, gradient=opts["gradient"], transform=opts["transform"], jit=False)
    eval_batch_size = opts["eval_batch_size"]
    placement = opts.get("placement")
    if placement is not None:  # fit(mesh=...): each batch split over the data axis, the state kept in its sharding
        unplaced = step

        def step(state, batch):
            state, logged = unplaced(state, placement.constrain_batch(batch))
            return placement.constrain_state(state), logged

    def chunk(state, batches):
        return jax.lax.scan(step, state, batches)

    def evaluate(state, test):
        if loss is not None:
            x, y = test
            outputs = batched_outputs(model, min(eval_batch_size, _run.leading(x)), state.params, state.model_state, x,
                                      _run.eval_key(state, 1))
            return {f"test_{k}": v for k, v in score(outputs, y, loss, metrics).items()}
        means = objective_means(eval_objective, min(eval_batch_size, _run.leading(test)), state.params,
                                state.model_state, test, _run.eval_key(state, 1))
        return {f"test_{k}": v for k, v in means.items()}

    def order(key, step, num_examples, batch_size):
        return epoch_indices(_Position(key, step), num_examples, batch_size, drop_last=opts["drop_last"])

    return _Parts(jax.jit(chunk, donate_argnums=0), jax.jit(evaluate), jax.jit(order, static_argnums=(2, 3)))


@functools.lru_cache(maxsize=32)
def _compiled_parts(model, optimizer, options: tuple) -> _Parts:
    """One set of programs per configuration: a second ``fit`` with the same one compiles nothing."""
    return _parts(model, optimizer, options)


def _num_classes(model, run: _run.Run) -> int | None:
    """The model's number of outputs when its targets are integer labels (for the per-chunk label check)."""
    x, y = run.data
    if not isinstance(x, jax.Array) or not isinstance(y, jax.Array) or not np.issubdtype(np.dtype(y.dtype), np.integer):
        return None  # pytree inputs or targets: no per-chunk label check
    try:
        params_shape = jax.eval_shape(lambda k: model.init_with_state(k, (-1,) + tuple(x.shape[1:]))[1:], jax.random.key(0))
        out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], *params_shape, x)
    except Exception:  # noqa: BLE001 - a model fit cannot shape here is checked by fit itself
        return None
    return out.shape[-1] if isinstance(out, jax.ShapeDtypeStruct) and out.shape and out.shape[-1] > 0 else None


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
    epoch: int  # 0-based index within this call
    first: int  # first step of the epoch in this chunk
    batches: Any  # device pytree (steps, batch, ...)


_DONE = object()


class _Reader:
    """A thread that reads, checks and transfers the chunks of ``epochs`` epochs, ``prefetch`` ahead."""

    def __init__(self, stream: Stream, orders: Callable[[int], np.ndarray], epochs: int, classes: int | None):
        self.stream, self.orders, self.epochs, self.classes = stream, orders, epochs, classes
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
            stream, k = self.stream, self.stream.steps_per_chunk
            for epoch in range(self.epochs):
                order = self.orders(epoch)  # (steps, batch) host indices
                lo, hi = (0, order.shape[1]) if stream.sharding is None else _process_rows(stream.sharding, k, order.shape[1])
                for first in range(0, order.shape[0], k):
                    rows = order[first:first + k]
                    began = time.perf_counter()
                    host = stream._reader.read(rows[:, lo:hi], (first, first + rows.shape[0] - 1))
                    self._check(host, rows[:, lo:hi], first)
                    read = time.perf_counter()
                    if stream.sharding is None:
                        batches = jax.device_put(host)
                    else:
                        batches = jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(
                            stream.sharding, a, rows.shape + a.shape[2:]), host)
                    stream.timings["read_s"] += read - began
                    stream.timings["transfer_s"] += time.perf_counter() - read
                    stream.timings["chunks"] += 1
                    if not self._put(_Chunk(epoch, first, batches)):
                        return
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


# --- the epochs --------------------------------------------------------------------------------------------------


def _copy(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.copy, tree)


def _train_epochs(stream: Stream, parts: _Parts, run: _run.Run, steps: int, classes: int | None, on_nonfinite: str,
                  state: Any, count: Any, data: Any, test: Any):
    """Up to ``count`` streamed epochs from ``state``: the program ``fit`` drives (:meth:`Stream.program`)."""
    count = int(count)
    start = int(state.step)  # the input position: each epoch's order follows from the key and this counter
    key = _copy(state.key)
    batch = run.batch_size

    def orders(epoch: int) -> np.ndarray:
        order = parts.order(key, jnp.int32(start + epoch * steps), stream.num_examples, batch)
        return np.asarray(jax.device_get(order))[:steps]

    names: list[str] | None = None
    results: dict[str, np.ndarray] = {}
    flags = np.full((run.epochs_per_call,), -1, np.int32)
    done = 0
    reader = _Reader(stream, orders, count, classes)
    try:
        for epoch in range(count):
            before = _copy(state) if on_nonfinite == "raise" else None
            logged, pending = [], None
            taken = 0
            while taken < steps:
                item = reader.get()
                if item is _DONE or item.epoch != epoch or item.first != taken:
                    raise RuntimeError(f"the stream's reader is out of step: expected epoch {epoch} step {taken}, got "
                                       f"{item if item is _DONE else (item.epoch, item.first)}")
                state, out = parts.chunk(state, item.batches)
                taken += jax.tree_util.tree_leaves(item.batches)[0].shape[0]
                if pending is not None:  # at most two chunks in flight: the one training and the next
                    jax.block_until_ready(pending)
                pending = out
                logged.append(out)
            logged = jax.tree_util.tree_map(lambda *parts_: jnp.concatenate(parts_), *logged)
            row = {"train_loss": jnp.mean(logged["loss"])}
            row.update({k: SCALE_METRICS[k](logged[k]) for k in SCALE_METRICS if k in logged})  # loss scaling
            row.update({f"train_{k}": jnp.mean(v) for k, v in logged.items() if k != "loss" and k not in SCALE_METRICS})
            if run.test is not None:
                row.update(parts.evaluate(state, run.test))
            nonfinite = _run.first_nonfinite(logged["loss"], state.params, logged.get("skipped_steps")) if on_nonfinite != "ignore" else jnp.int32(-1)
            row, nonfinite = jax.device_get((row, nonfinite))
            if names is None:
                names = list(row)
                dtype = jnp.result_type(float)
                results = {k: np.zeros((run.epochs_per_call,), dtype) for k in names}
            for k in names:
                results[k][epoch] = row[k]
            flags[epoch] = int(nonfinite)
            done = epoch + 1
            if nonfinite >= 0 and on_nonfinite == "raise":
                state = before  # keep the last finite state: nothing learned is lost
                break
    finally:
        reader.close()
    return state, {"results": results, "nonfinite_step": flags, "done": np.int32(done)}
