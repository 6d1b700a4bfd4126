"""Argument checks shared by every module.

Each check raises ``ValueError`` or ``TypeError`` with one message naming the
argument, what was expected and what was received, so that a user mistake is
reported before JAX or XLA sees it.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, Sequence, cast

import jax
import jax.core
import numpy as np


def is_traced(x: Any) -> bool:
    """True when ``x`` is an abstract value inside ``jit``/``vmap``/``grad``."""
    return isinstance(x, jax.core.Tracer)


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise if it is not an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def positive_float(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, or raise if it is not > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def in_unit_interval(value: Any, name: str, *, closed_right: bool = False) -> float:
    """Return ``value`` as a float in [0, 1) (or [0, 1]), or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    ok = 0.0 <= value <= 1.0 if closed_right else 0.0 <= value < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def int_tuple(value: Any, length: int, name: str) -> tuple[int, ...]:
    """An int or a sequence of ``length`` positive ints, as a tuple."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),) * length
    if not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(f"{name} must be a positive int or a sequence of {length} positive ints, got {value!r}")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def shape_tuple(shape: Any, name: str = "input_shape") -> tuple[int, ...]:
    """A shape of ints, where -1 marks an unknown (batch) size."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"{name} must be a tuple of ints (use -1 for the batch), got {shape!r}")
    out = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or (d < 1 and d != -1):
            raise ValueError(f"{name} must hold positive ints or -1 (unknown batch), got {tuple(shape)!r}")
        out.append(int(d))
    return tuple(out)


def padding_mode(padding: Any, name: str = "padding") -> Literal["SAME", "VALID"]:
    """'SAME' or 'VALID' (any case)."""
    if not isinstance(padding, str) or padding.upper() not in ("SAME", "VALID"):
        raise ValueError(f"{name} must be 'SAME' or 'VALID', got {padding!r}")
    return cast(Literal["SAME", "VALID"], padding.upper())


def array_like(x: Any, name: str) -> jax.Array | np.ndarray:
    """Accept JAX/NumPy arrays and tracers; reject everything else with a TypeError."""
    if isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        return x
    raise TypeError(f"{name} must be an array, got {type(x).__name__}")


def floating(x: Any, name: str) -> None:
    """Raise TypeError unless ``x`` has a floating dtype."""
    dtype = np.dtype(getattr(x, "dtype", type(x)))
    if not np.issubdtype(dtype, np.floating) and dtype.name != "bfloat16":
        raise TypeError(f"{name} must have a floating dtype, got {dtype.name}")


def integer(x: Any, name: str) -> None:
    """Raise TypeError unless ``x`` has an integer dtype."""
    dtype = np.dtype(getattr(x, "dtype", type(x)))
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {dtype.name}")


def labels_in_range(labels: Any, num_classes: int, name: str = "labels") -> None:
    """Raise ValueError if concrete integer ``labels`` fall outside [0, num_classes).

    Under ``jit`` the values are unknown, so the check is skipped there; every
    entry point that sees data before tracing (``fit``, ``evaluate``, eager
    loss calls) runs it.
    """
    if is_traced(labels):
        return
    arr = np.asarray(labels)
    if arr.size == 0:
        return
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}) for {num_classes} classes, got values in [{lo}, {hi}]")


def values_in_interval(x: Any, lo: float, hi: float, name: str) -> None:
    """Raise ValueError if concrete ``x`` has an entry outside ``[lo, hi]`` (or a NaN); skipped under ``jit``."""
    if is_traced(x):
        return
    arr = np.asarray(x)
    if arr.size == 0:
        return
    arr = arr.astype(np.float64)
    bad = ~((arr >= lo) & (arr <= hi))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must lie in [{lo:g}, {hi:g}], got {arr[index]:g} at index {index if len(index) != 1 else index[0]} "
            f"({int(bad.sum())} of {arr.size} entries outside)"
        )


KEY_HINT = "use jax.random.key(0) (or split one) instead of a bare integer seed"


def prng_key(key: Any, name: str = "key") -> jax.Array:
    """Return ``key`` if it is a ``jax.random`` key; raise a TypeError naming ``name`` otherwise.

    Accepts typed keys (``jax.random.key``, any implementation, any batch
    shape) and legacy raw keys (``jax.random.PRNGKey``: uint32 arrays whose
    last axis is 2 or 4), concrete or traced. A Python or NumPy integer, a
    float array or None gets one message telling how to make a key.
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.numpy.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and len(getattr(key, "shape", ())) >= 1 and key.shape[-1] in (2, 4):
        return key  # a legacy jax.random.PRNGKey
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, (numbers.Integral, jax.Array, np.ndarray, jax.core.Tracer)):
        got = f"{type(key).__name__} {key!r}"
    elif isinstance(key, numbers.Integral):
        got = f"the integer {key!r}"
    else:
        got = f"an array of dtype {np.dtype(dtype).name} and shape {tuple(key.shape)}"
    raise TypeError(f"{name} must be a jax.random key: {KEY_HINT}; got {got}")


def real_number(value: Any, name: str) -> Any:
    """Return ``value`` if it is a real number (not a bool) or a 0-d real array (concrete or traced); else raise TypeError."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return value
    dtype = getattr(value, "dtype", None)
    if isinstance(value, (jax.Array, np.ndarray, jax.core.Tracer)) and value.ndim == 0 and dtype is not None and (
        np.issubdtype(np.dtype(dtype), np.floating) or np.issubdtype(np.dtype(dtype), np.integer) or np.dtype(dtype).name == "bfloat16"
    ):
        return value
    raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")


def int_value(value: Any, name: str) -> int:
    """``value`` as a Python int if it is an integer (Python or NumPy, not a bool); else a TypeError naming ``name``.

    For arguments such as an axis, where ``int(value)`` would turn 1.5 into 1
    silently and a list into an unnamed TypeError.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    return int(value)


def finite_real(value: Any, name: str) -> float:
    """``value`` as a Python float if it is a finite real number (or a 0-d real array); else a TypeError/ValueError."""
    value = float(real_number(value, name))
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def axis_index(axis: Any, ndim: int, name: str = "axis") -> int:
    """An int axis valid for an array of ``ndim`` dimensions (negative counts from the end)."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {axis!r} of type {type(axis).__name__}")
    if not -ndim <= int(axis) < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim}) for an array of {ndim} dimensions, got {axis}")
    return int(axis)


#: The message of a check that would check nothing (an empty selection, no dtypes, no leaves): always an error.
NOTHING_TO_CHECK = "{what} would check nothing: {why}"

#: What an empty batch gets where a mean over it is taken (the mean of no elements is NaN).
EMPTY_MSG = "{name} must hold at least one element, got shape {shape} (a mean over no elements is NaN)"


def boolean(value: Any, name: str) -> bool:
    """Return ``value`` as a bool if it is ``True``/``False`` (Python or NumPy); raise TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def _dtype_name(x: Any) -> str:
    return np.dtype(x.dtype).name if hasattr(x, "dtype") else type(x).__name__


def float_array(x: Any, name: str, *, scalars: bool = True) -> Any:
    """``x`` if it is an array (or tracer) of a real floating dtype; a Python or NumPy real scalar (with
    ``scalars``) as a weakly typed JAX float. Complex, bool and integer arrays get a TypeError naming ``name``."""
    if scalars and isinstance(x, (numbers.Real, np.floating, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return jax.numpy.asarray(float(x))
    if isinstance(x, np.generic):
        x = np.asarray(x)
    if not isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)):
        raise TypeError(f"{name} must be an array of floats, got {type(x).__name__} {_short(x)}")
    floating(x, name)
    return x


def real_array(x: Any, name: str) -> Any:
    """``x`` if it is an array (or tracer) of real numbers (floating, integer or bool); complex gets a TypeError."""
    array_like(x, name)
    if np.issubdtype(np.dtype(x.dtype), np.complexfloating):
        raise TypeError(f"{name} must hold real numbers, got dtype {np.dtype(x.dtype).name}")
    return x


def not_empty(x: Any, name: str) -> None:
    """Raise ValueError when the array ``x`` has no elements (its shape is static, so this runs under ``jit`` too)."""
    if int(np.prod(np.shape(x))) == 0:
        raise ValueError(EMPTY_MSG.format(name=name, shape=tuple(np.shape(x))))


def dtype_like(value: Any, name: str, *, floating_only: bool = False) -> np.dtype:
    """``value`` as a NumPy dtype (``'float32'``, ``jnp.bfloat16``, ...); with ``floating_only`` a real floating one."""
    try:
        dtype = jax.numpy.dtype(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a dtype such as jnp.float32 or 'float32', got {value!r}") from None
    if value is None or isinstance(value, (bool, int, float)) and not isinstance(value, type):
        raise TypeError(f"{name} must be a dtype such as jnp.float32 or 'float32', got {value!r}")
    if floating_only and not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        raise TypeError(f"{name} must be a floating dtype (float16, bfloat16, float32, float64), got {dtype.name}")
    return dtype


def callable_arg(value: Any, name: str, signature: str) -> Any:
    """``value`` if callable; else a TypeError showing how it is called (``signature``)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable as {signature}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
