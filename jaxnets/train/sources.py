"""Sources of batches: one protocol for data in device memory, streams and on-device samplers.

The loop (:func:`jaxnets.train.loop`) asks a source for the batches of each
run of ``length`` steps that starts at step ``position``; ``origin`` is the
step at which the run's first epoch began (epochs count from it). A source
answers in two halves, so that one program builder (:mod:`jaxnets.train.program`)
serves every source and none keeps its own copy of it:

* on the host, :meth:`Source.feed` ``(key, position, origin, length)``: what
  must travel with this call (a stream's rows, read and transferred ahead),
  or None;
* in the compiled program, :meth:`Source.inputs` ``(data, feed, key,
  position, origin, length)``: a pytree with a leading axis of ``length`` that
  the program scans over, and :meth:`Source.batch` ``(data, x)``: the batch of
  one step from one slice of it. ``data`` is :attr:`Source.data`, a device
  pytree handed to the program as an argument (so it is never baked into
  the program as a constant).

:attr:`Source.steps_per_epoch` is None for a source without epochs (an
infinite sampler); :meth:`Source.max_length` bounds a call where the source
needs it (a stream's chunk); :meth:`Source.describe` names the source in a
checkpoint, so that a run resumed on other data fails instead of drifting.

Sources here: :class:`ArraySource` (arrays in device memory, shuffled
epochs: the order :func:`jaxnets.train.epoch_indices` gives) and
:class:`Sampler` (``fn(key, step) -> batch`` on the device: random windows of
a corpus, noise for a generator). :class:`jaxnets.streaming.Stream`
implements the same protocol for data beyond device memory.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.train.epoch import epoch_indices, steps_per_epoch

__all__ = ["Source", "ArraySource", "Sampler", "fingerprint"]


class Source:
    """The protocol every source of batches implements (module docstring). Subclass it, or implement the same names."""

    #: steps per epoch, or None for a source without epochs
    steps_per_epoch: int | None = None
    #: the device pytree the program receives as its ``data`` argument
    data: Any = None

    def feed(self, key: jax.Array, position: int, origin: int, length: int) -> Any:
        """Host side of a call: what travels with it (None unless the source streams)."""
        return None

    def inputs(self, data: Any, feed: Any, key: jax.Array, position: jax.Array, origin: jax.Array, length: int) -> Any:
        """In the program: a pytree with leading axis ``length``, one slice per step."""
        raise NotImplementedError

    def batch(self, data: Any, x: Any) -> Any:
        """In the program: the batch of one step from its slice ``x`` of :meth:`inputs`."""
        raise NotImplementedError

    def max_length(self, position: int, origin: int) -> int | None:
        """The most steps the call starting at ``position`` may run (None: any)."""
        return None

    def signature(self) -> Any:
        """What the compiled program depends on besides its arguments: hashable, equal for sources that compile
        alike, so a later loop reuses the program. None (the default) compiles anew for every loop."""
        return None

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records of this source, compared when a run resumes."""
        return {"kind": type(self).__name__}

    def start(self, key: jax.Array, position: int, origin: int, end: int) -> None:
        """Called once before the first call of a run (a stream starts reading ahead)."""

    def close(self) -> None:
        """Called once when the run ends, however it ends."""


def fingerprint(tree: Any) -> str:
    """A short digest of a data pytree's shapes, dtypes and a sample of its values (cheap on large arrays)."""
    digest = hashlib.blake2b(digest_size=8)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise ValueError(f"tree holds no arrays to fingerprint, got {tree!r:.60}")
    for path, leaf in flat:
        _checks.array_like(leaf, f"tree{jax.tree_util.keystr(path)}")
        digest.update(f"{_inputs.path_name(path)}:{np.shape(leaf)}:{np.dtype(leaf.dtype).name};".encode())
        flat = np.asarray(jax.device_get(leaf)).reshape(-1)
        if flat.size:
            sample = flat[np.linspace(0, flat.size - 1, num=min(flat.size, 4096)).astype(np.int64)]
            digest.update(np.ascontiguousarray(sample).tobytes())
    return digest.hexdigest()


class _Position(NamedTuple):
    """What :func:`jaxnets.train.epoch_indices` reads of a state: its key and its step counter."""

    key: jax.Array
    step: jax.Array


class ArraySource(Source):
    """Data in device memory, in shuffled epochs of ``batch_size`` examples.

    Epoch ``e`` of a run starts at step ``origin + e S`` (``S`` steps per
    epoch) and visits the examples in the order :func:`jaxnets.train.epoch_indices`
    gives a state with the loop's key at that step: the order ``fit`` has
    always used, so an epoch of :func:`jaxnets.train.loop` on this source
    equals an epoch of :func:`jaxnets.train.scan_epoch`.

    Args:
      data: a pytree of arrays with a common leading axis of ``n`` examples
        (a pair ``(x, y)``, a dict); NaN/Inf refused here.
      batch_size: examples per step (at most ``n``).
      drop_last: skip the examples that do not fill a last batch instead of
        completing it from the start of the epoch's order.
      place: ``tree -> tree`` putting the data on devices (default: the default
        device; :class:`jaxnets.distributed.Placement` replicates it on a mesh).
    """

    def __init__(self, data: Any, batch_size: int, *, drop_last: bool = False, place: Callable[[Any], Any] | None = None,
                 name: str = "data"):
        if not isinstance(name, str):
            raise TypeError(f"name must be a str (how messages name the data), got {name!r}")
        data, n = _inputs.check_data(data, name, pair=False)
        self.batch_size: int = _checks.positive_int(batch_size, "batch_size")
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
        self.num_examples: int
        self.drop_last: bool
        self.num_examples, self.drop_last = n, drop_last
        if place is not None and not callable(place):
            raise TypeError(f"place must be callable as place(tree) -> tree (a jaxnets.distributed.Placement's data), "
                            f"got {place!r}")
        self.steps_per_epoch: int | None = steps_per_epoch(n, self.batch_size, drop_last)
        device = (lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)) if place is None else place
        self.data: Any = device(data)
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), self.data)
        return (f"ArraySource({self.num_examples} examples of {shapes}, batch_size={self.batch_size}, "
                f"{self.steps_per_epoch} steps per epoch{', drop_last' if self.drop_last else ''})")

    def signature(self) -> tuple[Any, ...]:
        """What the compiled program depends on (the data are an argument): reused by every source alike."""
        return ("arrays", self.num_examples, self.batch_size, self.drop_last)

    def describe(self) -> dict[str, Any]:
        """The kind, sizes and a fingerprint of the data (:meth:`Source.describe`)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.data)
        return {"kind": "arrays", "num_examples": self.num_examples, "batch_size": self.batch_size,
                "drop_last": self.drop_last, "fingerprint": self._fingerprint}

    def _epoch(self, key: jax.Array, start: jax.Array) -> jax.Array:
        return epoch_indices(_Position(key, start), self.num_examples, self.batch_size, drop_last=self.drop_last)

    def inputs(self, data: Any, feed: Any, key: jax.Array, position: jax.Array, origin: jax.Array, length: int) -> jax.Array:
        """The example indices of each step of the call, ``(length, batch_size)`` (:meth:`Source.inputs`)."""
        spe = cast(int, self.steps_per_epoch)  # an array source always has epochs

        def row(carry, t):  # any window of steps: the epoch's order recomputed when the epoch changes
            epoch, order = carry
            e = (t - origin) // spe
            order = jax.lax.cond(e != epoch, lambda: self._epoch(key, origin + e * spe), lambda: order)
            return (e, order), order[(t - origin) % spe]

        def window():
            steps = position + jnp.arange(length, dtype=jnp.int32)
            init = (jnp.int32(-1), jnp.zeros((spe, self.batch_size), jnp.int32))
            return jax.lax.scan(row, init, steps)[1]  # (length, batch)

        if length != spe:
            return window()
        # a whole epoch starting on an epoch's first step (the loop's epochs always do): one order, one sort
        return jax.lax.cond((position - origin) % spe == 0, lambda: self._epoch(key, position), window)

    def batch(self, data: Any, x: jax.Array) -> Any:
        """The examples ``x`` (indices) of ``data`` (:meth:`Source.batch`)."""
        return _inputs.take(data, x)


class Sampler(Source):
    """Batches drawn on the device: ``fn(key, step) -> batch``, one call per step, no epochs.

    Step ``t`` gets ``fold_in(fold_in(key, t), 1)`` of the loop's data key
    (the state's own key for a :class:`TrainState`, unless the loop is given
    one), so a resumed run draws exactly what the uninterrupted one drew.
    ``data`` (any pytree of arrays, e.g. a token corpus) is handed to ``fn``
    as ``fn(key, step, data)`` when given, and travels to the program as an
    argument, not a constant.

    Example: random windows of a corpus, as nanoGPT draws them::

        def windows(key, step, corpus):
            start = jax.random.randint(key, (batch_size,), 0, corpus.shape[0] - context - 1)
            idx = start[:, None] + jnp.arange(context + 1)        # (batch, context + 1)
            tokens = corpus[idx]
            return {"x": tokens[:, :-1], "y": tokens[:, 1:]}

        source = train.Sampler(windows, data=corpus)
    """

    def __init__(self, fn: Callable[..., Any], *, data: Any = None, steps_per_epoch: int | None = None,
                 name: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(key, step) -> batch (or fn(key, step, data)), got {fn!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str (how checkpoints name the sampler), got {name!r}")
        _inputs.check_arrays(data, "data")
        self.fn: Callable[..., Any]
        self.data: Any
        self.fn, self.data = fn, (None if data is None else jax.tree_util.tree_map(jnp.asarray, data))
        self.takes_data: bool = data is not None
        self.steps_per_epoch: int | None = None if steps_per_epoch is None else _checks.positive_int(steps_per_epoch,
                                                                                        "steps_per_epoch")
        self.name: str = name or getattr(fn, "__name__", type(fn).__name__)
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"Sampler({self.name})"

    def signature(self) -> tuple[Any, ...]:
        """The sampling function and its options (:meth:`Source.signature`)."""
        return ("sampler", self.fn, self.steps_per_epoch, self.takes_data)

    def describe(self) -> dict[str, Any]:
        """The kind, the function's name and a fingerprint of the data (:meth:`Source.describe`)."""
        if self._fingerprint is None and self.data is not None:
            self._fingerprint = fingerprint(self.data)
        return {"kind": "sampler", "fn": self.name, "fingerprint": self._fingerprint}

    def inputs(self, data: Any, feed: Any, key: jax.Array, position: jax.Array, origin: jax.Array,
               length: int) -> dict[str, jax.Array]:
        """Each step's key and counter, ``{"key": (length,), "step": (length,)}`` (:meth:`Source.inputs`)."""
        steps = position + jnp.arange(length, dtype=jnp.int32)
        return {"key": jax.vmap(lambda t: jax.random.fold_in(jax.random.fold_in(key, t), 1))(steps), "step": steps}

    def batch(self, data: Any, x: dict[str, jax.Array]) -> Any:
        """``fn(key, step)`` (or ``fn(key, step, data)``) for one step's slice ``x`` (:meth:`Source.batch`)."""
        if not self.takes_data:
            return self.fn(x["key"], x["step"])
        return self.fn(x["key"], x["step"], data)
