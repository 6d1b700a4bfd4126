"""Checks and small helpers shared by the layer modules (not public API)."""

from __future__ import annotations

import contextlib
import math
import contextvars
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from jaxnets import _checks

Shape = tuple  # ints, -1 for an unknown size (the batch)


def sum_leading(a: jax.Array, keep: int = 1) -> jax.Array:
    """Sum over all axes but the last ``keep``: the batch (and spatial) axes (float32 for 16-bit dtypes)."""
    return jnp.sum(a, axis=tuple(range(a.ndim - keep)), dtype=accumulation_dtype(a.dtype))


def rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` with the leading axes of ``x`` flattened into the rows of one 2-D product.

    The same numbers as ``x @ w``. Why: the autodiff transpose of ``x @ w``
    for ``x`` of shape ``(B, T, D)`` is a product contracting two axes, B and
    T, which XLA:CPU lowers by materialising ``x`` transposed, and its
    fusion pass rebuilds that transposed copy from the elementwise ops that
    made ``x`` (a Transformer's residual stream: the adds, the LayerNorm),
    reading them in column order. On a product of rows the transpose is
    ``rows^T @ rows_bar``, which the matmul reads in place: a GPT training
    step (``experiments/benchmarks/transformer.py``) runs in about 0.6 of the
    time. The hand rules already compute ``X^T Y_bar`` on rows.
    """
    if x.ndim <= 2:
        return x @ w
    rows = math.prod(x.shape[:-1])
    return (x.reshape(rows, x.shape[-1]) @ w).reshape(tuple(x.shape[:-1]) + (w.shape[-1],))


def accumulation_dtype(dtype: Any) -> Any:
    """float32 for bfloat16 and float16, else ``dtype``: the dtype a rule sums a params gradient over the batch in.

    A params gradient adds up one term per example (``X^T Y_bar`` sums over
    rows); in 8 or 11 bits of mantissa the sum of thousands of terms loses
    most of its digits, so the rules accumulate in float32 and return float32
    (under a :mod:`jaxnets.precision` policy the master weights are float32 anyway).
    """
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) else dtype


def batch_matmul_t(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^T b`` accumulated in :func:`accumulation_dtype` (the rows, a batch, are summed over)."""
    acc = accumulation_dtype(jnp.result_type(a, b))
    return jnp.matmul(a.T, b, preferred_element_type=acc)


def has_leaves(tree: Any) -> bool:
    return bool(jax.tree_util.tree_leaves(tree))


def entry(tree: Any, key: str, what: str, layer: str) -> Any:
    """``tree[key]``, or an error naming the layer and the keys present."""
    if not isinstance(tree, dict):
        raise TypeError(f"{layer}: {what} must be a dict, got {type(tree).__name__}")
    if key not in tree:
        raise ValueError(f"{layer}: {what} has no entry {key!r}; it has {sorted(tree)}")
    return tree[key]


def check_input(x: Any, layer: str, *, min_rank: int = 1, rank: int | None = None, dtype: str = "floating") -> None:
    _checks.array_like(x, f"{layer} input x")
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{layer} expects input of rank {rank}, got x of shape {tuple(x.shape)}")
    if x.ndim < min_rank:
        raise ValueError(f"{layer} expects input of rank >= {min_rank}, got x of shape {tuple(x.shape)}")
    if dtype == "floating":
        _checks.floating(x, f"{layer} input x")
    elif dtype == "integer":
        _checks.integer(x, f"{layer} input x")


def check_rank(input_shape: Shape, layer: str, *, min_rank: int = 1, rank: int | None = None) -> None:
    if rank is not None and len(input_shape) != rank:
        raise ValueError(f"{layer} expects an input_shape of rank {rank}, got {input_shape}")
    if len(input_shape) < min_rank:
        raise ValueError(f"{layer} expects an input_shape of rank >= {min_rank}, got {input_shape}")


def check_last_dim(input_shape: Shape, layer: str) -> int:
    features = input_shape[-1]
    if features == -1:
        raise ValueError(f"{layer} needs a known last dimension (features), got input_shape {input_shape}")
    return features


def check_initializer(fn: Any, name: str) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"{name} must be an initializer (key, shape, dtype) -> array, got {fn!r}")
    return fn


def window_out(size: int, window: int, stride: int, padding: str, what: str) -> int:
    """Output length of a strided window over ``size`` (-1 stays -1)."""
    if size == -1:
        return -1
    if padding == "SAME":
        return -(-size // stride)
    if size < window:
        raise ValueError(f"{what}: window {window} is larger than the input size {size} with padding 'VALID'")
    return (size - window) // stride + 1


def split_key(key, n: int) -> list[Any]:
    """``n`` sub-keys, or ``n`` times ``None`` for a deterministic call."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def keep(tree: dict[str, Any], name: str, value: Any) -> None:
    """Store a child's params or state under its name unless it has none."""
    if has_leaves(value):
        tree[name] = value


def check_key(key: Any, name: str = "key") -> None:
    """A ``jax.random`` key, or a TypeError telling how to make one (:func:`jaxnets._checks.prng_key`)."""
    _checks.prng_key(key, name)


_PATH = "jaxnets_layer_path"
_MESSAGE = "jaxnets_message"
_NOTE = "raised inside layer "


def located(path: str, fn: Callable[..., Any], *args, **kwargs):
    """Call a child layer's function; errors learn the child's path, tracebacks stay whole.

    Our own ``ValueError``/``TypeError`` messages get the path in front
    (``residual_0/dense_1: Dense(4) expects ...``); any other exception (a
    bug in a user's layer, an XLA error) keeps its type and message and gets
    a note naming the layer. Either way the traceback still reaches the line
    that raised.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        inner = getattr(e, _PATH, None)
        full = path if inner is None else f"{path}/{inner}"
        if type(e) in (ValueError, TypeError):
            message = getattr(e, _MESSAGE, str(e))
            new = type(e)(f"{full}: {message}")
            setattr(new, _PATH, full)
            setattr(new, _MESSAGE, message)
            raise new.with_traceback(e.__traceback__) from None
        try:
            setattr(e, _PATH, full)
        except AttributeError:  # an exception type without a __dict__
            raise e
        notes = getattr(e, "__notes__", None)
        if notes and notes[-1].startswith(_NOTE):
            notes[-1] = _NOTE + full
        elif hasattr(e, "add_note"):
            e.add_note(_NOTE + full)
        raise


# Observation and casting: while a model runs, an observer may see every
# child's output and cotangents (jaxnets.debug's locator), and a precision
# plan may wrap each primitive child's function to cast its params, input
# and cotangents (jaxnets.precision). Both are off by default: two ContextVar
# reads per child call, at trace time under jit.
_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("jaxnets_layer_observer", default=None)
_CASTING: contextvars.ContextVar = contextvars.ContextVar("jaxnets_layer_casting", default=None)
_PREFIX: contextvars.ContextVar = contextvars.ContextVar("jaxnets_layer_prefix", default=())


def child(name: str, phase: str, layer: Any, *args, **kwargs):
    """Run a child's ``forward_fn`` or ``backward_fn`` (``phase``) through :func:`located`,
    under the casting plan and before the observer, if either is set, with the child's full path."""
    fn = layer.forward_fn if phase == "forward" else layer.backward_fn
    observer, plan = _OBSERVER.get(), _CASTING.get()
    if observer is None and plan is None:
        return located(name, fn, *args, **kwargs)
    token = _PREFIX.set(_PREFIX.get() + (name,))
    try:
        path = "/".join(_PREFIX.get())
        if plan is not None and not layer.children:
            fn = plan(path, layer, phase, fn)
        out = located(name, fn, *args, **kwargs)
        if observer is not None:
            observer(path, phase, out)
    finally:
        _PREFIX.reset(token)
    return out


@contextlib.contextmanager
def observing(callback: Callable[[str, str, Any], None]) -> Iterator[None]:
    """Within the block, ``callback(path, phase, result)`` sees every child call:
    ``phase`` is ``"forward"`` (result ``(y, state, tape)``) or ``"backward"``
    (result ``(params_bar, x_bar)``); ``path`` is like ``residual_0/dense_1``."""
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


@contextlib.contextmanager
def casting(plan: Callable[[str, Any, str, Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Within the block, every primitive child's function is ``plan(path, layer, phase, fn)``:
    the plan wraps it to cast what goes in and comes out (:mod:`jaxnets.precision`)."""
    token = _CASTING.set(plan)
    try:
        yield
    finally:
        _CASTING.reset(token)
