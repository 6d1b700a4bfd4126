"""Element-wise layers: activations as layers, ``Elementwise`` for your own function, ``Lambda`` for any.

``Elementwise(fn)`` keeps the shape (checked at every call) and takes its
rule from ``fn.backward`` (every activation in :mod:`jaxnets.activations`
has one) or ``vjp=``. ``Lambda(fn)`` wraps any parameter-free function,
shape-changing or not, with autodiff as its rule unless one is given.
"""

from __future__ import annotations

from typing import Any, Callable, cast

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets import activations as act
from jaxnets.layers import _util, core
from jaxnets.layers.custom import define_layer
from jaxnets.layers.core import Layer

__all__ = ["Elementwise", "Lambda", "Relu", "LeakyRelu", "PReLU", "Elu", "Gelu", "Sigmoid", "Tanh", "Softplus", "Silu",
           "Softmax", "LogSoftmax", "Identity"]


def _spec(name: str, fn_kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in fn_kwargs.items())
    return f"{''.join(p.capitalize() for p in name.split('_'))}({args})"


def Elementwise(fn: Callable[[jax.Array], jax.Array], name: str = "elementwise", *, vjp: Callable[..., Any] | None = None, **fn_kwargs: Any) -> Layer:
    """A parameter-free layer applying ``fn(x, **fn_kwargs)``, which must keep the shape.

    The activation layers below are made with it; use it for your own.
    For a function that changes the shape, use :func:`Lambda`.

    Args:
      fn: the function.
      name: the kind name used for params keys and messages.
      vjp: its hand-derived rule ``(x, y_bar, **fn_kwargs) -> x_bar``; for
        an elementwise ``fn`` that is ``y_bar * fn'(x)``. Defaults to
        ``fn.backward`` (every function in :mod:`jaxnets.activations` has
        one); without either the layer has no backward rule.
      fn_kwargs: keyword arguments of ``fn`` (and ``vjp``).

    Raises:
      ValueError: at a call where ``fn`` changes the shape of its input.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if vjp is None:
        vjp = getattr(fn, "backward", None)
    elif not callable(vjp):
        raise TypeError(f"vjp must be callable as vjp(x, y_bar), got {vjp!r}")
    spec = _spec(name, fn_kwargs)

    def init(key, input_shape):
        del key
        return input_shape, {}

    def apply(params, x, *, key=None, train=False):
        del params, key, train
        _checks.array_like(x, f"{spec} input x")
        y = fn(x, **fn_kwargs)
        if getattr(y, "shape", None) != x.shape:
            raise ValueError(f"{spec} must keep the shape of its input (init promised {tuple(x.shape)}), but fn returned "
                             f"{getattr(y, 'shape', type(y).__name__)}; use Lambda(fn) for a function that changes the shape")
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        del params, key, train
        return {}, cast(Callable[..., Any], vjp)(x, y_bar, **fn_kwargs)  # used only when vjp is given

    return core.build_stateless(name, spec, init, apply, backward if vjp is not None else None)


def Lambda(fn: Callable[..., Any], name: str = "lambda", *, backward: Callable[..., Any] | None = None, **fn_kwargs: Any) -> Layer:
    """A parameter-free layer applying any function ``fn(x, **fn_kwargs)``: reshapes,
    slices, sums, a fixed transform. The output shape is inferred with
    ``jax.eval_shape``.

    Args:
      fn: the function, of one array (or of a tuple, after :func:`parallel`).
      name: the kind name used for params keys and messages.
      backward: its rule ``(x, y_bar, **fn_kwargs) -> x_bar``. Default: the
        autodiff rule, ``jax.vjp(fn, x)`` applied to ``y_bar``, so a model
        holding a ``Lambda`` still runs on :mod:`jaxnets.backprop`.
      fn_kwargs: keyword arguments of ``fn`` (and ``backward``).

    Example: ``Lambda(lambda x: x[:, 0], name="first_token")``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be callable as backward(x, y_bar), got {backward!r}")

    def apply(params, x):
        del params
        return fn(x, **fn_kwargs)

    def rule(params, x, y_bar):
        if backward is not None:
            return {}, backward(x, y_bar, **fn_kwargs)
        _, pullback = jax.vjp(lambda x: fn(x, **fn_kwargs), x)
        return {}, pullback(y_bar)[0]

    return define_layer(name, lambda key, shape: {}, apply, backward=rule, spec=_spec(name, fn_kwargs))


def Relu() -> Layer:
    """:func:`jaxnets.activations.relu` as a layer."""
    return Elementwise(act.relu, "relu")


def LeakyRelu(negative_slope: float = 0.01) -> Layer:
    """:func:`jaxnets.activations.leaky_relu` as a layer."""
    return Elementwise(act.leaky_relu, "leaky_relu", negative_slope=_checks.positive_float(negative_slope, "negative_slope", allow_zero=True))


def PReLU(init: float = 0.25, *, per_channel: bool = False) -> Layer:
    """Parametric ReLU (He et al., 2015): a leaky ReLU whose negative slope ``a`` is learned.

    ``y = x`` for ``x > 0``, ``y = a x`` otherwise; ``a`` is one scalar, or
    one per channel (the last axis) with ``per_channel=True`` (PyTorch's
    ``PReLU(num_parameters=C)`` on channels-last input).

    Rule: ``x_bar = y_bar`` where ``x > 0``, ``a y_bar`` elsewhere;
    ``a_bar = sum of y_bar min(x, 0)`` over every axis (over all but the
    last, per channel; accumulated in float32 for 16-bit dtypes). **At the
    kink** ``x = 0`` the derivative taken is the left-hand one, ``a`` (as
    :func:`jaxnets.activations.leaky_relu` and PyTorch; ``jax.nn`` takes 1),
    and ``a`` gets nothing from ``x = 0`` (``min(0, 0) = 0``).

    Args:
      init: the initial slope (default 0.25, as PyTorch).
      per_channel: one slope per channel rather than one for all.

    Shapes: x ``(..., C)``; params ``{"alpha": ()}`` or ``{"alpha": (C,)}``;
    y like x.

    Raises:
      ValueError: per-channel slopes for an input whose channel count differs
        from init's, or an unknown channel count at init.
    """
    init_value = _checks.finite_real(init, "init")
    if not isinstance(per_channel, bool):
        raise TypeError(f"PReLU: per_channel must be a bool, got {per_channel!r}")
    spec = f"PReLU({init_value!r}{', per_channel=True' if per_channel else ''})"

    def init_fn(key, input_shape):
        del key
        if not per_channel:
            return input_shape, {"alpha": jnp.full((), init_value, jnp.float32)}
        _util.check_rank(input_shape, spec, min_rank=1)
        channels = _util.check_last_dim(input_shape, spec)
        return input_shape, {"alpha": jnp.full((channels,), init_value, jnp.float32)}

    def alpha_of(params, x):
        a = _util.entry(params, "alpha", "params", spec)
        _util.check_input(x, spec, min_rank=1 if per_channel else 0)
        if per_channel and x.shape[-1] != a.shape[-1]:
            raise ValueError(f"{spec} expects {a.shape[-1]} channels (last axis), got x of shape {tuple(x.shape)}")
        return a

    def apply(params, x, *, key=None, train=False):
        del key, train
        a = alpha_of(params, x)
        return jnp.where(x > 0, x, a * x)

    def backward(params, x, y_bar, *, key=None, train=False):
        del key, train
        a = alpha_of(params, x)
        positive = x > 0
        x_bar = jnp.where(positive, y_bar, a * y_bar)  # the left-hand slope a at x = 0
        contrib = jnp.where(positive, jnp.zeros_like(y_bar), y_bar * x)  # y_bar min(x, 0)
        acc = _util.accumulation_dtype(contrib.dtype)
        a_bar = _util.sum_leading(contrib) if per_channel else jnp.sum(contrib, dtype=acc)
        return {"alpha": a_bar}, x_bar

    return core.build_stateless("prelu", spec, init_fn, apply, backward)


def Elu(alpha: float = 1.0) -> Layer:
    """:func:`jaxnets.activations.elu` as a layer."""
    return Elementwise(act.elu, "elu", alpha=_checks.positive_float(alpha, "alpha"))


def Gelu(approximate: bool = False) -> Layer:
    """:func:`jaxnets.activations.gelu` as a layer (exact by default)."""
    return Elementwise(act.gelu, "gelu", approximate=_checks.boolean(approximate, "approximate"))


def Sigmoid() -> Layer:
    """:func:`jaxnets.activations.sigmoid` as a layer."""
    return Elementwise(act.sigmoid, "sigmoid")


def Tanh() -> Layer:
    """:func:`jaxnets.activations.tanh` as a layer."""
    return Elementwise(act.tanh, "tanh")


def Softplus() -> Layer:
    """:func:`jaxnets.activations.softplus` as a layer."""
    return Elementwise(act.softplus, "softplus")


def Silu() -> Layer:
    """:func:`jaxnets.activations.silu` as a layer."""
    return Elementwise(act.silu, "silu")


def Softmax(axis: int = -1) -> Layer:
    """:func:`jaxnets.activations.softmax` as a layer."""
    return Elementwise(act.softmax, "softmax", axis=_checks.int_value(axis, "axis"))


def LogSoftmax(axis: int = -1) -> Layer:
    """:func:`jaxnets.activations.log_softmax` as a layer."""
    return Elementwise(act.log_softmax, "log_softmax", axis=_checks.int_value(axis, "axis"))


def Identity() -> Layer:
    """The identity as a layer (a placeholder, or a skip branch in :func:`parallel`)."""
    return Elementwise(act.identity, "identity")
