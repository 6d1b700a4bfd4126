"""Populations: members equal independent fits; grid; best member; errors."""

import functools

import jax
import numpy as np
import optax
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets import data, losses, optim, population

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam and inject_hyperparams mix int32 counts with floats"


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def model():
    return L.serial(L.Dense(16), L.Relu(), L.Dropout(0.1), L.Dense(10))


def test_grid_is_the_cartesian_product():
    assert population.grid(seed=[0, 1], learning_rate=[0.1, 0.01]) == {
        "seed": [0, 0, 1, 1], "learning_rate": [0.1, 0.01, 0.1, 0.01]}
    with pytest.raises(ValueError, match="grid axis 'seed' is empty"):
        population.grid(seed=[])


def test_members_equal_independent_runs(digits):
    """With jaxnets' hand-written AdamW; lesson 4 checks the same with optax.adam."""
    factory = optim.adamw
    members = population.grid(seed=[0, 4], learning_rate=[1e-3, 1e-2])
    state, history = population.fit_population(model(), CE, factory, digits, members=members, epochs=2,
                                               epochs_per_call=2, progress=False)
    assert history["test_accuracy"].shape == (2, 4) and history["members"] == members
    for i in (1, 2):
        # The same optimizer alone: the learning rate held in the state, as in the population. (A constant
        # learning rate rounds differently, and Adam magnifies last-bit differences; the lesson shows it.)
        alone_optimizer = optax.inject_hyperparams(factory)(learning_rate=members["learning_rate"][i])
        alone, alone_history = jaxnets.fit(model(), CE, alone_optimizer, digits, epochs=2, seed=members["seed"][i],
                                           progress=False)
        one = population.member(state, i)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one.params, alone.params)
        np.testing.assert_allclose(history["train_loss"][:, i], alone_history["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(history["test_accuracy"][:, i], alone_history["test_accuracy"], atol=1 / 360 + 1e-6)
    assert population.best_member(history) == int(np.argmax(history["test_accuracy"][-1]))


def test_members_with_sgd_equal_plain_runs_bitwise(digits):
    state, _ = population.fit_population(model(), CE, optax.sgd, digits, members={"seed": [2, 7], "learning_rate": [0.1, 0.03]},
                                         epochs=1, progress=False)
    alone, _ = jaxnets.fit(model(), CE, optax.sgd(0.03), digits, epochs=1, seed=7, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, population.member(state, 1).params, alone.params)


def test_seeds_only_take_a_built_optimizer(digits):
    state, history = population.fit_population(model(), CE, optax.sgd(0.1), digits, members={"seed": [3, 5, 3]},
                                               epochs=1, progress=False)
    more, _ = population.fit_population(model(), CE, optax.sgd(0.1), digits, state=state, epochs=1, progress=False)
    assert int(population.member(more, 2).step) == 2 * int(population.member(state, 2).step)
    np.testing.assert_array_equal(history["train_loss"][:, 0], history["train_loss"][:, 2])  # same seed, same run
    assert history["train_loss"][0, 0] != history["train_loss"][0, 1]
    assert population.best_member(history, "train_loss") == int(np.argmin(history["train_loss"][-1]))
    assert int(population.member(state, 1).step) == int(np.ceil(digits.x_train.shape[0] / 64))


def test_fixed_arguments_through_partial(digits):
    members = {"learning_rate": [0.05, 0.2]}
    _, history = population.fit_population(model(), CE, functools.partial(optax.sgd, momentum=0.9), digits,
                                           members=members, epochs=1, progress=False)
    assert history["members"] == {"seed": [0, 0], **members}
    assert history["train_loss"][0, 0] != history["train_loss"][0, 1]


def test_continuing_equals_one_run_and_takes_new_hyperparameters(digits):
    members = {"seed": [0, 1], "learning_rate": [3e-3, 1e-2]}
    straight, straight_history = population.fit_population(model(), CE, optax.adam, digits, members=members, epochs=2,
                                                           progress=False)
    first, _ = population.fit_population(model(), CE, optax.adam, digits, members=members, epochs=1, progress=False)
    rates = {"learning_rate": members["learning_rate"]}
    second, history = population.fit_population(model(), CE, optax.adam, digits, members=rates, state=first, epochs=1,
                                                progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, second.params, straight.params)
    np.testing.assert_array_equal(history["test_accuracy"][-1], straight_history["test_accuracy"][-1])
    assert history["members"] == rates
    # Without members the state's own hyperparameters carry on: the same as passing them again.
    kept, _ = population.fit_population(model(), CE, optax.adam, digits, state=first, epochs=1, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, kept.params, straight.params)
    # Perturbed hyperparameters take effect: learning rate 0 for member 0 freezes it, member 1 moves on.
    frozen, _ = population.fit_population(model(), CE, optax.adam, digits, members={"learning_rate": [0.0, 1e-2]},
                                          state=first, epochs=1, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, population.member(frozen, 0).params, population.member(first, 0).params)
    assert not np.array_equal(population.member(frozen, 1).params["dense_0"]["w"], population.member(first, 1).params["dense_0"]["w"])
    with pytest.raises(ValueError, match="members must not hold 'seed' when continuing from a state"):
        population.fit_population(model(), CE, optax.adam, digits, members=members, state=first, progress=False)
    with pytest.raises(ValueError, match=r"state must hold 3 members \(one per value in members\), got step of shape \(2,\)"):
        population.fit_population(model(), CE, optax.adam, digits, members={"learning_rate": [0.1] * 3}, state=first)


def test_errors(digits):
    with pytest.raises(ValueError, match=r"members must all have the same, positive number of values, got lengths"):
        population.fit_population(model(), CE, optax.adam, digits, members={"seed": [0, 1], "learning_rate": [0.1]})
    with pytest.raises(TypeError, match="optimizer must be a factory such as optax.adam"):
        population.fit_population(model(), CE, optax.adam(0.1), digits, members={"learning_rate": [0.1]})
    with pytest.raises(TypeError, match=r"does not accept the hyperparameters \['rate'\]"):
        population.fit_population(model(), CE, optax.adam, digits, members={"rate": [0.1]})
    with pytest.raises(TypeError, match="members\\['seed'\\] must hold ints, got 0.5"):
        population.fit_population(model(), CE, optax.sgd(0.1), digits, members={"seed": [0.5]})
    with pytest.raises(TypeError, match="members must be a non-empty mapping"):
        population.fit_population(model(), CE, optax.sgd(0.1), digits, members=[0, 1])
    with pytest.raises(ValueError, match=r"metric must be one of the population's metrics"):
        population.best_member({"train_loss": np.zeros((2, 3))}, "test_accuracy")
    with pytest.raises(ValueError, match="not a population's"):
        population.member(jaxnets.init_train_state(model(), optax.sgd(0.1), (-1, 64)), 0)
