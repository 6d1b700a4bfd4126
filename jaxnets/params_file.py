"""Params alone in `safetensors <https://huggingface.co/docs/safetensors>`_: :func:`save_params`, :func:`load_params`.

One tensor per leaf, named by its dict path (``dense_0/w``), readable from
PyTorch and other tools; written atomically (a temporary file renamed).
Needs the ``checkpoint`` extra. Re-exported by :mod:`jaxnets.checkpoint`,
where users find them beside whole-run checkpoints.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import numpy as np

from jaxnets import _inputs

__all__ = ["save_params", "load_params"]

_EXTRA_MSG = "{what} needs the checkpoint extra: pip install 'jaxnets[checkpoint]' ({error})"


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _check_file_path(path: Any, name: str) -> None:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {type(path).__name__} {path!r}")


def save_params(path: str, params: Any) -> None:
    """Write ``params`` to a safetensors file, one tensor per leaf named by its path (``dense_0/w``).

    Written to a temporary file in the same folder and renamed: the file is
    complete or absent.
    """
    try:
        from safetensors.numpy import save_file
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what="save_params", error=error)) from None
    _check_file_path(path, "path")
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory: give a file path such as 'model.safetensors'")
    _inputs.check_not_donated(params, "params")
    for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        where = f"params{jax.tree_util.keystr(p)}"
        if not isinstance(leaf, (jax.Array, np.ndarray)):
            raise TypeError(f"{where} must be an array, got {type(leaf).__name__} {leaf!r:.40}")
        if _is_key(leaf) or not (np.issubdtype(np.dtype(leaf.dtype), np.number) or np.dtype(leaf.dtype) == np.bool_
                                 or np.dtype(leaf.dtype).name == "bfloat16"):
            raise TypeError(f"{where} must hold numbers (safetensors stores numeric arrays), got dtype {leaf.dtype}"
                            + (": store jax.random.key_data(key)" if _is_key(leaf) else ""))
    flat = {_inputs.path_name(p): np.ascontiguousarray(np.asarray(leaf)) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    if not flat:
        raise ValueError("params has no arrays to save")
    folder = os.path.dirname(os.path.abspath(path))
    parent = folder
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"path {path!r} is inside {parent}, which is a file, not a folder")
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
    _check_file_path(path, "path")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no params file at {path}")
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory, not a params file")
    for p, leaf in jax.tree_util.tree_flatten_with_path(like)[0]:
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
            raise TypeError(f"like{jax.tree_util.keystr(p)} must be an array or a jax.ShapeDtypeStruct (params, or "
                            f"their shapes), got {type(leaf).__name__} {leaf!r:.40}")
    try:
        tensors = load_file(path)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    leaves, tree = jax.tree_util.tree_flatten_with_path(like)
    out, problems = [], []
    names = set()
    for p, leaf in leaves:
        name = _inputs.path_name(p)
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
