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

import gzip
import importlib
import inspect
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnets import _checks, activations, data, initializers, losses, optim


class Case(NamedTuple):
    """One bad call: ``call()`` must raise ``exception`` whose message matches ``match`` and contains ``argument``."""

    id: str
    call: Callable[[], Any]
    exception: type
    match: str
    argument: str


# Modules whose public functions (those in ``__all__``) must each have cases here or a reason in EXEMPT.
MODULES = ["jaxnets.optim"]

# "module.name" -> why it has no bad-input case.
EXEMPT: dict[str, str] = {}

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
        Case("nan array lr in a population", lambda: make(np.array([0.1, np.nan])), ValueError,
             r"learning_rate must be finite and >= 0, got nan at index 1", "learning_rate"),
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
            Case(f"{_arg} array out of range", lambda n=_name, a=_arg: getattr(optim, n)(1e-3, **{a: jnp.asarray([0.9, 1.5, 0.5])}),
                 ValueError, rf"{_arg} must be in \[0, 1\), got 1.5 at index 1", _arg),
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


def test_coverage():
    """Every public function of the modules in MODULES has bad-input cases or a stated reason."""
    missing = [f for m in MODULES for f in public_functions(m) if f not in CASES and f not in EXEMPT]
    assert not missing, f"public functions without bad-input cases (add cases, or a reason in EXEMPT): {missing}"
    stale = [f for f in list(CASES) + list(EXEMPT) if f.rsplit(".", 1)[0] in MODULES and f not in {g for m in MODULES for g in public_functions(m)}]
    assert not stale, f"cases for functions that are not public (renamed?): {stale}"
