"""Property-based fuzzing of bad arguments over the public API of activations, losses, optim, gradcheck,
initializers, evaluation, backprop, debug and per_example.

Each :class:`Target` is one public function called with good arguments
(``good()``); ``slots`` names the arguments the fuzzer may spoil and the
classes of bad value each may receive (:data:`BAD`: wrong types, complex,
bool or integer dtypes, empty batches, negative or out-of-range
hyperparameters, array hyperparameters, bad axes, a check that would check
nothing). Hypothesis draws a target, an argument, a class and a value of that
class; the call must raise a ``ValueError`` or ``TypeError`` that one of
jaxnets' own checks raised (the innermost frame of the traceback lies in the
``jaxnets`` package, JAX's traceback filtering off) and whose message names
the argument. Anything else is one of:

* ``silent``: the call returned;
* ``unclear``: it raised from inside JAX, NumPy or Python (``'>' not
  supported``), or raised a jaxnets error that does not name the argument.

The test is bounded (``max_examples`` small, ``deadline=None``) and
deterministic (``derandomize=True``). ``python tests/test_fuzz.py [N]``
runs N examples without failing and prints the outcomes per class (the
before/after counts of issue 21).
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxnets
import jaxnets.layers as L
from jaxnets import activations, backprop, debug, evaluation, gradcheck, initializers, losses, optim, per_example

PACKAGE = os.path.dirname(os.path.abspath(jaxnets.__file__))
K = jax.random.key(0)


def raised_by_jaxnets(error: BaseException) -> bool:
    """A ValueError/TypeError (exactly: JAX's own errors subclass them) whose innermost frame is jaxnets code.

    The rule of ``jaxnets.layers.core._raised_by_jaxnets``, restated here:
    tests use no underscore name of the library.
    """
    if type(error) not in (ValueError, TypeError):
        return False
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(PACKAGE + os.sep)


def outcome(call: Callable[[], Any], argument: str) -> tuple[str, str]:
    """``("clear" | "unclear" | "silent", what happened)`` for one bad call."""
    previous = jax.config.jax_traceback_filtering
    jax.config.update("jax_traceback_filtering", "off")  # JAX would otherwise cut its own frames out
    try:
        result = call()
        jax.block_until_ready(jax.tree_util.tree_leaves(result, is_leaf=lambda x: not isinstance(x, (list, tuple, dict))))
    except Exception as error:  # noqa: BLE001 -- every exception is classified
        text = f"{type(error).__name__}: {str(error)[:300]}"
        if raised_by_jaxnets(error) and argument in str(error):
            return "clear", text
        return "unclear", text
    finally:
        jax.config.update("jax_traceback_filtering", previous)
    return "silent", f"returned {type(result).__name__}"


# ---------------------------------------------------------------------------
# Bad values, by class
# ---------------------------------------------------------------------------

small_shape = st.tuples(st.integers(1, 3), st.integers(1, 3))
WRONG_TYPES = st.sampled_from(["abc", None, [1.0, 2.0], {"a": 1.0}, (1.0,), object(), b"x"])
KEYS = {"type": st.sampled_from(["abc", 0, [1, 2], 1.5, object()]), "int": None}  # None is no bad key: it is the default
BAD = {
    # an argument that must be an array (or a callable, a layer, ...) gets something else
    "type": WRONG_TYPES,
    # complex, bool, integer arrays where real floats are needed
    "complex": small_shape.map(lambda s: jnp.ones(s, jnp.complex64) * (1 + 1j)),
    "bool": small_shape.map(lambda s: jnp.ones(s, bool)),
    "int": small_shape.map(lambda s: jnp.ones(s, jnp.int32)),
    # a hyperparameter below its range (negative, NaN, infinite)
    "negative": st.one_of(st.floats(-1e3, -1e-6), st.sampled_from([float("nan"), float("-inf")])),
    # an array where a scalar hyperparameter is needed
    "array": st.integers(1, 3).map(lambda n: jnp.full((n,), 0.1)),
    # an axis that is no int or out of range
    "axis": st.one_of(st.integers(2, 6), st.integers(-7, -3), st.sampled_from([[1], 1.0, "last", None, True])),
}
# "empty" and "nothing" are per target (an empty batch of the right rank; arguments that check nothing)


class Target(NamedTuple):
    name: str
    call: Callable[..., Any]  # call(**kwargs)
    good: Callable[[], dict]  # good keyword arguments
    slots: dict  # argument -> {class: strategy or None (use BAD[class])}


def slots(**spec) -> dict:
    """``x=("type", "complex")`` or ``x={"empty": strategy}``: the classes each argument is fuzzed with."""
    out = {}
    for arg, classes in spec.items():
        out[arg] = dict.fromkeys(classes) if isinstance(classes, (tuple, list)) else classes
    return out


TARGETS: list[Target] = []


def target(name, call, good, **spec):
    TARGETS.append(Target(name, call, good, slots(**spec)))


def X():
    return jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)


# --- activations -------------------------------------------------------------------------------------------------

ARRAY = ("type", "complex", "bool", "int")
for _name in ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "silu", "identity"):
    for _fn in (_name, f"{_name}_grad"):
        extra = {}
        if _name == "leaky_relu":
            extra = dict(negative_slope=("type", "array"))
        elif _name == "elu":
            extra = dict(alpha=("type", "array"))
        elif _name == "gelu":
            extra = dict(approximate=("type",))
        target(f"activations.{_fn}", getattr(activations, _fn), lambda: {"x": X()}, x=ARRAY, **extra)
for _fn in ("softmax", "log_softmax"):
    target(f"activations.{_fn}", getattr(activations, _fn), lambda: {"x": X()}, x=ARRAY, axis=("axis",))
for _fn in ("softmax_vjp", "log_softmax_vjp"):
    target(f"activations.{_fn}", getattr(activations, _fn), lambda: {"x": X(), "y_bar": X()}, x=ARRAY,
           y_bar=("type", "complex", "bool", "int"), axis=("axis",))

# --- losses ------------------------------------------------------------------------------------------------------

EMPTY_2D = {"empty": st.integers(0, 3).map(lambda n: jnp.zeros((0, n)))}


def _empty_pair(first, second, labels=False):
    """An empty batch for both arguments (the loss would be a mean over nothing)."""
    def make(n):
        a = jnp.zeros((0, n + 1))
        b = jnp.zeros((0,), jnp.int32) if labels else jnp.zeros((0, n + 1))
        return {first: a, second: b}
    return st.integers(0, 2).map(make)


PAIR_EMPTY: dict[str, Any] = {}
for _fn, (_a, _b) in {"mean_squared_error": ("predictions", "targets"), "softmax_cross_entropy": ("logits", "targets"),
                      "binary_cross_entropy_with_logits": ("logits", "targets"), "huber": ("predictions", "targets"),
                      "hinge": ("scores", "targets")}.items():
    for _f in (_fn, f"{_fn}_grad"):
        good = (lambda a=_a, b=_b, f=_fn: {a: jnp.zeros((4, 3)), b: (jnp.ones((4, 3)) if f == "hinge" else jnp.full((4, 3), 0.25))})
        extra = {"delta": ("type", "negative", "array")} if _fn == "huber" else {}
        target(f"losses.{_f}", getattr(losses, _f), good, **{_a: ARRAY, _b: ("type", "complex")}, **extra,
               **{f"{_a}+{_b}": {"empty": _empty_pair(_a, _b)}})
for _f in ("softmax_cross_entropy_with_integer_labels", "softmax_cross_entropy_with_integer_labels_grad", "accuracy"):
    target(f"losses.{_f}", getattr(losses, _f), lambda: {"logits": jnp.zeros((4, 3)), "labels": jnp.array([0, 1, 2, 0])},
           logits=ARRAY, labels=("type", "complex", "bool"), **{"logits+labels": {"empty": _empty_pair("logits", "labels", True)}})

# --- optim -------------------------------------------------------------------------------------------------------

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
HYPER = ("type", "negative", "array", "complex_scalar", "bool_scalar")
BAD["complex_scalar"] = st.sampled_from([1j, np.complex64(1 + 1j), jnp.asarray(0.1 + 0j)])
BAD["bool_scalar"] = st.sampled_from([True, np.bool_(False), jnp.asarray(True)])
MOMENTUM = {"type": st.sampled_from(["abc", [0.9], object()]), **dict.fromkeys(HYPER[1:])}  # None is no bad momentum: it is plain SGD
FLAG = {"type": st.sampled_from(["yes", None, 1.5, [True]])}
_OPT_ARGS = {
    "sgd": dict(momentum=MOMENTUM, nesterov=FLAG, accumulator_dtype={"type": st.sampled_from(["fast", 3, "int32"])}),
    "adagrad": dict(initial_accumulator_value=HYPER, eps=HYPER),
    "rmsprop": dict(decay=HYPER, eps=HYPER, initial_scale=HYPER, momentum=MOMENTUM, centered=FLAG, eps_in_sqrt=FLAG,
                    nesterov=FLAG, bias_correction=FLAG),
    "adam": dict(b1=HYPER, b2=HYPER, eps=HYPER, eps_root=HYPER, nesterov=FLAG, mu_dtype={"type": st.sampled_from(["fast", "int32", bool])}),
    "adamw": dict(b1=HYPER, b2=HYPER, eps=HYPER, weight_decay=HYPER, mask={"type": st.sampled_from(["w", 3, [True]])}),
    "nadam": dict(b1=HYPER, b2=HYPER, eps=HYPER),
    "adamax": dict(b1=HYPER, b2=HYPER, eps=HYPER),
    "amsgrad": dict(b1=HYPER, b2=HYPER, eps=HYPER, eps_root=HYPER, bias_correction_mu=FLAG, bias_correction_nu=FLAG),
    "lion": dict(b1=HYPER, b2=HYPER, weight_decay=HYPER, mu_dtype={"type": st.sampled_from(["fast", "int32"])}),
}
_BAD_GRADS = {"type": st.sampled_from(["abc", None, [1.0], {"w": "abc", "b": 1.0}]),
              "int": st.just({"w": jnp.ones((2, 3), jnp.int32), "b": jnp.zeros(3, jnp.int32)}),
              "bool": st.just({"w": jnp.ones((2, 3), bool), "b": jnp.zeros(3, bool)})}


_INIT = object()  # the state init returns


def _step(name):
    def call(learning_rate=1e-2, grads=PARAMS, state=_INIT, params=PARAMS, **hyper):
        opt = getattr(optim, name)(learning_rate, **hyper)
        return opt.update(grads, opt.init(PARAMS) if state is _INIT else state, params)
    return call


for _name, _args in _OPT_ARGS.items():
    _extra = {"params": {"type": st.sampled_from(["abc", [1.0], {"v": jnp.ones(3)}])}} if _name in ("adamw", "lion") else {}
    target(f"optim.{_name}", _step(_name), lambda: {}, learning_rate=HYPER, grads=_BAD_GRADS,
           state={"type": st.sampled_from(["abc", None, (1, 2)])}, **_args, **_extra)

target("optim.compare", lambda optimizer, reference, params, grad_fn, steps=3: optim.compare(optimizer, reference, params, grad_fn, steps),
       lambda: {"optimizer": optim.sgd(0.1), "reference": optim.sgd(0.1), "params": optim.quadratic_problem(3).params,
                "grad_fn": optim.quadratic_problem(3).grad_fn},
       optimizer=("type",), reference=("type",), grad_fn=("type",), steps=("type", "negative", "array", "bool_scalar"))
target("optim.quadratic_problem", optim.quadratic_problem, lambda: {"dim": 3},
       dim=("type", "negative", "array", "bool_scalar"), condition=("type", "negative", "array"), seed=("type", "array"),
       dtype={"type": st.sampled_from(["fast", "int32", jnp.complex64, bool])})
target("optim.rosenbrock_problem", optim.rosenbrock_problem, lambda: {},
       a=("type", "array", "complex_scalar"), b=("type", "negative", "array"),
       dtype={"type": st.sampled_from(["fast", "int32", jnp.complex64])})

# --- gradcheck ---------------------------------------------------------------------------------------------------


def _loss(p, x):
    return jnp.sum(jnp.tanh(x @ p["w"]) ** 2)


def _grad(p, x):
    return jax.grad(_loss)(p, x)


def _point():
    return {"grad_fn": _grad, "loss_fn": _loss, "params": {"w": jnp.ones((3, 2)) * 0.1}, "x": jnp.ones((2, 3)),
            "dtypes": ("float32",), "max_full": 8}


def _check_grads(fn):
    def call(grad_fn, loss_fn, params, x, **kwargs):
        return fn(grad_fn, loss_fn, params, x, **kwargs)
    return call


NOTHING = {"nothing": st.just({"dtypes": (), "finite_differences": False})}
NO_PARAMS = st.sampled_from([{}, {"w": jnp.zeros((3, 0))}, None])
for _fn in ("check_grads", "assert_grads_close"):
    target(f"gradcheck.{_fn}", _check_grads(getattr(gradcheck, _fn)), _point,
           grad_fn=("type",), loss_fn=("type",),
           params={"type": st.sampled_from(["abc", object(), {"w": "abc"}]), "nothing": NO_PARAMS, "complex": st.just({"w": jnp.ones((3, 2), jnp.complex64)}),
                   "int": st.just({"w": jnp.ones((3, 2), jnp.int32)}), "bool": st.just({"w": jnp.ones((3, 2), bool)})},
           dtypes={"type": st.sampled_from(["float32", [3], ("int32",), ("complex64",), ("fast",), None])},
           directions=("type", "negative", "array"), max_full=("type", "negative", "array"),
           fd_rtol=("type", "negative", "array"), fd_atol=("type", "negative", "array"),
           tolerances={"type": st.sampled_from(["tight", [1e-5], {"float32": "tight"}, {"float32": (-1.0, 0.0)}])},
           seed=("type", "array"), finite_differences=FLAG, **{"dtypes+finite_differences": NOTHING})


def _check_layer(layer, x, **kwargs):
    return gradcheck.check_layer(layer, x, **kwargs)


target("gradcheck.check_layer", _check_layer, lambda: {"layer": L.Dense(2), "x": (2, 3), "dtypes": ("float32",), "finite_differences": False},
       layer=("type",), x={"type": None, "complex": None, "empty": st.sampled_from([(0, 3), (2, 0), ()])},
       key=KEYS, train=FLAG, integer_input=FLAG,
       **{"dtypes+finite_differences": {"nothing": st.just({"dtypes": (), "finite_differences": False})}})
target("gradcheck.dtype_tolerance", gradcheck.dtype_tolerance, lambda: {"dtype": "bfloat16", "reduction": 8},
       dtype={"type": st.sampled_from(["fast", None, 3, jnp.complex64, "int8", bool])},
       reduction=("type", "negative", "array", "bool_scalar"))

# --- initializers ------------------------------------------------------------------------------------------------

_DTYPES = {"type": st.sampled_from(["fast", None, 3, jnp.int32, jnp.complex64, bool])}
for _fn in ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "normal", "uniform", "orthogonal"):
    _hyper = {"normal": "stddev", "uniform": "scale", "orthogonal": "scale"}.get(_fn)

    def _init_call(fn=_fn, hyper=_hyper, key=K, shape=(3, 4), dtype=jnp.float32, **kw):
        return getattr(initializers, fn)(**kw)(key, shape, dtype)

    target(f"initializers.{_fn}", _init_call, lambda: {}, key=KEYS,
           shape={"type": st.sampled_from(["3x4", None, 3.5, (3, -4), (3.0, 4)])}, dtype=_DTYPES,
           **({_hyper: ("type", "negative", "array")} if _hyper else {}))
for _fn in ("zeros", "ones"):
    target(f"initializers.{_fn}", getattr(initializers, _fn), lambda: {"key": K, "shape": (3,)}, key=KEYS,
           shape={"type": st.sampled_from(["3", None, 3.5, (-3,), (3.0,)])},
           dtype={"type": st.sampled_from(["fast", 3, object()])})

# --- evaluation, backprop, debug, per_example --------------------------------------------------------------------

MODEL = L.serial(L.Dense(3), L.Relu(), L.Dense(2))


def _params():
    return MODEL.init(K, (-1, 4))[1]


XB, YB = jnp.ones((5, 4)), jnp.array([0, 1, 0, 1, 1])
target("evaluation.predict", evaluation.predict, lambda: {"model": MODEL, "params": _params(), "x": XB},
       model=("type",), params={"type": st.sampled_from(["abc", None, [1.0]])}, x=("type", "complex", "int", "bool"),
       batch_size=("type", "negative", "array", "bool_scalar"), key=KEYS)
target("evaluation.evaluate", evaluation.evaluate, lambda: {"model": MODEL, "params": _params(), "data": (XB, YB),
                                                            "loss": losses.softmax_cross_entropy_with_integer_labels},
       model=("type",), data={"type": st.sampled_from(["abc", None, (XB,), (XB, "y")]),
                              "empty": st.just((jnp.ones((0, 4)), jnp.zeros((0,), jnp.int32)))},
       loss=("type",), metrics={"type": st.sampled_from(["accuracy", ["accuracy"], {"acc": "top5"}, {"acc": 3}])},
       batch_size=("type", "negative", "array", "bool_scalar"), key=KEYS)
target("evaluation.resolve_metrics", evaluation.resolve_metrics, lambda: {"metrics": None},
       metrics={"type": st.sampled_from(["accuracy", ["accuracy"], {"acc": "top5"}, {"acc": 3}])})
for _fn in ("grad", "value_and_grad"):
    target(f"backprop.{_fn}", lambda model, loss, x=XB, y=YB, f=_fn, **kw: getattr(backprop, f)(model, loss, **kw)(_params(), x, y),
           lambda: {"model": MODEL, "loss": losses.softmax_cross_entropy_with_integer_labels},
           model=("type",), loss=("type",), loss_grad={"type": st.sampled_from(["abc", 3, [1.0]])}, train=FLAG)
target("backprop.vjp", backprop.vjp, lambda: {"model": MODEL, "params": _params(), "x": XB},
       model=("type",), x=("type", "complex", "int", "bool"), key=KEYS, train=FLAG)
target("backprop.hand_gradients", backprop.hand_gradients, lambda: {"model": MODEL}, model=("type",))
target("backprop.loss_gradient", backprop.loss_gradient, lambda: {"loss": losses.mean_squared_error},
       loss=("type",), loss_grad={"type": st.sampled_from(["abc", 3, [1.0]])})
target("debug.locate_nonfinite", debug.locate_nonfinite,
       lambda: {"model": MODEL, "params": _params(), "x": XB, "y": YB, "loss": losses.softmax_cross_entropy_with_integer_labels},
       model=("type",), x=("type", "complex", "int", "bool"), loss=("type",), key=KEYS, train=FLAG)
target("per_example.grads", per_example.grads,
       lambda: {"model": MODEL, "loss": losses.softmax_cross_entropy_with_integer_labels, "params": _params(), "x": XB, "y": YB},
       model=("type",), loss=("type",), x=("type", "complex", "int", "bool"), y=("type", "complex"),
       key=KEYS, train=FLAG, **{"x+y": {"empty": st.just({"x": jnp.ones((0, 4)), "y": jnp.zeros((0,), jnp.int32)})}})
target("per_example.norms", per_example.norms, lambda: {"per_example_grads": {"w": jnp.ones((3, 2))}},
       per_example_grads={"type": st.sampled_from(["abc", None, {"w": "abc"}, {"w": 1.0}]),
                          "complex": st.just({"w": jnp.ones((3, 2), jnp.complex64)}), "int": st.just({"w": jnp.ones((3, 2), jnp.int32)}),
                          "empty": st.sampled_from([{}, {"w": jnp.ones((0, 2))}])})
target("per_example.clip", per_example.clip, lambda: {"per_example_grads": {"w": jnp.ones((3, 2))}, "max_norm": 1.0},
       per_example_grads={"type": st.sampled_from(["abc", None, {"w": "abc"}]), "empty": st.sampled_from([{}, {"w": jnp.ones((0, 2))}])},
       max_norm=("type", "negative", "array", "bool_scalar", "complex_scalar"))
target("per_example.dp_gradient", per_example.dp_gradient, lambda: {"l2_norm_clip": 1.0, "noise_multiplier": 0.5},
       l2_norm_clip=("type", "negative", "array", "bool_scalar", "complex_scalar"),
       noise_multiplier=("type", "negative", "array", "bool_scalar", "complex_scalar"))


def _objective(params, batch, key, model_state):
    x, y = batch
    return losses.softmax_cross_entropy_with_integer_labels(MODEL.apply(params, x), y), {}


target("per_example.stacked_gradient", per_example.stacked_gradient,
       lambda: {"objective": _objective, "params": _params(), "batch": (XB, YB), "key": K, "model_state": {}},
       objective=("type",), batch={"type": st.sampled_from(["abc", None]), "empty": st.just((jnp.ones((0, 4)), jnp.zeros((0,), jnp.int32)))},
       key=KEYS)


# ---------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------

CHOICES = [(t, arg, klass) for t in TARGETS for arg, classes in t.slots.items() for klass in classes]


@st.composite
def bad_calls(draw):
    """``(target name, argument, class, call)``: one public function with one argument spoilt."""
    t, arg, klass = draw(st.sampled_from(CHOICES))
    strategy = BAD[klass] if t.slots[arg][klass] is None else t.slots[arg][klass]
    value = draw(strategy)
    kwargs = t.good()
    if "+" in arg:  # several arguments spoilt together (an empty batch of x and y; dtypes=() with no finite differences)
        kwargs.update(value)
        named = arg.split("+")
    else:
        kwargs[arg] = value
        named = [arg]
    return t.name, "/".join(named), klass, lambda: t.call(**kwargs), named


def _names_one(error_text: str, named: list) -> bool:
    return any(name in error_text for name in named)


def classify(call, named) -> tuple[str, str]:
    """As :func:`outcome`, where the message may name any of the spoilt arguments."""
    kind, text = outcome(call, named[0])
    if kind == "unclear" and len(named) > 1 and text.startswith(("ValueError", "TypeError")) and _names_one(text, named):
        kind2, _ = outcome(call, next(n for n in named if n in text))
        return kind2, text
    return kind, text


@pytest.mark.standard_promotion("the fuzzer's bad values include mixed dtypes; the library must refuse them itself")
@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bad_calls())
def test_bad_arguments_get_jaxnets_errors_naming_them(case):
    name, argument, klass, call, named = case
    kind, text = classify(call, named)
    assert kind == "clear", f"{name}({argument}=<{klass}>): {kind}: {text}"


def test_every_public_function_is_fuzzed():
    """Each target names a public function of its module, and each such function of the fuzzed modules has a target."""
    fuzzed = {t.name for t in TARGETS}
    modules = {"activations": activations, "losses": losses, "gradcheck": gradcheck, "initializers": initializers,
               "per_example": per_example, "backprop": backprop, "debug": debug}
    expected = {f"{m}.{n}" for m, mod in modules.items() for n in mod.__all__ if callable(getattr(mod, n))
                and not isinstance(getattr(mod, n), type) and n not in ("GRADIENTS", "Initializer")}
    expected |= {f"optim.{n}" for n in optim.OPTIMIZERS} | {"optim.compare", "optim.quadratic_problem", "optim.rosenbrock_problem"}
    expected |= {"evaluation.predict", "evaluation.evaluate", "evaluation.resolve_metrics"}
    assert expected - fuzzed == set(), f"public functions without a fuzz target: {sorted(expected - fuzzed)}"


def _count(n: int) -> None:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: dict[tuple, str] = {}

    @settings(max_examples=n, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bad_calls())
    def run(case):
        name, argument, klass, call, named = case
        kind, text = classify(call, named)
        counts[klass][kind] += 1
        if kind != "clear":
            examples.setdefault((name, argument, klass), f"{kind}: {text}")

    with jax.numpy_dtype_promotion("standard"):
        run()
    total = collections.Counter()
    for klass in sorted(counts):
        c = counts[klass]
        total.update(c)
        print(f"{klass:15s} clear {c['clear']:4d}  unclear {c['unclear']:4d}  silent {c['silent']:4d}")
    print(f"{'all':15s} clear {total['clear']:4d}  unclear {total['unclear']:4d}  silent {total['silent']:4d}")
    for (name, argument, klass), text in sorted(examples.items()):
        print(f"  {name}({argument}=<{klass}>) {text[:200]!r}")


if __name__ == "__main__":
    _count(int(sys.argv[1]) if len(sys.argv) > 1 else 400)


_COMPILING = ("gradcheck.", "per_example.grads", "backprop.grad", "backprop.value_and_grad", "debug.", "evaluation.evaluate",
              "evaluation.predict", "optim.compare")  # good calls that compile whole programs: seconds each


@pytest.mark.standard_promotion("as the fuzz test")
@pytest.mark.parametrize("t", [pytest.param(t, id=t.name, marks=[pytest.mark.slow] if t.name.startswith(_COMPILING) else [])
                               for t in TARGETS])
def test_good_calls_run(t):
    """Each target's good arguments work: a clear error in the fuzz test comes from the spoilt argument."""
    result = t.call(**t.good())
    jax.block_until_ready(jax.tree_util.tree_leaves(result, is_leaf=lambda x: not isinstance(x, (list, tuple, dict))))
