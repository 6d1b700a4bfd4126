"""Bad inputs to the public API, grouped by public function.

``CASES`` maps each public function (``"module.name"``) to its bad inputs.
Each :class:`Case` calls the function wrongly and states the exception type,
a regex the message must match, and the argument the message must name.
``test_coverage`` fails when a public function of a module in ``MODULES``
has no case and no reason in ``EXEMPT``: adding a public function, or a
module to ``MODULES``, makes the missing cases visible.

To add cases for another module: add it to ``MODULES`` and add
``CASES["module.function"] = [Case(...), ...]`` entries (a section per
function, as below).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets.layers as L
from jaxnets import (_checks, activations, backprop, data, debug, distributed, gradcheck, initializers, losses, optim, porting,
                     precision, streaming)


class Case(NamedTuple):
    """One bad call: ``call()`` must raise ``exception`` whose message matches ``match`` and contains ``argument``."""

    id: str
    call: Callable[[], Any]
    exception: type
    match: str
    argument: str


# Modules whose public functions (those in ``__all__``) must each have cases here or a reason in EXEMPT.
MODULES = ["jaxnets.optim", "jaxnets.data", "jaxnets.activations", "jaxnets.losses", "jaxnets.initializers", "jaxnets._checks",
           "jaxnets.layers", "jaxnets.gradcheck", "jaxnets.backprop", "jaxnets.debug", "jaxnets.porting", "jaxnets.precision",
           "jaxnets.streaming", "jaxnets.distributed", "jaxnets.train", "jaxnets.checkpoint"]

# "module.name" -> why it has no bad-input case.
EXEMPT: dict[str, str] = {
    **{f"jaxnets.layers.{name}": "its bad-input cases are in tests/test_layers.py, test_sequence.py and test_generate.py"
       for name in ("TiedEmbedding", "SimpleRNNCell", "GRUCell")},
    **{f"jaxnets.porting.{name}": "its bad-input cases (missing keys, mismatched shapes) are in tests/test_porting.py"
       for name in ("from_torch", "from_equinox")},
    "jaxnets.layers.one_step_program": "a context manager of no arguments: there is no input to get wrong",
}

CASES: dict[str, list[Case]] = {}


def cases(function: str, *items: Case) -> None:
    CASES.setdefault(function, []).extend(items)


# ---------------------------------------------------------------------------
# jaxnets.optim: every optimizer's factory and update
# ---------------------------------------------------------------------------

P44 = {"w": jnp.ones((4, 4))}


def _update(opt, grads, state=None, params=P44):
    return opt.update(grads, opt.init(params) if state is None else state, params)


def _optimizer_cases(name: str) -> list[Case]:
    make = getattr(optim, name)
    other = "sgd" if name != "sgd" else "adam"
    out = [
        Case("negative lr", lambda: make(-1e-3), ValueError, r"learning_rate must be a finite number > 0 or a schedule, got -0.001", "learning_rate"),
        Case("lr string", lambda: make("fast"), TypeError, r"learning_rate must be a scalar number, got 'fast'", "learning_rate"),
        Case("lr bool", lambda: make(True), TypeError, r"learning_rate must be a scalar number, got True", "learning_rate"),
        Case("negative array lr", lambda: make(jnp.asarray(-0.1)), ValueError, r"learning_rate must be finite and >= 0, got -0.1\b", "learning_rate"),
        Case("nan 0-d array lr (inject_hyperparams)", lambda: make(np.array(np.nan)), ValueError,
             r"learning_rate must be finite and >= 0, got nan", "learning_rate"),
        Case("grad (4,) on param (4, 4)", lambda: _update(make(1e-3), {"w": jnp.ones(4)}), ValueError,
             r"grads\['w'\] must have the shape of the .*\['w'\], \(4, 4\), got \(4,\) \(gradients are not broadcast\)", "grads"),
        Case("grads of another structure", lambda: _update(make(1e-3), {"v": jnp.ones((4, 4))}), ValueError,
             r"grads must have the structure of the .*:\n  grads: PyTreeDef\(\{'v': \*\}\)", "grads"),
        Case(f"{other}'s state", lambda: _update(make(1e-3), P44, getattr(optim, other)(1e-3).init(P44)), TypeError,
             rf"state must be the \w+State that {name}'s init returns, got \w+State", "state"),
    ]
    return out


_DECAYS = {"sgd": ["momentum"], "rmsprop": ["decay", "momentum"], "adam": ["b1", "b2"], "adamw": ["b1", "b2"], "nadam": ["b1", "b2"],
           "adamax": ["b1", "b2"], "amsgrad": ["b1", "b2"], "lion": ["b1", "b2"], "adagrad": []}
_NONNEGATIVE = {"adagrad": ["eps", "initial_accumulator_value"], "rmsprop": ["eps", "initial_scale"], "adam": ["eps", "eps_root"],
                "adamw": ["eps", "eps_root", "weight_decay"], "nadam": ["eps", "eps_root"], "adamax": ["eps"],
                "amsgrad": ["eps", "eps_root"], "lion": ["weight_decay"], "sgd": []}

for _name in optim.OPTIMIZERS:
    cases(f"jaxnets.optim.{_name}", *_optimizer_cases(_name))
    for _arg in _DECAYS[_name]:
        cases(
            f"jaxnets.optim.{_name}",
            Case(f"{_arg}=1.5", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: 1.5}), ValueError, rf"{_arg} must be in \[0, 1\), got 1.5", _arg),
            Case(f"{_arg}=1.0", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: 1.0}), ValueError, rf"{_arg} must be in \[0, 1\), got 1.0", _arg),
            Case(f"{_arg} 0-d array out of range", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: jnp.asarray(1.5)}),
                 ValueError, rf"{_arg} must be in \[0, 1\), got 1.5\b", _arg),
        )
    for _arg in _NONNEGATIVE[_name]:
        cases(
            f"jaxnets.optim.{_name}",
            Case(f"{_arg}<0", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: -0.1}), ValueError, rf"{_arg} must be a finite number >= 0, got -0.1", _arg),
            Case(f"{_arg} array <0", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: np.array(-1e-3)}), ValueError,
                 rf"{_arg} must be a finite number >= 0, got -0.001\b", _arg),
        )

cases(
    "jaxnets.optim.adamw",
    Case("mask of another structure", lambda: optim.adamw(1e-3, mask={"v": True}).init(P44), ValueError,
         r"mask must have the structure of params \(or a prefix of it\) with bool leaves", "mask"),
    Case("update without params", lambda: optim.adamw(1e-3).update(P44, optim.adamw(1e-3).init(P44)), ValueError,
         r"needs params: call update\(grads, state, params\)", "params"),
    Case("mu_dtype not a dtype", lambda: optim.adamw(1e-3, mu_dtype="half-ish"), TypeError, r"mu_dtype must be a dtype or None, got 'half-ish'", "mu_dtype"),
)
cases(
    "jaxnets.optim.sgd",
    Case("accumulator_dtype not a dtype", lambda: optim.sgd(1e-3, momentum=0.9, accumulator_dtype="fast"), TypeError,
         r"accumulator_dtype must be a dtype or None, got 'fast'", "accumulator_dtype"),
)


def _problem():
    return optim.quadratic_problem(3)


cases(
    "jaxnets.optim.compare",
    Case("optimizer not a transformation", lambda: optim.compare("adam", optim.adam(1e-3), _problem().params, _problem().grad_fn), TypeError,
         r"optimizer must be an optax.GradientTransformation, got 'adam'", "optimizer"),
    Case("reference not a transformation", lambda: optim.compare(optim.adam(1e-3), None, _problem().params, _problem().grad_fn), TypeError,
         r"reference must be an optax.GradientTransformation, got None", "reference"),
    Case("steps=0", lambda: optim.compare(optim.adam(1e-3), optim.adam(1e-3), _problem().params, _problem().grad_fn, steps=0), ValueError,
         r"steps must be a positive integer, got 0", "steps"),
)
cases(
    "jaxnets.optim.quadratic_problem",
    Case("dim=0", lambda: optim.quadratic_problem(0), ValueError, r"dim must be a positive integer, got 0", "dim"),
    Case("dim=2.5", lambda: optim.quadratic_problem(2.5), TypeError, r"dim must be a positive integer, got 2.5", "dim"),
    Case("condition=0", lambda: optim.quadratic_problem(4, condition=0.0), ValueError, r"condition must be finite and > 0, got 0.0", "condition"),
)
cases(
    "jaxnets.optim.rosenbrock_problem",
    Case("b=0", lambda: optim.rosenbrock_problem(b=0.0), ValueError, r"b must be finite and > 0, got 0.0", "b"),
    Case("a a string", lambda: optim.rosenbrock_problem(a="1"), TypeError, r"a must be a real number, got '1'", "a"),
)


# ---------------------------------------------------------------------------
# jaxnets.activations
# ---------------------------------------------------------------------------

X = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
A = activations

for _fn in ("leaky_relu", "leaky_relu_grad"):
    cases(f"jaxnets.activations.{_fn}",
          Case("slope a string", lambda f=_fn: getattr(A, f)(X, "0.1"), TypeError, r"negative_slope must be a real number, got '0.1'", "negative_slope"),
          Case("slope None", lambda f=_fn: getattr(A, f)(X, None), TypeError, r"negative_slope must be a real number, got None", "negative_slope"))
for _fn in ("elu", "elu_grad"):
    cases(f"jaxnets.activations.{_fn}",
          Case("alpha a list", lambda f=_fn: getattr(A, f)(X, [1.0]), TypeError, r"alpha must be a real number, got \[1.0\]", "alpha"))
for _fn in ("gelu", "gelu_grad"):
    cases(f"jaxnets.activations.{_fn}",
          Case("approximate a string", lambda f=_fn: getattr(A, f)(X, "tanh"), TypeError, r"approximate must be True or False, got 'tanh'", "approximate"),
          Case("approximate None", lambda f=_fn: getattr(A, f)(X, None), TypeError, r"approximate must be True or False, got None", "approximate"))
for _fn in ("softmax", "log_softmax"):
    cases(f"jaxnets.activations.{_fn}",
          Case("axis out of range", lambda f=_fn: getattr(A, f)(X, axis=2), ValueError, r"axis must be in \[-2, 2\) for an array of 2 dimensions, got 2", "axis"),
          Case("axis a float", lambda f=_fn: getattr(A, f)(X, axis=1.0), TypeError, r"axis must be an int, got 1.0", "axis"))
for _fn in ("softmax_vjp", "log_softmax_vjp"):
    cases(f"jaxnets.activations.{_fn}",
          Case("y_bar of another shape", lambda f=_fn: getattr(A, f)(X, jnp.ones(3)), ValueError, r"y_bar must have the shape of x, \(2, 3\), got \(3,\)", "y_bar"),
          Case("axis out of range", lambda f=_fn: getattr(A, f)(X, X, axis=-3), ValueError, r"axis must be in \[-2, 2\) .* got -3", "axis"))


# ---------------------------------------------------------------------------
# jaxnets.losses
# ---------------------------------------------------------------------------

Lo = losses
Z = jnp.zeros((4, 3))
T = jnp.full((4, 3), 1 / 3)
Y = jnp.array([0, 1, 2, 0])

for _fn in ("mean_squared_error", "mean_squared_error_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("shapes differ", lambda f=_fn: getattr(Lo, f)(Z, jnp.zeros((4, 1))), ValueError,
               r"predictions and targets must have the same shape, got \(4, 3\) and \(4, 1\)", "targets"),
          Case("predictions a list", lambda f=_fn: getattr(Lo, f)([1.0, 2.0], jnp.zeros(2)), TypeError, r"predictions must be an array, got list", "predictions"))
for _fn in ("softmax_cross_entropy", "softmax_cross_entropy_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("targets of another shape", lambda f=_fn: getattr(Lo, f)(Z, T[:, :2]), ValueError,
               r"logits and targets must have the same shape, got \(4, 3\) and \(4, 2\)", "targets"),
          Case("integer logits", lambda f=_fn: getattr(Lo, f)(jnp.zeros((4, 3), jnp.int32), T), TypeError,
               r"logits must have a floating dtype, got int32", "logits"))
for _fn in ("softmax_cross_entropy_with_integer_labels", "softmax_cross_entropy_with_integer_labels_grad", "accuracy"):
    cases(f"jaxnets.losses.{_fn}",
          Case("label out of range", lambda f=_fn: getattr(Lo, f)(Z, jnp.array([0, 1, 3, 0])), ValueError,
               r"labels must lie in \[0, 3\) for 3 classes, got values in \[0, 3\]", "labels"),
          Case("int64 label beyond 2**31", lambda f=_fn: getattr(Lo, f)(Z, np.array([0, 1, 2**32 + 1, 0], np.int64)), ValueError,
               r"labels must lie in \[0, 3\) for 3 classes, got values in \[0, 4294967297\]", "labels"),
          Case("float labels", lambda f=_fn: getattr(Lo, f)(Z, jnp.zeros(4)), TypeError, r"labels must have an integer dtype, got float32", "labels"),
          Case("one-hot labels", lambda f=_fn: getattr(Lo, f)(Z, jnp.zeros((4, 3), jnp.int32)), ValueError,
               r"labels must have the shape of logits without the class axis: logits \(4, 3\) needs labels \(4,\), got \(4, 3\)", "labels"))
for _fn in ("binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("target 1.5", lambda f=_fn: getattr(Lo, f)(jnp.zeros(3), jnp.array([0.0, 1.5, 1.0])), ValueError,
               r"targets must lie in \[0, 1\], got 1.5 at index 1", "targets"),
          Case("target -1 (hinge style)", lambda f=_fn: getattr(Lo, f)(jnp.zeros(3), jnp.array([-1.0, 1.0, 1.0])), ValueError,
               r"targets must lie in \[0, 1\], got -1 at index 0", "targets"),
          Case("shapes differ", lambda f=_fn: getattr(Lo, f)(jnp.zeros(3), jnp.zeros((3, 1))), ValueError,
               r"logits and targets must have the same shape", "targets"))
for _fn in ("huber", "huber_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("delta=0", lambda f=_fn: getattr(Lo, f)(Z, Z, delta=0.0), ValueError, r"delta must be finite and > 0, got 0.0", "delta"),
          Case("delta a string", lambda f=_fn: getattr(Lo, f)(Z, Z, delta="1"), TypeError, r"delta must be a real number, got '1'", "delta"),
          Case("shapes differ", lambda f=_fn: getattr(Lo, f)(Z, Z[:2]), ValueError, r"predictions and targets must have the same shape", "targets"))
for _fn in ("hinge", "hinge_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("0/1 targets", lambda f=_fn: getattr(Lo, f)(jnp.zeros(3), jnp.array([0.0, 1.0, 1.0])), ValueError,
               r"targets must be -1 or \+1 for the hinge loss, got 0.0 \(1 of 3 entries\)", "targets"),
          Case("shapes differ", lambda f=_fn: getattr(Lo, f)(jnp.zeros(3), jnp.ones(2)), ValueError, r"scores and targets must have the same shape", "targets"))


# ---------------------------------------------------------------------------
# jaxnets.initializers
# ---------------------------------------------------------------------------

I = initializers
KEY_MESSAGE = r"key must be a jax.random key: use jax.random.key\(0\) \(or split one\) instead of a bare integer seed; got "

for _fn in ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "normal", "uniform", "orthogonal"):
    cases(f"jaxnets.initializers.{_fn}",
          Case("int seed as key", lambda f=_fn: getattr(I, f)()(0, (3, 3)), TypeError, KEY_MESSAGE + "the integer 0", "key"),
          Case("float array as key", lambda f=_fn: getattr(I, f)()(jnp.zeros(2), (3, 3)), TypeError, KEY_MESSAGE + "an array of dtype float32", "key"))
for _fn in ("zeros", "ones"):
    cases(f"jaxnets.initializers.{_fn}",
          Case("int seed as key", lambda f=_fn: getattr(I, f)(7, (3,)), TypeError, KEY_MESSAGE + "the integer 7", "key"),
          Case("None as key", lambda f=_fn: getattr(I, f)(None, (3,)), TypeError, KEY_MESSAGE + "NoneType None", "key"))
cases("jaxnets.initializers.normal", Case("stddev<0", lambda: I.normal(-1.0), ValueError, r"stddev must be finite and > 0, got -1.0", "stddev"))
cases("jaxnets.initializers.uniform", Case("scale=0", lambda: I.uniform(0.0), ValueError, r"scale must be finite and > 0, got 0.0", "scale"))
cases("jaxnets.initializers.orthogonal", Case("scale a string", lambda: I.orthogonal("1"), TypeError, r"scale must be a real number, got '1'", "scale"))


# ---------------------------------------------------------------------------
# jaxnets._checks: the helpers every module uses (their messages are the library's)
# ---------------------------------------------------------------------------

C = _checks
EXEMPT["jaxnets._checks.is_traced"] = "a predicate: every value is a valid input"
cases("jaxnets._checks.positive_int",
      Case("0", lambda: C.positive_int(0, "n"), ValueError, r"n must be a positive integer, got 0", "n"),
      Case("True", lambda: C.positive_int(True, "n"), TypeError, r"n must be a positive integer, got True of type bool", "n"),
      Case("2.0", lambda: C.positive_int(2.0, "n"), TypeError, r"n must be a positive integer, got 2.0 of type float", "n"))
cases("jaxnets._checks.positive_float",
      Case("nan", lambda: C.positive_float(float("nan"), "rate"), ValueError, r"rate must be finite and > 0, got nan", "rate"),
      Case("0 without allow_zero", lambda: C.positive_float(0, "rate"), ValueError, r"rate must be finite and > 0, got 0.0", "rate"),
      Case("-1 with allow_zero", lambda: C.positive_float(-1, "rate", allow_zero=True), ValueError, r"rate must be finite and >= 0, got -1.0", "rate"),
      Case("string", lambda: C.positive_float("1", "rate"), TypeError, r"rate must be a real number, got '1' of type str", "rate"))
cases("jaxnets._checks.in_unit_interval",
      Case("1.0 (open right)", lambda: C.in_unit_interval(1.0, "p"), ValueError, r"p must be in \[0, 1\), got 1.0", "p"),
      Case("1.5 (closed right)", lambda: C.in_unit_interval(1.5, "p", closed_right=True), ValueError, r"p must be in \[0, 1\], got 1.5", "p"))
cases("jaxnets._checks.int_tuple",
      Case("wrong length", lambda: C.int_tuple((1, 2, 3), 2, "window"), ValueError, r"window must be a positive int or a sequence of 2 positive ints, got \(1, 2, 3\)", "window"),
      Case("zero entry", lambda: C.int_tuple((1, 0), 2, "window"), ValueError, r"window\[1\] must be a positive integer, got 0", "window"))
cases("jaxnets._checks.shape_tuple",
      Case("a string", lambda: C.shape_tuple("28x28", "input_shape"), TypeError, r"input_shape must be a tuple of ints \(use -1 for the batch\), got '28x28'", "input_shape"),
      Case("0 dimension", lambda: C.shape_tuple((-1, 0), "input_shape"), ValueError, r"input_shape must hold positive ints or -1 \(unknown batch\), got \(-1, 0\)", "input_shape"))
cases("jaxnets._checks.padding_mode",
      Case("'full'", lambda: C.padding_mode("full"), ValueError, r"padding must be 'SAME' or 'VALID', got 'full'", "padding"))
cases("jaxnets._checks.array_like",
      Case("a list", lambda: C.array_like([1, 2], "x"), TypeError, r"x must be an array, got list", "x"))
cases("jaxnets._checks.floating",
      Case("int32", lambda: C.floating(jnp.zeros(2, jnp.int32), "x"), TypeError, r"x must have a floating dtype, got int32", "x"))
cases("jaxnets._checks.integer",
      Case("float32", lambda: C.integer(jnp.zeros(2), "labels"), TypeError, r"labels must have an integer dtype, got float32", "labels"))
cases("jaxnets._checks.labels_in_range",
      Case("negative", lambda: C.labels_in_range(np.array([-1, 0]), 2), ValueError, r"labels must lie in \[0, 2\) for 2 classes, got values in \[-1, 0\]", "labels"),
      Case("int64 beyond int32", lambda: C.labels_in_range(np.array([0, 2**31]), 10, "y"), ValueError, r"y must lie in \[0, 10\) for 10 classes, got values in \[0, 2147483648\]", "y"))
cases("jaxnets._checks.values_in_interval",
      Case("above", lambda: C.values_in_interval(np.array([0.5, 2.0]), 0.0, 1.0, "targets"), ValueError, r"targets must lie in \[0, 1\], got 2 at index 1", "targets"),
      Case("a 0-d array", lambda: C.values_in_interval(np.float32(1.5), 0.0, 1.0, "targets"), ValueError, r"targets must lie in \[0, 1\], got 1.5 at index \(\)", "targets"))
cases("jaxnets._checks.prng_key",
      Case("int seed", lambda: C.prng_key(0, "key"), TypeError, KEY_MESSAGE + "the integer 0", "key"),
      Case("numpy int seed", lambda: C.prng_key(np.int32(3), "rng"), TypeError, r"rng must be a jax.random key: .* got the integer", "rng"),
      Case("uint32 of the wrong shape", lambda: C.prng_key(jnp.zeros(3, jnp.uint32), "key"), TypeError, KEY_MESSAGE + r"an array of dtype uint32 and shape \(3,\)", "key"))
cases("jaxnets._checks.real_number",
      Case("a string", lambda: C.real_number("0.1", "alpha"), TypeError, r"alpha must be a real number, got '0.1' of type str", "alpha"),
      Case("a vector", lambda: C.real_number(jnp.ones(2), "alpha"), TypeError, r"alpha must be a real number, got .* of type", "alpha"))
cases("jaxnets._checks.boolean",
      Case("a string", lambda: C.boolean("yes", "nesterov"), TypeError, r"nesterov must be True or False, got 'yes' of type str", "nesterov"),
      Case("an int", lambda: C.boolean(1, "train"), TypeError, r"train must be True or False, got 1 of type int", "train"))
cases("jaxnets._checks.float_array",
      Case("complex", lambda: C.float_array(jnp.ones(2, jnp.complex64), "x"), TypeError, r"x must have a floating dtype, got complex64", "x"),
      Case("a Python bool", lambda: C.float_array(True, "x"), TypeError, r"x must be an array of floats, got bool True", "x"),
      Case("a scalar when scalars are refused", lambda: C.float_array(1.0, "x", scalars=False), TypeError, r"x must be an array of floats, got float", "x"))
cases("jaxnets._checks.real_array",
      Case("complex", lambda: C.real_array(np.ones(2, np.complex128), "targets"), TypeError, r"targets must hold real numbers, got dtype complex128", "targets"))
cases("jaxnets._checks.not_empty",
      Case("no rows", lambda: C.not_empty(jnp.ones((0, 3)), "predictions"), ValueError,
           r"predictions must hold at least one element, got shape \(0, 3\) \(a mean over no elements is NaN\)", "predictions"))
cases("jaxnets._checks.dtype_like",
      Case("no dtype", lambda: C.dtype_like("fast", "mu_dtype"), TypeError, r"mu_dtype must be a dtype such as jnp.float32 or 'float32', got 'fast'", "mu_dtype"),
      Case("None", lambda: C.dtype_like(None, "dtype"), TypeError, r"dtype must be a dtype such as jnp.float32 or 'float32', got None", "dtype"),
      Case("an integer dtype where floats are needed", lambda: C.dtype_like("int8", "dtype", floating_only=True), TypeError,
           r"dtype must be a floating dtype \(float16, bfloat16, float32, float64\), got int8", "dtype"))
cases("jaxnets._checks.callable_arg",
      Case("a string", lambda: C.callable_arg("mse", "loss", "loss(outputs, targets)"), TypeError, r"loss must be callable as loss\(outputs, targets\), got 'mse'", "loss"))
cases("jaxnets._checks.axis_index",
      Case("out of range", lambda: C.axis_index(3, 2), ValueError, r"axis must be in \[-2, 2\) for an array of 2 dimensions, got 3", "axis"),
      Case("a string", lambda: C.axis_index("last", 2, "dim"), TypeError, r"dim must be an int, got 'last' of type str", "dim"))


# ---------------------------------------------------------------------------
# jaxnets.data (the files are written by the tests, in a temporary folder)
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Data cases write their files into the working directory: a fresh temporary one per test."""
    monkeypatch.chdir(tmp_path)


def _write(name, text):
    with open(name, "w") as f:
        f.write(text)
    return name


def _write_idx(name, array):
    array = np.asarray(array, np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()
    with open(name, "wb") as f:
        f.write(raw)


def _mnist(train_hw, test_hw, train_labels=None):
    os.makedirs("mnist", exist_ok=True)
    rng = np.random.default_rng(0)
    _write_idx("mnist/train-images-idx3-ubyte", rng.integers(0, 255, (4,) + train_hw))
    if train_labels is None:
        _write_idx("mnist/train-labels-idx1-ubyte", [0, 1, 2, 3])
    else:  # raw IDX bytes of another element type
        with open("mnist/train-labels-idx1-ubyte", "wb") as f:
            f.write(train_labels)
    _write_idx("mnist/t10k-images-idx3-ubyte", rng.integers(0, 255, (2,) + test_hw))
    _write_idx("mnist/t10k-labels-idx1-ubyte", [0, 1])
    return "mnist"


def _overflowing_idx():
    with open("huge", "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + (2**32 - 1).to_bytes(4, "big") * 3 + bytes(8))
    return "huge"


D = data
_TWO_CLASSES = "\n".join(f"{i},{i % 2}" for i in range(10))

cases("jaxnets.data.load_digits",
      Case("test_fraction=1.5", lambda: D.load_digits(test_fraction=1.5), ValueError, r"test_fraction must be in \[0, 1\), got 1.5", "test_fraction"),
      Case("test_fraction=0", lambda: D.load_digits(test_fraction=0.0), ValueError, r"test_fraction must be in \(0, 1\), got 0.0", "test_fraction"))
cases("jaxnets.data.make_moons",
      Case("n_samples=0", lambda: D.make_moons(0), ValueError, r"n_samples must be a positive integer, got 0", "n_samples"),
      Case("noise<0", lambda: D.make_moons(100, noise=-0.1), ValueError, r"noise must be finite and >= 0, got -0.1", "noise"))
cases("jaxnets.data.make_spirals",
      Case("too few samples", lambda: D.make_spirals(5, num_classes=3), ValueError, r"n_samples must be at least 2 per class \(6\), got 5", "n_samples"),
      Case("num_classes=0", lambda: D.make_spirals(100, num_classes=0), ValueError, r"num_classes must be a positive integer, got 0", "num_classes"))
cases("jaxnets.data.load_idx",
      Case("no such file", lambda: D.load_idx("nowhere-idx1-ubyte"), D.DataFileNotFoundError, r"path: no such file", "path"),
      Case("not IDX", lambda: D.load_idx(_write("text", "hello world")), ValueError, r"path 'text' is not an IDX file: magic number must be 0x0000", "path"),
      Case("sizes overflowing int64", lambda: D.load_idx(_overflowing_idx()), ValueError,
           r"path 'huge': IDX data truncated: header says shape \(4294967295, 4294967295, 4294967295\)", "path"))
cases("jaxnets.data.load_mnist",
      Case("no such folder", lambda: D.load_mnist("no-folder"), D.DataFileNotFoundError, r"directory: no such folder", "directory"),
      Case("28x28 train, 27x27 test", lambda: D.load_mnist(_mnist((28, 28), (27, 27))), ValueError,
           r"directory 'mnist': train and test images must have the same size, got \(28, 28\) \(train\) and \(27, 27\) \(test\)", "directory"),
      Case("float labels", lambda: D.load_mnist(_mnist((28, 28), (28, 28), bytes([0, 0, 0x0D, 1, 0, 0, 0, 4]) + np.arange(4, dtype=">f4").tobytes())),
           ValueError, r"directory 'mnist': train labels must be integers, got IDX type float32", "directory"),
      Case("negative labels", lambda: D.load_mnist(_mnist((28, 28), (28, 28), bytes([0, 0, 0x09, 1, 0, 0, 0, 4]) + np.array([0, -1, 2, 3], "i1").tobytes())),
           ValueError, r"directory 'mnist': train labels must be >= 0, got -1", "directory"))
cases("jaxnets.data.load_csv",
      Case("a nan cell", lambda: D.load_csv(_write("t.csv", _TWO_CLASSES.replace("4,0", "nan,0"))), ValueError,
           r"path 't.csv': missing value at row 4, column 0 \(counted from 0, header excluded\): 'nan'", "path"),
      Case("an empty cell", lambda: D.load_csv(_write("t.csv", _TWO_CLASSES.replace("3,1", ",1"))), ValueError,
           r"path 't.csv': missing value at row 3, column 0 .*: ''", "path"),
      Case("a label seen once", lambda: D.load_csv(_write("t.csv", _TWO_CLASSES + "\n10,9")), ValueError,
           r"path 't.csv': label 9 \(label column -1\) appears only once, at row 10", "path"),
      Case("label_column out of range", lambda: D.load_csv(_write("t.csv", _TWO_CLASSES), label_column=2), ValueError,
           r"label_column must index one of 2 columns, got 2", "label_column"),
      Case("ragged rows", lambda: D.load_csv(_write("t.csv", "1,2,0\n3,1")), ValueError,
           r"path 't.csv': rows have different numbers of columns: row 1 has 2, row 0 has 3", "path"))
cases("jaxnets.data.standardize",
      Case("features differ", lambda: D.standardize(np.zeros((4, 3)), np.zeros((2, 2))), ValueError,
           r"x_test must have x_train's features, \(3,\), got \(2,\)", "x_test"),
      Case("empty x_train", lambda: D.standardize(np.zeros((0, 3)), np.zeros((2, 3))), ValueError,
           r"x_train must hold at least one example \(rows on axis 0\), got shape \(0, 3\)", "x_train"))
cases("jaxnets.data.train_test_split",
      Case("a class seen once", lambda: D.train_test_split(np.zeros((5, 2)), np.array([0, 0, 1, 1, 2])), ValueError,
           r"y: class 2 has 1 example; a stratified split needs at least 2 examples of every class", "y"),
      Case("lengths differ", lambda: D.train_test_split(np.zeros((5, 2)), np.zeros(4, int)), ValueError,
           r"x and y must hold one example per row of y: x \(5, 2\), y \(4,\)", "y"),
      Case("test part too small", lambda: D.train_test_split(np.zeros((10, 1)), np.repeat(np.arange(5), 2), test_fraction=0.1), ValueError,
           r"test_fraction 0.1 puts 1 of 10 examples in the test part; a stratified split of 5 classes needs between 5 and 5", "test_fraction"))


# ---------------------------------------------------------------------------
# jaxnets.layers: constructors, and what every layer's methods refuse
# ---------------------------------------------------------------------------

K = jax.random.key(0)
LAYER_KEY = r"key must be a jax.random key: use jax.random.key\(0\)"


def _dense_params(width=3, features=4):
    return L.Dense(width).init(K, (-1, features))[1]


def _method_cases(name, make, shape):
    """What every layer's init and apply refuse: an int key, a shape that is no shape, a train flag that is no bool."""
    return [
        Case("init with an int key", lambda: make().init(0, shape), TypeError, LAYER_KEY, "key"),
        Case("input_shape a string", lambda: make().init(K, "4"), TypeError, r"input_shape must be a tuple of ints", "input_shape"),
        Case("train not a bool", lambda: make().apply(make().init(K, shape)[1], jnp.ones(tuple(2 if d == -1 else d for d in shape)), train="yes"),
             TypeError, r"train must be a bool, got 'yes'", "train"),
    ]


_CONSTRUCTOR_CASES = {
    "Dense": [Case("zero features", lambda: L.Dense(0), ValueError, r"out_features must be a positive integer, got 0", "out_features"),
              Case("w_init not callable", lambda: L.Dense(3, w_init=1.0), TypeError, r"w_init must be an initializer", "w_init"),
              Case("params of another width", lambda: L.Dense(4).apply(_dense_params(3), jnp.ones((2, 4))), ValueError,
                   r"(?s)the params do not match.*params b: expected shape \(4,\), got \(3,\)", "params"),
              Case("input of another width", lambda: L.Dense(3).apply(_dense_params(3, 4), jnp.ones((2, 5))), ValueError,
                   r"expects inputs with last dimension 4 .*got x of shape \(2, 5\)", "x"),
              Case("integer params", lambda: L.Dense(3).apply({"w": jnp.ones((4, 3), jnp.int32), "b": jnp.ones(3, jnp.int32)}, jnp.ones((2, 4))),
                   ValueError, r"params b: expected dtype float32, got int32", "params")],
    "Conv": [Case("kernel_size an int", lambda: L.Conv(3, 3), ValueError, r"kernel_size must be a sequence of 1 to 3 ints", "kernel_size"),
             Case("padding unknown", lambda: L.Conv(3, (3, 3), padding="full"), ValueError, r"padding must be 'SAME' or 'VALID', got 'full'", "padding"),
             Case("impl unknown", lambda: L.Conv(3, (3,), impl="cudnn"), ValueError, r"impl must be one of", "impl")],
    "Conv1D": [Case("zero kernel", lambda: L.Conv1D(3, 0), ValueError, r"kernel_size\[0\] must be a positive integer, got 0", "kernel_size")],
    "Conv2D": [Case("zero stride", lambda: L.Conv2D(3, 3, strides=0), ValueError, r"strides\[0\] must be a positive integer, got 0", "strides"),
               Case("input of rank 3", lambda: L.Conv2D(3, 3).apply(L.Conv2D(3, 3).init(K, (-1, 5, 5, 1))[1], jnp.ones((5, 5, 1))),
                    ValueError, r"expects input of rank 4, got x of shape \(5, 5, 1\)", "x")],
    "ConvTranspose": [Case("zero channels", lambda: L.ConvTranspose(0, (3, 3)), ValueError, r"out_channels must be a positive integer", "out_channels")],
    "ConvTranspose2D": [Case("zero kernel", lambda: L.ConvTranspose2D(2, 0), ValueError, r"kernel_size\[0\] must be a positive integer", "kernel_size")],
    "Embedding": [Case("float ids", lambda: L.Embedding(5, 2).apply(L.Embedding(5, 2).init(K, (-1,))[1], jnp.ones(3)), TypeError,
                       r"input x must have an integer dtype, got float32", "x"),
                  Case("ids out of range", lambda: L.Embedding(5, 2).apply(L.Embedding(5, 2).init(K, (-1,))[1], jnp.array([-1, 0])),
                       ValueError, r"ids must lie in \[0, 5\)", "ids"),
                  Case("int64 ids beyond int32", lambda: L.Embedding(5, 2).apply(L.Embedding(5, 2).init(K, (-1,))[1], np.array([2**33])),
                       ValueError, r"8589934592", "ids")],
    "LayerNorm": [Case("zero eps", lambda: L.LayerNorm(eps=0), ValueError, r"eps must be finite and > 0, got 0.0", "eps"),
                  Case("params of another width", lambda: L.LayerNorm().apply(L.LayerNorm().init(K, (-1, 6))[1], jnp.ones((2, 4))),
                       ValueError, r"params scale: expected shape \(4,\), got \(6,\)", "params")],
    "BatchNorm": [Case("momentum 1", lambda: L.BatchNorm(momentum=1.0), ValueError, r"momentum must be in \[0, 1\), got 1.0", "momentum"),
                  Case("apply without state", lambda: L.BatchNorm().apply(L.BatchNorm().init(K, (-1, 3))[1], jnp.ones((2, 3))),
                       ValueError, r"keeps running statistics as state: build with init_with_state", "state")],
    "MaxPool": [Case("zero window", lambda: L.MaxPool(0), ValueError, r"window_shape\[0\] must be a positive integer, got 0", "window_shape"),
                Case("window larger than the input", lambda: L.MaxPool(4).init(K, (-1, 3, 3, 1)), ValueError,
                     r"window 4 is larger than the input size 3 with padding 'VALID'", "window")],
    "AvgPool": [Case("four spatial axes", lambda: L.AvgPool((2, 2, 2, 2)), ValueError, r"window_shape must be an int \(2-D\) or a sequence of 1 to 3 ints", "window_shape")],
    "GlobalAvgPool": [Case("input without spatial axes", lambda: L.GlobalAvgPool().init(K, (-1, 4)), ValueError,
                           r"GlobalAvgPool\(\) expects an input_shape of rank >= 3, got \(-1, 4\)", "input_shape")],
    "GlobalMaxPool": [Case("input without spatial axes", lambda: L.GlobalMaxPool().apply({}, jnp.ones((2, 4))), ValueError,
                           r"GlobalMaxPool\(\) expects input of rank >= 3, got x of shape \(2, 4\)", "x")],
    "Flatten": [Case("unknown feature size", lambda: L.Flatten().init(K, (-1, -1, 3)), ValueError, r"needs known sizes beyond the batch axis", "input_shape")],
    "Reshape": [Case("zero size", lambda: L.Reshape((0, 2)), ValueError, r"shape must be a tuple of positive ints \(one may be -1\), got \(0, 2\)", "shape"),
                Case("sizes that do not divide", lambda: L.Reshape((3, -1)).init(K, (-1, 5)), ValueError,
                     r"cannot reshape an example of shape \(5,\) \(5 entries\) to \(3, -1\)", "shape")],
    "Dropout": [Case("drop_prob 1", lambda: L.Dropout(1.0), ValueError, r"drop_prob must be in \[0, 1\), got 1.0", "drop_prob"),
                Case("training without a key", lambda: L.Dropout(0.5).apply({}, jnp.ones(3), train=True), ValueError,
                     r"is random in training: pass key=\.\.\. to apply", "key"),
                Case("an int key", lambda: L.Dropout(0.5).apply({}, jnp.ones(3), key=1, train=True), TypeError, LAYER_KEY, "key")],
    "Elementwise": [Case("fn not callable", lambda: L.Elementwise("relu"), TypeError, r"fn must be callable, got 'relu'", "fn"),
                    Case("vjp not callable", lambda: L.Elementwise(jnp.sin, vjp=3), TypeError, r"vjp must be callable", "vjp"),
                    Case("fn changes the shape", lambda: L.Elementwise(lambda x: x[:, 0], "first").apply({}, jnp.ones((2, 3))), ValueError,
                         r"First\(\) must keep the shape of its input .* use Lambda\(fn\)", "fn")],
    "Lambda": [Case("fn not callable", lambda: L.Lambda(3), TypeError, r"fn must be callable, got 3", "fn"),
               Case("backward not callable", lambda: L.Lambda(jnp.sin, backward="auto"), TypeError, r"backward must be callable", "backward")],
    "serial": [Case("a function instead of a layer", lambda: L.serial(L.Dense(3), jnp.tanh), TypeError,
                    r"serial: argument 1 must be a Layer, got .*did you forget to call it", "argument 1"),
               Case("no layers", lambda: L.serial(), ValueError, r"serial needs at least one layer, got none", "layer"),
               Case("params of a narrower model", lambda: L.serial(L.Dense(32), L.Dense(2)).apply(
                   L.serial(L.Dense(8), L.Dense(2)).init(K, (-1, 4))[1], jnp.ones((2, 4))), ValueError,
                    r"params dense_0/w: expected shape \(4, 32\), got \(4, 8\)", "params"),
               Case("an unknown params entry", lambda: L.serial(L.Dense(3)).apply({"dense_9": {}}, jnp.ones((2, 4))), ValueError,
                    r"params has entries \['dense_9'\] that match no layer", "params")],
    "parallel": [Case("an array for a tuple", lambda: L.parallel(L.Dense(2), L.Dense(2)).apply({}, jnp.ones((2, 3))), ValueError,
                      r"expects the input to be a tuple of 2 items, one per layer, got ArrayImpl", "input")],
    "residual": [Case("a body that changes the shape", lambda: L.residual(L.Dense(5)).init(K, (-1, 3)), ValueError,
                      r"the body must keep the input shape \(-1, 3\), but it gives \(-1, 5\)", "input shape")],
    "FanOut": [Case("zero copies", lambda: L.FanOut(0), ValueError, r"num must be a positive integer, got 0", "num")],
    "FanInSum": [Case("inputs of two shapes", lambda: L.FanInSum().init(K, ((-1, 3), (-1, 2))), ValueError, r"needs inputs of one shape", "shape")],
    "FanInConcat": [Case("axis out of range", lambda: L.FanInConcat(5).init(K, ((-1, 3), (-1, 2))), ValueError,
                         r"with axis 5 in range", "axis")],
    "define_layer": [Case("a name with a space", lambda: L.define_layer("my layer", lambda k, s: {}, lambda p, x: x), ValueError,
                          r"name must be an identifier-like string", "name"),
                     Case("apply not callable", lambda: L.define_layer("mine", lambda k, s: {}, None), TypeError, r"apply must be callable", "apply"),
                     Case("init and apply disagree", lambda: L.define_layer("proj", lambda k, s: {"w": jnp.ones((s[-1], 2))},
                                                                            lambda p, x: x @ p["w"].T).init(K, (-1, 3)), ValueError,
                          r"Proj\(\): could not infer the output shape", "output_shape"),
                     Case("a stateful init without state", lambda: L.define_layer("mine", lambda k, s: {}, lambda p, s, x: (x, s), stateful=True).init(K, (-1, 3)),
                          TypeError, r"Mine\(\): a stateful init must return \(params, state\), got dict", "init"),
                     Case("a rule of the wrong structure", lambda: L.define_layer(
                         "scale", lambda k, s: {"s": jnp.ones(s[-1:])}, lambda p, x: x * p["s"],
                         backward=lambda p, x, y_bar: ({"t": y_bar}, y_bar)).backward({"s": jnp.ones(3)}, {}, jnp.ones((2, 3)), jnp.ones((2, 3))),
                          ValueError, r"(?s)backward returned cotangents that do not match.*params_bar s: missing", "params_bar")],
    "check_params": [Case("not a layer", lambda: L.check_params(3, {}, jnp.ones(3)), TypeError, r"model must be a jaxnets Layer, got int", "model")],
    "require_rule": [Case("a layer without a rule", lambda: L.require_rule(L.serial(L.Dense(2), L.Elementwise(jnp.sin, "sin"))), ValueError,
                          r"sin_0: Sin\(\) has no hand-derived backward rule", "sin_0")],
    "count_params": [Case("not a pytree of arrays", lambda: L.count_params({"w": "abc"}), TypeError, r"params leaves must be arrays, got str at w", "params")],
}
_MHA = L.MultiHeadAttention(2, mask_input=True)
_CONSTRUCTOR_CASES.update({
    "MultiHeadAttention": [
        Case("heads not dividing the width", lambda: L.MultiHeadAttention(3).init(K, (-1, 5, 8)), ValueError,
             r"num_heads=3 does not divide the model width 8", "num_heads"),
        Case("a mask that does not broadcast", lambda: _MHA.apply(_MHA.init(K, ((-1, 5, 8), (-1, 1, 5, 4)))[1],
                                                                  (jnp.ones((2, 5, 8)), jnp.ones((2, 1, 5, 4), bool))), ValueError,
             r"mask of shape \(2, 1, 5, 4\) does not broadcast to the attention scores", "mask"),
        Case("an empty sequence", lambda: L.MultiHeadAttention(2).apply(L.MultiHeadAttention(2).init(K, (-1, 5, 8))[1], jnp.ones((2, 0, 8))),
             ValueError, r"sequences must not be empty, got x of shape \(2, 0, 8\)", "x")],
    "dot_product_attention": [
        Case("q without heads", lambda: L.dot_product_attention(jnp.ones((3, 4)), jnp.ones((5, 4)), jnp.ones((5, 4))), ValueError,
             r"q must have shape \(\.\.\., length, heads, head_dim\), got \(3, 4\)", "q"),
        Case("a mask that does not broadcast", lambda: L.dot_product_attention(jnp.ones((1, 3, 1, 4)), jnp.ones((1, 5, 1, 4)),
                                                                               jnp.ones((1, 5, 1, 4)), jnp.ones((1, 1, 3, 4), bool)),
             ValueError, r"mask of shape \(1, 1, 3, 4\) does not broadcast", "mask")],
    "causal_mask": [Case("zero queries", lambda: L.causal_mask(0), ValueError, r"num_queries must be a positive integer, got 0", "num_queries")],
    "padding_mask": [Case("a float array", lambda: L.padding_mask(jnp.ones(3)), TypeError, r"valid must be a boolean array", "valid")],
    "SimpleRNN": [Case("zero hidden units", lambda: L.SimpleRNN(0), ValueError, r"hidden must be a positive integer, got 0", "hidden")],
    "LSTM": [Case("an unknown initial state", lambda: L.LSTM(4, initial_state="random"), ValueError,
                  r"initial_state must be one of \('zeros', 'learned', 'input'\), got 'random'", "initial_state"),
             Case("an initial state of the wrong shape", lambda: (lambda m: m.apply(m.init(K, ((-1, 5, 3), (-1, 4), (-1, 4)))[1],
                                                                                  (jnp.ones((2, 5, 3)), jnp.ones((2, 3)), jnp.ones((2, 4)))))(
                 L.LSTM(4, initial_state="input")), ValueError, r"h0 must have shape \(2, 4\) .*got \(2, 3\)", "h0")],
    "GRU": [Case("zero truncation", lambda: L.GRU(4, truncate=0), ValueError, r"truncate must be a positive integer, got 0", "truncate")],
    "SequencePool": [Case("an unknown mode", lambda: L.SequencePool("max"), ValueError, r"mode must be one of \('mean', 'last'\), got 'max'", "mode")],
    "PositionalEmbedding": [Case("a sequence longer than max_length", lambda: L.PositionalEmbedding(4).init(K, (-1, 5, 3)), ValueError,
                                 r"sequences of length 5 are longer than max_length=4", "max_length")],
    "SinusoidalEncoding": [Case("an input without positions", lambda: L.SinusoidalEncoding().apply({}, jnp.ones(3)), ValueError,
                                r"expects input of rank >= 2, got x of shape \(3,\)", "x")],
    "RotaryEmbedding": [Case("an odd width", lambda: L.RotaryEmbedding().init(K, (-1, 5, 3)), ValueError, r"the last axis must be even", "input_shape")],
    "rotary_embedding": [Case("an odd width", lambda: L.rotary_embedding(jnp.ones((1, 5, 3))), ValueError, r"the last axis must be even", "x")],
    "sinusoidal_encoding": [Case("a negative length", lambda: L.sinusoidal_encoding(-1, 4), ValueError, r"length must be a positive integer, got -1", "length")],
    "TransformerBlock": [Case("heads not dividing the width", lambda: L.TransformerBlock(6, 4).init(K, (-1, 5, 6)), ValueError,
                              r"num_heads=4 does not divide features=6", "num_heads")],
})
for _name, _items in _CONSTRUCTOR_CASES.items():
    cases(f"jaxnets.layers.{_name}", *_items)
cases("jaxnets.layers.Dense", *_method_cases("Dense", lambda: L.Dense(3), (-1, 4)))
cases("jaxnets.layers.serial", *_method_cases("serial", lambda: L.serial(L.Dense(3), L.Relu()), (-1, 4)))
for _name in ("Relu", "LeakyRelu", "Elu", "Gelu", "Sigmoid", "Tanh", "Softplus", "Silu", "Softmax", "LogSoftmax", "Identity"):
    cases(f"jaxnets.layers.{_name}", Case("a list instead of an array", lambda _n=_name: getattr(L, _n)().apply({}, [1.0, 2.0]), TypeError,
                                          r"input x must be an array, got list", "x"))
cases("jaxnets.layers.LeakyRelu", Case("negative slope", lambda: L.LeakyRelu(-0.1), ValueError, r"negative_slope must be finite and >= 0", "negative_slope"))
cases("jaxnets.layers.Elu", Case("zero alpha", lambda: L.Elu(0.0), ValueError, r"alpha must be finite and > 0", "alpha"))
# arguments that int(...)/float(...)/bool(...) used to coerce (a list: an unnamed TypeError; 1.5: 1 silently; "no": True)
for _name in ("Softmax", "LogSoftmax", "FanInConcat"):
    cases(f"jaxnets.layers.{_name}",
          Case("axis a list", lambda _n=_name: getattr(L, _n)(axis=[3]), TypeError, r"axis must be an int, got \[3\] of type list", "axis"),
          Case("axis a float", lambda _n=_name: getattr(L, _n)(axis=1.5), TypeError, r"axis must be an int, got 1.5 of type float", "axis"),
          Case("axis a bool", lambda _n=_name: getattr(L, _n)(axis=True), TypeError, r"axis must be an int, got True of type bool", "axis"))
for _flag in ("causal", "cross", "mask_input", "rotary"):
    cases("jaxnets.layers.MultiHeadAttention",
          Case(f"{_flag} a string", lambda f=_flag: L.MultiHeadAttention(2, **{f: "yes"}), TypeError, rf"{_flag} must be True or False, got 'yes'", _flag))
cases("jaxnets.layers.Gelu",
      Case("approximate a string", lambda: L.Gelu("tanh"), TypeError, r"approximate must be True or False, got 'tanh'", "approximate"))
cases("jaxnets.layers.PReLU",
      Case("init a string", lambda: L.PReLU("0.25"), TypeError, r"init must be a real number, got '0.25'", "init"),
      Case("init a list", lambda: L.PReLU([0.25]), TypeError, r"init must be a real number, got \[0.25\]", "init"),
      Case("init NaN", lambda: L.PReLU(float("nan")), ValueError, r"init must be a finite number, got nan", "init"))
for _name in ("LSTM", "LSTMCell"):
    cases(f"jaxnets.layers.{_name}",
          Case("forget_bias a string", lambda _n=_name: getattr(L, _n)(4, forget_bias="1"), TypeError, r"forget_bias must be a real number, got '1'", "forget_bias"),
          Case("forget_bias complex", lambda _n=_name: getattr(L, _n)(4, forget_bias=1j), TypeError, r"forget_bias must be a real number, got 1j", "forget_bias"),
          Case("forget_bias infinite", lambda _n=_name: getattr(L, _n)(4, forget_bias=float("inf")), ValueError,
               r"forget_bias must be a finite number, got inf", "forget_bias"))
cases("jaxnets._checks.int_value",
      Case("a float", lambda: _checks.int_value(2.0, "axis"), TypeError, r"axis must be an int, got 2.0 of type float", "axis"),
      Case("a bool", lambda: _checks.int_value(False, "axis"), TypeError, r"axis must be an int, got False", "axis"))
cases("jaxnets._checks.finite_real",
      Case("an array", lambda: _checks.finite_real(np.ones(2), "init"), TypeError, r"init must be a real number", "init"),
      Case("NaN", lambda: _checks.finite_real(float("nan"), "init"), ValueError, r"init must be a finite number, got nan", "init"))


# ---------------------------------------------------------------------------
# jaxnets.gradcheck, backprop, debug, porting
# ---------------------------------------------------------------------------

cases("jaxnets.gradcheck.check_layer",
      Case("not a layer", lambda: gradcheck.check_layer(3, (2, 4)), TypeError, r"layer must be a jaxnets Layer, got int", "layer"),
      Case("a shape with -1", lambda: gradcheck.check_layer(L.Dense(3), (-1, 4)), ValueError,
           r"x must be an array or a concrete input shape of positive sizes \(no -1, no 0\), got \(-1, 4\)", "x"),
      Case("a layer without a rule", lambda: gradcheck.check_layer(L.Elementwise(jnp.sin, "sin"), (2, 4)), ValueError,
           r"Sin\(\) has no hand-derived backward rule", "backward"))
cases("jaxnets.gradcheck.dtype_tolerance",
      Case("an integer dtype", lambda: gradcheck.dtype_tolerance("int32", 8), ValueError, r"dtype must be a floating dtype such as 'bfloat16', got int32", "dtype"),
      Case("no reduction", lambda: gradcheck.dtype_tolerance("bfloat16", 0), ValueError, r"reduction must be a positive int", "reduction"))
cases("jaxnets.precision.get_policy",
      Case("an unknown name", lambda: precision.get_policy("fp8"), ValueError, r"policy must be a Policy or one of", "policy"),
      Case("integer compute", lambda: precision.get_policy("int8"), ValueError, r"cannot compute in int8", "policy"))
cases("jaxnets.precision.with_policy",
      Case("not a layer", lambda: precision.with_policy(jnp.tanh), TypeError, r"model must be a jaxnets Layer", "model"),
      Case("an override to an integer dtype", lambda: precision.with_policy(L.Dense(2), overrides={"dense": "int32"}), ValueError,
           r"overrides\['dense'\] must be a floating dtype", "overrides"),
      Case("params already in bfloat16", lambda: precision.with_policy(L.Dense(2), "bfloat16").apply(
          precision.cast_floating(L.Dense(2).init(K, (-1, 3))[1], jnp.bfloat16), jnp.ones((1, 3))), ValueError,
           r"keeps params in float32 \(master weights\), but params b is bfloat16", "params"))
cases("jaxnets.precision.loss_scaling",
      Case("an unknown scale", lambda: precision.loss_scaling(optim.sgd(0.1), "fast"), ValueError,
           r"scale must be 'dynamic', a positive number \(static\) or None, got 'fast'", "scale"),
      Case("a negative static scale", lambda: precision.loss_scaling(optim.sgd(0.1), -2.0), ValueError,
           r"scale must be positive and finite, got -2.0", "scale"),
      Case("growth that shrinks", lambda: precision.loss_scaling(optim.sgd(0.1), growth_factor=0.5), ValueError,
           r"growth_factor must be > 1, got 0.5", "growth_factor"),
      Case("a zero growth interval", lambda: precision.loss_scaling(optim.sgd(0.1), growth_interval=0), ValueError,
           r"growth_interval must be a positive int, got 0", "growth_interval"),
      Case("init outside the range", lambda: precision.loss_scaling(optim.sgd(0.1), init_scale=2.0 ** 30), ValueError,
           r"init_scale must lie in \[min_scale, max_scale\]", "init_scale"),
      Case("not an optimizer", lambda: precision.loss_scaling(jnp.tanh), TypeError,
           r"optimizer must be an optax.GradientTransformation", "optimizer"),
      Case("another optimizer's state", lambda: precision.loss_scaling(optim.sgd(0.1)).update(
          {"w": jnp.ones(2)}, optim.sgd(0.1).init({"w": jnp.ones(2)})), TypeError,
           r"loss_scaling's update needs its own LossScaleState", "state"))
cases("jaxnets.precision.loss_scale_of",
      Case("a scale nested in a chain", lambda: precision.loss_scale_of(optax.chain(
          precision.loss_scaling(optim.sgd(0.1)), optim.sgd(0.1)).init({"w": jnp.ones(2)})), TypeError,
           r"loss_scaling must wrap the whole optimizer", "optimizer"))
cases("jaxnets.precision.underflowing_layers",
      Case("not a layer", lambda: precision.underflowing_layers(jnp.tanh, None, {}, jnp.ones((1, 2)), jnp.ones(1)), TypeError,
           r"model must be a jaxnets Layer", "model"),
      Case("a threshold above one", lambda: precision.underflowing_layers(L.Dense(2), None, {}, jnp.ones((1, 2)), jnp.ones(1),
                                                                          threshold=2.0), ValueError,
           r"threshold must lie in \(0, 1\], got 2.0", "threshold"))
cases("jaxnets.precision.warn_underflow",
      Case("not a layer", lambda: precision.warn_underflow(jnp.tanh, None, {}, jnp.ones((1, 2)), jnp.ones(1)), TypeError,
           r"model must be a jaxnets Layer", "model"))
cases("jaxnets.precision.for_training",
      Case("precision with an objective", lambda: precision.for_training(L.Dense(2), optim.sgd(0.1), "bfloat16",
                                                                         loss_mode=False), TypeError,
           r"precision= goes with loss", "precision"),
      Case("a loss scale of another type", lambda: precision.for_training(L.Dense(2), optim.sgd(0.1), None, [2.0]),
           TypeError, r"loss_scale must be 'auto', 'dynamic', a positive number or None, got \[2.0\]", "loss_scale"),
      Case("a scale for a wrapped optimizer", lambda: precision.for_training(
          L.Dense(2), precision.loss_scaling(optim.sgd(0.1)), "float16", "dynamic"), ValueError,
           r"optimizer is already wrapped in precision.loss_scaling", "loss_scale"),
      Case("an unknown policy", lambda: precision.for_training(L.Dense(2), optim.sgd(0.1), "fp8"), ValueError,
           r"policy must be a Policy or one of", "policy"))
cases("jaxnets.precision.check_scaling_matches",
      Case("a plain state for a scaled optimizer", lambda: precision.check_scaling_matches(
          precision.loss_scaling(optim.sgd(0.1)), optim.sgd(0.1).init({"w": jnp.ones(2)})), ValueError,
           r"state.opt_state was made without loss scaling, but this fit scales the loss", "opt_state"))
EXEMPT["jaxnets.precision.scaled_objective"] = "wraps any callable; the scale is traced (a number or an array), so nothing to check before the call"
cases("jaxnets.precision.cast_floating",
      Case("a dtype that is no dtype", lambda: precision.cast_floating({"w": jnp.ones(2)}, "fast"), TypeError, r"dtype must be a dtype", "dtype"))
cases("jaxnets.gradcheck.check_grads",
      Case("a loss that is not scalar", lambda: gradcheck.check_grads(lambda p: p, lambda p: p * 2, jnp.ones(3), dtypes=("float32",),
                                                                      finite_differences=False), ValueError,
           r"loss_fn must return a scalar, got shape \(3,\)", "loss_fn"))
cases("jaxnets.gradcheck.assert_grads_close",
      Case("a loss that is not scalar", lambda: gradcheck.assert_grads_close(lambda p: p, lambda p: p * 2, jnp.ones(3), dtypes=("float32",),
                                                                             finite_differences=False), ValueError,
           r"loss_fn must return a scalar", "loss_fn"))
for _fn in ("grad", "value_and_grad", "hand_gradients"):
    cases(f"jaxnets.backprop.{_fn}", Case("not a layer", lambda _f=_fn: getattr(backprop, _f)(jnp.tanh, *( () if _f == "hand_gradients" else (losses.mean_squared_error,))),
                                          TypeError, r"model must be a jaxnets Layer, got PjitFunction", "model"))
cases("jaxnets.backprop.grad", Case("a loss without a rule", lambda: backprop.grad(L.Dense(2), lambda o, t: jnp.sum(o)), ValueError,
                                    r"has no hand-derived gradient \(loss.backward\); pass loss_grad=", "loss_grad"))
cases("jaxnets.backprop.vjp", Case("a layer without a rule", lambda: backprop.vjp(L.Lambda(jnp.sin) if False else L.Elementwise(jnp.sin, "sin"), {}, jnp.ones(2)),
                                   ValueError, r"has no hand-derived backward rule", "backward"))
cases("jaxnets.backprop.loss_gradient", Case("loss_grad not callable", lambda: backprop.loss_gradient(losses.mean_squared_error, 3), TypeError,
                                             r"loss_grad must be callable", "loss_grad"))
cases("jaxnets.debug.locate_nonfinite",
      Case("not a layer", lambda: debug.locate_nonfinite(jnp.tanh, {}, jnp.ones(2)), TypeError, r"model must be a jaxnets Layer", "model"),
      Case("a loss without targets", lambda: debug.locate_nonfinite(L.Dense(2), {}, jnp.ones((1, 2)), loss=losses.mean_squared_error),
           ValueError, r"loss needs the targets: pass y=", "y"))
cases("jaxnets.porting.from_stax",
      Case("a list of another length", lambda: porting.from_stax(L.serial(L.Dense(3), L.Relu()), [(jnp.ones((4, 3)), jnp.ones(3))], (2, 4)),
           ValueError, r"stax params of a serial need one entry per layer \(2\), got 1 entries", "params"),
      Case("input_shape not a tuple", lambda: porting.from_stax(L.Dense(3), (1, 2), [2, 4]), TypeError, r"input_shape must be a tuple", "input_shape"))
cases("jaxnets.porting.from_flax",
      Case("no params collection", lambda: porting.from_flax(L.Dense(3), {"weights": {}}, (2, 4)), ValueError,
           r"variables must be flax variables with a 'params' collection", "variables"),
      Case("a module left over", lambda: porting.from_flax(L.serial(L.Dense(3)), {"params": {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
                                                                                         "Dense_1": {"kernel": jnp.ones((3, 2))}}}, (2, 4)),
           ValueError, r"no layer of the model takes: \['Dense_1'\]", "Dense_1"))

cases("jaxnets.streaming.from_arrays",
      Case("no arrays", lambda: streaming.from_arrays(), TypeError, r"from_arrays needs arrays", "from_arrays"),
      Case("a jax.Array", lambda: streaming.from_arrays(jnp.ones((4, 2)), np.ones(4)), TypeError,
           r"data\[0\] must be a NumPy array in host memory or a memory-mapped file .* got a jax.Array", "data"),
      Case("a list", lambda: streaming.from_arrays([[1.0, 2.0]], np.ones(1)), TypeError,
           r"data\[0\]\[0\]\[0\] must be a NumPy array \(np.ndarray, np.memmap, np.load\(path, mmap_mode='r'\)\), got float", "data"),
      Case("0 examples", lambda: streaming.from_arrays(np.ones((0, 2)), np.ones(0)), ValueError, r"data is empty \(0 examples\)", "data"),
      Case("lengths differ", lambda: streaming.from_arrays(np.ones((4, 2)), np.ones(3)), ValueError,
           r"data arrays must have the same number of examples", "data"),
      Case("strings", lambda: streaming.from_arrays(np.array(["a", "b"]), np.ones(2)), TypeError, r"data\[0\] must hold numbers", "data"),
      Case("steps_per_chunk 0", lambda: streaming.from_arrays(np.ones((4, 2)), np.ones(4), steps_per_chunk=0), ValueError,
           r"steps_per_chunk must be a positive int", "steps_per_chunk"),
      Case("sharding not a Sharding", lambda: streaming.from_arrays(np.ones((4, 2)), np.ones(4), sharding="data"), TypeError,
           r"sharding must be a jax.sharding.Sharding of the \(steps, batch, ...\) chunk", "sharding"))
cases("jaxnets.streaming.from_source",
      Case("no __getitem__", lambda: streaming.from_source(iter([(1.0, 2)])), TypeError,
           r"source must be a random-access data source with __len__ and __getitem__", "source"),
      Case("0 records", lambda: streaming.from_source([]), ValueError, r"source is empty \(0 records\)", "source"),
      Case("records of strings", lambda: streaming.from_source([{"text": "hi"}]), TypeError,
           r"source records must be pytrees of arrays or numbers, but record 0 holds str 'hi' at field text", "source"))


# ---------------------------------------------------------------------------
# jaxnets.distributed: meshes, shardings, processes (multi-device cases in tests/test_distributed.py)
# ---------------------------------------------------------------------------

_MODEL_MESH = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
cases("jaxnets.distributed.data_mesh",
      Case("no devices", lambda: distributed.data_mesh([]), ValueError, r"devices must hold at least one jax device", "devices"),
      Case("not devices", lambda: distributed.data_mesh(["cpu:0"]), TypeError, r"devices must be jax devices .*got 'cpu:0'", "devices"),
      Case("a device twice", lambda: distributed.data_mesh(jax.devices()[:1] * 2), ValueError, r"devices must be distinct", "devices"),
      Case("an empty axis name", lambda: distributed.data_mesh(axis=""), TypeError, r"axis must be a non-empty string", "axis"))
cases("jaxnets.distributed.as_mesh",
      Case("a mesh without the axis", lambda: distributed.as_mesh(_MODEL_MESH), ValueError,
           r"mesh has no axis 'data' \(data_axis\): its axes are \('model',\)", "data_axis"),
      Case("an explicit axis", lambda: distributed.as_mesh(jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))),
           ValueError, r"mesh axis 'data' must be AxisType.Auto", "AxisType.Auto"),
      Case("a string", lambda: distributed.as_mesh("gpu"), TypeError, r"mesh must be a jax.sharding.Mesh or a list of jax devices, got str", "mesh"))
cases("jaxnets.distributed.fsdp_spec",
      Case("size 0", lambda: distributed.fsdp_spec((4, 4), 0), ValueError, r"size must be a positive int .*got 0", "size"),
      Case("a shape of floats", lambda: distributed.fsdp_spec((4.0, 4), 2), TypeError, r"shape must be a sequence of non-negative ints", "shape"))
cases("jaxnets.distributed.state_shardings",
      Case("an unknown rule", lambda: distributed.state_shardings(P44, jax.devices(), "zero3"), ValueError,
           r"param_sharding must be one of \('replicated', 'fsdp'\) or a callable leaf -> PartitionSpec, got 'zero3'", "param_sharding"),
      Case("a mesh without the axis", lambda: distributed.state_shardings(P44, _MODEL_MESH), ValueError, r"mesh has no axis 'data'", "data"))
cases("jaxnets.distributed.shard",
      Case("shardings of another structure", lambda: distributed.shard(P44, {"v": distributed.state_shardings(P44["w"], jax.devices())}),
           ValueError, r"shardings must have the structure of tree .*\n  tree: PyTreeDef\(\{'w': \*\}\)", "shardings"),
      Case("specs instead of shardings", lambda: distributed.shard(P44, {"w": jax.sharding.PartitionSpec()}), TypeError,
           r"shardings must hold jax.sharding.Sharding leaves", "shardings"))
cases("jaxnets.distributed.shard_batch",
      Case("a scalar batch", lambda: distributed.shard_batch(jnp.ones(()), jax.devices()), ValueError,
           r"batch size must be divisible by the 1 devices of mesh axis 'data', got a leaf of shape \(\)", "batch size"),
      Case("no arrays", lambda: distributed.shard_batch({}, jax.devices()), ValueError, r"batch holds no arrays", "batch"))
cases("jaxnets.distributed.param_bytes_per_device",
      Case("numpy leaves", lambda: distributed.param_bytes_per_device({"w": np.ones(3)}), TypeError,
           r"param_bytes_per_device needs a pytree of jax arrays \(placed ones\), got a leaf of type ndarray", "ndarray"))
cases("jaxnets.distributed.initialize",
      Case("nothing given", lambda: distributed.initialize(), ValueError,
           r"initialize needs coordinator_address \(JAXNETS_COORDINATOR\), num_processes \(JAXNETS_NUM_PROCESSES\), process_id", "coordinator_address"),
      Case("an address without a port", lambda: distributed.initialize("localhost", 2, 0), ValueError,
           r"coordinator_address must be 'host:port' \(e.g. 'localhost:12345'\), got 'localhost'", "coordinator_address"),
      Case("process id out of range", lambda: distributed.initialize("localhost:1234", 2, 2), ValueError,
           r"process_id must be in \[0, num_processes\) = \[0, 2\), got 2", "process_id"),
      Case("no processes", lambda: distributed.initialize("localhost:1234", 0, 0), ValueError, r"num_processes must be >= 1, got 0", "num_processes"),
      Case("a float count", lambda: distributed.initialize("localhost:1234", 2.0, 0), TypeError, r"num_processes must be an int, got 2.0", "num_processes"),
      Case("a bad env var", lambda: _with_env({"JAXNETS_NUM_PROCESSES": "two"}, lambda: distributed.initialize("localhost:1234", None, 0)),
           ValueError, r"num_processes from the environment variable JAXNETS_NUM_PROCESSES must be an int, got 'two'", "JAXNETS_NUM_PROCESSES"))
cases("jaxnets.distributed.placement",
      Case("a mesh without the axis", lambda: distributed.placement(_MODEL_MESH, batch_size=8), ValueError, r"mesh has no axis 'data'", "data_axis"),
      Case("an axis that is no string", lambda: distributed.placement(jax.devices(), axis=0), TypeError,
           r"data_axis must be a non-empty string \(the mesh axis name\), got 0", "data_axis"))
EXEMPT["jaxnets.distributed.is_main_process"] = "takes no arguments"


def _with_env(env: dict, call: Callable):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return call()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------
# By class (issue 21): each class of bad input, over every public name it applies to
# ---------------------------------------------------------------------------

_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "silu", "identity", "softmax", "log_softmax")
_ACTIVATION_FNS = [f for n in _ACTIVATIONS for f in (n, f"{n}_grad" if n not in ("softmax", "log_softmax") else f"{n}_vjp")]


def _activation(fn: str, x: Any, y_bar: Any = None):
    f = getattr(A, fn)
    return f(x, X if y_bar is None else y_bar) if fn.endswith("_vjp") else f(x)


# complex, bool and integer inputs where real floats are needed; anything that is no array
for _fn in _ACTIVATION_FNS:
    cases(f"jaxnets.activations.{_fn}",
          Case("complex x", lambda f=_fn: _activation(f, X.astype(jnp.complex64)), TypeError, r"x must have a floating dtype, got complex64", "x"),
          Case("bool x", lambda f=_fn: _activation(f, X > 0), TypeError, r"x must have a floating dtype, got bool", "x"),
          Case("int x", lambda f=_fn: _activation(f, jnp.ones((2, 3), jnp.int32)), TypeError, r"x must have a floating dtype, got int32", "x"),
          Case("a string", lambda f=_fn: _activation(f, "abc"), TypeError, r"x must be an array of floats, got str 'abc'", "x"),
          Case("a list", lambda f=_fn: _activation(f, [1.0, 2.0]), TypeError, r"x must be an array of floats, got list", "x"))
for _fn in ("softmax_vjp", "log_softmax_vjp"):
    cases(f"jaxnets.activations.{_fn}",
          Case("complex y_bar", lambda f=_fn: _activation(f, X, X.astype(jnp.complex64)), TypeError, r"y_bar must have a floating dtype, got complex64", "y_bar"))
# axes: ints in range for the input's rank, nothing else
for _fn in ("softmax", "log_softmax", "softmax_vjp", "log_softmax_vjp"):
    _call = (lambda f, axis: getattr(A, f)(X, X, axis=axis)) if _fn.endswith("_vjp") else (lambda f, axis: getattr(A, f)(X, axis=axis))
    cases(f"jaxnets.activations.{_fn}",
          Case("axis a list", lambda f=_fn, c=_call: c(f, [1]), TypeError, r"axis must be an int, got \[1\] of type list", "axis"),
          Case("axis a bool", lambda f=_fn, c=_call: c(f, True), TypeError, r"axis must be an int, got True of type bool", "axis"),
          Case("axis None", lambda f=_fn, c=_call: c(f, None), TypeError, r"axis must be an int, got None", "axis"),
          Case("axis too negative", lambda f=_fn, c=_call: c(f, -3), ValueError, r"axis must be in \[-2, 2\) for an array of 2 dimensions, got -3", "axis"))

# losses: complex/bool/int predictions, complex targets, empty batches (the mean would be NaN)
_PAIRED = {"mean_squared_error": ("predictions", "targets"), "softmax_cross_entropy": ("logits", "targets"),
           "binary_cross_entropy_with_logits": ("logits", "targets"), "huber": ("predictions", "targets"), "hinge": ("scores", "targets")}
for _loss, (_p, _t) in _PAIRED.items():
    _targets = jnp.ones((4, 3)) if _loss == "hinge" else jnp.full((4, 3), 0.25)
    for _fn in (_loss, f"{_loss}_grad"):
        cases(f"jaxnets.losses.{_fn}",
              Case(f"complex {_p}", lambda f=_fn, t=_targets: getattr(Lo, f)(Z.astype(jnp.complex64), t), TypeError,
                   rf"{_p} must have a floating dtype, got complex64", _p),
              Case(f"bool {_p}", lambda f=_fn, t=_targets: getattr(Lo, f)(Z > 0, t), TypeError, rf"{_p} must have a floating dtype, got bool", _p),
              Case(f"int {_p}", lambda f=_fn, t=_targets: getattr(Lo, f)(Z.astype(jnp.int32), t), TypeError, rf"{_p} must have a floating dtype, got int32", _p),
              Case("complex targets", lambda f=_fn, t=_targets: getattr(Lo, f)(Z, t.astype(jnp.complex64)), TypeError,
                   r"targets must hold real numbers, got dtype complex64", "targets"),
              Case("an empty batch", lambda f=_fn: getattr(Lo, f)(jnp.zeros((0, 3)), jnp.zeros((0, 3))), ValueError,
                   rf"{_p} must hold at least one element, got shape \(0, 3\) \(a mean over no elements is NaN\)", _p))
for _fn in ("softmax_cross_entropy", "softmax_cross_entropy_grad"):
    cases(f"jaxnets.losses.{_fn}",
          Case("no class axis", lambda f=_fn: getattr(Lo, f)(jnp.zeros(()), jnp.zeros(())), ValueError, r"logits must have a class axis", "logits"))
for _fn in ("softmax_cross_entropy_with_integer_labels", "softmax_cross_entropy_with_integer_labels_grad", "accuracy"):
    cases(f"jaxnets.losses.{_fn}",
          Case("complex logits", lambda f=_fn: getattr(Lo, f)(Z.astype(jnp.complex64), Y), TypeError, r"logits must have a floating dtype, got complex64", "logits"),
          Case("bool labels", lambda f=_fn: getattr(Lo, f)(Z, Y > 0), TypeError, r"labels must have an integer dtype, got bool", "labels"),
          Case("an empty batch", lambda f=_fn: getattr(Lo, f)(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32)), ValueError,
               r"logits must hold at least one element, got shape \(0, 3\)", "logits"),
          Case("no classes", lambda f=_fn: getattr(Lo, f)(jnp.zeros((4, 0)), Y), ValueError, r"logits must hold at least one element, got shape \(4, 0\)", "logits"))

# optimizers: array hyperparameters (any but 0-d), switches that are no bools, integer/bool gradients, moment dtypes
_HYPERPARAMETERS = {"sgd": ["learning_rate", "momentum"], "adagrad": ["learning_rate", "initial_accumulator_value", "eps"],
                    "rmsprop": ["learning_rate", "decay", "eps", "initial_scale", "momentum"],
                    "adam": ["learning_rate", "b1", "b2", "eps", "eps_root"], "adamw": ["learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"],
                    "nadam": ["learning_rate", "b1", "b2", "eps", "eps_root"], "adamax": ["learning_rate", "b1", "b2", "eps"],
                    "amsgrad": ["learning_rate", "b1", "b2", "eps", "eps_root"], "lion": ["learning_rate", "b1", "b2", "weight_decay"]}
_FLAGS = {"sgd": ["nesterov"], "rmsprop": ["eps_in_sqrt", "centered", "nesterov", "bias_correction"], "adam": ["nesterov"],
          "adamw": ["nesterov"], "nadam": ["nesterov"], "amsgrad": ["bias_correction_mu", "bias_correction_nu"], "adagrad": [], "adamax": [], "lion": []}


def _with(name: str, **kwargs):
    kwargs.setdefault("learning_rate", 1e-3)
    return getattr(optim, name)(**kwargs)


for _name in optim.OPTIMIZERS:
    assert set(_HYPERPARAMETERS[_name]) >= set(_DECAYS[_name]) | set(_NONNEGATIVE[_name]), _name
    for _arg in _HYPERPARAMETERS[_name]:
        cases(f"jaxnets.optim.{_name}",
              Case(f"{_arg} a vector", lambda n=_name, a=_arg: _with(n, **{a: jnp.asarray([0.5, 0.1])}), ValueError,
                   rf"{_arg} must be a scalar \(a number, a 0-d array or a schedule\), got an array of shape \(2,\)", _arg),
              Case(f"{_arg} complex", lambda n=_name, a=_arg: _with(n, **{a: 0.1 + 0j}), TypeError, rf"{_arg} must be a scalar number, got \(0.1\+0j\)", _arg),
              Case(f"{_arg} a complex array", lambda n=_name, a=_arg: _with(n, **{a: jnp.asarray(0.1 + 0j)}), TypeError,
                   rf"{_arg} must be a real number, got an array of dtype complex64", _arg),
              Case(f"{_arg} NaN", lambda n=_name, a=_arg: _with(n, **{a: float("nan")}), ValueError, rf"{_arg} must .*, got nan", _arg))
    for _arg in _FLAGS[_name]:
        cases(f"jaxnets.optim.{_name}",
              Case(f"{_arg} a string", lambda n=_name, a=_arg: _with(n, **{a: "yes"}), TypeError, rf"{_arg} must be True or False, got 'yes'", _arg),
              Case(f"{_arg} None", lambda n=_name, a=_arg: _with(n, **{a: None}), TypeError, rf"{_arg} must be True or False, got None", _arg))
    cases(f"jaxnets.optim.{_name}",
          Case("integer grads", lambda n=_name: _update(_with(n), {"w": jnp.ones((4, 4), jnp.int32)}), TypeError,
               r"grads\['w'\] must have a floating \(or complex\) dtype, got int32", "grads"),
          Case("bool grads", lambda n=_name: _update(_with(n), {"w": jnp.ones((4, 4), bool)}), TypeError,
               r"grads\['w'\] must have a floating \(or complex\) dtype, got bool", "grads"),
          Case("string grads", lambda n=_name: _update(_with(n), {"w": "abc"}), TypeError, r"grads\['w'\] must be an array, got str", "grads"),
          Case("a schedule of vectors", lambda n=_name: _update(_with(n, learning_rate=lambda count: jnp.full(2, 0.1)), P44), ValueError,
               r"learning_rate schedule must return a scalar, got shape \(2,\)", "learning_rate"),
          Case("a schedule gone negative", lambda n=_name: _update(_with(n, learning_rate=lambda count: jnp.asarray(-0.1)), P44), ValueError,
               r"learning_rate schedule must return finite values >= 0, got -0.1", "learning_rate"))
for _name, _arg in (("adam", "mu_dtype"), ("adamw", "mu_dtype"), ("nadam", "mu_dtype"), ("amsgrad", "mu_dtype"), ("lion", "mu_dtype"),
                    ("sgd", "accumulator_dtype")):
    cases(f"jaxnets.optim.{_name}",
          Case(f"{_arg} int32", lambda n=_name, a=_arg: _with(n, **{a: "int32"}, **({"momentum": 0.9} if n == "sgd" else {})), TypeError,
               rf"{_arg} must be a floating \(or complex, for complex params\) dtype or None, got int32", _arg))
for _name in ("adamw", "lion"):
    cases(f"jaxnets.optim.{_name}",
          Case("a mask of strings", lambda n=_name: _with(n, mask={"w": "yes"}).init(P44), TypeError,
               r"mask must be None, a callable params -> tree of bools, .*got str 'yes' at mask\['w'\]", "mask"),
          Case("params of another structure", lambda n=_name: _with(n).update(P44, _with(n).init(P44), {"v": jnp.ones((4, 4))}), ValueError,
               r"params must have the structure of grads", "params"),
          Case("a weight decay schedule gone negative", lambda n=_name: _update(_with(n, weight_decay=lambda count: jnp.asarray(-1e-3)), P44),
               ValueError, r"weight_decay schedule must return finite values >= 0, got -0.001", "weight_decay"))
cases("jaxnets.optim.compare",
      Case("grad_fn not callable", lambda: optim.compare(optim.sgd(0.1), optim.sgd(0.1), _problem().params, "grad"), TypeError,
           r"grad_fn must be callable as grad_fn\(params, step\) -> grads, got 'grad'", "grad_fn"))
cases("jaxnets.optim.quadratic_problem",
      Case("an integer dtype", lambda: optim.quadratic_problem(3, dtype=jnp.int32), TypeError, r"dtype must be a floating dtype .*got int32", "dtype"),
      Case("a seed array", lambda: optim.quadratic_problem(3, seed=jnp.arange(2)), TypeError, r"seed must be an int, got", "seed"))
cases("jaxnets.optim.rosenbrock_problem",
      Case("an unknown dtype", lambda: optim.rosenbrock_problem(dtype="fast"), TypeError, r"dtype must be a dtype such as jnp.float32 or 'float32', got 'fast'", "dtype"))

# checks that would check nothing, and gradcheck's other arguments
_GC = dict(dtypes=("float32",), finite_differences=False)


def _gc(**kwargs):
    params = kwargs.pop("params", {"w": jnp.ones(3)})
    return gradcheck.check_grads(lambda p: jax.grad(lambda q: jnp.sum(q["w"] ** 2))(p), lambda p: jnp.sum(p["w"] ** 2), params,
                                 **{**_GC, **kwargs})


for _fn in ("check_grads", "assert_grads_close"):
    _call = (lambda f, **kw: getattr(gradcheck, f)(lambda p: 2 * p["w"], lambda p: jnp.sum(p["w"] ** 2), kw.pop("params", {"w": jnp.ones(3)}),
                                                   **{**_GC, **kw}))
    cases(f"jaxnets.gradcheck.{_fn}",
          Case("no dtypes, no finite differences", lambda f=_fn, c=_call: c(f, dtypes=()), ValueError,
               r"this gradient check would check nothing: dtypes=\(\) and finite_differences=False leave no comparison", "dtypes"),
          Case("params without leaves", lambda f=_fn, c=_call: c(f, params={}), ValueError, r"would check nothing: params has no leaves", "params"),
          Case("params of size 0", lambda f=_fn, c=_call: c(f, params={"w": jnp.ones((3, 0))}), ValueError,
               r"would check nothing: params has no entries to differentiate \(1 leaves, all empty\)", "params"),
          Case("integer params", lambda f=_fn, c=_call: c(f, params={"w": jnp.ones(3, jnp.int32)}), TypeError,
               r"params\['w'\] must have a floating dtype, got int32", "params"),
          Case("complex params", lambda f=_fn, c=_call: c(f, params={"w": jnp.ones(3, jnp.complex64)}), TypeError,
               r"params\['w'\] must have a floating dtype, got complex64", "params"),
          Case("dtypes a string", lambda f=_fn, c=_call: c(f, dtypes="float32"), TypeError, r"dtypes must be a sequence of floating dtypes", "dtypes"),
          Case("an integer dtype", lambda f=_fn, c=_call: c(f, dtypes=("int32",)), TypeError, r"dtypes\[0\] must be a floating dtype .*got int32", "dtypes"),
          Case("tolerances a string", lambda f=_fn, c=_call: c(f, tolerances="tight"), TypeError, r"tolerances must be a dict", "tolerances"),
          Case("a negative tolerance", lambda f=_fn, c=_call: c(f, tolerances={"float32": (-1.0, 0.0)}), ValueError,
               r"tolerances\['float32'\] rtol must be finite and >= 0, got -1.0", "tolerances"),
          Case("negative directions", lambda f=_fn, c=_call: c(f, directions=-1), ValueError, r"directions must be a positive integer, got -1", "directions"),
          Case("max_full an array", lambda f=_fn, c=_call: c(f, max_full=jnp.ones(2)), TypeError, r"max_full must be an int >= 0", "max_full"),
          Case("fd_rtol negative", lambda f=_fn, c=_call: c(f, fd_rtol=-1e-6), ValueError, r"fd_rtol must be finite and > 0, got -1e-06", "fd_rtol"),
          Case("seed a string", lambda f=_fn, c=_call: c(f, seed="abc"), TypeError, r"seed must be an int, got 'abc'", "seed"),
          Case("grad_fn not callable", lambda f=_fn: getattr(gradcheck, f)("grad", lambda p: jnp.sum(p), jnp.ones(3)), TypeError,
               r"grad_fn must be callable as grad_fn\(params, \*args\) -> grads, got 'grad'", "grad_fn"))
cases("jaxnets.gradcheck.check_layer",
      Case("no dtypes, no finite differences", lambda: gradcheck.check_layer(L.Dense(3), (2, 4), dtypes=(), finite_differences=False), ValueError,
           r"would check nothing: dtypes=\(\) and finite_differences=False", "dtypes"),
      Case("a truncated layer with no dtypes", lambda: gradcheck.check_layer(L.LSTM(3, truncate=2), (2, 5, 4), dtypes=()), ValueError,
           r"would check nothing: a truncated rule is compared with jax.grad only", "dtypes"),
      Case("an empty input", lambda: gradcheck.check_layer(L.Dense(3), jnp.ones((0, 4))), ValueError,
           r"x must not be empty \(the check needs at least one example\), got shape \(0, 4\)", "x"),
      Case("a complex input", lambda: gradcheck.check_layer(L.Dense(3), jnp.ones((2, 4), jnp.complex64)), TypeError,
           r"x must have a floating dtype, got complex64", "x"),
      Case("a shape with a 0", lambda: gradcheck.check_layer(L.Dense(3), (2, 0)), ValueError, r"concrete input shape of positive sizes .*got \(2, 0\)", "x"),
      Case("x a string", lambda: gradcheck.check_layer(L.Dense(3), "2x4"), TypeError, r"x must be an array, a tuple of arrays, or a concrete input shape, got str", "x"),
      Case("an int key", lambda: gradcheck.check_layer(L.Dense(3), (2, 4), key=0), TypeError, KEY_MESSAGE, "key"),
      Case("train a string", lambda: gradcheck.check_layer(L.Dense(3), (2, 4), train="yes"), TypeError, r"train must be True or False, got 'yes'", "train"),
      Case("truncated a string", lambda: gradcheck.check_layer(L.Dense(3), (2, 4), truncated="auto"), TypeError,
           r"truncated must be True or False, got 'auto'", "truncated"))

# initializers: shapes and dtypes of the returned functions
for _fn in ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform", "normal", "uniform", "orthogonal"):
    cases(f"jaxnets.initializers.{_fn}",
          Case("a shape with -1", lambda f=_fn: getattr(I, f)()(K, (-1, 3)), TypeError, r"shape must be a tuple of ints >= 0 .*got \(-1, 3\)", "shape"),
          Case("a shape of floats", lambda f=_fn: getattr(I, f)()(K, (3.0, 4)), TypeError, r"shape must be a tuple of ints >= 0", "shape"),
          Case("an integer dtype", lambda f=_fn: getattr(I, f)()(K, (3, 4), jnp.int32), TypeError, r"dtype must be a floating dtype .*got int32", "dtype"),
          Case("a complex dtype", lambda f=_fn: getattr(I, f)()(K, (3, 4), jnp.complex64), TypeError, r"dtype must be a floating dtype .*got complex64", "dtype"),
          Case("no dtype", lambda f=_fn: getattr(I, f)()(K, (3, 4), "fast"), TypeError, r"dtype must be a dtype such as jnp.float32", "dtype"))
for _fn in ("normal", "uniform", "orthogonal"):
    cases(f"jaxnets.initializers.{_fn}",
          Case("an array scale", lambda f=_fn: getattr(I, f)(jnp.ones(2)), TypeError, r"(stddev|scale) must be a real number, got", "must be a real number"))
for _fn in ("zeros", "ones"):
    cases(f"jaxnets.initializers.{_fn}",
          Case("a shape string", lambda f=_fn: getattr(I, f)(K, "3"), TypeError, r"shape must be a tuple of ints >= 0 .*got '3'", "shape"),
          Case("no dtype", lambda f=_fn: getattr(I, f)(K, (3,), "fast"), TypeError, r"dtype must be a dtype such as jnp.float32", "dtype"))

# keys, switches, callables, empty batches of evaluation, backprop, debug, per_example
_M = L.serial(L.Dense(3), L.Relu(), L.Dense(2))
_MP = _M.init(K, (-1, 4))[1]
_XB, _YB = jnp.ones((5, 4)), jnp.array([0, 1, 0, 1, 1])
_CE = losses.softmax_cross_entropy_with_integer_labels
cases("jaxnets.backprop.vjp",
      Case("an int key", lambda: backprop.vjp(_M, _MP, _XB, key=3), TypeError, KEY_MESSAGE, "key"),
      Case("train a string", lambda: backprop.vjp(_M, _MP, _XB, train="yes"), TypeError, r"train must be True or False", "train"),
      Case("complex x", lambda: backprop.vjp(_M, _MP, _XB.astype(jnp.complex64)), TypeError, r"x must hold real numbers, got dtype complex64", "x"))
for _fn in ("grad", "value_and_grad"):
    cases(f"jaxnets.backprop.{_fn}",
          Case("loss not callable", lambda f=_fn: getattr(backprop, f)(_M, "mse"), TypeError, r"loss must be callable as loss\(predictions, targets\)", "loss"),
          Case("train None", lambda f=_fn: getattr(backprop, f)(_M, _CE, train=None), TypeError, r"train must be True or False, got None", "train"))
cases("jaxnets.backprop.loss_gradient",
      Case("loss not callable", lambda: backprop.loss_gradient(None), TypeError, r"loss must be callable", "loss"))
cases("jaxnets.debug.locate_nonfinite",
      Case("loss not callable", lambda: debug.locate_nonfinite(_M, _MP, _XB, _YB, loss="ce"), TypeError, r"loss must be callable", "loss"),
      Case("an int key", lambda: debug.locate_nonfinite(_M, _MP, _XB, _YB, loss=_CE, key=0), TypeError, KEY_MESSAGE, "key"),
      Case("train a string", lambda: debug.locate_nonfinite(_M, _MP, _XB, _YB, loss=_CE, train="no"), TypeError, r"train must be True or False", "train"),
      Case("complex x", lambda: debug.locate_nonfinite(_M, _MP, _XB.astype(jnp.complex64)), TypeError, r"x must hold real numbers", "x"))


# ---------------------------------------------------------------------------
# jaxnets.train (the engine) and jaxnets.checkpoint: every case fails before anything is compiled
# (more in tests/test_engine.py, test_loop.py, test_train.py and test_checkpoint.py, not repeated here)
# ---------------------------------------------------------------------------

from jaxnets import checkpoint, per_example, train  # noqa: E402

_TM = L.serial(L.Dense(3), L.Relu(), L.Dense(2))
_TO = optax.sgd(0.1)
_TX, _TY = jnp.ones((8, 4)), jnp.array([0, 1] * 4)
_TS = train.init_train_state(_TM, _TO, (-1, 4), key=K)
_TOBJ = train.objective_from_loss(_TM, _CE)
_TSTEP = train.make_step(_TOBJ, _TO, jit=False)
_INT = jax.tree_util.tree_map(lambda a: a.astype(jnp.int32), _TS.params)


def _src():
    return train.ArraySource((_TX, _TY), 4)


def _loop(**kwargs):
    return train.loop(kwargs.pop("step", _TSTEP), kwargs.pop("state", _TS), kwargs.pop("source", None) or _src(),
                      **{"steps": 2, **kwargs})


def _fit(**kwargs):
    data = kwargs.pop("data", (_TX, _TY))
    return train.fit(kwargs.pop("model", _TM), kwargs.pop("loss", _CE), kwargs.pop("optimizer", _TO), data,
                     **{"epochs": 1, "batch_size": 4, "callbacks": [], **kwargs})


_BOOL = r"must be True or False, got 'yes'"
_EVERY = r"every must be a positive int of steps or \(n, 'steps' \| 'epochs'\), got"
cases("jaxnets.train.init_train_state",
      Case("not a layer", lambda: train.init_train_state(jnp.tanh, _TO, (-1, 4)), TypeError, r"model must be a jaxnets Layer", "model"),
      Case("an optimizer name", lambda: train.init_train_state(_TM, "adam", (-1, 4)), TypeError,
           r"optimizer must be an optax.GradientTransformation .*got 'adam'", "optimizer"),
      Case("input_shape a string", lambda: train.init_train_state(_TM, _TO, "4"), TypeError, r"input_shape must be a tuple of ints", "input_shape"),
      Case("input_shape with a 0", lambda: train.init_train_state(_TM, _TO, (-1, 0)), ValueError,
           r"input_shape must hold positive ints or -1 \(unknown batch\), got \(-1, 0\)", "input_shape"),
      Case("an int key", lambda: train.init_train_state(_TM, _TO, (-1, 4), key=0), TypeError, r"key must be a typed jax.random key", "key"),
      Case("a seed array", lambda: train.init_train_state(_TM, _TO, (-1, 4), seed=jnp.arange(2)), TypeError, r"seed must be an int, got", "seed"))
for _fn in ("model_key", "shuffle_key"):
    cases(f"jaxnets.train.{_fn}",
          Case("a dict", lambda f=_fn: getattr(train, f)({"w": 1}), TypeError, rf"{_fn} needs a state with .key and .step \(a TrainState\), got dict", "state"),
          Case("an int key", lambda f=_fn: getattr(train, f)(_TS._replace(key=jnp.int32(3))), TypeError,
               r"state.key must be a typed jax.random key of shape \(\)", "state.key"),
          Case("a vector step", lambda f=_fn: getattr(train, f)(_TS._replace(step=jnp.zeros(3, jnp.int32))), TypeError,
               r"state.step must be an integer scalar \(the step counter\), got shape \(3,\)", "state.step"),
          Case("a float step", lambda f=_fn: getattr(train, f)(_TS._replace(step=jnp.float32(1.5))), TypeError,
               r"state.step must be an integer scalar .* dtype float32", "state.step"))
cases("jaxnets.train.eval_key",
      Case("which a string", lambda: train.eval_key(_TS, "test"), TypeError, r"which must be an int >= 0 .*got 'test'", "which"),
      Case("which a float", lambda: train.eval_key(_TS, 1.5), TypeError, r"which must be an int >= 0 .*got 1.5", "which"),
      Case("which negative", lambda: train.eval_key(_TS, -1), ValueError, r"which must be an int >= 0 .*got -1", "which"),
      Case("no state", lambda: train.eval_key(None, 1), TypeError, r"needs a state with .key and .step", "state"))
cases("jaxnets.train.objective_from_loss",
      Case("not a layer", lambda: train.objective_from_loss(jnp.tanh, _CE), TypeError, r"model must be a jaxnets Layer", "model"),
      Case("a loss name", lambda: train.objective_from_loss(_TM, "ce"), TypeError, r"loss must be callable as loss\(outputs, targets\), got 'ce'", "loss"),
      Case("metrics a list", lambda: train.objective_from_loss(_TM, _CE, metrics=["accuracy"]), TypeError,
           r"metrics must be a mapping name -> fn\(outputs, targets\)", "metrics"),
      Case("a batch that is no pair", lambda: _TOBJ(_TS.params, _TX, K, {}), TypeError, r"batch must be a pair \(x, y\) .*got ArrayImpl", "batch"))
cases("jaxnets.train.default_gradient",
      Case("objective a string", lambda: train.default_gradient("obj", _TS.params, (_TX, _TY), K, {}), TypeError,
           r"objective must be callable as objective\(params, batch, key, model_state\), got 'obj'", "objective"),
      Case("integer params", lambda: train.default_gradient(_TOBJ, _INT, (_TX, _TY), K, {}), TypeError,
           r"params\['dense_0'\]\['b'\] must be an array of floating \(or complex\) numbers .*got int32", "params"),
      Case("an empty batch", lambda: train.default_gradient(_TOBJ, _TS.params, (_TX[:0], _TY[:0]), K, {}), ValueError,
           r"logits must hold at least one element, got shape \(0, 2\)", "logits"),
      Case("complex x", lambda: train.default_gradient(_TOBJ, _TS.params, (_TX.astype(jnp.complex64), _TY), K, {}), TypeError,
           r"input x must have a floating dtype, got complex64", "x"),
      Case("an int key", lambda: train.default_gradient(_TOBJ, _TS.params, (_TX, _TY), 0, {}), TypeError, KEY_MESSAGE, "key"))
cases("jaxnets.train.accumulate_gradients",
      Case("micro_batches 0", lambda: train.accumulate_gradients(0), ValueError, r"micro_batches must be a positive integer, got 0", "micro_batches"),
      Case("micro_batches a float", lambda: train.accumulate_gradients(2.0), TypeError,
           r"micro_batches must be a positive integer, got 2.0 of type float", "micro_batches"),
      Case("gradient a string", lambda: train.accumulate_gradients(2, "dp"), TypeError,
           r"gradient must be callable as gradient\(objective, params, batch, key, model_state\)", "gradient"),
      Case("a per-example gradient", lambda: train.accumulate_gradients(2, per_example.stacked_gradient), TypeError,
           r"gradient stacked_gradient returns per-example gradients \(per_example = True\)", "per_example"),
      Case("no micro-batch axis", lambda: train.accumulate_gradients(2)(_TOBJ, _TS.params, (_TX, _TY), K, {}), ValueError,
           r"needs every batch leaf to have a leading axis of micro_batches=2.*got batch\[0\] of shape \(8, 4\)", "micro_batches"))
cases("jaxnets.train.make_step",
      Case("objective a string", lambda: train.make_step("obj", _TO), TypeError, r"objective must be callable", "objective"),
      Case("an optimizer name", lambda: train.make_step(_TOBJ, "sgd"), TypeError, r"optimizer must be an optax.GradientTransformation", "optimizer"),
      Case("gradient a string", lambda: train.make_step(_TOBJ, _TO, gradient="dp"), TypeError, r"gradient must be callable", "gradient"),
      Case("transform a string", lambda: train.make_step(_TOBJ, _TO, transform="flip"), TypeError, r"transform must be callable", "transform"),
      Case("jit a string", lambda: train.make_step(_TOBJ, _TO, jit="yes"), TypeError, r"jit " + _BOOL, "jit"),
      Case("a dict for the state", lambda: _TSTEP({"w": 1}, (_TX, _TY)), TypeError,
           r"state must be a TrainState \(params, opt_state, model_state, step, key\), got dict", "state"),
      Case("another optimizer's state", lambda: train.make_step(_TOBJ, optax.adam(1e-3), jit=False)(_TS, (_TX, _TY)), ValueError,
           r"state.opt_state does not fit this optimizer", "opt_state"),
      Case("integer params", lambda: _TSTEP(_TS._replace(params=_INT), (_TX, _TY)), TypeError, r"params\['dense_0'\]\['b'\] must be an array of floating", "params"),
      Case("an empty batch", lambda: _TSTEP(_TS, (_TX[:0], _TY[:0])), ValueError, r"logits must hold at least one element", "logits"),
      Case("bool x", lambda: _TSTEP(_TS, (_TX > 0, _TY)), TypeError, r"input x must have a floating dtype, got bool", "x"),
      Case("an array learning rate that broadcasts", lambda: jax.eval_shape(train.make_step(_TOBJ, optax.sgd(jnp.full((1, 1), 0.1)), jit=False), _TS, (_TX, _TY)),
           ValueError, r"optimizer.update returned updates\['dense_0'\]\['b'\] of shape \(1, 3\) for params of shape \(3,\).*must be scalars", "optimizer"))
cases("jaxnets.train.make_train_step",
      Case("not a layer", lambda: train.make_train_step("mlp", _CE, _TO), TypeError, r"model must be a jaxnets Layer", "model"),
      Case("no loss", lambda: train.make_train_step(_TM, None, _TO), TypeError, r"loss must be callable", "loss"),
      Case("no optimizer", lambda: train.make_train_step(_TM, _CE, None), TypeError, r"optimizer must be an optax.GradientTransformation", "optimizer"),
      Case("a metric that is no function", lambda: train.make_train_step(_TM, _CE, _TO, metrics={"a": 3}), TypeError, r"metrics\['a'\] must be callable", "metrics"),
      Case("jit None", lambda: train.make_train_step(_TM, _CE, _TO, jit=None), TypeError, r"jit must be True or False, got None", "jit"),
      Case("float labels", lambda: train.make_train_step(_TM, _CE, _TO, jit=False)(_TS, _TX, _TY.astype(jnp.float32)), TypeError,
           r"labels must have an integer dtype, got float32", "labels"),
      Case("labels of another length", lambda: train.make_train_step(_TM, _CE, _TO, jit=False)(_TS, _TX, _TY[:3]), ValueError,
           r"labels must have the shape of logits without the class axis", "labels"),
      Case("x a list", lambda: train.make_train_step(_TM, _CE, _TO, jit=False)(_TS, [[1.0] * 4] * 8, _TY), TypeError, r"input x must be an array, got list", "x"))
cases("jaxnets.train.donating_jit",
      Case("not callable", lambda: train.donating_jit("step"), TypeError, r"fn must be callable as fn\(state, \*args\)", "fn"))
cases("jaxnets.train.permutation",
      Case("an int key", lambda: train.permutation(0, 5), TypeError, KEY_MESSAGE, "key"),
      Case("a float array key", lambda: train.permutation(jnp.ones(2), 5), TypeError, r"key must be a jax.random key.* dtype float32", "key"),
      Case("n=0", lambda: train.permutation(K, 0), ValueError, r"n must be a positive integer, got 0", "n"),
      Case("n an array", lambda: train.permutation(K, jnp.arange(3)), TypeError, r"n must be a positive integer, got Array", "n"))
cases("jaxnets.train.epoch_indices",
      Case("no state", lambda: train.epoch_indices(None, 8, 4), TypeError, r"needs a state with .key and .step", "state"),
      Case("batch_size above n", lambda: train.epoch_indices(_TS, 8, 9), ValueError, r"batch_size must be at most the number of examples \(8\), got 9", "batch_size"),
      Case("drop_last a string", lambda: train.epoch_indices(_TS, 8, 3, drop_last="yes"), TypeError, r"drop_last " + _BOOL, "drop_last"),
      Case("batch_size a float", lambda: train.epoch_indices(_TS, 8, 2.0), TypeError, r"batch_size must be a positive integer, got 2.0", "batch_size"))
cases("jaxnets.train.steps_per_epoch",
      Case("batch_size 0", lambda: train.steps_per_epoch(8, 0, False), ValueError, r"batch_size must be a positive integer, got 0", "batch_size"),
      Case("batch_size negative", lambda: train.steps_per_epoch(8, -2, False), ValueError, r"batch_size must be a positive integer, got -2", "batch_size"),
      Case("batch_size a float", lambda: train.steps_per_epoch(8, 2.5, False), TypeError, r"batch_size must be a positive integer, got 2.5", "batch_size"),
      Case("num_examples a string", lambda: train.steps_per_epoch("8", 2, False), TypeError, r"num_examples must be a positive integer, got '8'", "num_examples"),
      Case("num_examples an array", lambda: train.steps_per_epoch(jnp.arange(3), 2, False), TypeError, r"num_examples must be a positive integer", "num_examples"),
      Case("drop_last a string", lambda: train.steps_per_epoch(8, 3, "yes"), TypeError, r"drop_last " + _BOOL, "drop_last"))
cases("jaxnets.train.scan_epoch",
      Case("step a string", lambda: train.scan_epoch("s", batch_size=4), TypeError, r"step must be callable as step\(state, batch\)", "step"),
      Case("batch_size 0", lambda: train.scan_epoch(_TSTEP, batch_size=0), ValueError, r"batch_size must be a positive integer, got 0", "batch_size"),
      Case("drop_last a string", lambda: train.scan_epoch(_TSTEP, batch_size=4, drop_last="yes"), TypeError, r"drop_last " + _BOOL, "drop_last"),
      Case("check_finite a string", lambda: train.scan_epoch(_TSTEP, batch_size=4, check_finite="yes"), TypeError, r"check_finite " + _BOOL, "check_finite"),
      Case("data without arrays", lambda: train.scan_epoch(_TSTEP, batch_size=4, jit=False)(_TS, ()), ValueError, r"data holds no arrays", "data"),
      Case("empty data", lambda: train.scan_epoch(_TSTEP, batch_size=4, jit=False)(_TS, (_TX[:0], _TY[:0])), ValueError,
           r"num_examples must be a positive integer, got 0", "num_examples"))
cases("jaxnets.train.make_epoch",
      Case("num_examples 0", lambda: train.make_epoch(_TM, _CE, _TO, num_examples=0, batch_size=4), ValueError, r"num_examples must be a positive integer, got 0", "num_examples"),
      Case("batch_size above n", lambda: train.make_epoch(_TM, _CE, _TO, num_examples=8, batch_size=9), ValueError, r"batch_size must be at most", "batch_size"),
      Case("drop_last a string", lambda: train.make_epoch(_TM, _CE, _TO, num_examples=8, batch_size=3, drop_last="yes"), TypeError, r"drop_last " + _BOOL, "drop_last"),
      Case("jit a string", lambda: train.make_epoch(_TM, _CE, _TO, num_examples=8, batch_size=4, jit="yes"), TypeError, r"jit " + _BOOL, "jit"),
      Case("x of another length", lambda: train.make_epoch(_TM, _CE, _TO, num_examples=8, batch_size=4, jit=False)(_TS, _TX[:6], _TY[:6]), ValueError,
           r"this epoch was built for num_examples=8, got x \(6, 4\)", "num_examples"))
cases("jaxnets.train.first_nonfinite",
      Case("losses a list", lambda: train.first_nonfinite([1.0, 2.0], _TS.params), TypeError, r"losses must be an array of floats, got list", "losses"),
      Case("a scalar loss", lambda: train.first_nonfinite(jnp.float32(1.0), _TS.params), ValueError, r"losses must be a vector .*got shape \(\)", "losses"),
      Case("no steps", lambda: train.first_nonfinite(jnp.zeros(0), _TS.params), ValueError, r"losses must be a vector .*at least one step, got shape \(0,\)", "losses"),
      Case("integer losses", lambda: train.first_nonfinite(jnp.arange(3), _TS.params), TypeError, r"losses must have a floating dtype, got int32", "losses"),
      Case("skipped of another length", lambda: train.first_nonfinite(jnp.zeros(3), _TS.params, jnp.zeros(2)), ValueError,
           r"skipped must have the shape of losses \(3,\) .*got \(2,\)", "skipped"),
      Case("a string in params", lambda: train.first_nonfinite(jnp.zeros(3), {"w": "a"}), TypeError, r"params\['w'\] must be an array, got str", "params"))
cases("jaxnets.train.fingerprint",
      Case("a string leaf", lambda: train.fingerprint({"x": "abc"}), TypeError, r"tree\['x'\] must be an array, got str", "tree"),
      Case("Python floats", lambda: train.fingerprint([1.0, 2.0]), TypeError, r"tree\[0\] must be an array, got float", "tree"),
      Case("no arrays", lambda: train.fingerprint({}), ValueError, r"tree holds no arrays to fingerprint", "tree"))
cases("jaxnets.train.loop",
      Case("step a string", lambda: _loop(step="s"), TypeError, r"step must be callable", "step"),
      Case("steps 0", lambda: _loop(steps=0), ValueError, r"steps must be a positive integer, got 0", "steps"),
      Case("steps a 0-d array", lambda: _loop(steps=jnp.asarray(2)), TypeError, r"steps must be a positive integer, got Array", "steps"),
      Case("epochs negative", lambda: _loop(steps=None, epochs=-1), ValueError, r"epochs must be a positive integer, got -1", "epochs"),
      Case("on_nonfinite unknown", lambda: _loop(on_nonfinite="skip"), ValueError, r"on_nonfinite must be 'raise', 'warn' or 'ignore', got 'skip'", "on_nonfinite"),
      Case("callbacks of strings", lambda: _loop(callbacks=["ckpt"]), TypeError, r"callbacks must be Callback objects .*got 'ckpt'", "callbacks"),
      Case("an int key", lambda: _loop(key=0), TypeError, r"key must be a typed jax.random key", "key"),
      Case("start a string", lambda: _loop(start="0"), TypeError, r"start must be an int .*got '0'", "start"),
      Case("start negative", lambda: _loop(start=-3), ValueError, r"start must be >= 0 .*got -3", "start"),
      Case("watch a string", lambda: _loop(watch="loss"), TypeError, r"watch must be None or a sequence of metric names such as \('loss',\), got 'loss'", "watch"),
      Case("watch a misspelt metric", lambda: _loop(watch=("los",)), ValueError, r"watch names \['los'\] that the step does not return: its metrics are \[.*'loss'", "watch"),
      Case("prefix an int", lambda: _loop(prefix=3), TypeError, r"prefix must be a str such as 'train_', got 3", "prefix"),
      Case("config a list", lambda: _loop(config=[1]), TypeError, r"config must be a dict .*got list", "config"),
      Case("jit a string", lambda: _loop(jit="yes"), TypeError, r"jit " + _BOOL, "jit"),
      Case("log_every 0", lambda: _loop(log_every=0), ValueError, r"log_every must be a positive integer, got 0", "log_every"),
      Case("a state with an int key", lambda: _loop(state=_TS._replace(key=jnp.int32(0))), TypeError,
           r"state.key must be a jax.random key", "state.key"))
cases("jaxnets.train.hyperparams",
      Case("a string", lambda: train.hyperparams("adam"), TypeError, r"state must be a pytree of arrays .*got str", "state"),
      Case("no arrays", lambda: train.hyperparams(None), ValueError, r"state holds no arrays", "state"))
cases("jaxnets.train.early_stopping",
      Case("metric an int", lambda: train.early_stopping(3), TypeError, r"metric must be a history name such as 'test_loss', got 3", "metric"),
      Case("patience 0", lambda: train.early_stopping(patience=0), ValueError, r"patience must be a positive integer, got 0", "patience"),
      Case("patience a float", lambda: train.early_stopping(patience=2.5), TypeError, r"patience must be a positive integer, got 2.5", "patience"),
      Case("mode unknown", lambda: train.early_stopping(mode="lower"), ValueError, r"mode must be 'min' or 'max', got 'lower'", "mode"),
      Case("min_delta negative", lambda: train.early_stopping(min_delta=-1.0), ValueError, r"min_delta must be finite and >= 0, got -1.0", "min_delta"),
      Case("min_delta an array", lambda: train.early_stopping(min_delta=jnp.ones(2)), TypeError, r"min_delta must be a real number, got Array", "min_delta"),
      Case("min_delta NaN", lambda: train.early_stopping(min_delta=float("nan")), ValueError, r"min_delta must be finite and >= 0, got nan", "min_delta"))
cases("jaxnets.train.ema_state",
      Case("no params", lambda: train.ema_state(None), TypeError, r"state must have params \(a TrainState\), or pass of=", "state"),
      Case("of a string", lambda: train.ema_state(_TS, of="params"), TypeError, r"of must be callable as of\(state\)", "of"),
      Case("integer params", lambda: train.ema_state(_TS._replace(params={"w": jnp.ones(3, jnp.int32)})), TypeError,
           r"of\(state\)\['w'\] must have a floating dtype .*got int32", "of(state)"),
      Case("a string leaf", lambda: train.ema_state(_TS._replace(params={"w": "x"})), TypeError, r"of\(state\)\['w'\] must be an array, got str", "of(state)"))
cases("jaxnets.train.with_ema",
      Case("decay 1", lambda: train.with_ema(_TSTEP, 1.0), ValueError, r"decay must be in \[0, 1\), got 1.0", "decay"),
      Case("decay negative", lambda: train.with_ema(_TSTEP, -0.5), ValueError, r"decay must be finite and >= 0, got -0.5", "decay"),
      Case("decay a vector", lambda: train.with_ema(_TSTEP, jnp.asarray([0.9, 0.5])), TypeError, r"decay must be a real number, got Array", "decay"),
      Case("decay a string", lambda: train.with_ema(_TSTEP, "0.9"), TypeError, r"decay must be a real number, got '0.9'", "decay"),
      Case("step a string", lambda: train.with_ema("s", 0.9), TypeError, r"step must be callable", "step"),
      Case("of a string", lambda: train.with_ema(_TSTEP, 0.9, of="params"), TypeError, r"of must be callable", "of"),
      Case("a TrainState for an EmaState", lambda: train.with_ema(_TSTEP, 0.9)(_TS, (_TX, _TY)), TypeError,
           r"state must be an EmaState \(wrap the state with jaxnets.train.ema_state\(state\)\), got TrainState", "state"))
cases("jaxnets.train.fit",
      Case("batch_size 0", lambda: _fit(batch_size=0), ValueError, r"batch_size must be a positive integer, got 0", "batch_size"),
      Case("epochs a float", lambda: _fit(epochs=1.5), TypeError, r"epochs must be a positive integer, got 1.5", "epochs"),
      Case("steps a string", lambda: _fit(epochs=None, steps="3"), TypeError, r"steps must be a positive integer, got '3'", "steps"),
      Case("complex x", lambda: _fit(data=(_TX.astype(jnp.complex64), _TY)), TypeError, r"input x must have a floating dtype, got complex64", "x"),
      Case("integer x", lambda: _fit(data=(jnp.ones((8, 4), jnp.int32), _TY)), TypeError, r"input x must have a floating dtype, got int32", "x"),
      Case("bool x", lambda: _fit(data=(_TX > 0, _TY)), TypeError, r"input x must have a floating dtype, got bool", "x"),
      Case("float labels", lambda: _fit(data=(_TX, _TY.astype(jnp.float32))), TypeError, r"labels must have an integer dtype, got float32", "labels"),
      Case("complex targets", lambda: _fit(loss=losses.mean_squared_error, data=(_TX, jnp.ones((8, 2), jnp.complex64))), TypeError,
           r"targets must hold real numbers, got dtype complex64", "targets"),
      Case("an empty test set", lambda: _fit(test=(_TX[:0], _TY[:0])), ValueError, r"test is empty \(0 examples\)", "test"),
      Case("an int key", lambda: _fit(key=0), TypeError, r"key must be a typed jax.random key", "key"),
      Case("a dict for the state", lambda: _fit(state={"params": _TS.params}), TypeError, r"state must be a TrainState, got dict", "state"),
      Case("eval_batch_size 0", lambda: _fit(eval_batch_size=0), ValueError, r"eval_batch_size must be a positive integer, got 0", "eval_batch_size"),
      Case("steps_per_call negative", lambda: _fit(steps_per_call=-1), ValueError, r"steps_per_call must be a positive integer, got -1", "steps_per_call"),
      Case("log_every 0", lambda: _fit(log_every=0), ValueError, r"log_every must be a positive integer, got 0", "log_every"),
      Case("on_nonfinite unknown", lambda: _fit(on_nonfinite="skip"), ValueError, r"on_nonfinite must be", "on_nonfinite"),
      Case("transform a string", lambda: _fit(transform="flip"), TypeError, r"transform must be callable", "transform"),
      Case("gradient a string", lambda: _fit(gradient="dp"), TypeError, r"gradient must be callable", "gradient"),
      Case("callbacks a string", lambda: _fit(callbacks="ckpt"), TypeError, r"callbacks must be Callback objects", "callbacks"),
      Case("input_shape a string", lambda: _fit(input_shape="4"), TypeError, r"input_shape must be a tuple of ints", "input_shape"),
      Case("an unknown precision", lambda: _fit(precision="fp8"), ValueError, r"policy must be a Policy or one of", "policy"),
      Case("placement a string", lambda: _fit(placement="gpu"), TypeError, r"mesh must be a jax.sharding.Mesh or a list of jax devices, got str", "mesh"),
      Case("metrics a list", lambda: _fit(metrics=["accuracy"]), TypeError, r"metrics must be a mapping", "metrics"),
      Case("a dict of data with a loss", lambda: _fit(data={"x": _TX, "y": _TY}), TypeError, r"data must be a pair \(x, y\) of arrays", "data"),
      Case("test not a pair", lambda: _fit(test=_TX), TypeError, r"test must be a pair \(x, y\) of arrays", "test"),
      Case("integer params in the state", lambda: _fit(state=_TS._replace(params=_INT)), ValueError,
           r"params do not match the model", "params"))
cases("jaxnets.train.evaluate",
      Case("params a list", lambda: train.evaluate(_TM, [1.0], (_TX, _TY), _CE), TypeError, r"params must be a pytree of arrays .*got float 1.0 at params\[0\]", "params"),
      Case("empty data", lambda: train.evaluate(_TM, _TS.params, (_TX[:0], _TY[:0]), _CE), ValueError, r"data is empty \(0 examples\)", "data"),
      Case("complex x", lambda: train.evaluate(_TM, _TS.params, (_TX.astype(jnp.complex64), _TY), _CE), TypeError, r"x must hold real numbers, got dtype complex64", "x"),
      Case("batch_size 0", lambda: train.evaluate(_TM, _TS.params, (_TX, _TY), _CE, batch_size=0), ValueError, r"batch_size must be a positive integer, got 0", "batch_size"),
      Case("model_state a string", lambda: train.evaluate(_TM, _TS.params, (_TX, _TY), _CE, model_state="s"), TypeError,
           r"model_state must be the model's state, a dict keyed by layer name \(or None\), got str", "model_state"),
      Case("integer params", lambda: train.evaluate(_TM, _INT, (_TX, _TY), _CE), ValueError, r"params do not match the model", "params"))
cases("jaxnets.train.predict",
      Case("x a list", lambda: train.predict(_TM, _TS.params, [[1.0] * 4]), TypeError, r"x must be an array, got float", "x"),
      Case("complex x", lambda: train.predict(_TM, _TS.params, _TX.astype(jnp.complex64)), TypeError, r"x must hold real numbers", "x"),
      Case("a scalar x", lambda: train.predict(_TM, _TS.params, jnp.float32(1.0)), ValueError, r"x must have a leading example axis \(a batch\), got a scalar", "x"),
      Case("batch_size 0", lambda: train.predict(_TM, _TS.params, _TX, batch_size=0), ValueError, r"batch_size must be a positive integer", "batch_size"),
      Case("model_state a list", lambda: train.predict(_TM, _TS.params, _TX, model_state=[1]), TypeError, r"model_state must be the model's state", "model_state"),
      Case("an int key", lambda: train.predict(_TM, _TS.params, _TX, key=1), TypeError, KEY_MESSAGE, "key"))
cases("jaxnets.train.evaluator",
      Case("neither loss nor objective", lambda: train.evaluator(_TM), TypeError, r"evaluator needs exactly one of loss and objective", "loss"),
      Case("metrics a dict", lambda: train.evaluator(_TM, _CE, {"a": 1}), TypeError, r"metrics must be a tuple of \(name, fn\(outputs, y\)\) pairs", "metrics"),
      Case("metrics of names", lambda: train.evaluator(_TM, _CE, ("accuracy",)), TypeError, r"metrics must be a tuple of \(name, fn", "metrics"),
      Case("batch_size 0", lambda: train.evaluator(_TM, _CE, batch_size=0), ValueError, r"batch_size must be a positive integer, got 0", "batch_size"),
      Case("a loss name", lambda: train.evaluator(_TM, "ce"), TypeError, r"loss must be callable", "loss"),
      Case("not a layer", lambda: train.evaluator("m", _CE), TypeError, r"model must be a jaxnets Layer", "model"))
# the engine's classes (their constructors)
cases("jaxnets.train.TrainState.create",
      Case("params of floats", lambda: train.TrainState.create([1.0], _TO), TypeError, r"params\[0\] must be an array, got float", "params"),
      Case("integer params", lambda: train.TrainState.create({"w": jnp.ones(3, jnp.int32)}, _TO), TypeError,
           r"params\['w'\] must have a floating \(or complex\) dtype to be trained, got int32", "params"),
      Case("no params", lambda: train.TrainState.create({}, _TO), ValueError, r"params holds no arrays", "params"),
      Case("an optimizer name", lambda: train.TrainState.create(_TS.params, "adam"), TypeError, r"optimizer must be", "optimizer"),
      Case("an int key", lambda: train.TrainState.create(_TS.params, _TO, key=3), TypeError, r"key must be a typed jax.random key", "key"))
cases("jaxnets.train.ArraySource",
      Case("no data", lambda: train.ArraySource(None, 4), ValueError, r"data holds no arrays", "data"),
      Case("empty data", lambda: train.ArraySource((_TX[:0], _TY[:0]), 4), ValueError, r"data is empty \(0 examples\)", "data"),
      Case("batch_size above n", lambda: train.ArraySource((_TX, _TY), 9), ValueError, r"batch_size must be at most the number of examples \(8\), got 9", "batch_size"),
      Case("batch_size a float", lambda: train.ArraySource((_TX, _TY), 4.0), TypeError, r"batch_size must be a positive integer, got 4.0", "batch_size"),
      Case("drop_last a string", lambda: train.ArraySource((_TX, _TY), 4, drop_last="yes"), TypeError, r"drop_last must be a bool, got 'yes'", "drop_last"),
      Case("place a string", lambda: train.ArraySource((_TX, _TY), 4, place="gpu"), TypeError, r"place must be callable as place\(tree\) -> tree", "place"),
      Case("name an int", lambda: train.ArraySource((_TX, _TY), 4, name=3), TypeError, r"name must be a str", "name"),
      Case("a string leaf", lambda: train.ArraySource({"x": _TX, "t": "abc"}, 4), TypeError, r"data\['t'\] must be an array, got str", "data"),
      Case("lengths differ", lambda: train.ArraySource((_TX, _TY[:3]), 2), ValueError, r"data arrays must have the same number of examples", "data"))
cases("jaxnets.train.Sampler",
      Case("fn a string", lambda: train.Sampler("f"), TypeError, r"fn must be callable as fn\(key, step\) -> batch", "fn"),
      Case("steps_per_epoch 0", lambda: train.Sampler(lambda k, s: _TX, steps_per_epoch=0), ValueError, r"steps_per_epoch must be a positive integer, got 0", "steps_per_epoch"),
      Case("a string in data", lambda: train.Sampler(lambda k, s, d: _TX, data={"c": "abc"}), TypeError, r"data\['c'\] must be an array \(a pytree of arrays\), got str", "data"),
      Case("name an int", lambda: train.Sampler(lambda k, s: _TX, name=3), TypeError, r"name must be a str", "name"))
cases("jaxnets.train.Evaluate",
      Case("fn a string", lambda: train.Evaluate("f", (_TX, _TY)), TypeError, r"fn must be callable as fn\(state, data\)", "fn"),
      Case("prefix an int", lambda: train.Evaluate(lambda s, d: {}, (_TX, _TY), prefix=3), TypeError, r"prefix must be a str", "prefix"),
      Case("a string in data", lambda: train.Evaluate(lambda s, d: {}, {"x": "abc"}), TypeError, r"data\['x'\] must be an array", "data"),
      Case("empty data", lambda: train.Evaluate(lambda s, d: {}, (_TX[:0], _TY[:0])), ValueError, r"data is empty \(0 examples\)", "data"),
      Case("every 0", lambda: train.Evaluate(lambda s, d: {}, (_TX, _TY), every=0), ValueError, _EVERY + " 0", "every"),
      Case("every a string", lambda: train.Evaluate(lambda s, d: {}, (_TX, _TY), every="epoch"), ValueError, _EVERY + " 'epoch'", "every"))
cases("jaxnets.train.EarlyStopping",
      Case("every an epoch unit misspelt", lambda: train.EarlyStopping(every=(1, "epoch")), ValueError, r"every must count 'steps' or 'epochs', got 'epoch'", "every"),
      Case("a metric the history lacks", lambda: train.EarlyStopping("val_loss")(train.Progress(1, None, {}, {"epoch": [1], "step": [2], "train_loss": [0.5]}, None)), ValueError,
           r"EarlyStopping metric must be one of the history's \['epoch', 'step', 'train_loss'\], got 'val_loss'", "metric"))
cases("jaxnets.train.HistoryFile",
      Case("path an int (a file descriptor)", lambda: train.HistoryFile(3), TypeError, r"history_file must be a path \(str or os.PathLike\), got int 3", "history_file"),
      Case("enabled a string", lambda: train.HistoryFile("h.jsonl", enabled="yes"), TypeError, r"enabled " + _BOOL, "enabled"))
cases("jaxnets.train.TensorBoard",
      Case("logdir an int", lambda: train.TensorBoard(3), TypeError, r"logdir must be a path, got int 3", "logdir"),
      Case("enabled a string", lambda: train.TensorBoard("tb", enabled="yes"), TypeError, r"enabled " + _BOOL, "enabled"))
cases("jaxnets.train.ProgressBar",
      Case("lines a string", lambda: train.ProgressBar(lines="yes"), TypeError, r"lines must be True or False, got 'yes'", "lines"),
      Case("bar None", lambda: train.ProgressBar(bar=None), TypeError, r"bar must be True or False, got None", "bar"),
      Case("enabled 2", lambda: train.ProgressBar(enabled=2), TypeError, r"enabled must be True or False, got 2", "enabled"))
cases("jaxnets.train.Hook",
      Case("fn a string", lambda: train.Hook("f"), TypeError, r"a hook must be callable as hook\(progress\)", "hook"),
      Case("every negative", lambda: train.Hook(lambda p: None, every=-1), ValueError, _EVERY + " -1", "every"),
      Case("every in epochs misspelt", lambda: train.Hook(lambda p: None, every=(1, "epoch")), ValueError, r"every must count 'steps' or 'epochs'", "every"))
# jaxnets.checkpoint (the folder's files are written in the test's temporary folder)
_CP = {"dense_0": {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}}


def _saved(name="p.safetensors"):
    checkpoint.save_params(name, _CP)
    return name


def _file(name, text="x"):
    with open(name, "w") as f:
        f.write(text)
    return name


cases("jaxnets.checkpoint.save_params",
      Case("path an int", lambda: checkpoint.save_params(3, _CP), TypeError, r"path must be a file path \(str or os.PathLike\), got int 3", "path"),
      Case("path a directory", lambda: checkpoint.save_params(".", _CP), ValueError, r"path '.' is a directory: give a file path", "path"),
      Case("a folder that is a file", lambda: checkpoint.save_params(os.path.join(_file("f"), "p.safetensors"), _CP), ValueError,
           r"path 'f/p.safetensors' is inside .*f, which is a file, not a folder", "path"),
      Case("a string leaf", lambda: checkpoint.save_params("p.safetensors", {"w": "abc"}), TypeError, r"params\['w'\] must be an array, got str", "params"),
      Case("Python floats", lambda: checkpoint.save_params("p.safetensors", {"w": [1.0, 2.0]}), TypeError, r"params\['w'\]\[0\] must be an array, got float", "params"),
      Case("a key leaf", lambda: checkpoint.save_params("p.safetensors", {"k": K}), TypeError,
           r"params\['k'\] must hold numbers .*got dtype key<fry>: store jax.random.key_data\(key\)", "params"),
      Case("no params", lambda: checkpoint.save_params("p.safetensors", {}), ValueError, r"params has no arrays to save", "params"))
cases("jaxnets.checkpoint.load_params",
      Case("path an int", lambda: checkpoint.load_params(3, _CP), TypeError, r"path must be a file path", "path"),
      Case("a missing file", lambda: checkpoint.load_params("nope.safetensors", _CP), FileNotFoundError, r"no params file at nope.safetensors", "nope.safetensors"),
      Case("a directory", lambda: checkpoint.load_params(".", _CP), ValueError, r"path '.' is a directory, not a params file", "path"),
      Case("not safetensors", lambda: checkpoint.load_params(_file("g.txt", "hi"), _CP), ValueError, r"g.txt is not a readable safetensors file", "g.txt"),
      Case("like with a string leaf", lambda: checkpoint.load_params(_saved(), {"dense_0": "w"}), TypeError,
           r"like\['dense_0'\] must be an array or a jax.ShapeDtypeStruct", "like"),
      Case("like of another shape", lambda: checkpoint.load_params(_saved(), {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}}), ValueError,
           r"does not fit the params:\n  dense_0/w: expected shape \(2, 2\), the file has \(2, 3\)", "dense_0/w"))


def _folder(name, **kwargs):
    folder = checkpoint.Checkpoints(name, async_save=False, **kwargs)
    try:
        return folder
    finally:
        folder.close()


cases("jaxnets.checkpoint.Checkpoints",
      Case("directory an int", lambda: checkpoint.Checkpoints(3), TypeError, r"checkpoint directory must be a path, got 3", "directory"),
      Case("keep 0", lambda: checkpoint.Checkpoints("c", keep=0), ValueError, r"checkpoint keep must be a positive int, got 0", "keep"),
      Case("best an int", lambda: checkpoint.Checkpoints("c", best=3), TypeError, r"checkpoint best must be a history name", "best"),
      Case("best_mode unknown", lambda: checkpoint.Checkpoints("c", best="test_loss", best_mode="lower"), ValueError, r"best_mode must be 'min' or 'max'", "best_mode"),
      Case("async_save a string", lambda: checkpoint.Checkpoints("c", async_save="yes"), TypeError, r"async_save " + _BOOL, "async_save"),
      Case("lock a string", lambda: checkpoint.Checkpoints("c", lock="yes"), TypeError, r"lock " + _BOOL, "lock"),
      Case("a directory that is a file", lambda: checkpoint.Checkpoints(_file("cf")), ValueError, r"checkpoint directory .*cf is a file: give a folder", "directory"),
      Case("save: an id that is a string", lambda: _folder("c1").save("1", _TS, {}), TypeError, r"epoch must be an int >= 0 \(the checkpoint's id\), got '1'", "epoch"),
      Case("save: a negative id", lambda: _folder("c2").save(-1, _TS, {}), ValueError, r"epoch must be an int >= 0 .*got -1", "epoch"),
      Case("save: history a list", lambda: _folder("c3").save(1, _TS, [1]), TypeError, r"history must be a dict of lists", "history"),
      Case("restore: an id that is a string", lambda: _folder("c4").restore(_TS, epoch="1"), TypeError, r"epoch must be an int >= 0", "epoch"),
      Case("restore: like None", lambda: _folder("c5").restore(None), ValueError, r"like must be a state of the run", "like"))
cases("jaxnets.checkpoint.Checkpoint",
      Case("directory an int", lambda: checkpoint.Checkpoint(3), TypeError, r"checkpoint directory must be a path or a Checkpoints, got int 3", "directory"),
      Case("save unknown", lambda: checkpoint.Checkpoint("d", save="never"), ValueError, r"save must be 'always' or 'improved', got 'never'", "save"),
      Case("resume unknown", lambda: checkpoint.Checkpoint("d", resume="first"), ValueError, r"resume must be 'latest', 'best' or None", "resume"),
      Case("keep 0", lambda: checkpoint.Checkpoint("d", keep=0), ValueError, r"checkpoint keep must be a positive int, got 0", "keep"),
      Case("keep a string", lambda: checkpoint.Checkpoint("d", keep="3"), ValueError, r"checkpoint keep must be a positive int, got '3'", "keep"),
      Case("best an int", lambda: checkpoint.Checkpoint("d", best=3), TypeError, r"checkpoint best must be a history name", "best"),
      Case("best_mode unknown", lambda: checkpoint.Checkpoint("d", best="test_loss", best_mode="lower"), ValueError, r"best_mode must be 'min' or 'max'", "best_mode"),
      Case("check_config a string", lambda: checkpoint.Checkpoint("d", check_config="yes"), TypeError, r"check_config " + _BOOL, "check_config"),
      Case("async_save a string", lambda: checkpoint.Checkpoint("d", async_save="yes"), TypeError, r"async_save " + _BOOL, "async_save"),
      Case("every 0", lambda: checkpoint.Checkpoint("d", every=0), ValueError, _EVERY + " 0", "every"),
      Case("every in epochs misspelt", lambda: checkpoint.Checkpoint("d", every=(1, "epoch")), ValueError, r"every must count 'steps' or 'epochs'", "every"),
      Case("save=improved without best", lambda: checkpoint.Checkpoint("d", save="improved"), ValueError, r"need best=", "best"),
      Case("best the history lacks", lambda: _folder("c6", best="val").save(1, _TS, {"step": [1], "train_loss": [0.5]}), ValueError,
           r"checkpoint best must be one of the history's names \['step', 'train_loss'\], got 'val'", "best"))


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


def _all_cases():
    for function, items in sorted(CASES.items()):
        for case in items:
            yield pytest.param(case, id=f"{function}: {case.id}")


@pytest.mark.parametrize("case", list(_all_cases()))
def test_bad_input_is_named(case):
    with pytest.raises(case.exception, match=case.match) as info:
        case.call()
    assert case.argument in str(info.value), f"the message does not name {case.argument!r}: {info.value}"


def public_functions(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name)
        if inspect.isfunction(obj) and (module_name != "jaxnets._checks" or obj.__module__ == module_name):
            out.append(f"{module_name}.{name}")
    return out


def public_classes(module_name: str) -> list[str]:
    """The public classes (their constructors may have cases too; coverage demands only functions)."""
    module = importlib.import_module(module_name)
    return [f"{module_name}.{n}" for n in getattr(module, "__all__", []) if inspect.isclass(getattr(module, n))]


def test_coverage():
    """Every public function of the modules in MODULES has bad-input cases or a stated reason."""
    missing = [f for m in MODULES for f in public_functions(m) if f not in CASES and f not in EXEMPT]
    assert not missing, f"public functions without bad-input cases (add cases, or a reason in EXEMPT): {missing}"
    public = {g for m in MODULES for g in public_functions(m) + public_classes(m)}
    stale = [f for f in list(CASES) + list(EXEMPT) if f.rsplit(".", 1)[0] in MODULES and f not in public]
    assert not stale, f"cases for functions that are not public (renamed?): {stale}"


# ---------------------------------------------------------------------------
# What the checks must keep accepting: schedules, inject_hyperparams (eager and jitted), traced hyperparameters
# ---------------------------------------------------------------------------

_G = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, 0.0, -0.25])}
_P = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}


def _run_steps(opt, steps=3, jit=True):
    update = jax.jit(opt.update) if jit else opt.update
    state, params = opt.init(_P), _P
    for _ in range(steps):
        u, state = update(_G, state, params)
        params = optax.apply_updates(params, u)
    return params


@pytest.mark.standard_promotion("optax's inject_hyperparams and schedules mix int32 counts with floats")
@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_inject_hyperparams_and_schedules_still_work(name, jit):
    """A warm-up schedule starting at 0, injected as a (traced or 0-d concrete) array, equals optax's twin step by step."""
    schedule = optax.linear_schedule(0.0, 0.1, 4)
    ours = _run_steps(optax.inject_hyperparams(getattr(optim, name))(learning_rate=schedule), jit=jit)
    theirs = _run_steps(optax.inject_hyperparams(getattr(optax, name))(learning_rate=schedule), jit=jit)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    plain = _run_steps(getattr(optim, name)(schedule), jit=jit)  # a schedule passed directly, against optax's
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(_run_steps(getattr(optax, name)(schedule), jit=jit))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lion"])
def test_traced_hyperparameters_under_vmap(name):
    """A population's members each get a traced scalar learning rate (and b1): accepted, one result per member."""
    def member(lr, b1):
        kwargs = {} if name == "sgd" else {"b1": b1}
        opt = getattr(optim, name)(lr, **kwargs)
        return opt.update(_G, opt.init(_P), _P)[0]["w"]

    out = jax.vmap(member)(jnp.array([0.1, 0.2]), jnp.array([0.9, 0.5]))
    assert out.shape == (2, 2, 3) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.standard_promotion("optax's adamax mixes int32 counts with floats")
def test_adamax_float16_zero_gradient_gets_no_update_not_nan():
    """eps=1e-8 rounds to 0 in float16: optax's adamax divides 0/0 where a gradient is 0; ours leaves it alone.
    In float32 (u > 0 everywhere) the two agree bit for bit, zero gradients included."""
    g16 = {"w": jnp.array([0.0, 0.5, -0.25], jnp.float16)}
    p16 = {"w": jnp.ones(3, jnp.float16)}
    opt = optim.adamax(1e-2)
    u, _ = opt.update(g16, opt.init(p16), p16)
    assert u["w"].dtype == jnp.float16 and float(u["w"][0]) == 0.0 and bool(jnp.all(jnp.isfinite(u["w"])))
    ref, _ = optax.adamax(1e-2).update(g16, optax.adamax(1e-2).init(p16), p16)
    np.testing.assert_array_equal(u["w"][1:], ref["w"][1:])  # equal where optax is finite
    g32, p32 = {"w": g16["w"].astype(jnp.float32)}, {"w": p16["w"].astype(jnp.float32)}
    u32, _ = opt.update(g32, opt.init(p32), p32)
    ref32, _ = optax.adamax(1e-2).update(g32, optax.adamax(1e-2).init(p32), p32)
    np.testing.assert_array_equal(u32["w"], ref32["w"])
