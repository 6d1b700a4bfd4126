"""Checks and small pytree helpers shared by training, evaluation and the sources of data.

The model, optimizer, loss and key checks; donation (a donated array used
again gets a message naming the fix, not XLA's); pytree comparisons that
list the differing paths; and the checks of data pytrees (one leading
example axis, NaN/Inf refused before anything is compiled). Nothing here
knows a training loop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks
from jaxnets.layers import Layer

#: What a donated (consumed) state's error says; raised by :func:`check_not_donated`.
DONATED_MSG = ("{name} was donated to a previous call (its buffers now belong to the state that call returned) and "
               "cannot be used again: use the returned state, or keep a copy first with "
               "jax.tree_util.tree_map(jnp.copy, {name})")

def check_model(model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer (e.g. serial(...)), got {type(model).__name__}")
    return model


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (with init and update), got {optimizer!r}")
    return optimizer


def check_loss(loss: Any) -> Callable[..., Any]:
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    return loss


def as_key(key: Any = None, seed: Any = None) -> jax.Array:
    """``key`` (a typed ``jax.random`` key), or ``jax.random.key(seed)`` (seed 0 if neither is given)."""
    if key is not None:
        if seed is not None:
            raise ValueError("pass either key or seed, not both")
        if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            raise TypeError(f"key must be a typed jax.random key (jax.random.key(seed)), got {type(key).__name__} "
                            f"of dtype {getattr(key, 'dtype', None)}")
        return key
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return jax.random.key(int(seed))


def is_deleted(tree: Any) -> bool:
    """True when any leaf of ``tree`` is a JAX array whose buffer was donated or deleted."""
    return any(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()
               for leaf in jax.tree_util.tree_leaves(tree))


def check_not_donated(tree: Any, name: str) -> None:
    if is_deleted(tree):
        raise ValueError(DONATED_MSG.format(name=name))



def shapes_by_path(tree: Any) -> dict[str, tuple[Any, ...]]:
    """``{"dense_0/w": (shape, dtype name)}`` for every leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[path_name(path)] = (tuple(np.shape(leaf)), np.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else type(leaf).__name__)
    return out


def path_name(path) -> str:
    """A pytree path as ``dense_0/w`` (dict keys, sequence indices and attribute names joined by ``/``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def compare_trees(expected: Any, got: Any, what: str) -> None:
    """Raise ValueError listing the paths whose presence, shape or dtype differ between two pytrees."""
    want, have = shapes_by_path(expected), shapes_by_path(got)
    if want == have and jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(got):
        return
    lines = [f"  {p}: expected {want.get(p, 'nothing')}, got {have.get(p, 'nothing')}"
             for p in sorted(set(want) | set(have)) if want.get(p) != have.get(p)]
    if not lines:
        lines = [f"  structure: expected {jax.tree_util.tree_structure(expected)}, got {jax.tree_util.tree_structure(got)}"]
    raise ValueError(f"{what} does not fit (was it made for another model or optimizer?):\n" + "\n".join(lines[:20]))


# --- data pytrees ------------------------------------------------------------------------------------------------


def _leaf_label(name: str, path, pair: bool) -> str:
    if pair and path:
        head = "x" if path[0].idx == 0 else "y"
        rest = jax.tree_util.keystr(tuple(path[1:]))
        return f"{name} {head}{rest}"
    return name + jax.tree_util.keystr(tuple(path))


def check_data(data: Any, name: str, *, pair: bool) -> tuple[Any, int]:
    """A data pytree (``pair``: exactly ``(x, y)``) whose array leaves share a leading axis of ``n >= 1`` finite rows.

    Returns the pytree (lists made tuples) and ``n``. NaN or Inf in any
    floating leaf is refused here, before anything is compiled, naming the
    array, the row and the column.
    """
    if isinstance(data, list):
        data = tuple(data)
    if pair and (not isinstance(data, tuple) or len(data) != 2):
        raise TypeError(f"{name} must be a pair (x, y) of arrays or a jaxnets.data.Dataset, got {type(data).__name__}")
    flat, _ = jax.tree_util.tree_flatten_with_path(data)
    if not flat:
        raise ValueError(f"{name} holds no arrays")
    sizes = {}
    for path, leaf in flat:
        label = _leaf_label(name, path, pair)
        _checks.array_like(leaf, label)
        if np.ndim(leaf) < 1:
            raise ValueError(f"{label} must have a leading example axis, got a scalar")
        sizes[label] = leaf.shape[0]
    if len(set(sizes.values())) != 1:
        if pair and len(sizes) == 2:
            (_, x), (_, y) = flat
            raise ValueError(f"{name} x and y must have the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        raise ValueError(f"{name} arrays must have the same number of examples, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"{name} is empty (0 examples)")
    for path, leaf in flat:
        check_finite_array(leaf, _leaf_label(name, path, pair))
    return data, n


def check_finite_array(array: Any, label: str) -> None:
    """NaN/Inf in a concrete floating array: a ValueError naming ``label``, the first bad row and column."""
    if _checks.is_traced(array) or not jnp.issubdtype(array.dtype, jnp.inexact):
        return
    host = np.asarray(array)
    bad = ~np.isfinite(host)
    if bad.any():
        index = np.argwhere(bad)[0]
        where = f"row {index[0]}" + (f", column {tuple(int(i) for i in index[1:])}" if len(index) > 2 else
                                      f", column {index[1]}" if len(index) == 2 else "")
        raise ValueError(f"{label} holds {int(bad.sum())} non-finite value(s) (NaN or Inf); the first at {where}: "
                         f"{host[tuple(index)]}. Clean or impute the data before training")


def leading(data: Any) -> int:
    return jax.tree_util.tree_leaves(data)[0].shape[0]


def take(data: Any, idx: jax.Array) -> Any:
    """Rows ``idx`` of every leaf of a data pytree (gathered on the device)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def check_labels(y, out_shape, name: str) -> None:
    """Integer labels outside ``[0, classes)`` of a model with ``out_shape[-1]`` outputs fail here."""
    if np.issubdtype(np.dtype(y.dtype), np.integer) and out_shape and out_shape[-1] != -1:
        _checks.labels_in_range(y, out_shape[-1], f"{name} labels")


def check_floating_leaves(tree: Any, name: str, *, empty: str, why: str) -> None:
    """Every leaf of ``tree`` a floating (or complex) array, named by its path under ``name``; none at all: ``empty``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves:
        raise ValueError(empty)
    for path, leaf in leaves:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.core.Tracer)):
            raise TypeError(f"{where} must be an array, got {type(leaf).__name__} {leaf!r:.40}")
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(f"{where} must have a floating {why}, got {np.dtype(leaf.dtype).name}")


def check_arrays(tree: Any, name: str) -> None:
    """Every leaf of ``tree`` an array or a real number (what travels to the device as data)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, (jax.Array, np.ndarray)):
            if not (np.issubdtype(np.dtype(leaf.dtype), np.number) or np.dtype(leaf.dtype) == np.bool_
                    or np.dtype(leaf.dtype).name == "bfloat16"):
                raise TypeError(f"{name}{jax.tree_util.keystr(path)} must hold numbers, got dtype {leaf.dtype}")
        elif isinstance(leaf, (bool, int, float, np.number, np.bool_)):
            continue
        else:
            raise TypeError(f"{name}{jax.tree_util.keystr(path)} must be an array (a pytree of arrays), got "
                            f"{type(leaf).__name__} {leaf!r:.40}")
