"""Mixed precision: a dtype policy for a model or a single layer, with float32 master weights.

A :class:`Policy` names three dtypes: the params are *stored* in
``param_dtype`` (float32: the optimizer updates full-precision master
weights), each layer *computes* in ``compute_dtype`` (its params and input
cast at the layer), and the model's output is cast to ``output_dtype``
(float32, so losses and softmax run in full precision)::

    model = precision.with_policy(L.serial(L.Dense(256), L.Relu(), L.Dense(10)), "bfloat16")

Normalisation layers (``BatchNorm``, ``LayerNorm``) and ``Softmax`` /
``LogSoftmax`` layers run in float32 by default (their statistics and sums
lose the most in 8 bits of mantissa); ``float32=`` changes the list and
``overrides={"dense_1": "float32"}`` sets any layer's dtype by its path.

The hand-derived rules run under the policy too: each layer's rule gets its
params, tape and output cotangent in the layer's compute dtype, and its params
gradient is cast back to the params' dtype (float32), so ``backprop`` and
``hand_gradients`` train on the same mixed precision as autodiff.

Names: ``"float32"`` (no casting), ``"bfloat16"`` and ``"float16"`` (compute
in that dtype, params and output float32). float16's range is small: train
it with loss scaling (:func:`dynamic_loss_scale`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxnets.layers import Layer
from jaxnets.layers.core import casting

__all__ = ["Policy", "POLICIES", "get_policy", "with_policy", "cast_floating"]

_FLOAT_NAMES = ("float32", "bfloat16", "float16", "float64")


def _float_dtype(value: Any, name: str) -> jnp.dtype:
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"{name} must be a dtype (one of {_FLOAT_NAMES}), got {value!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype (one of {_FLOAT_NAMES}): a policy cannot compute in "
                         f"{dtype.name}, got {value!r}")
    return dtype


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which dtype the params are stored in, each layer computes in, and the model outputs.

    Attributes:
      compute_dtype: the dtype of each layer's arithmetic (params and input cast at the layer).
      param_dtype: the dtype params are kept and updated in (float32 master weights).
      output_dtype: the dtype of the model's output (losses are computed in it).
    """

    compute_dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    output_dtype: Any = jnp.float32

    def __post_init__(self):
        for field in ("compute_dtype", "param_dtype", "output_dtype"):
            object.__setattr__(self, field, _float_dtype(getattr(self, field), field))

    @property
    def name(self) -> str:
        return self.compute_dtype.name


POLICIES = {name: Policy(compute_dtype=name) for name in ("float32", "bfloat16", "float16")}


def get_policy(policy: str | Policy) -> Policy:
    """A :class:`Policy` from its name (``"float32"``, ``"bfloat16"``, ``"float16"``) or itself."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str) and policy in POLICIES:
        return POLICIES[policy]
    if isinstance(policy, str):
        try:
            dtype = jnp.dtype(policy)
        except TypeError:
            dtype = None
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            _float_dtype(policy, "policy")  # an integer dtype: say that a policy cannot compute in it
    raise ValueError(f"policy must be a Policy or one of {sorted(POLICIES)}, got {policy!r}")


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating leaf cast to ``dtype`` (integer and key leaves untouched)."""
    dtype = _float_dtype(dtype, "dtype")
    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype:
            return a.astype(dtype)
        return a

    return jax.tree_util.tree_map(cast, tree)


def _cast_like(tree: Any, like: Any) -> Any:
    """Each floating leaf of ``tree`` in the dtype of the matching leaf of ``like``."""
    return jax.tree_util.tree_map(
        lambda a, b: a.astype(b.dtype) if hasattr(a, "dtype") and hasattr(b, "dtype") and jnp.issubdtype(b.dtype, jnp.floating) else a,
        tree, like)


def _plan(policy: Policy, float32: frozenset, overrides: Mapping[str, jnp.dtype]) -> Callable:
    """The casting plan: each primitive layer's function, wrapped to compute in its dtype."""

    def dtype_of(path: str, layer: Layer) -> jnp.dtype:
        if path in overrides:
            return overrides[path]
        if layer.name in overrides:
            return overrides[layer.name]
        return jnp.dtype(jnp.float32) if layer.name in float32 else policy.compute_dtype

    def plan(path: str, layer: Layer, phase: str, fn: Callable) -> Callable:
        dtype = dtype_of(path, layer)
        if phase == "forward":
            def forward(params, state, x, **kwargs):
                return fn(cast_floating(params, dtype), state, cast_floating(x, dtype), **kwargs)

            return forward

        def backward(params, state, tape, y_bar, **kwargs):
            params_bar, x_bar = fn(cast_floating(params, dtype), state, tape, cast_floating(y_bar, dtype), **kwargs)
            return _cast_like(params_bar, params), x_bar  # gradients of the master weights in their dtype

        return backward

    return plan


def with_policy(model: Layer, policy: str | Policy = "bfloat16", *,
                float32: Sequence[str] = ("batch_norm", "layer_norm", "softmax", "log_softmax"),
                overrides: Mapping[str, Any] | None = None) -> Layer:
    """``model`` computing under ``policy``: the same params (in ``param_dtype``), the same init.

    Args:
      model: any jaxnets model.
      policy: a :class:`Policy` or its name.
      float32: layer kinds (``Layer.name``) that always compute in float32.
      overrides: ``{path or kind: dtype}``, e.g. ``{"dense_2": "float32"}`` to
        keep the last layer in full precision.

    Returns:
      A :class:`jaxnets.layers.Layer` with the same params structure; its
      ``apply`` casts each layer's params and input to the layer's compute
      dtype and the output to ``output_dtype``; its hand rules run in the
      same dtypes and return params gradients in ``param_dtype``.

    Raises:
      ValueError: at the first call, when the params are not in
        ``param_dtype`` (a policy keeps master weights: cast them back first).
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    policy = get_policy(policy)
    overrides = {k: _float_dtype(v, f"overrides[{k!r}]") for k, v in (overrides or {}).items()}
    plan = _plan(policy, frozenset(float32), overrides)

    def check_params(params):
        for path, leaf in jax.tree_util.tree_leaves_with_path(params):
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != policy.param_dtype:
                where = jax.tree_util.keystr(path, simple=True, separator="/")
                raise ValueError(f"{model.spec} under the {policy.name} policy keeps params in {policy.param_dtype.name} "
                                 f"(master weights), but params {where} is {leaf.dtype.name}: pass the float32 params, "
                                 f"the policy casts them at each layer")

    def forward_fn(params, state, x, *, key=None, train=False):
        check_params(params)
        with casting(plan):
            run = model.forward_fn if model.children else plan("", model, "forward", model.forward_fn)
            y, new_state, tape = run(params, state, x, key=key, train=train)
        return cast_floating(y, policy.output_dtype), new_state, tape

    backward_fn = None
    if model.backward_fn is not None:

        def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
            with casting(plan):
                run = model.backward_fn if model.children else plan("", model, "backward", model.backward_fn)
                params_bar, x_bar = run(params, state, tape, y_bar, key=key, train=train)
            return _cast_like(params_bar, params), x_bar

    spec = f"with_policy({model.spec}, {policy.name!r})"
    return Layer(model.name, spec, model.init_fn, forward_fn, backward_fn, model.children)
