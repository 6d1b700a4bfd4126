"""Load params trained with stax or flax.linen into the equivalent jaxnets model.

Where the mapping is mechanical (the same layers in the same order), the
other library's params tree becomes a jaxnets params dict, checked against
what the model's ``init`` makes (every path, shape and dtype), so a model
that does not correspond fails with the differing paths named:

* :func:`from_stax`: ``jax.example_libraries.stax`` params (nested lists of
  per-layer tuples: ``Dense`` ``(W, b)``, ``Conv`` ``(W, b)`` with ``b`` of
  shape ``(1, 1, 1, C)``, ``BatchNorm`` ``(beta, gamma)``, ``()`` for a layer
  without params) into a ``serial`` (or ``parallel``) of the same layers.
* :func:`from_flax`: flax.linen variables (``{"params": {"Dense_0":
  {"kernel", "bias"}, ...}, "batch_stats": {...}}``) of a module whose
  submodules sit at one level, into a ``serial`` whose layers of each kind
  come in the same order (``Dense_i`` -> ``dense_i``, ``Conv_i`` -> ``conv_i``,
  ``BatchNorm_i`` -> ``batch_norm_i``, ``LayerNorm_i`` -> ``layer_norm_i``,
  ``Embed_i`` -> ``embedding_i``, ``ConvTranspose_i`` -> ``conv_transpose_i``).

Neither library is needed to load: the trees are plain arrays. The defaults
that differ between the libraries (padding, pooling strides, BatchNorm
momentum, epsilons, initialisers) are tabulated in ``docs/guides/porting.md``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnets.layers import Layer, check_params

__all__ = ["from_stax", "from_flax"]

# jaxnets kind -> flax.linen module class name
FLAX_NAMES = {"dense": "Dense", "conv": "Conv", "conv_transpose": "ConvTranspose", "batch_norm": "BatchNorm",
              "layer_norm": "LayerNorm", "embedding": "Embed"}


def _check_model(model: Any, input_shape: Any) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    if not isinstance(input_shape, tuple):
        raise TypeError(f"input_shape must be a tuple of ints (the shape of one batch), got {input_shape!r}")


def _stax_layer(layer: Layer, p: Any, path: str) -> tuple[dict, dict]:
    """One stax layer's params as jaxnets ``(params, state)``."""
    if layer.name in ("serial", "parallel"):
        if not isinstance(p, (list, tuple)) or len(p) != len(layer.children):
            got = f"{len(p)} entries" if isinstance(p, (list, tuple)) else type(p).__name__
            raise ValueError(f"{path or layer.name}: stax params of a {layer.name} need one entry per layer "
                             f"({len(layer.children)}), got {got}")
        params, state = {}, {}
        for (name, child), child_p in zip(layer.children, p):
            cp, cs = _stax_layer(child, child_p, f"{path}/{name}".lstrip("/"))
            if jax.tree_util.tree_leaves(cp):
                params[name] = cp
            if jax.tree_util.tree_leaves(cs):
                state[name] = cs
        return params, state
    where = path or layer.name
    if layer.name in ("dense", "conv"):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{where}: stax {layer.name} params must be a pair (W, b), got {type(p).__name__}")
        w, b = p
        return {"w": jnp.asarray(w), "b": jnp.asarray(b).reshape(-1)}, {}  # stax Conv's b is (1, 1, 1, C)
    if layer.name == "batch_norm":
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{where}: stax BatchNorm params must be a pair (beta, gamma), got {type(p).__name__}")
        beta, gamma = p
        return {"scale": jnp.asarray(gamma).reshape(-1), "bias": jnp.asarray(beta).reshape(-1)}, {}
    if layer.children or layer.name in ("residual",):
        raise ValueError(f"{where}: {layer.spec} has no mechanical stax counterpart; map its params by hand")
    if jax.tree_util.tree_leaves(p):
        raise ValueError(f"{where}: {layer.spec} has no params in jaxnets, but the stax params hold {jax.tree_util.tree_map(jnp.shape, p)}")
    return {}, {}


def from_stax(model: Layer, stax_params: Any, input_shape: tuple, *, key: jax.Array | None = None) -> tuple[dict, dict]:
    """jaxnets ``(params, state)`` from the params of the same network built with stax.

    Args:
      model: the jaxnets model, layer for layer the stax one (``serial`` for
        ``stax.serial``; parameter-free layers included, as in stax).
      stax_params: what stax's ``init_fun`` returned (second element).
      input_shape: the shape of one input batch, to check the result against ``model.init``.
      key: for the state ``init`` makes (BatchNorm's running statistics:
        stax's BatchNorm keeps none, so they start at mean 0, variance 1).

    Returns:
      ``(params, state)`` for ``model.apply_with_state``.

    Raises:
      ValueError: naming the path where the trees do not correspond, or
        every leaf whose shape differs from what ``model.init`` makes.
    """
    _check_model(model, input_shape)
    params, _ = _stax_layer(model, stax_params, "")
    _, _, state = model.init_with_state(jax.random.key(0) if key is None else key, input_shape)
    check_params(model, params, jax.ShapeDtypeStruct(input_shape, jnp.float32), state=state)
    return params, state


def _flax_leaf(tree: dict, module: str, name: str, what: str) -> jax.Array:
    if module not in tree:
        raise ValueError(f"flax {what} have no module {module!r}; they have {sorted(tree)}")
    if name not in tree[module]:
        raise ValueError(f"flax {what} {module} have no {name!r}; they have {sorted(tree[module])}")
    return jnp.asarray(tree[module][name])


def from_flax(model: Layer, variables: dict, input_shape: tuple) -> tuple[dict, dict]:
    """jaxnets ``(params, state)`` from the variables of the same network written in flax.linen.

    Args:
      model: a jaxnets ``serial`` (or a single layer) whose layers of each
        kind come in the order of the flax module's submodules.
      variables: what ``module.init`` returned: ``{"params": ..., "batch_stats": ...}``
        (a plain dict or a FrozenDict), the submodules at one level.
      input_shape: the shape of one input batch, to check the result.

    Returns:
      ``(params, state)`` for ``model.apply_with_state``. flax's
      ``ConvTranspose`` (``transpose_kernel=False``) differs from jaxnets'
      by a spatial flip of the kernel, which the loader undoes.

    Raises:
      ValueError: naming a flax module that is missing, one that no jaxnets
        layer takes (so its params would be lost), or leaves whose shapes differ.
    """
    _check_model(model, input_shape)
    if not hasattr(variables, "keys") or "params" not in variables:
        raise ValueError(f"variables must be flax variables with a 'params' collection, got {type(variables).__name__}"
                         + (f" with {sorted(variables)}" if hasattr(variables, "keys") else ""))
    flax_params = dict(variables["params"])
    flax_stats = dict(variables.get("batch_stats", {}))
    children = model.children if model.name == "serial" else ((f"{model.name}_0", model),)
    params, state, used = {}, {}, set()
    for name, layer in children:
        if layer.children:
            raise ValueError(f"{name}: {layer.spec} is nested; from_flax maps modules at one level only")
        kind, index = name.rsplit("_", 1)
        if kind not in FLAX_NAMES:
            continue  # no params (activations, pooling, dropout, ...)
        module = f"{FLAX_NAMES[kind]}_{index}"
        used.add(module)
        if kind in ("dense", "conv", "conv_transpose"):
            w = _flax_leaf(flax_params, module, "kernel", "params")
            if kind == "conv_transpose":
                w = jnp.flip(w, axis=tuple(range(w.ndim - 2)))
            entry = {"w": w}
            if "bias" in flax_params[module]:
                entry["b"] = _flax_leaf(flax_params, module, "bias", "params")
        elif kind == "embedding":
            entry = {"table": _flax_leaf(flax_params, module, "embedding", "params")}
        else:
            entry = {k: _flax_leaf(flax_params, module, k, "params") for k in ("scale", "bias") if k in flax_params.get(module, {})}
            if kind == "batch_norm":
                state[name] = {k: _flax_leaf(flax_stats, module, k, "batch_stats") for k in ("mean", "var")}
        params[name] = entry
    unused = sorted(set(flax_params) - used)
    if unused:
        raise ValueError(f"flax params hold modules that no layer of the model takes: {unused} "
                         f"(the model's layers with params: {sorted(params)})")
    if model.name != "serial":
        params, state = params.get(children[0][0], {}), state.get(children[0][0], {})
    check_params(model, params, jax.ShapeDtypeStruct(input_shape, jnp.float32), state=state)
    return params, state
