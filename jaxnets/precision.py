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
in that dtype, params and output float32).

Loss scaling. float16's smallest normal number is 6.1e-5 (subnormals reach
6e-8), and the cotangents deep in a network are often smaller: they flush to
zero, and those layers stop learning. Multiplying the loss by ``S`` multiplies
every cotangent by ``S`` (the chain rule is linear in the output cotangent),
which lifts them into range; the float32 gradients of the master weights are
divided by ``S`` again before the optimizer sees them. :func:`loss_scaling`
wraps any optax optimizer so that the step does this (``S`` lives in the
optimizer state, :class:`LossScaleState`):

* ``"dynamic"``: start at ``S = 2**15``; a step whose gradients are not all
  finite (the scaled cotangents overflowed) is *skipped* (params and the
  inner optimizer state unchanged) and halves ``S``; after
  ``growth_interval`` finite steps in a row ``S`` doubles. Powers of two make
  the scaling exact.
* a number (static): a fixed ``S``; overflowing steps are skipped too.
* ``None``: no scaling (bfloat16 has float32's range and needs none).

Skipped steps are counted (``LossScaleState.skipped``; ``fit`` logs
``history["skipped_steps"]`` per epoch and ``history["loss_scale"]``). A
skipped step is not a divergence: its loss and the params stay finite, so
``fit``'s non-finite guard does not stop; a model that really diverges shows
a non-finite loss and is caught as before. ``fit(precision="float16")`` turns
on the policy and dynamic scaling together. Without scaling, ``fit`` first
compares one batch's float16 gradients with float32 ones and warns, naming
the layers whose gradients underflowed to zero (:func:`underflowing_layers`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets.layers import Layer
from jaxnets.layers.core import casting

__all__ = ["Policy", "POLICIES", "get_policy", "with_policy", "cast_floating", "LossScaleState", "loss_scaling",
           "loss_scale_of", "scaled_objective", "underflowing_layers", "warn_underflow", "for_training",
           "check_scaling_matches", "MixedPrecision"]

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

    def __post_init__(self) -> None:
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


def _plan(policy: Policy, float32: frozenset, overrides: Mapping[str, jnp.dtype]) -> Callable[..., Any]:
    """The casting plan: each primitive layer's function, wrapped to compute in its dtype."""

    def dtype_of(path: str, layer: Layer) -> jnp.dtype:
        if path in overrides:
            return overrides[path]
        if layer.name in overrides:
            return overrides[layer.name]
        return jnp.dtype(jnp.float32) if layer.name in float32 else policy.compute_dtype

    def plan(path: str, layer: Layer, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
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

    backward_fn = None  # pyright: ignore[reportAssignmentType]  (the def below, when the model has a rule)
    if model.backward_fn is not None:

        def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
            with casting(plan):
                run = cast(Callable[..., Any], model.backward_fn if model.children else plan("", model, "backward", model.backward_fn))
                params_bar, x_bar = run(params, state, tape, y_bar, key=key, train=train)
            return _cast_like(params_bar, params), x_bar

    spec = f"with_policy({model.spec}, {policy.name!r})"
    return Layer(model.name, spec, model.init_fn, forward_fn, backward_fn, model.children)


# --- loss scaling ---------------------------------------------------------------------------------------------------


class LossScaleState(NamedTuple):
    """The state of :func:`loss_scaling`: the scale, its counters and the wrapped optimizer's state.

    Attributes:
      scale: ``S``, a float32 scalar: the step differentiates ``S * loss``.
      good_steps: finite steps in a row since ``S`` last changed (int32).
      skipped: steps skipped so far because their gradients were not all finite (int32).
      inner_state: the wrapped optimizer's state, untouched by skipped steps.
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    inner_state: Any


def _positive(value: Any, name: str, *, above_one: bool = False, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (np.isfinite(value) and value > 0) or (above_one and value <= 1) or (below_one and value >= 1):
        want = "> 1" if above_one else "in (0, 1)" if below_one else "positive and finite"
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return value


def loss_scaling(
    optimizer: optax.GradientTransformation,
    scale: str | float | None = "dynamic",
    *,
    init_scale: float = 2.0 ** 15,
    growth_interval: int = 2000,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    min_scale: float = 1.0,
    max_scale: float = 2.0 ** 24,
) -> optax.GradientTransformation:
    """``optimizer`` behind a loss scale: it takes the gradients of ``S * loss`` and steps on those of ``loss``.

    ``update(g_S, state)`` computes ``g = g_S / S`` in the gradients' dtype
    (float32 master weights: exact, ``S`` is a power of two), and if every
    entry of ``g`` is finite, the wrapped optimizer's update; otherwise zero
    updates and the wrapped state unchanged (a *skipped* step, counted in
    ``state.skipped``). The scale then moves (``"dynamic"``): halved
    (``backoff_factor``, not below ``min_scale``) after a skipped step,
    doubled (``growth_factor``, not above ``max_scale``) after
    ``growth_interval`` finite steps in a row: the schedule of PyTorch's
    ``GradScaler`` (whose scale starts at 2**16 and has no bounds).

    A step whose gradients are not finite is taken for an overflow of the
    scaled cotangents. If every step of an epoch is skipped, the cause is
    not the scale: ``fit``'s non-finite guard reports that epoch as a
    divergence (``jaxnets.train.scan_epoch``).

    :func:`jaxnets.train.make_step` (and so ``fit``) sees a
    :class:`LossScaleState` at the top of the optimizer state and scales the
    objective by it; in a loop of your own, differentiate
    :func:`scaled_objective` with :func:`loss_scale_of` the state's scale.
    The wrapper must be the outermost transformation (wrap ``optax.chain(...)``,
    not one link of it): everything inside sees unscaled gradients.

    Args:
      optimizer: any ``optax.GradientTransformation``.
      scale: ``"dynamic"``, a positive number (a static scale; overflowing
        steps are still skipped and counted), or None (``optimizer`` itself
        is returned: no scaling).
      init_scale: the first ``S`` of a dynamic scale.
      growth_interval, growth_factor, backoff_factor, min_scale, max_scale: the dynamic schedule.

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`LossScaleState`
      (its ``init`` carries ``loss_scaled = True``).

    Raises:
      TypeError, ValueError: an optimizer that is not a GradientTransformation,
        an unknown ``scale``, or a schedule value out of range.
    """
    if scale is None:
        return optimizer
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (init, update), got {type(optimizer).__name__}")
    if isinstance(scale, str):
        if scale != "dynamic":
            raise ValueError(f"scale must be 'dynamic', a positive number (static) or None, got {scale!r}")
        dynamic = True
        init_scale = _positive(init_scale, "init_scale")
    else:
        dynamic = False
        init_scale = _positive(scale, "scale")
    if isinstance(growth_interval, bool) or not isinstance(growth_interval, (int, np.integer)) or growth_interval < 1:
        raise ValueError(f"growth_interval must be a positive int, got {growth_interval!r}")
    growth_factor = _positive(growth_factor, "growth_factor", above_one=True)
    backoff_factor = _positive(backoff_factor, "backoff_factor", below_one=True)
    min_scale, max_scale = _positive(min_scale, "min_scale"), _positive(max_scale, "max_scale")
    if dynamic and not min_scale <= init_scale <= max_scale:
        raise ValueError(f"init_scale must lie in [min_scale, max_scale] = [{min_scale}, {max_scale}], got {init_scale}")

    def init(params):
        return LossScaleState(jnp.float32(init_scale), jnp.int32(0), jnp.int32(0), optimizer.init(params))

    init.loss_scaled = True  # how fit tells a wrapped optimizer from a plain one without calling init

    def update(grads, state, params=None, **extra):
        if not isinstance(state, LossScaleState):
            raise TypeError(f"loss_scaling's update needs its own LossScaleState, got {type(state).__name__}: "
                            "the state was made by another optimizer")
        inverse = 1.0 / state.scale
        grads = jax.tree_util.tree_map(
            lambda g: g * inverse.astype(g.dtype) if jnp.issubdtype(jnp.result_type(g), jnp.inexact) else g, grads)
        leaves = [jnp.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads)
                  if jnp.issubdtype(jnp.result_type(g), jnp.inexact)]
        finite = jnp.stack(leaves).all() if leaves else jnp.bool_(True)
        updates, inner = optimizer.update(grads, state.inner_state, params, **extra)
        updates = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), inner, state.inner_state)
        good = state.good_steps + 1
        if dynamic:
            grow = good >= growth_interval
            new_scale = jnp.where(finite, jnp.where(grow, jnp.minimum(state.scale * growth_factor, max_scale), state.scale),
                                  jnp.maximum(state.scale * backoff_factor, min_scale))
            good = jnp.where(finite & ~grow, good, 0)
        else:
            new_scale, good = state.scale, jnp.where(finite, good, 0)
        skipped = state.skipped + (~finite).astype(jnp.int32)
        return updates, LossScaleState(new_scale.astype(jnp.float32), good.astype(jnp.int32), skipped, inner)

    # update names its first argument grads (as every optimizer here), optax's protocol updates: the same positionally
    return optax.GradientTransformationExtraArgs(init, cast(optax.TransformUpdateExtraArgsFn, update))


def loss_scale_of(opt_state: Any) -> jax.Array | None:
    """The loss scale ``S`` when ``opt_state`` is :func:`loss_scaling`'s, else None.

    Raises:
      TypeError: a :class:`LossScaleState` nested inside another optimizer's
        state (the wrapper must be outermost: the links before it would see
        scaled gradients).
    """
    if isinstance(opt_state, LossScaleState):
        return opt_state.scale
    nested = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda n: isinstance(n, LossScaleState))
    if any(isinstance(n, LossScaleState) for n in nested):
        raise TypeError("loss_scaling must wrap the whole optimizer (the outermost transformation): here it is one "
                        "link of a chain, so the links before it would see scaled gradients. Use "
                        "precision.loss_scaling(optax.chain(...)) instead")
    return None


def scaled_objective(objective: Callable[..., Any], scale: Any) -> Callable[..., Any]:
    """``objective`` with its loss multiplied by ``scale`` in float32 (``aux`` untouched).

    ``objective`` returns ``loss`` or ``(loss, aux)``; so does the result.
    Differentiating it gives ``scale`` times the gradients, computed with
    cotangents ``scale`` times larger (out of float16's underflow range).
    """

    def scaled(*args, **kwargs):
        out = objective(*args, **kwargs)
        if isinstance(out, tuple):
            return (jnp.asarray(out[0], jnp.float32) * scale,) + tuple(out[1:])
        return jnp.asarray(out, jnp.float32) * scale

    return scaled


def underflowing_layers(model: Layer, loss: Callable[..., Any], params: Any, x: Any, y: Any, *, policy: str | Policy = "float16",
                        state: Any = None, key: jax.Array | None = None, threshold: float = 0.5) -> dict[str, float]:
    """The layers whose gradients underflow to zero under ``policy`` without loss scaling.

    Differentiates ``loss(model(x), y)`` once in float32 and once under
    ``policy`` (the same float32 params) and counts, per params leaf, the
    entries whose float32 gradient is nonzero but whose reduced-precision one
    is exactly zero.

    Returns:
      ``{params path: fraction}`` for the leaves where that fraction is at
      least ``threshold`` (e.g. ``{"dense_0/w": 0.97}``), in params order.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    threshold = float(threshold)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    low = with_policy(model, policy)
    if state is None:
        state = model.init_with_state(jax.random.key(0), (-1,) + tuple(jnp.shape(x)[1:]))[2]

    def grads(m):
        def f(p):
            out, _ = m.apply_with_state(p, state, x, key=key, train=key is not None)
            return jnp.asarray(loss(cast_floating(out, jnp.float32), y), jnp.float32)

        return jax.jit(jax.grad(f))(params)

    full, reduced = grads(model), grads(low)
    found = {}
    for (path, g32), g in zip(jax.tree_util.tree_leaves_with_path(full), jax.tree_util.tree_leaves(reduced)):
        nonzero = np.asarray(g32) != 0
        if nonzero.sum() == 0:
            continue
        fraction = float(np.mean(np.asarray(g)[nonzero] == 0))
        if fraction >= threshold:
            found[jax.tree_util.keystr(path, simple=True, separator="/")] = fraction
    return found


def warn_underflow(model: Layer, loss: Callable[..., Any], params: Any, x: Any, y: Any, *, policy: str | Policy = "float16",
                   state: Any = None) -> dict[str, float]:
    """:func:`underflowing_layers` on one batch, and a ``RuntimeWarning`` naming each layer found (what ``fit`` runs
    before training in float16 without loss scaling). Returns what it found."""
    found = underflowing_layers(model, loss, params, x, y, policy=policy, state=state)
    if found:
        layers: dict[str, list[str]] = {}
        for path, fraction in found.items():
            layer, _, leaf = path.rpartition("/")
            layers.setdefault(layer or leaf, []).append(f"{leaf} {fraction:.0%}" if layer else f"{fraction:.0%}")
        listed = ", ".join(f"{layer} ({', '.join(parts)})" for layer, parts in layers.items())
        warnings.warn(f"float16 without loss scaling: on the first batch the gradients of {listed} underflow to zero "
                      "(percent of the entries float32 gives nonzero), so those layers learn little or nothing; train with "
                      "loss_scale='dynamic' (the default for float16)", RuntimeWarning, stacklevel=3)
    return found


@functools.lru_cache(maxsize=32)
def _policy_model(model: Layer, policy: Policy) -> Layer:
    """``with_policy(model, policy)``, the same object for the same pair: a second ``fit`` compiles nothing."""
    return with_policy(model, policy)


@functools.lru_cache(maxsize=32)
def _scaled_optimizer(optimizer: optax.GradientTransformation, scale: Any) -> optax.GradientTransformation:
    return loss_scaling(optimizer, scale)


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """Mixed precision for :func:`jaxnets.fit` as one object: a dtype policy and the loss scaling.

    Attributes:
      policy: ``"bfloat16"``, ``"float16"``, ``"float32"``, a :class:`Policy`,
        or None (full precision; only ``loss_scale`` applies).
      loss_scale: ``"auto"`` (dynamic for a float16 policy, none otherwise),
        ``"dynamic"``, a number (static) or None (:func:`loss_scaling`).

    Example: ``fit(model, loss, optimizer, data, precision=MixedPrecision("float16", loss_scale=2.0**12))``.
    """

    policy: Any = None
    loss_scale: Any = "auto"

    def __post_init__(self) -> None:
        if self.policy is not None and not isinstance(self.policy, (str, Policy)):
            raise TypeError(f"policy must be a dtype name ('bfloat16', 'float16'), a Policy or None, got {self.policy!r}")
        if self.policy is not None:
            get_policy(self.policy)  # an unknown name fails here


def for_training(model: Layer | None, optimizer: optax.GradientTransformation, precision: str | Policy | None,
                 loss_scale: str | float | None = "auto", *, loss_mode: bool = True,
                 gradient: Callable[..., Any] | None = None) -> tuple[Layer | None, optax.GradientTransformation, Policy | None]:
    """``fit``'s ``precision=`` and ``loss_scale=``: the model under its policy and the optimizer behind its scale.

    ``loss_scale="auto"`` is dynamic scaling for a float16 policy, none
    otherwise, and keeps the scale of an optimizer already wrapped in
    :func:`loss_scaling`. The same arguments give the same objects back
    (cached), so a second ``fit`` compiles nothing.

    Returns:
      ``(model, optimizer, policy)``; ``policy`` is None without ``precision``.

    Raises:
      TypeError: ``precision`` with an objective (``loss_mode=False``), a
        ``loss_scale`` of another type, or a ``gradient`` that is not linear
        in the loss (``linear_in_loss = False``: it clips or adds noise) with
        loss scaling.
      ValueError: a ``loss_scale`` for an optimizer already wrapped.
    """
    policy = None
    if precision is not None:
        policy = get_policy(precision)
        if not loss_mode:
            raise TypeError("precision= goes with loss; with an objective, run the model under "
                            "jaxnets.precision.with_policy(model, ...) inside it (loss_scale= still applies)")
        model = _policy_model(model, policy)
    wrapped = getattr(optimizer.init, "loss_scaled", False)
    if isinstance(loss_scale, str) and loss_scale == "auto":  # an optimizer already wrapped keeps its own scale
        loss_scale = "dynamic" if policy is not None and policy.compute_dtype == jnp.float16 and not wrapped else None
    elif loss_scale is not None and not isinstance(loss_scale, str) and (
            isinstance(loss_scale, bool) or not isinstance(loss_scale, (int, float, np.integer, np.floating))):
        raise TypeError(f"loss_scale must be 'auto', 'dynamic', a positive number or None, got {loss_scale!r}")
    if loss_scale is not None and wrapped:
        raise ValueError("optimizer is already wrapped in precision.loss_scaling: pass loss_scale=None (or 'auto') "
                         "to fit, or the plain optimizer")
    if (loss_scale is not None or wrapped) and not getattr(gradient, "linear_in_loss", True):
        raise TypeError(f"gradient {getattr(gradient, '__name__', gradient)} is not linear in the loss (it clips or "
                        "adds noise), so it cannot differentiate a scaled loss: train it without loss scaling "
                        "(loss_scale=None; bfloat16 needs none)")
    if loss_scale is not None:
        if not isinstance(loss_scale, str):
            loss_scale = float(loss_scale)
        try:
            optimizer = _scaled_optimizer(optimizer, loss_scale)
        except TypeError:  # unhashable optimizer: wrap it for this call only
            optimizer = loss_scaling(optimizer, loss_scale)
    return model, optimizer, policy


def check_scaling_matches(optimizer: optax.GradientTransformation, opt_state: Any, asked: str = "") -> None:
    """A state made with loss scaling given to an optimizer without it (or the reverse) fails here, saying which.

    Raises:
      ValueError: naming what the state was made with and what ``asked`` (the caller's arguments) asks.
    """
    state_scaled = loss_scale_of(opt_state) is not None
    if state_scaled != bool(getattr(optimizer.init, "loss_scaled", False)):
        raise ValueError(f"state.opt_state was made {'with' if state_scaled else 'without'} loss scaling, but this fit "
                         f"{'does not scale' if state_scaled else 'scales'} the loss ({asked}): pass the loss_scale the "
                         "state was trained with, or start from a fresh state")
