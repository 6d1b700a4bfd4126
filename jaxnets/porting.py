"""Load params trained with stax, flax.linen, PyTorch or equinox into the equivalent jaxnets model.

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

* :func:`from_torch`: a PyTorch ``state_dict`` (its modules with params in
  order: ``Linear``, ``Conv{1,2,3}d``, ``ConvTranspose{1,2,3}d``,
  ``BatchNorm*`` (running statistics into the model state), ``LayerNorm``,
  ``Embedding``, ``PReLU``, one-layer ``RNN``/``LSTM``/``GRU``) into a
  jaxnets model whose layers with params come in the same order, layouts
  converted (channels-first kernels to channels-last, ``(out, in)`` to
  ``(in, out)``).
* :func:`from_equinox`: an equinox module (``nn.Sequential`` of ``Linear``,
  ``Conv``, ``ConvTranspose``, ``LayerNorm``, ``Embedding``, ``PReLU``,
  ``LSTMCell``/``GRUCell``, nested ``Sequential`` s) likewise.

No library is needed to load: the trees are plain arrays (a ``state_dict``
of tensors is read with ``.detach().cpu().numpy()``). The defaults
that differ between the libraries (padding, pooling strides, BatchNorm
momentum, epsilons, initialisers) are tabulated in ``docs/guides/porting.md``.

Every returned array is a copy, never the other library's buffer: the
jitted training steps donate their state, and a donated buffer that the
caller still held as its stax or flax params would be deleted under it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.layers import Layer, check_params

__all__ = ["from_stax", "from_flax", "from_torch", "from_equinox"]

# jaxnets kind -> flax.linen module class name
FLAX_NAMES = {"dense": "Dense", "conv": "Conv", "conv_transpose": "ConvTranspose", "batch_norm": "BatchNorm",
              "layer_norm": "LayerNorm", "embedding": "Embed"}


def _check_model(model: Any, input_shape: Any) -> None:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    if not isinstance(input_shape, tuple):
        raise TypeError(f"input_shape must be a tuple of ints (the shape of one batch), got {input_shape!r}")


def _stax_layer(layer: Layer, p: Any, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
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
        return {"w": jnp.array(w), "b": jnp.array(b).reshape(-1)}, {}  # copies (module docstring); Conv's b is (1, 1, 1, C)
    if layer.name == "batch_norm":
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValueError(f"{where}: stax BatchNorm params must be a pair (beta, gamma), got {type(p).__name__}")
        beta, gamma = p
        return {"scale": jnp.array(gamma).reshape(-1), "bias": jnp.array(beta).reshape(-1)}, {}
    if layer.children or layer.name in ("residual",):
        raise ValueError(f"{where}: {layer.spec} has no mechanical stax counterpart; map its params by hand")
    if jax.tree_util.tree_leaves(p):
        raise ValueError(f"{where}: {layer.spec} has no params in jaxnets, but the stax params hold {jax.tree_util.tree_map(jnp.shape, p)}")
    return {}, {}


def from_stax(model: Layer, stax_params: Any, input_shape: tuple[Any, ...], *, key: jax.Array | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _flax_leaf(tree: dict[str, Any], module: str, name: str, what: str) -> jax.Array:
    if module not in tree:
        raise ValueError(f"flax {what} have no module {module!r}; they have {sorted(tree)}")
    if name not in tree[module]:
        raise ValueError(f"flax {what} {module} have no {name!r}; they have {sorted(tree[module])}")
    return jnp.array(tree[module][name])  # a copy: a donating step must not delete the caller's flax variables


def from_flax(model: Layer, variables: dict[str, Any], input_shape: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
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


# ---------------------------------------------------------------------------
# PyTorch and equinox
# ---------------------------------------------------------------------------


def _numpy(a: Any) -> np.ndarray:
    """A torch tensor (detached, on the host) or any array, as NumPy."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        a = a.numpy()
    return np.asarray(a)


def _param_layers(layer: Layer, expected: Any, path: tuple[Any, ...] = ()):
    """``(path, layer)`` of every primitive layer holding params, in params order (depth first)."""
    if layer.children:
        for name, child in layer.children:
            if isinstance(expected, dict) and name in expected:
                yield from _param_layers(child, expected[name], path + (name,))
        return
    if jax.tree_util.tree_leaves(expected):
        yield path, layer


def _get(tree: dict[str, Any], path: tuple[Any, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _put(tree: dict[str, Any], path: tuple[Any, ...], value: dict[str, Any]) -> None:
    if not path:
        tree.update(value)
        return
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _entry(group: dict[str, Any], key: str, where: str, what: str) -> np.ndarray:
    if key not in group:
        name = f"{where}.{key}" if where else key
        raise ValueError(f"{what}: {name!r} is missing (for a {group['__layer__']}); the module has "
                         f"{sorted(k for k in group if not k.startswith('__'))}")
    return group[key]


def _channels_last(w: np.ndarray) -> np.ndarray:
    """``(O, I, *k)`` (PyTorch's and equinox's) -> ``(*k, I, O)`` (jaxnets')."""
    n = w.ndim - 2
    return np.transpose(w, tuple(range(2, 2 + n)) + (1, 0))


def _convert(layer: Layer, group: dict[str, Any], where: str, what: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One module's arrays (PyTorch names) as jaxnets ``(params, state, sources)``;
    ``sources`` maps each jaxnets leaf to the key it came from (for errors)."""
    get = lambda key: _entry(group, key, where, what)  # noqa: E731
    key = lambda k: f"{where}.{k}" if where else k  # noqa: E731
    kind, params, state, src = layer.name, {}, {}, {}
    if kind in ("dense", "conv", "conv_transpose"):
        w = get("weight")
        if kind == "dense":
            params["w"] = w.T  # (out, in) -> (in, out)
        elif kind == "conv":
            params["w"] = _channels_last(w)  # OIHW -> HWIO
        elif group.get("__flavor__") == "equinox":  # eqx's ConvTranspose weight is the correlation kernel (O, I/G, *k)
            cl = _channels_last(w)
            params["w"] = np.flip(cl, axis=tuple(range(cl.ndim - 2)))
        else:  # PyTorch's (I, O/G, *k) scatter kernel, unflipped -> (*k, I/G, O)
            groups = 1  # the weight does not say; the layer does
            if "feature_groups=" in layer.spec:
                groups = int(layer.spec.split("feature_groups=")[1].split(")")[0].split(",")[0])
            i, og, k = w.shape[0], w.shape[1], w.shape[2:]
            g = w.reshape((groups, i // groups, og) + k)  # (G, I/G, O/G, *k)
            n = len(k)
            g = np.transpose(g, tuple(range(3, 3 + n)) + (1, 0, 2))  # (*k, I/G, G, O/G)
            params["w"] = g.reshape(k + (i // groups, groups * og))
        src["w"] = key("weight")
        if "bias" in group:
            params["b"], src["b"] = np.reshape(group["bias"], (-1,)), key("bias")
    elif kind in ("batch_norm", "layer_norm"):
        for ours, theirs in (("scale", "weight"), ("bias", "bias")):
            if theirs in group:
                params[ours], src[ours] = group[theirs], key(theirs)
        if kind == "batch_norm":
            state = {"mean": get("running_mean"), "var": get("running_var")}
            src["state/mean"], src["state/var"] = key("running_mean"), key("running_var")
    elif kind == "embedding":
        params["table"], src["table"] = get("weight"), key("weight")
    elif kind == "prelu":
        params["alpha"], src["alpha"] = get("weight"), key("weight")
    elif kind in ("rnn", "lstm", "gru", "rnn_cell", "lstm_cell", "gru_cell"):
        extra = sorted(k for k in group if not k.startswith("__") and not k.endswith("_l0") and k not in
                       ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        if extra:
            raise ValueError(f"{what}: {where!r} holds {extra}: only one-layer, one-direction recurrent modules map "
                             f"onto {layer.spec}")
        sfx = "" if "weight_ih" in group else "_l0"
        params["wx"], params["wh"] = get("weight_ih" + sfx).T, get("weight_hh" + sfx).T  # gate order as PyTorch's
        src["wx"], src["wh"] = key("weight_ih" + sfx), key("weight_hh" + sfx)
        b_ih = group.get("bias_ih" + sfx)
        b_hh = group.get("bias_hh" + sfx)
        zeros = np.zeros(params["wx"].shape[-1], params["wx"].dtype)
        b_ih = zeros if b_ih is None else b_ih
        b_hh = zeros if b_hh is None else b_hh
        if kind.startswith("gru"):  # b_hn sits inside the reset gate's product: kept apart, as jaxnets' bh
            params["bx"], params["bh"] = b_ih, b_hh
            src["bx"], src["bh"] = key("bias_ih" + sfx), key("bias_hh" + sfx)
        else:
            params["b"], src["b"] = b_ih + b_hh, key("bias_ih" + sfx) + " + " + key("bias_hh" + sfx)
    else:
        raise ValueError(f"{what}: {where!r} would load into {layer.spec}, which has no {what.split('_')[1]} "
                         f"counterpart here; map its params by hand")
    return params, state, src


def _load(model: Layer, groups: list[Any], input_shape: tuple[Any, ...], what: str, key: jax.Array | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pair the model's layers with params and the other library's modules, in order; convert; check shapes."""
    k = jax.random.key(0) if key is None else key
    expected, expected_state = jax.eval_shape(lambda k: model.init_with_state(k, input_shape)[1:], k)
    _, _, init_state = model.init_with_state(k, input_shape)
    layers = list(_param_layers(model, expected))
    if len(layers) != len(groups):
        ours = [("/".join(p) or layer.name) + f" {layer.spec}" for p, layer in layers]
        theirs = [g["__name__"] or "(the top module)" for g in groups]
        raise ValueError(f"{what}: the model has {len(layers)} layers with params, the source {len(groups)} modules "
                         f"with params; they pair in order:\n  model:  {ours}\n  source: {theirs}")
    params, state = {}, jax.tree_util.tree_map(lambda a: a, init_state)
    for (path, layer), group in zip(layers, groups):
        where = group["__name__"]
        p, st, src = _convert(layer, group, where, what)
        want = _get(expected, path)
        for leaf, value in p.items():
            if leaf not in want:
                raise ValueError(f"{what}: {src[leaf]!r} has no place in {'/'.join(path) or layer.name} {layer.spec} "
                                 f"(it has {sorted(want)})")
        for leaf in want:
            if leaf not in p:
                raise ValueError(f"{what}: {'/'.join(path + (leaf,))} of {layer.spec} has no source in module "
                                 f"{where!r} (it has {sorted(k for k in group if not k.startswith('__'))})")
        for leaf in list(p):
            shape_dtype, got = want[leaf], p[leaf]
            if leaf == "alpha" and got.size == int(np.prod(shape_dtype.shape)):
                got = got.reshape(shape_dtype.shape)  # PReLU's (1,) slope is jaxnets' scalar
            if tuple(got.shape) != tuple(shape_dtype.shape):
                raise ValueError(f"{what}: {src[leaf]!r} (shape {tuple(group_shape(group, src[leaf]))}) converts to "
                                 f"{'/'.join(path + (leaf,))} of shape {tuple(got.shape)}, but {layer.spec} expects "
                                 f"{tuple(shape_dtype.shape)}")
            p[leaf] = jnp.array(got, jnp.float32 if np.issubdtype(got.dtype, np.floating) else got.dtype)  # a copy
        _put(params, path, p)
        if st:
            want_state = _get(expected_state, path)
            for leaf, value in st.items():
                if tuple(value.shape) != tuple(want_state[leaf].shape):
                    raise ValueError(f"{what}: {src['state/' + leaf]!r} (shape {tuple(value.shape)}) does not match "
                                     f"the state {'/'.join(path + (leaf,))} of {layer.spec}: expected "
                                     f"{tuple(want_state[leaf].shape)}")
            _put(state, path, {leaf: jnp.array(v, jnp.float32) for leaf, v in st.items()})
    check_params(model, params, jax.ShapeDtypeStruct(input_shape, jnp.float32), state=state)
    return params, state


def group_shape(group: dict[str, Any], source: str) -> tuple[Any, ...]:
    """The shape of the array a source key names (``"a + b"`` names two of one shape)."""
    name = source.split(" + ")[0].rsplit(".", 1)[-1]
    return np.shape(group.get(name, ()))


def from_torch(model: Layer, state_dict: Any, input_shape: tuple[Any, ...], *, key: jax.Array | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """jaxnets ``(params, state)`` from a PyTorch ``state_dict`` of the same network.

    The ``state_dict``'s keys are grouped by module (``"features.0.weight"``
    -> module ``"features.0"``) in their order, which is the modules' order;
    the model's layers with params (depth first through ``serial`` and the
    other combinators) take them one by one. Conversions:

    * ``Linear``: ``w = weight^T`` (``(out, in)`` -> ``(in, out)``).
    * ``Conv{1,2,3}d``: ``weight`` ``(O, I/G, *k)`` -> ``(*k, I/G, O)``
      (OIHW -> HWIO; the model's input is channels-last, so a flattening
      that follows a convolution orders features differently: permute the
      next ``Linear``'s columns by hand or pool globally first).
    * ``ConvTranspose{1,2,3}d``: ``weight`` ``(I, O/G, *k)`` -> ``(*k, I/G,
      O)``, with no flip: jaxnets' :func:`~jaxnets.layers.ConvTranspose` has
      PyTorch's scatter semantics (it flips the kernel itself when it runs
      the stride-1 correlation).
    * ``BatchNorm*``: ``weight``, ``bias`` -> ``scale``, ``bias``;
      ``running_mean``, ``running_var`` -> the model state's ``mean``,
      ``var`` (``num_batches_tracked`` is dropped). PyTorch's
      ``momentum=0.1`` is jaxnets' ``momentum=0.9``.
    * ``LayerNorm``: ``weight``, ``bias`` -> ``scale``, ``bias``.
    * ``Embedding``: ``weight`` -> ``table``. ``PReLU``: ``weight`` -> ``alpha``.
    * ``RNN`` (tanh), ``LSTM``, ``GRU`` (one layer, one direction,
      ``batch_first`` or not: the params do not say): ``w_x = weight_ih_l0^T``,
      ``w_h = weight_hh_l0^T``; PyTorch's gate orders are jaxnets' (i, f, g, o;
      r, z, n); ``b = bias_ih + bias_hh`` (the GRU keeps both: ``bx``, ``bh``).

    Args:
      model: the jaxnets model.
      state_dict: ``module.state_dict()`` (tensors or arrays).
      input_shape: the shape of one input batch (channels last), to check.
      key: for the state of layers the ``state_dict`` does not fill.

    Returns:
      ``(params, state)`` for ``model.apply_with_state``.

    Raises:
      ValueError: a different number of modules and layers (both listed), a
        missing key (naming it and the module's keys), or a converted array
        whose shape differs from the model's (naming the key, its shape, the
        converted shape and the expected one).
    """
    _check_model(model, input_shape)
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of names to tensors (module.state_dict()), "
                        f"got {type(state_dict).__name__}")
    groups: dict[str, Any] = {}
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        module, _, leaf = name.rpartition(".")
        groups.setdefault(module, {"__name__": module})[leaf] = _numpy(value)
    for (path, layer), group in zip(_param_layers(model, jax.eval_shape(
            lambda k: model.init(k, input_shape)[1], jax.random.key(0))), groups.values()):
        group["__layer__"] = layer.spec
    for group in groups.values():
        group.setdefault("__layer__", "layer")
    return _load(model, list(groups.values()), input_shape, "from_torch", key)


_EQX_KINDS = {"Linear": "weight", "Conv": "weight", "Conv1d": "weight", "Conv2d": "weight", "Conv3d": "weight",
              "ConvTranspose": "weight", "ConvTranspose1d": "weight", "ConvTranspose2d": "weight",
              "ConvTranspose3d": "weight", "LayerNorm": "weight", "Embedding": "weight", "PReLU": "negative_slope",
              "LSTMCell": "weight_ih", "GRUCell": "weight_ih"}


def _eqx_groups(module: Any, path: str, out: list[Any]) -> None:
    kind = type(module).__name__
    if hasattr(module, "layers") and isinstance(getattr(module, "layers"), (tuple, list)):
        for i, child in enumerate(module.layers):
            _eqx_groups(child, f"{path}.layers[{i}]".lstrip("."), out)
        return
    leaves = [a for a in jax.tree_util.tree_leaves(module) if hasattr(a, "shape") and hasattr(a, "dtype")]
    if not leaves:
        return  # activations, pooling, dropout, Lambda
    if kind not in _EQX_KINDS:
        raise ValueError(f"from_equinox: {path or 'the module'} is an equinox {kind}, which from_equinox does not map "
                         f"(it maps {sorted(set(_EQX_KINDS))}); map its params by hand"
                         + (" (BatchNorm keeps its statistics in an eqx.nn.State)" if "Norm" in kind else ""))
    group: dict[str, Any] = {"__name__": path, "__layer__": kind, "__flavor__": "equinox"}
    if kind == "PReLU":
        group["weight"] = _numpy(module.negative_slope)
    elif kind in ("LSTMCell", "GRUCell"):
        group["weight_ih"], group["weight_hh"] = _numpy(module.weight_ih), _numpy(module.weight_hh)
        if getattr(module, "bias", None) is not None:
            group["bias_ih"] = _numpy(module.bias)
            if kind == "GRUCell":  # eqx adds bias_n inside the reset gate's product: jaxnets' bh, candidate block
                bn = _numpy(module.bias_n)
                group["bias_hh"] = np.concatenate([np.zeros(2 * bn.shape[0], bn.dtype), bn])
    else:
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                group[name] = _numpy(getattr(module, name))
    out.append(group)


def from_equinox(model: Layer, eqx_module: Any, input_shape: tuple[Any, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """jaxnets ``(params, state)`` from an equinox module of the same network.

    The module's submodules with arrays (through ``nn.Sequential``, depth
    first) pair in order with the model's layers with params, as in
    :func:`from_torch`, whose conversions apply (equinox spells its arrays as
    PyTorch does: ``Linear.weight`` ``(out, in)``, ``Conv.weight``
    ``(O, I/G, *k)``, a bias of shape ``(O, 1, ..., 1)``), except:

    * ``ConvTranspose``: equinox's ``weight`` ``(O, I/G, *k)`` is the kernel
      of the stride-1 correlation over the dilated input, so it is moved to
      channels last and **flipped** in space (jaxnets flips when it runs).
    * ``LSTMCell``: one ``bias`` (gate order i, f, g, o, as jaxnets').
    * ``GRUCell``: ``bias`` -> ``bx``; ``bias_n`` (added inside the reset
      gate's product) -> the candidate block of ``bh`` (the other blocks 0).
    * ``PReLU``: ``negative_slope`` -> ``alpha`` (equinox takes slope 1 at
      ``x = 0``, jaxnets the slope ``a``: the values agree, the rules at 0 differ).

    equinox's ``BatchNorm`` keeps its statistics in an ``eqx.nn.State``
    and is refused (map it by hand). equinox layers take unbatched,
    channels-first input; the jaxnets model takes a batch, channels last.

    Args:
      model: the jaxnets model.
      eqx_module: the equinox module (its arrays are read, nothing is called).
      input_shape: the shape of one input batch (channels last), to check.

    Returns:
      ``(params, state)`` for ``model.apply_with_state``.

    Raises:
      ValueError: as :func:`from_torch`, naming equinox paths
        (``layers[2].weight``), and for a submodule it does not map.
    """
    _check_model(model, input_shape)
    groups: list[Any] = []
    _eqx_groups(eqx_module, "", groups)
    return _load(model, groups, input_shape, "from_equinox", None)
