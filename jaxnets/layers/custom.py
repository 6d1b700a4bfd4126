"""``define_layer``: a layer of your own from ``init`` and ``apply``, optionally with state and a hand rule.

The output shape is inferred with ``jax.eval_shape`` (at two batch sizes, so
the batch stays ``-1``) unless given; at every call the output shape, the
rule's cotangents and the params are checked against what ``init`` promised,
naming the layer. See ``docs/guides/custom_layers.md`` for a self-attention
block defined this way.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.layers import core
from jaxnets.layers.core import Layer

__all__ = ["define_layer"]


def _keywords(fn: Callable[..., Any], names=("key", "train")) -> Callable[..., Any]:
    """``fn`` called with only those of ``key``/``train`` that it accepts."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return fn
    accepted = {n for n in names if n in parameters}
    if accepted == set(names):
        return fn

    def call(*args, **kwargs):
        return fn(*args, **{k: v for k, v in kwargs.items() if k in accepted})

    return call


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, (int, np.integer)) for d in s)


def _concrete(shape: Any, batch: int) -> Any:
    if _is_shape(shape):
        return tuple(batch if d == -1 else int(d) for d in shape)
    return tuple(_concrete(s, batch) for s in shape)


def _merge(a: Any, b: Any) -> Any:
    """Two output shapes inferred at two batch sizes: sizes that differ become -1."""
    if _is_shape(a):
        return tuple(int(p) if p == q else -1 for p, q in zip(a, b))
    return tuple(_merge(p, q) for p, q in zip(a, b))


def _out_shapes(tree: Any) -> Any:
    if isinstance(tree, (tuple, list)):
        return tuple(_out_shapes(t) for t in tree)
    return tuple(tree.shape)


def _shape_ok(promised: Any, got: Any) -> bool:
    if _is_shape(promised):
        return _is_shape(got) and len(promised) == len(got) and all(p in (-1, g) for p, g in zip(promised, got))
    return isinstance(got, tuple) and len(promised) == len(got) and all(map(_shape_ok, promised, got))


def define_layer(
    name: str,
    init: Callable[..., Any],
    apply: Callable[..., Any],
    *,
    backward: Callable[..., Any] | None = None,
    output_shape: Callable[..., Any] | None = None,
    stateful: bool = False,
    input_dtype: Any = None,
    spec: str | None = None,
    residuals: bool = False,
) -> Layer:
    """Define a layer from ``init`` and ``apply``, optionally with state and a hand rule.

    Args:
      name: kind name, used for params keys (``"attention"`` -> ``"attention_0"``).
      init: ``(key, input_shape) -> params``; with ``stateful=True``,
        ``-> (params, state)``. ``input_shape`` has ``-1`` for the batch.
      apply: ``(params, x, *, key, train) -> y``; with ``stateful=True``,
        ``(params, state, x, *, key, train) -> (y, state)``. ``key`` and
        ``train`` are passed only if ``apply`` names them (or takes ``**kwargs``).
      backward: the hand rule, with ``apply``'s arguments followed by the
        output cotangent: ``(params, x, y_bar, *, key, train) -> (params_bar,
        x_bar)`` (with ``state`` after ``params`` when stateful). Without it the
        layer trains on autodiff only. Combinators derive the tape from it.
      output_shape: ``input_shape -> output_shape``; default: inferred with
        ``jax.eval_shape`` (at two batch sizes, so the batch stays ``-1``).
      stateful: whether ``init`` and ``apply`` carry state.
      input_dtype: the dtype to infer shapes with (e.g. ``jnp.int32`` for ids);
        default the default float dtype (float32, or float64 with x64 on).
      spec: the ``repr``; default ``Name()``.
      residuals: ``apply`` also returns what its rule needs, and the rule
        receives it instead of recomputing the forward pass (the residuals
        convention, as ``jax.custom_vjp``'s forward): ``apply(params, x) ->
        (y, residuals)`` (stateful: ``-> (y, new_state, residuals)``) and
        ``backward(params, x, residuals, y_bar) -> (params_bar, x_bar)``
        (stateful: ``(params, state, x, residuals, y_bar)``). ``residuals``
        is any pytree of arrays; the layer's output is ``y`` alone, and the
        residuals ride on the tape that combinators record on the way
        forward, so a model's forward pass runs once.

    Returns:
      A :class:`Layer`. At every call its output shape is checked against the
      one ``init`` promised, and its rule's cotangents against the params'
      and the input's structure and shapes, naming the layer.

    Example::

        def init(key, input_shape):
            return {"w": jax.random.normal(key, (input_shape[-1], 3))}

        def apply(params, x):
            return jnp.tanh(x @ params["w"])

        def backward(params, x, y_bar):
            g = y_bar * (1 - jnp.tanh(x @ params["w"]) ** 2)
            return {"w": x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, 3)}, g @ params["w"].T

        layer = define_layer("tanh_dense", init, apply, backward=backward)
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier-like string (used for params keys), got {name!r}")
    for arg, fn in (("init", init), ("apply", apply)):
        if not callable(fn):
            raise TypeError(f"{arg} must be callable, got {fn!r}")
    if backward is not None and not callable(backward):
        raise TypeError(f"backward must be callable or None, got {backward!r}")
    if output_shape is not None and not callable(output_shape):
        raise TypeError(f"output_shape must be callable as output_shape(input_shape), got {output_shape!r}")
    spec = spec or f"{''.join(p.capitalize() for p in name.split('_'))}()"
    if not isinstance(residuals, bool):
        raise TypeError(f"residuals must be a bool, got {residuals!r}")
    user_apply = _keywords(apply)
    user_backward = _keywords(backward) if backward is not None else None

    def run(params, state, x, *, key=None, train=False):
        """``-> (y, new_state, residuals)`` (``residuals`` None unless declared)."""
        out = user_apply(params, state, x, key=key, train=train) if stateful else user_apply(params, x, key=key,
                                                                                             train=train)
        if stateful and residuals:
            if not (isinstance(out, tuple) and len(out) == 3):
                raise TypeError(f"{spec}: a stateful apply with residuals=True must return (y, new_state, residuals), "
                                f"got {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, tuple) else ""))
            return out
        if stateful:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{spec}: a stateful apply must return (y, new_state), got {type(out).__name__}")
            return out[0], out[1], None
        if residuals:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{spec}: an apply with residuals=True must return (y, residuals), "
                                f"got {type(out).__name__}" + (f" of {len(out)}" if isinstance(out, tuple) else ""))
            return out[0], state, out[1]
        return out, state, None

    def apply_with_state(params, state, x, *, key=None, train=False):
        y, new_state, _ = run(params, state, x, key=key, train=train)
        return y, new_state

    def init_with_state(key, input_shape):
        made = init(key, input_shape)
        if stateful:
            if not (isinstance(made, tuple) and len(made) == 2):
                raise TypeError(f"{spec}: a stateful init must return (params, state), got {type(made).__name__}")
            params, state = made
        else:
            params, state = made, {}
        if output_shape is not None:
            out = output_shape(input_shape)
        else:
            def shape_at(batch):
                dtype = jnp.result_type(float) if input_dtype is None else input_dtype
                shapes = _concrete(input_shape, batch)
                xs = (tuple(jax.ShapeDtypeStruct(s, dtype) for s in shapes) if not _is_shape(shapes)
                      else jax.ShapeDtypeStruct(shapes, dtype))
                y, _ = jax.eval_shape(lambda p, s, x: apply_with_state(p, s, x, key=jax.random.key(0), train=False),
                                      params, state, xs)
                return _out_shapes(y)

            try:
                out = _merge(shape_at(2), shape_at(3))
            except Exception as error:
                raise ValueError(f"{spec}: could not infer the output shape by running apply on an input of shape "
                                 f"{input_shape} (batch -1 tried as 2 and 3): {type(error).__name__}: {error}; "
                                 f"check init and apply agree, or pass output_shape=...") from error
        return out, params, state

    def checked_run(params, state, x, *, key=None, train=False):
        y, new_state, saved = run(params, state, x, key=key, train=train)
        promised = output_shape(core.shape_tree(x)) if output_shape is not None else None
        got = _out_shapes(y) if isinstance(y, (tuple, list)) or hasattr(y, "shape") else None
        if promised is not None and not _shape_ok(tuple(promised), got):
            raise ValueError(f"{spec}: apply returned shape {got}, but output_shape promised {tuple(promised)} "
                             f"for input shape {core.shape_tree(x)}")
        return y, new_state, saved

    def checked_apply(params, state, x, *, key=None, train=False):
        y, new_state, _ = checked_run(params, state, x, key=key, train=train)
        return y, new_state

    rule = None  # pyright: ignore[reportAssignmentType]  (the def below, when there is a backward)
    if user_backward is not None:

        def rule(params, state, x, y_bar, *, key=None, train=False, saved=None):
            given = (x, saved) if residuals else (x,)
            if stateful:
                out = user_backward(params, state, *given, y_bar, key=key, train=train)
            else:
                out = user_backward(params, *given, y_bar, key=key, train=train)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{spec}: backward must return (params_bar, x_bar), got {type(out).__name__}")
            params_bar, x_bar = out
            problems = core.tree_mismatch(params, params_bar, "params_bar")
            if x_bar is not None and _out_shapes(x_bar) != core.shape_tree(x):
                problems.append(f"  x_bar: expected shape {core.shape_tree(x)} (the input's), got {_out_shapes(x_bar)}")
            if problems:
                raise ValueError(f"{spec}: backward returned cotangents that do not match the params and the input:\n"
                                 + "\n".join(problems))
            return params_bar, x_bar

    if not residuals:
        return core.build(name, spec, init_with_state, checked_apply, rule)

    # with residuals the tape is (x, residuals): the rule gets what the forward saved
    def init_fn(key, input_shape):
        return init_with_state(key, core.input_shapes(input_shape))

    def forward_fn(params, state, x, *, key=None, train=False):
        y, new_state, saved = checked_run(params, state, x, key=key, train=train)
        return y, new_state, (x, saved)

    backward_fn = None  # pyright: ignore[reportAssignmentType]  (the def below, when there is a rule)
    if rule is not None:

        def backward_fn(params, state, tape, y_bar, *, key=None, train=False):
            x, saved = tape
            return rule(params, state, x, y_bar, key=key, train=train, saved=saved)

    return Layer(name, spec, init_fn, forward_fn, backward_fn)
