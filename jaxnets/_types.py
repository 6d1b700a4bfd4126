"""Type aliases of the public signatures (for annotations only; nothing here is checked at run time).

JAX types pytrees as ``Any`` (a pytree is any nesting of containers that
``jax.tree_util`` knows), and so do these aliases: they name what a value
is, for readers and documentation, without promising a checker more.
"""

from __future__ import annotations

from typing import Any

#: A pytree: arrays (or scalars) nested in dicts, lists, tuples, NamedTuples, dataclasses registered with JAX.
PyTree = Any

#: A params pytree: a nested dict of arrays, ``{"dense_0": {"w": ..., "b": ...}}``.
Params = Any

#: A layer's shape: a tuple of ints (``-1`` for an unknown size, the batch), or a tuple of shapes for
#: a layer of several inputs or outputs (``parallel``, ``FanOut``).
Shape = Any
