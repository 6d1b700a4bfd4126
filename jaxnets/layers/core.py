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
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnets import _checks
from jaxnets.layers import _util

__all__ = ["Layer", "check_params", "count_params", "require_rule", "observing", "casting"]

observing = _util.observing  # see jaxnets.debug
casting = _util.casting  # see jaxnets.precision

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
    """

    name: str
    spec: str
    init_fn: Callable[..., tuple]
    forward_fn: Callable[..., tuple]
    backward_fn: Callable[..., tuple] | None = None
    children: tuple = ()

    def __repr__(self) -> str:
        return self.spec

    # -- tier 1 ---------------------------------------------------------------

    def init(self, key, input_shape) -> tuple:
        """``(key, input_shape) -> (output_shape, params)``; ``-1`` leaves a size unknown."""
        out_shape, params, _ = self.init_with_state(key, input_shape)
        return out_shape, params

    def apply(self, params, x, *, key=None, train=False):
        """``(params, x, *, key=None, train=False) -> y``."""
        return self.apply_with_state(params, {}, x, key=key, train=train)[0]

    # -- state ----------------------------------------------------------------

    def init_with_state(self, key, input_shape) -> tuple:
        """``(key, input_shape) -> (output_shape, params, state)``."""
        _util.check_key(key)
        return self.init_fn(key, input_shape)

    def apply_with_state(self, params, state, x, *, key=None, train=False) -> tuple:
        """``(params, state, x, *, key=None, train=False) -> (y, state)``."""
        y, new_state, _ = self.tape_forward(params, state, x, key=key, train=train)
        return y, new_state

    # -- hand rules -------------------------------------------------------------

    def tape_forward(self, params, state, x, *, key=None, train=False) -> tuple:
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

    def tape_backward(self, params, state, tape, y_bar, *, key=None, train=False) -> tuple:
        """``-> (params_bar, x_bar)`` from a tape that :meth:`tape_forward` recorded."""
        require_rule(self)
        mode = _static_mode(train)
        if mode is None:
            raise TypeError(f"{self.spec}: tape_backward needs train as a Python bool, got a traced value; "
                            f"pass it as static (jax.jit(..., static_argnames='train'))")
        return self.backward_fn(params, state, tape, y_bar, key=key, train=mode)

    def backward(self, params, state, x, y_bar, *, key=None, train=False) -> tuple:
        """The hand rule ``(params, state, x, y_bar, *, key, train) -> (params_bar, x_bar)``."""
        require_rule(self)
        _, _, tape = self.tape_forward(params, state, x, key=key, train=train)
        return self.tape_backward(params, state, tape, y_bar, key=key, train=train)

    @property
    def has_rule(self) -> bool:
        """Whether this layer and every layer inside it has a hand-derived rule."""
        return not _missing_rules(self)


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
def _expected(layer: Layer, input_shape: tuple):
    """``(params, state)`` as ``ShapeDtypeStruct`` pytrees, as ``init`` makes them for this input shape."""
    _, params, state = jax.eval_shape(lambda k: layer.init_fn(k, input_shape), jax.random.key(0))
    return params, state


def _leaves(tree: Any) -> dict:
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


def build(name: str, spec: str, init_with_state: Callable, apply_with_state: Callable,
          backward: Callable | None = None) -> Layer:
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


def build_stateless(name: str, spec: str, init: Callable, apply: Callable, backward: Callable | None = None) -> Layer:
    """A primitive layer without state from ``init(key, shape) -> (out_shape, params)``,
    ``apply(params, x, *, key, train) -> y`` and ``backward(params, x, y_bar, *, key, train)``."""

    def init_with_state(key, input_shape):
        out_shape, params = init(key, input_shape)
        return out_shape, params, {}

    def apply_with_state(params, state, x, *, key=None, train=False):
        return apply(params, x, key=key, train=train), state

    rule = None
    if backward is not None:

        def rule(params, state, x, y_bar, *, key=None, train=False):
            del state
            return backward(params, x, y_bar, key=key, train=train)

    return build(name, spec, init_with_state, apply_with_state, rule)
