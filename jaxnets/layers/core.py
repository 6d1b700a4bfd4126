"""The :class:`Layer` record, the builder that makes every layer, and the checks at a model's entry.

Tier 1 (in the package docstring): ``init`` and ``apply``. This module adds
the two further tiers, each where it is implemented.

**State.** A layer may carry state beside its params (BatchNorm's running
statistics), threaded explicitly::

    init_with_state(key, input_shape) -> (output_shape, params, state)
    apply_with_state(params, state, x, *, key=None, train=False) -> (y, state)

Every layer has both pairs; a stateless layer's state is ``{}``, so
stateless models never see it. ``apply`` on a model that needs state raises,
naming the layer.

**Hand rules.** Every built-in layer carries a backward rule written as
linear algebra beside its forward function. One convention holds for layers,
activations and losses alike: a hand rule is the ``backward`` of the thing
it differentiates, and takes the forward's arguments followed by the
cotangent of the output:

* a stateless layer's rule: ``backward(params, x, y_bar, *, key, train) -> (params_bar, x_bar)``;
* a layer with state: ``backward(params, state, x, y_bar, *, key, train) -> (params_bar, x_bar)``
  (``Layer.backward`` has this general form for every layer);
* an activation: ``relu.backward(x, y_bar) -> x_bar``;
* a loss: ``loss.backward(predictions, targets, y_bar=1.0) -> predictions_bar``.

Combinators chain their children's rules through a *tape*, recorded on the
way forward so that the forward pass runs once::

    tape_forward(params, state, x, *, key=None, train=False) -> (y, state, tape)
    tape_backward(params, state, tape, y_bar, *, key=None, train=False) -> (params_bar, x_bar)

A primitive layer's tape is its input. The forward of every layer *is* its
taped forward with the tape dropped (under ``jit`` the unused tape costs
nothing), so each combinator's loop is written once.

**Your own layer.** :func:`jaxnets.layers.define_layer` (in
:mod:`jaxnets.layers.custom`) builds one from ``init`` and ``apply`` alone
(the output shape inferred with ``jax.eval_shape``), optionally with state
and a hand rule, and checks at the first call that the pieces agree. The
built-in layers are made with :func:`build` and :func:`build_stateless`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import types
from typing import Any, Callable, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets._types import PyTree, Shape
from jaxnets.layers import _util

__all__ = ["Layer", "check_params", "count_params", "require_rule", "observing", "casting"]

from jaxnets.layers._util import casting, observing  # noqa: E402  (re-exported: see jaxnets.debug, jaxnets.precision)

Params = Any  # a nested dict of arrays


@dataclasses.dataclass(frozen=True)
class Layer:
    """A layer: pure functions over a params pytree (see :mod:`jaxnets.layers`).

    Use the methods: ``init``/``apply`` (tier 1), ``init_with_state``/
    ``apply_with_state`` (state), ``backward``/``tape_forward``/
    ``tape_backward`` (hand rules). They check their arguments once, at the
    model's entry; the fields below are the unchecked functions that
    combinators call for their children.

    Attributes:
      name: short kind name, used for params keys (``"dense"`` -> ``"dense_0"``).
      spec: how the layer was built, e.g. ``"Dense(128)"``; its ``repr``.
      init_fn: ``(key, input_shape) -> (output_shape, params, state)``.
      forward_fn: ``(params, state, x, *, key, train) -> (y, state, tape)``.
      backward_fn: ``(params, state, tape, y_bar, *, key, train) -> (params_bar,
        x_bar)``, or ``None`` for a layer without a hand rule.
      children: ``((name, layer), ...)`` of a combinator, in params-key order.

    **Equality and hashing are by structure.** Two layers built separately
    in the same way (same builders, same hyperparameters, same nesting)
    compare equal and hash equal, so a rebuilt identical model finds what
    was compiled for the first (``fit``'s programs, ``jax.jit(...,
    static_argnums=...)``, ``functools.lru_cache``)::

        serial(Dense(128), Relu(), Dense(10)) == serial(Dense(128), Relu(), Dense(10))  # True
        Dense(128) == Dense(64)                                                        # False

    A layer is its functions, and a builder's functions are closures, so
    the structure compared is: ``name``, ``spec``, the children, and for
    each of ``init_fn``, ``forward_fn``, ``backward_fn`` its code object
    (the very one: a function defined at another place differs even when
    its text is the same) with its defaults and the values its closure
    captured, compared recursively: numbers, strings, dtypes and other
    hashable values by value (and type: ``1`` is not ``1.0``), tuples,
    lists, sets and dicts item by item (as they are at the first comparison), arrays by dtype, shape and contents,
    functions and ``functools.partial`` objects in the same way, layers by
    their structure. Anything else (an object without value equality, a
    traced array) compares by identity, which can only make two layers
    differ. So hyperparameters that ``spec`` does not show (``Dense``'s
    ``w_init``) count, and two layers of one's own from :func:`define_layer`
    are equal only when they are built from the same functions with equal
    captured values. The structure is computed once per layer, at the first
    comparison or hash. A function's globals are not part of it: a layer
    whose function reads a module-level variable that is later rebound is
    still equal to one built before.

    ``repr(layer)`` is ``spec``, nested for combinators:
    ``serial(Dense(128), Relu(), Dense(10))``.
    """

    name: str
    spec: str
    init_fn: Callable[..., tuple[Any, ...]]
    forward_fn: Callable[..., tuple[Any, ...]]
    backward_fn: Callable[..., tuple[Any, ...]] | None = None
    children: tuple[tuple[str, Layer], ...] = ()

    def __repr__(self) -> str:
        return self.spec

    def _structure(self) -> tuple[Any, ...]:
        """The hashable structure that equality and hashing compare (computed once, see the class docstring)."""
        cached = self.__dict__.get("_structure_key")
        if cached is None:
            cached = _layer_key(self, {})
            object.__setattr__(self, "_structure_key", cached)
            object.__setattr__(self, "_structure_hash", hash(cached))
        return cached

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Layer):
            return NotImplemented
        return hash(self) == hash(other) and self._structure() == other._structure()

    def __hash__(self) -> int:
        self._structure()
        return self.__dict__["_structure_hash"]

    # -- tier 1 ---------------------------------------------------------------

    def init(self, key: jax.Array, input_shape: Shape) -> tuple[Shape, Params]:
        """``(key, input_shape) -> (output_shape, params)``; ``-1`` leaves a size unknown."""
        out_shape, params, _ = self.init_with_state(key, input_shape)
        return out_shape, params

    def apply(self, params: Params, x: PyTree, *, key: jax.Array | None = None, train: bool | jax.Array = False) -> PyTree:
        """``(params, x, *, key=None, train=False) -> y``."""
        return self.apply_with_state(params, {}, x, key=key, train=train)[0]

    # -- state ----------------------------------------------------------------

    def init_with_state(self, key: jax.Array, input_shape: Shape) -> tuple[Shape, Params, PyTree]:
        """``(key, input_shape) -> (output_shape, params, state)``."""
        _util.check_key(key)
        return self.init_fn(key, input_shape)

    def apply_with_state(self, params: Params, state: PyTree, x: PyTree, *, key: jax.Array | None = None,
                         train: bool | jax.Array = False) -> tuple[PyTree, PyTree]:
        """``(params, state, x, *, key=None, train=False) -> (y, state)``."""
        y, new_state, _ = self.tape_forward(params, state, x, key=key, train=train)
        return y, new_state

    # -- hand rules -------------------------------------------------------------

    def tape_forward(self, params: Params, state: PyTree, x: PyTree, *, key: jax.Array | None = None,
                     train: bool | jax.Array = False) -> tuple[PyTree, PyTree, PyTree]:
        """``-> (y, state, tape)``: the forward pass, recording what the rules need."""
        if key is not None:
            _util.check_key(key)
        mode = _static_mode(train)
        run = functools.partial(_checked_forward, self, params, state, x, key)
        if mode is not None:
            return run(mode)
        # ``train`` is traced (``jax.jit(model.apply)(params, x, train=True)``
        # traces keyword arguments): compile both modes, run the one asked for.
        try:
            return lax.cond(train, lambda: run(True), lambda: run(False))
        except ValueError as error:
            if key is None:
                raise ValueError(f"{error}\n(train is traced here, so the training mode is compiled too and needs a "
                                 f"key: pass key=..., or make train static: "
                                 f"jax.jit(model.apply, static_argnames='train'))") from error
            raise

    def tape_backward(self, params: Params, state: PyTree, tape: PyTree, y_bar: PyTree, *, key: jax.Array | None = None,
                      train: bool | jax.Array = False) -> tuple[Params, PyTree]:
        """``-> (params_bar, x_bar)`` from a tape that :meth:`tape_forward` recorded."""
        require_rule(self)
        mode = _static_mode(train)
        if mode is None:
            raise TypeError(f"{self.spec}: tape_backward needs train as a Python bool, got a traced value; "
                            f"pass it as static (jax.jit(..., static_argnames='train'))")
        return cast(Callable[..., tuple[Any, ...]], self.backward_fn)(params, state, tape, y_bar, key=key, train=mode)  # not None: require_rule

    def backward(self, params: Params, state: PyTree, x: PyTree, y_bar: PyTree, *, key: jax.Array | None = None,
                 train: bool | jax.Array = False) -> tuple[Params, PyTree]:
        """The hand rule ``(params, state, x, y_bar, *, key, train) -> (params_bar, x_bar)``."""
        require_rule(self)
        _, _, tape = self.tape_forward(params, state, x, key=key, train=train)
        return self.tape_backward(params, state, tape, y_bar, key=key, train=train)

    @property
    def has_rule(self) -> bool:
        """Whether this layer and every layer inside it has a hand-derived rule."""
        return not _missing_rules(self)


class _Identity:
    """A value that compares by identity (kept alive, so its ``id`` is not reused)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)


_VALUE_TYPES = (int, float, complex, str, bytes, bool, type(None), type(Ellipsis), np.dtype, np.generic, type, range,
                slice)


def _layer_key(layer: Layer, active: dict[int, int]) -> tuple[Any, ...]:
    if "_structure_key" in layer.__dict__:
        return layer.__dict__["_structure_key"]
    return ("layer", layer.name, layer.spec, _value_key(layer.init_fn, active), _value_key(layer.forward_fn, active),
            _value_key(layer.backward_fn, active),
            tuple((name, _value_key(child, active)) for name, child in layer.children))


def _value_key(value: Any, active: dict[int, int]) -> Any:
    """A hashable key equal for values that behave the same (see :class:`Layer`); identity where unsure.

    ``active`` holds the ids of the containers and functions being keyed, so a
    closure that refers to itself (a recursive inner function) ends.
    """
    if isinstance(value, _VALUE_TYPES):
        return (type(value), value)
    if id(value) in active:
        return ("cycle", active[id(value)])
    active[id(value)] = len(active)
    try:
        if isinstance(value, Layer):
            return _layer_key(value, active)
        if isinstance(value, types.FunctionType):
            cells = []
            for cell in value.__closure__ or ():
                try:
                    cells.append(_value_key(cell.cell_contents, active))
                except ValueError:  # an empty cell
                    cells.append(("empty",))
            return ("function", _Identity(value.__code__), _value_key(value.__defaults__, active),
                    _value_key(value.__kwdefaults__, active), tuple(cells))
        if isinstance(value, functools.partial):
            return ("partial", _value_key(value.func, active), _value_key(value.args, active),
                    _value_key(value.keywords, active))
        if isinstance(value, types.MethodType):
            return ("method", _value_key(value.__func__, active), _value_key(value.__self__, active))
        if isinstance(value, (tuple, list)) and type(value) in (tuple, list) or isinstance(value, tuple):
            return (type(value), tuple(_value_key(v, active) for v in value))  # named tuples included
        if type(value) in (set, frozenset):
            return (type(value), frozenset(_value_key(v, active) for v in value))
        if type(value) is dict:
            return (dict, tuple(sorted(((repr(k), _value_key(k, active), _value_key(v, active)) for k, v in value.items()),
                                       key=lambda item: item[0])))
        if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
            try:
                array = np.asarray(value)
            except Exception:  # not addressable here (a sharded global array): identity
                return _Identity(value)
            digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
            return ("array", type(value).__name__, array.dtype.str, array.shape, digest)
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and getattr(value, "__hash__", None):
            # a frozen dataclass of hyperparameters (a precision policy, say): its fields
            fields = tuple(_value_key(getattr(value, f.name), active) for f in dataclasses.fields(value))
            return ("dataclass", type(value), fields)
        if type(value).__eq__ is not object.__eq__:  # a value type of its own (a sharding, an enum-like object)
            try:
                hash(value)
                return ("value", type(value), value)
            except TypeError:  # unhashable: identity
                pass
        return _Identity(value)
    finally:
        del active[id(value)]


def _static_mode(train: Any) -> bool | None:
    """``train`` as a Python bool, or ``None`` when it is traced."""
    if isinstance(train, (bool, np.bool_)):
        return bool(train)
    if isinstance(train, jax.core.Tracer):
        return None
    if np.shape(train) == () and (isinstance(train, (int, np.integer)) or getattr(train, "dtype", None) == bool):
        return bool(train)
    raise TypeError(f"train must be a bool, got {train!r:.60}")


def _checked_forward(layer: Layer, params, state, x, key, train: bool):
    """The forward pass, with params and state checked against what ``init`` makes.

    The check runs on shapes only (at trace time under ``jit``, so it costs
    nothing per step). It runs after the forward pass so that a wrong *input*
    is reported as such; when the forward pass fails, a params mismatch found
    afterwards is reported as the cause.
    """
    try:
        out = layer.forward_fn(params, state, x, key=key, train=train)
    except Exception as error:
        mismatch = "" if _raised_by_jaxnets(error) else _params_mismatch(layer, params, state, x)
        if mismatch:
            raise ValueError(mismatch) from error
        raise
    mismatch = _params_mismatch(layer, params, state, x)
    if mismatch:
        raise ValueError(mismatch)
    return out


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raised_by_jaxnets(error: Exception) -> bool:
    """Whether one of jaxnets' own checks raised ``error`` (its message already says what is wrong)."""
    if type(error) not in (ValueError, TypeError):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE + os.sep)


# ---------------------------------------------------------------------------
# Params and state against the model
# ---------------------------------------------------------------------------


def shape_tree(x: Any) -> Any:
    """The input's shape (a tuple of shapes for a tuple of inputs)."""
    if isinstance(x, (tuple, list)):
        return tuple(shape_tree(a) for a in x)
    return tuple(int(d) for d in np.shape(x))


@functools.lru_cache(maxsize=256)
def _expected(layer: Layer, input_shape: tuple[Any, ...]):
    """``(params, state)`` as ``ShapeDtypeStruct`` pytrees, as ``init`` makes them for this input shape."""
    _, params, state = jax.eval_shape(lambda k: layer.init_fn(k, input_shape), jax.random.key(0))
    return params, state


def _leaves(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _kind(dtype) -> str:
    dtype = jnp.dtype(dtype)
    return "float" if jnp.issubdtype(dtype, jnp.floating) else dtype.name


def tree_mismatch(expected: Any, got: Any, what: str) -> list[str]:
    """Lines naming each leaf of ``got`` missing, extra, or of another shape or dtype kind than ``expected``."""
    want, have = _leaves(expected), _leaves(got)
    lines = [f"  {what} {p}: missing (expected {tuple(want[p].shape)} {want[p].dtype})" for p in want if p not in have]
    lines += [f"  {what} {p}: not made by init (got {tuple(np.shape(have[p]))})" for p in have if p not in want]
    for p in want.keys() & have.keys():
        w, h = want[p], have[p]
        h_shape = tuple(np.shape(h))
        h_dtype = getattr(h, "dtype", None)
        if h_shape != tuple(w.shape):
            lines.append(f"  {what} {p}: expected shape {tuple(w.shape)}, got {h_shape}")
        elif h_dtype is not None and _kind(h_dtype) != _kind(w.dtype):
            lines.append(f"  {what} {p}: expected dtype {w.dtype}, got {h_dtype}")
    if not lines and jax.tree_util.tree_structure(expected) != jax.tree_util.tree_structure(got) and have:
        lines.append(f"  {what} structure: expected {jax.tree_util.tree_structure(expected)}, "
                     f"got {jax.tree_util.tree_structure(got)}")
    return sorted(lines)


def _params_mismatch(layer: Layer, params: Any, state: Any, x: Any) -> str:
    """A message listing where params (and state) differ from what ``init`` makes, or ``""``."""
    try:
        expected_params, expected_state = _expected(layer, shape_tree(x))
    except Exception:  # init cannot describe this input: the forward pass reports it
        return ""
    lines = tree_mismatch(expected_params, params, "params")
    if _util.has_leaves(state):
        lines += tree_mismatch(expected_state, state, "state")
    if not lines:
        return ""
    return (f"{layer.spec}: the params do not match the model for input shape {shape_tree(x)} "
            f"(what init makes for it):\n" + "\n".join(lines[:20])
            + ("" if len(lines) <= 20 else f"\n  ... and {len(lines) - 20} more"))


def check_params(model: Layer, params: Params, x: Any, *, state: Any = None) -> None:
    """Raise a ``ValueError`` listing every leaf of ``params`` (and ``state``) that differs
    from what ``model.init`` makes for ``x``'s shape: missing or extra entries,
    other shapes, other dtype kinds (any float width is accepted: float64 for
    gradient checks, bfloat16 for mixed precision).

    ``x`` may be an array, a ``ShapeDtypeStruct`` or a tuple of them. The
    expected pytrees come from ``jax.eval_shape`` (nothing is allocated) and
    are cached per model and input shape. ``apply`` runs this check itself.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer, got {type(model).__name__}")
    mismatch = _params_mismatch(model, params, {} if state is None else state, x)
    if mismatch:
        raise ValueError(mismatch)


def count_params(params: Params) -> int:
    """Number of scalars in a params pytree (arrays or ``ShapeDtypeStruct`` leaves)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not hasattr(leaf, "shape"):
            where = jax.tree_util.keystr(path, simple=True, separator="/")
            raise TypeError(f"params leaves must be arrays, got {type(leaf).__name__} at {where}")
        total += int(np.prod(leaf.shape))
    return total


# ---------------------------------------------------------------------------
# Hand rules
# ---------------------------------------------------------------------------


def _missing_rules(layer: Layer, path: str = "") -> list[tuple[str, Layer]]:
    here = path or layer.name
    if layer.children:
        return [m for name, child in layer.children for m in _missing_rules(child, f"{path}/{name}".lstrip("/"))]
    return [] if layer.backward_fn is not None else [(here, layer)]


def require_rule(layer: Layer) -> None:
    """Raise, naming the first layer (by path) that has no hand-derived backward rule."""
    missing = _missing_rules(layer)
    if missing:
        path, culprit = missing[0]
        where = f"{path}: " if layer.children else ""
        raise ValueError(f"{where}{culprit.spec} has no hand-derived backward rule (for Elementwise, pass vjp=...; "
                         f"for your own layer, define_layer(..., backward=...))")


# ---------------------------------------------------------------------------
# Building layers
# ---------------------------------------------------------------------------


def input_shapes(shape: Any) -> Any:
    """A checked input shape, or a tuple of them (for layers with several inputs)."""
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(s, (tuple, list)) for s in shape):
        return tuple(input_shapes(s) for s in shape)
    return _checks.shape_tuple(shape)


def build(name: str, spec: str, init_with_state: Callable[..., Any], apply_with_state: Callable[..., Any],
          backward: Callable[..., Any] | None = None) -> Layer:
    """A primitive layer from its general functions; its tape is its input.

    ``init_with_state(key, input_shape) -> (output_shape, params, state)``,
    ``apply_with_state(params, state, x, *, key, train) -> (y, state)``,
    ``backward(params, state, x, y_bar, *, key, train) -> (params_bar, x_bar)``.
    """

    def init_fn(key, input_shape):
        return init_with_state(key, input_shapes(input_shape))

    def forward_fn(params, state, x, *, key=None, train=False):
        y, new_state = apply_with_state(params, state, x, key=key, train=train)
        return y, new_state, x

    return Layer(name, spec, init_fn, forward_fn, backward)


def build_stateless(name: str, spec: str, init: Callable[..., Any], apply: Callable[..., Any], backward: Callable[..., Any] | None = None) -> Layer:
    """A primitive layer without state from ``init(key, shape) -> (out_shape, params)``,
    ``apply(params, x, *, key, train) -> y`` and ``backward(params, x, y_bar, *, key, train)``."""

    def init_with_state(key, input_shape):
        out_shape, params = init(key, input_shape)
        return out_shape, params, {}

    def apply_with_state(params, state, x, *, key=None, train=False):
        return apply(params, x, key=key, train=train), state

    rule = None  # pyright: ignore[reportAssignmentType]  (the def below, when there is a backward)
    if backward is not None:

        def rule(params, state, x, y_bar, *, key=None, train=False):
            del state
            return backward(params, x, y_bar, key=key, train=train)

    return build(name, spec, init_with_state, apply_with_state, rule)
