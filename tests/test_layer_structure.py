"""Layers compare and hash by structure: a rebuilt identical model reuses what was compiled for the first."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import initializers as inits

from layer_cases import CASES


def _mlp():
    return L.serial(L.Dense(32), L.Relu(), L.residual(L.Dense(32), L.Tanh()), L.Dropout(0.3), L.Dense(10))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_layer_built_twice_is_equal_and_hashes_equal(case):
    a, b = case.make(), case.make()
    assert a is not b and a == b and hash(a) == hash(b)
    assert L.serial(a, L.Identity()) == L.serial(b, L.Identity())


def test_a_rebuilt_model_equals_the_first_in_sets_and_dicts():
    a, b = _mlp(), _mlp()
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1 and {a: 1}[b] == 1
    assert a != "serial(...)" and a != L.Dense(10)


@pytest.mark.parametrize("first, second", [
    (lambda: L.Dense(128), lambda: L.Dense(64)),
    (lambda: L.Dense(8), lambda: L.Dense(8, use_bias=False)),
    (lambda: L.Dense(8), lambda: L.Dense(8, w_init=inits.he_normal())),  # not in the spec, still counted
    (lambda: L.Dropout(0.3), lambda: L.Dropout(0.5)),
    (lambda: L.LeakyRelu(0.1), lambda: L.LeakyRelu(0.2)),
    (lambda: L.Relu(), lambda: L.Tanh()),
    (lambda: L.serial(L.Dense(4), L.Relu()), lambda: L.serial(L.Relu(), L.Dense(4))),
    (lambda: L.serial(L.Dense(4), L.Relu()), lambda: L.serial(L.Dense(4), L.Relu(), L.Identity())),
    (lambda: L.serial(L.Dense(4)), lambda: L.residual(L.Dense(4))),
    (lambda: L.Conv2D(4, (3, 3)), lambda: L.Conv2D(4, (3, 3), padding="VALID")),
], ids=lambda f: f().spec if callable(f) else str(f))
def test_other_hyperparameters_or_nesting_differ(first, second):
    a, b = first(), second()
    assert a != b and first() == a and second() == b


def test_layers_of_ones_own_are_equal_only_for_the_same_functions_and_values():
    def init(key, input_shape):
        return {"w": jax.random.normal(key, (input_shape[-1], 3))}

    def apply(params, x):
        return x @ params["w"]

    def apply_tanh(params, x):
        return jnp.tanh(x @ params["w"])

    assert L.define_layer("mine", init, apply) == L.define_layer("mine", init, apply)
    assert L.define_layer("mine", init, apply) != L.define_layer("mine", init, apply_tanh)
    # two lambdas with the same text at two places are two functions
    twice, thrice = L.Lambda(lambda x: 2 * x), L.Lambda(lambda x: 2 * x)
    assert twice != thrice
    # captured values count: arrays by their contents, scalars by value and type
    shift = lambda x, offset: x + offset  # noqa: E731
    assert L.Lambda(shift, offset=np.arange(3.0)) == L.Lambda(shift, offset=np.arange(3.0))
    assert L.Lambda(shift, offset=np.arange(3.0)) != L.Lambda(shift, offset=np.arange(1.0, 4.0))
    assert L.Lambda(shift, offset=jnp.ones(3)) == L.Lambda(shift, offset=jnp.ones(3))
    assert L.Lambda(shift, offset=1) != L.Lambda(shift, offset=1.0)


def test_values_without_value_equality_compare_by_identity_and_recursive_closures_end():
    class Table:  # no __eq__: two instances may differ
        def __init__(self):
            self.scale = 2.0

    shared = Table()
    scaled = lambda x, table: table.scale * x  # noqa: E731
    assert L.Lambda(scaled, table=shared) == L.Lambda(scaled, table=shared)
    assert L.Lambda(scaled, table=shared) != L.Lambda(scaled, table=Table())

    def power(x, n):
        return x if n == 1 else x * power(x, n - 1)  # refers to itself through its closure

    layer = L.Lambda(lambda x: power(x, 3))
    assert layer == layer and hash(layer) == hash(layer)
    np.testing.assert_allclose(layer.apply({}, jnp.full((2,), 2.0)), [8.0, 8.0])


def test_a_rebuilt_model_reuses_the_compiled_program():
    """One trace (and compilation) for two separately built identical models, under jit and lru_cache alike."""
    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def forward(model, params, x):
        traces.append(model)  # runs once per trace
        return model.apply(params, x)

    x = jnp.ones((4, 16))
    first, second = _mlp(), _mlp()
    _, params = first.init(jax.random.key(0), x.shape)
    np.testing.assert_array_equal(forward(first, params, x), forward(second, params, x))
    assert len(traces) == 1
    other = L.serial(L.Dense(10))
    forward(other, other.init(jax.random.key(0), x.shape)[1], x)
    assert len(traces) == 2

    built = []

    @functools.lru_cache(maxsize=None)
    def program(model):
        built.append(model)
        return jax.jit(model.apply)

    assert program(_mlp()) is program(_mlp()) and len(built) == 1


def test_repr_is_the_nested_spec():
    assert repr(L.serial(L.Dense(128), L.Relu(), L.Dense(10))) == "serial(Dense(128), Relu(), Dense(10))"
    assert repr(L.serial(L.Dense(8), L.residual(L.Dense(8), L.Relu()))) == "serial(Dense(8), residual(Dense(8), Relu()))"
