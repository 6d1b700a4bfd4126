"""Training: the step, fused epochs against a Python loop, evaluation, state, trace counts, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets import data, losses, train

CE = losses.softmax_cross_entropy_with_integer_labels

STANDARD_PROMOTION_REASON = "optax.adam mixes its int32 count with floats in bias correction"


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def small_mlp():
    return L.serial(L.Dense(32), L.Relu(), L.Dense(10))


def test_step_is_sgd_by_hand(digits, key):
    """One step with optax.sgd equals params - lr * jax.grad(loss) computed independently."""
    model, opt = small_mlp(), optax.sgd(0.1)
    state = train.init_train_state(model, opt, digits.input_shape, key=key)
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    grads = jax.grad(lambda p: CE(model.apply(p, x), y))(state.params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, state.params, grads)
    before = jax.tree_util.tree_map(jnp.copy, state.params)
    new_state, metrics = train.make_train_step(model, CE, opt, metrics={"accuracy": losses.accuracy})(state, x, y)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected)
    np.testing.assert_allclose(metrics["loss"], CE(model.apply(before, x), y), rtol=1e-5)
    assert int(new_state.step) == 1


def python_loop(model, opt, x, y, *, epochs, batch_size, seed, drop_last=False):
    """The documented batching, step by step from Python: the independent reference for fused epochs."""
    state = train.init_train_state(model, opt, (-1,) + x.shape[1:], seed=seed)
    step = train.make_train_step(model, CE, opt)
    for _ in range(epochs):
        for idx in np.asarray(train.epoch_indices(state, x.shape[0], batch_size, drop_last=drop_last)):
            state, _ = step(state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return state


@pytest.mark.parametrize("drop_last", [False, True])
def test_fit_equals_a_python_loop_of_steps(digits, drop_last):
    """The fused epochs do what the documented batching says, step for step (dropout included)."""
    model, opt = L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10)), optax.adam(1e-3)
    x, y = digits.x_train[:300], digits.y_train[:300]
    bs, epochs = 64, 3
    fused, _ = jaxnets.fit(model, CE, opt, (x, y), epochs=epochs, batch_size=bs, seed=3, drop_last=drop_last,
                           epochs_per_call=2, progress=False)
    looped = python_loop(model, opt, x, y, epochs=epochs, batch_size=bs, seed=3, drop_last=drop_last)
    steps = 300 // bs if drop_last else math.ceil(300 / bs)
    assert int(fused.step) == int(looped.step) == epochs * steps
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), fused.params, looped.params)


def test_epoch_indices_cover_the_data(digits, key):
    state = train.init_train_state(small_mlp(), optax.sgd(0.1), (-1, 64), key=key)
    wrapped = np.asarray(train.epoch_indices(state, 10, 4))
    assert wrapped.shape == (3, 4)
    order = wrapped.ravel()[:10]
    assert sorted(order) == list(range(10))
    np.testing.assert_array_equal(wrapped.ravel()[10:], order[:2])  # the last batch wraps to the start of the order
    dropped = np.asarray(train.epoch_indices(state, 10, 4, drop_last=True))
    np.testing.assert_array_equal(dropped.ravel(), order[:8])  # same order, the 2 that do not fill a batch skipped
    later = np.asarray(train.epoch_indices(state._replace(step=state.step + 3), 10, 4))
    assert not np.array_equal(later, wrapped)  # each epoch (starting step) has its own order


@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 60_000])
def test_permutation_is_a_permutation(n, key):
    perm = np.asarray(train.permutation(key, n))
    assert perm.dtype == np.int32 and perm.shape == (n,)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))


def test_permutation_is_uniform():
    """Every index equally likely at every position, every ordered pair equally likely to be adjacent,
    and all 3! orders of 3 equally likely: chi-squared tests at the 0.1% level over many keys."""
    from scipy import stats

    for n, draws in ((3, 6000), (7, 7000), (20, 8000)):
        perms = np.asarray(jax.vmap(lambda k: train.permutation(k, n))(jax.random.split(jax.random.key(11), draws)))
        positions = np.stack([(perms == v).sum(axis=0) for v in range(n)])  # (value, position) counts
        assert stats.chisquare(positions.ravel()).pvalue > 1e-3
        pairs = np.zeros((n, n))
        np.add.at(pairs, (perms[:, :-1].ravel(), perms[:, 1:].ravel()), 1)
        assert stats.chisquare(pairs[~np.eye(n, dtype=bool)]).pvalue > 1e-3
        if n == 3:
            _, counts = np.unique(perms, axis=0, return_counts=True)
            assert len(counts) == 6 and stats.chisquare(counts).pvalue > 1e-3


def test_step_compiles_to_the_raw_jax_program(digits, key):
    """The jaxnets step of a deterministic model costs what a hand-written step costs, in XLA's own count."""
    model, opt = L.serial(L.Dense(128), L.Relu(), L.Dense(10)), optax.adam(1e-3)
    state = train.init_train_state(model, opt, digits.input_shape, key=key)
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])

    def raw(params, opt_state, x, y):
        def objective(p):
            h = jax.nn.relu(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
            return optax.softmax_cross_entropy_with_integer_labels(h @ p["dense_1"]["w"] + p["dense_1"]["b"], y).mean()

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def cost(compiled):
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return analysis["flops"], analysis["bytes accessed"]

    ours = cost(train.make_train_step(model, CE, opt).lower(state, x, y).compile())
    reference = cost(jax.jit(raw, donate_argnums=(0, 1)).lower(state.params, state.opt_state, x, y).compile())
    assert ours[0] == pytest.approx(reference[0], rel=1e-3)  # the only extra op is step + 1
    assert ours[1] == pytest.approx(reference[1], rel=1e-2)


def test_fit_is_deterministic_for_a_seed(digits):
    model, opt = L.serial(L.Dense(32), L.Relu(), L.Dropout(0.3), L.Dense(10)), optax.adam(1e-3)
    runs = [jaxnets.fit(model, CE, opt, digits, epochs=2, seed=s, progress=False) for s in (0, 0, 1)]
    jax.tree_util.tree_map(np.testing.assert_array_equal, runs[0][0].params, runs[1][0].params)
    assert runs[0][1]["test_accuracy"] == runs[1][1]["test_accuracy"]
    assert not np.array_equal(runs[0][0].params["dense_0"]["w"], runs[2][0].params["dense_0"]["w"])


def test_fit_history_and_learning(digits):
    state, history = jaxnets.fit(small_mlp(), CE, optax.adam(3e-3), digits, epochs=5, progress=False)
    assert history["epoch"] == [1, 2, 3, 4, 5]
    assert set(history) == {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "time"}
    assert all(len(v) == 5 for v in history.values())
    assert history["train_loss"][-1] < history["train_loss"][0] / 3
    assert history["test_accuracy"][-1] > 0.9
    # The recorded test figures are evaluate's on the final params.
    final = jaxnets.evaluate(small_mlp(), state.params, (digits.x_test, digits.y_test), CE)
    assert final["accuracy"] == pytest.approx(history["test_accuracy"][-1], abs=1e-6)


def test_evaluate_is_exact_with_a_partial_last_batch(digits, key):
    model = small_mlp()
    _, params = model.init(key, digits.input_shape)
    x, y = digits.x_test[:103], digits.y_test[:103]
    result = jaxnets.evaluate(model, params, (x, y), CE, batch_size=25)  # 5 batches, the last padded
    logits = model.apply(params, jnp.asarray(x))
    assert result["loss"] == pytest.approx(float(CE(logits, jnp.asarray(y))), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float(losses.accuracy(logits, jnp.asarray(y))), abs=1e-7)
    np.testing.assert_allclose(jaxnets.predict(model, params, x, batch_size=25), logits, rtol=1e-5, atol=1e-6)


def test_fit_with_batch_norm_tracks_the_data_statistics(digits):
    model = L.serial(L.Dense(32), L.BatchNorm(momentum=0.9), L.Relu(), L.Dense(10))
    state, history = jaxnets.fit(model, CE, optax.adam(3e-3), digits, epochs=4, progress=False)
    running = state.model_state["batch_norm_0"]
    hidden = np.asarray(L.Dense(32).apply(state.params["dense_0"], jnp.asarray(digits.x_train)))
    # The running statistics follow the hidden layer's statistics over the training set.
    np.testing.assert_allclose(running["mean"], hidden.mean(axis=0), atol=0.1)
    np.testing.assert_allclose(running["var"], hidden.var(axis=0), rtol=0.2)
    assert history["test_accuracy"][-1] > 0.85


def test_fit_continues_from_a_state_without_consuming_it(digits):
    model, opt = small_mlp(), optax.sgd(0.05)
    state, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, progress=False)
    snapshot = jax.tree_util.tree_map(np.asarray, state.params)
    more, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, state=state, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, state.params, snapshot)  # still readable, unchanged
    assert int(more.step) == 2 * int(state.step)


def test_each_program_compiles_once(digits):
    traces = {"n": 0}

    def counting_loss(outputs, labels):
        traces["n"] += 1
        return CE(outputs, labels)

    jaxnets.fit(small_mlp(), counting_loss, optax.adam(1e-3), digits, epochs=1, progress=False)
    once = traces["n"]
    # the step, traced once (none when an earlier test left the same program in the cache), and the test set's
    # evaluation: the program traces its segment to a jaxpr once, never again for the metrics' shapes
    assert 1 <= once <= 2
    traces["n"] = 0
    jaxnets.fit(small_mlp(), counting_loss, optax.adam(1e-3), digits, epochs=5, epochs_per_call=2, progress=False)
    assert traces["n"] <= once + 1  # calls of up to 2 epochs: one program of its own (traced once), not one per call


def test_epochs_per_call_changes_nothing_but_round_trips(digits):
    model, opt = L.serial(L.Dense(16), L.Relu(), L.Dropout(0.1), L.Dense(10)), optax.adam(3e-3)
    one, h1 = jaxnets.fit(model, CE, opt, digits, epochs=5, seed=2, progress=False)
    three, h3 = jaxnets.fit(model, CE, opt, digits, epochs=5, seed=2, epochs_per_call=3, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, one.params, three.params)
    for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert h1[name] == h3[name]
    assert h3["epoch"] == [1, 2, 3, 4, 5]
    # without test data (evaluated between calls), three epochs come back in one round-trip
    _, h_fused = jaxnets.fit(model, CE, opt, (digits.x_train, digits.y_train), epochs=5, seed=2, epochs_per_call=3,
                             callbacks=[])
    assert h_fused["time"][0] == h_fused["time"][2] < h_fused["time"][3]


def test_regression_without_accuracy(rng):
    x = rng.normal(size=(256, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)
    state, history = jaxnets.fit(L.Dense(1), losses.mean_squared_error, optax.adam(0.05), (x, y),
                                 test=(x[:50], y[:50]), epochs=30, batch_size=32, progress=False)
    assert "train_accuracy" not in history and history["test_loss"][-1] < 1e-3
    np.testing.assert_allclose(state.params["w"][:, 0], [1.0, -2.0, 0.5], atol=0.02)


def test_fit_errors(digits):
    model, opt = small_mlp(), optax.adam(1e-3)
    x, y = digits.x_train, digits.y_train
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        jaxnets.fit(model, CE, opt, (x, y), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got -1"):
        jaxnets.fit(model, CE, opt, (x, y), epochs=-1, progress=False)
    with pytest.raises(ValueError, match=r"batch_size must be at most the number of examples \(1437\), got 5000"):
        jaxnets.fit(model, CE, opt, (x, y), batch_size=5000, progress=False)
    with pytest.raises(ValueError, match=r"data x and y must have the same number of examples, got x \(1437, 64\) and y \(1436,\)"):
        jaxnets.fit(model, CE, opt, (x, y[:-1]), progress=False)
    with pytest.raises(ValueError, match=r"data is empty \(0 examples\)"):
        jaxnets.fit(model, CE, opt, (x[:0], y[:0]), progress=False)
    with pytest.raises(ValueError, match=r"data labels must lie in \[0, 10\) for 10 classes, got values in \[0, 12\]"):
        jaxnets.fit(model, CE, opt, (x, np.where(y == 9, 12, y)), progress=False)
    with pytest.raises(ValueError, match=r"test x must have the feature shape of data x \(64,\), got \(63,\)"):
        jaxnets.fit(model, CE, opt, (x, y), test=(x[:, :63], y), progress=False)
    with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
        jaxnets.fit(model, CE, 0.01, (x, y), progress=False)
    with pytest.raises(TypeError, match="model must be a jaxnets Layer"):
        jaxnets.fit(lambda p, x: x, CE, opt, (x, y), progress=False)
    with pytest.raises(TypeError, match=r"data must be a pair \(x, y\) of arrays or a jaxnets.data.Dataset, got ndarray"):
        jaxnets.fit(model, CE, opt, x, progress=False)
    with pytest.raises(ValueError, match="epochs_per_call must be a positive integer, got 0"):
        jaxnets.fit(model, CE, opt, (x, y), epochs_per_call=0, progress=False)
    with pytest.raises(TypeError, match="drop_last must be a bool, got 'yes'"):
        jaxnets.fit(model, CE, opt, (x, y), drop_last="yes", progress=False)
    with pytest.raises(TypeError, match="seed must be an int, got 1.5"):
        jaxnets.fit(model, CE, opt, (x, y), seed=1.5, progress=False)
    trained, _ = jaxnets.fit(model, CE, opt, (x, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"state.opt_state does not fit this optimizer.*EmptyState.*ScaleByAdamState"):
        jaxnets.fit(model, CE, optax.sgd(0.1), (x, y), state=trained, progress=False)
    with pytest.raises(ValueError, match=r"dense_0: Dense\(32\) expects inputs with last dimension 64"):
        jaxnets.fit(model, CE, opt, (x[:, :60], y), state=trained, progress=False)


def test_dropout_model_without_key_in_training_is_impossible_through_fit(digits):
    """fit always passes a key; a hand-written loop that forgets one gets a clear error."""
    model = L.serial(L.Dense(8), L.Dropout(0.5), L.Dense(10))
    _, params = model.init(jax.random.key(0), digits.input_shape)
    with pytest.raises(ValueError, match="dropout_0: Dropout\\(drop_prob=0.5\\) is random in training"):
        jax.grad(lambda p: CE(model.apply(p, jnp.asarray(digits.x_train[:4]), train=True), jnp.asarray(digits.y_train[:4])))(params)


def test_repeated_evaluation_compiles_once(digits, key):
    traces = {"n": 0}

    def counting(x):
        traces["n"] += 1
        return jnp.tanh(x)

    model = L.serial(L.Dense(8), L.Elementwise(counting, "counting"), L.Dense(10))
    _, params = model.init(key, digits.input_shape)
    for _ in range(3):
        jaxnets.evaluate(model, params, (digits.x_test, digits.y_test), CE, batch_size=128)
    assert traces["n"] == 1
