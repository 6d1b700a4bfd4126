"""The open engine: pytree batches and outputs, objectives, transforms, replaceable gradients (DP-SGD), random
evaluation, TrainState.create, compile-once, hooks, history files, divergence, and the bad inputs of issue 11."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets import data, losses, per_example, population, train

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam and optax.contrib.dpsgd mix int32 counts with floats"


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def mlp(hidden=32):
    return L.serial(L.Dense(hidden), L.Relu(), L.Dense(10))


def leaves_equal(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_objective_on_a_dict_batch_is_sgd_by_hand(digits, key):
    """A weight-penalised objective on a dict batch: one step equals params - lr * jax.grad, aux metrics logged."""
    model, opt = mlp(), optax.sgd(0.1)
    state = train.init_train_state(model, opt, digits.input_shape, key=key)

    def objective(params, batch, key, model_state):
        logits = model.apply(params, batch["image"])
        penalty = 1e-3 * sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(params))
        return CE(logits, batch["label"]) + penalty, {"penalty": penalty}

    batch = {"image": jnp.asarray(digits.x_train[:64]), "label": jnp.asarray(digits.y_train[:64])}
    reference = jax.grad(lambda p: CE(model.apply(p, batch["image"]), batch["label"])
                         + 1e-3 * sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(p)))(state.params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, state.params, reference)
    new, logged = train.make_step(objective, opt)(jax.device_put(state, may_alias=False), batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.params, expected)
    assert set(logged) == {"loss", "penalty"} and int(new.step) == 1


def test_fit_with_an_objective_and_a_dict_dataset(digits):
    model = mlp()

    def objective(params, batch, key, model_state):
        logits = model.apply(params, batch["image"])
        return CE(logits, batch["label"]), {"accuracy": losses.accuracy(logits, batch["label"])}

    train_set = {"image": digits.x_train, "label": digits.y_train}
    test_set = {"image": digits.x_test, "label": digits.y_test}
    state, history = jaxnets.fit(model, optimizer=optax.adam(3e-3), data=train_set, test=test_set, objective=objective,
                                 input_shape=digits.input_shape, epochs=4, progress=False)
    assert set(history) == {"epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "time"}
    final = jaxnets.evaluate(model, state.params, (digits.x_test, digits.y_test), CE)  # the loss form agrees
    assert history["test_loss"][-1] == pytest.approx(final["loss"], rel=1e-5)
    assert history["test_accuracy"][-1] == pytest.approx(final["accuracy"], abs=1e-6) and final["accuracy"] > 0.9


def test_tuple_outputs_through_fit_predict_and_evaluate(digits, key):
    """A two-headed model (class logits, a regression of the label): pytree outputs and targets everywhere."""
    model = L.serial(L.Dense(32), L.Relu(), L.FanOut(2), L.parallel(L.Dense(10), L.Dense(1)))

    def loss(outputs, targets):
        logits, value = outputs
        labels, numbers = targets
        return CE(logits, labels) + 0.01 * jnp.mean((value[:, 0] - numbers) ** 2)

    targets = (digits.y_train, digits.y_train.astype(np.float32))
    test = (digits.x_test, (digits.y_test, digits.y_test.astype(np.float32)))
    metrics = {"accuracy": lambda o, t: losses.accuracy(o[0], t[0])}
    state, history = jaxnets.fit(model, loss, optax.adam(3e-3), (digits.x_train, targets), test=test, metrics=metrics,
                                 epochs=3, progress=False)
    outputs = jaxnets.predict(model, state.params, digits.x_test, batch_size=100)
    assert isinstance(outputs, tuple) and outputs[0].shape == (360, 10) and outputs[1].shape == (360, 1)
    direct = model.apply(state.params, jnp.asarray(digits.x_test))
    np.testing.assert_allclose(outputs[1], direct[1], rtol=1e-5, atol=1e-5)
    scores = jaxnets.evaluate(model, state.params, test, loss, metrics=metrics, batch_size=100)
    assert scores["accuracy"] == pytest.approx(history["test_accuracy"][-1], abs=1e-6)
    empty = jaxnets.predict(model, state.params, digits.x_test[:0])
    assert empty[0].shape == (0, 10) and empty[1].shape == (0, 1)


def python_loop(step, state, data_tree, *, epochs, batch_size):
    for _ in range(epochs):
        for idx in np.asarray(train.epoch_indices(state, len(jax.tree_util.tree_leaves(data_tree)[0]), batch_size)):
            state, _ = step(state, jax.tree_util.tree_map(lambda a: jnp.asarray(a[idx]), data_tree))
    return state


def test_transform_runs_in_the_fused_epoch_with_its_own_key(digits):
    """Binarising each batch afresh on the device: the fused run equals a Python loop of make_step."""
    model, opt = mlp(), optax.adam(1e-3)

    def binarise(key, batch):
        x, y = batch
        return (jax.random.bernoulli(key, x / 16.0).astype(x.dtype), y)

    x, y = digits.x_train[:256], digits.y_train[:256]
    fused, _ = jaxnets.fit(model, CE, opt, (x, y), transform=binarise, epochs=2, seed=1, progress=False)
    start = train.init_train_state(model, opt, digits.input_shape, seed=1)
    step = train.make_step(train.objective_from_loss(model, CE), opt, transform=binarise)
    looped = python_loop(step, start, (x, y), epochs=2, batch_size=64)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), fused.params, looped.params)
    plain, _ = jaxnets.fit(model, CE, opt, (x, y), epochs=2, seed=1, progress=False)
    assert not np.allclose(plain.params["dense_0"]["w"], fused.params["dense_0"]["w"])


def test_dp_gradient_clips_each_example_and_adds_noise_of_the_stated_scale(digits, key):
    model = mlp(64)
    _, params = model.init(key, digits.input_shape)
    x, y = jnp.asarray(digits.x_train[:32]), jnp.asarray(digits.y_train[:32])
    objective = train.objective_from_loss(model, CE)
    clip_norm = 0.5
    # Reference: a Python loop of jax.grad over single examples, clipped by hand.
    clipped = []
    for b in range(32):
        g = jax.grad(lambda p: CE(model.apply(p, x[b:b + 1]), y[b:b + 1]))(params)
        norm = math.sqrt(sum(float(jnp.sum(leaf ** 2)) for leaf in jax.tree_util.tree_leaves(g)))
        clipped.append(jax.tree_util.tree_map(lambda leaf: leaf * min(1.0, clip_norm / norm), g))
    mean = jax.tree_util.tree_map(lambda *gs: sum(gs) / 32, *clipped)
    (_, _), quiet = per_example.dp_gradient(clip_norm, 0.0)(objective, params, (x, y), key, {})
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), quiet, mean)
    sigma = 2.0
    (_, _), noisy = per_example.dp_gradient(clip_norm, sigma)(objective, params, (x, y), key, {})
    z = np.concatenate([np.ravel((a - b) * 32 / (sigma * clip_norm)) for a, b in
                        zip(jax.tree_util.tree_leaves(noisy), jax.tree_util.tree_leaves(mean))])
    assert z.size > 4000 and abs(z.mean()) < 0.05 and z.std() == pytest.approx(1.0, abs=0.05)


@pytest.mark.filterwarnings("ignore:\"seed\" is deprecated:DeprecationWarning")
def test_dp_sgd_trains_through_fit_and_optax_dpsgd_needs_per_example_gradients(digits):
    model = mlp()
    state, history = jaxnets.fit(model, CE, optax.sgd(0.5), digits, gradient=per_example.dp_gradient(1.0, 0.5),
                                 epochs=3, drop_last=True, progress=False)
    assert history["test_accuracy"][-1] > 0.8
    dpsgd = optax.contrib.dpsgd(learning_rate=0.5, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0)
    with pytest.raises(TypeError, match=r"optax.contrib.dpsgd expects per-example gradients.*stacked_gradient"):
        jaxnets.fit(model, CE, dpsgd, digits, epochs=1, progress=False)
    # With per-example gradients it works, and (without noise) equals dp_gradient followed by SGD.
    theirs, _ = jaxnets.fit(model, CE, dpsgd, digits, gradient=per_example.stacked_gradient, epochs=1, progress=False)
    ours, _ = jaxnets.fit(model, CE, optax.sgd(0.5), digits, gradient=per_example.dp_gradient(1.0, 0.0), epochs=1,
                          progress=False)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), theirs.params, ours.params)


def test_random_evaluation_takes_a_key(digits, key):
    model = mlp()
    _, params = model.init(key, digits.input_shape)

    def noisy(params, batch, key, model_state):  # a Monte Carlo estimate: the loss at noise-perturbed inputs
        x, y = batch
        return CE(model.apply(params, x + jax.random.normal(key, x.shape)), y), {}

    test = (digits.x_test, digits.y_test)
    a = jaxnets.evaluate(model, params, test, objective=noisy, key=jax.random.key(1), batch_size=100)
    b = jaxnets.evaluate(model, params, test, objective=noisy, key=jax.random.key(1), batch_size=100)
    c = jaxnets.evaluate(model, params, test, objective=noisy, key=jax.random.key(2), batch_size=100)
    assert a == b and a["loss"] != c["loss"]
    exact = lambda p, batch, k, s: (CE(model.apply(p, batch[0]), batch[1]), {})  # noqa: E731
    weighted = jaxnets.evaluate(model, params, test, objective=exact, batch_size=100)  # 3 batches of 100, one of 60
    assert weighted["loss"] == pytest.approx(jaxnets.evaluate(model, params, test, CE)["loss"], rel=1e-5)


def test_train_state_from_existing_params(digits, key):
    model, opt = mlp(), optax.adam(1e-3)
    fresh = train.init_train_state(model, opt, digits.input_shape, key=key)
    made = jaxnets.TrainState.create(fresh.params, opt, key=fresh.key)
    leaves_equal(made._replace(key=None), fresh._replace(key=None))
    np.testing.assert_array_equal(jax.random.key_data(made.key), jax.random.key_data(fresh.key))
    a, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, state=made, progress=False)
    b, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, state=fresh, progress=False)
    leaves_equal(a.params, b.params)


class _CompileCounter(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        if "Compiling" in record.getMessage():
            self.messages.append(record.getMessage())


def test_a_second_fit_with_the_same_configuration_compiles_nothing(digits):
    model, opt = mlp(), optax.adam(1e-3)
    state, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, progress=False)
    state, _ = jaxnets.fit(model, CE, opt, digits, epochs=1, state=state, progress=False)
    counter = _CompileCounter()
    logging.getLogger("jax").addHandler(counter)
    try:
        with jax.log_compiles():
            more, _ = jaxnets.fit(model, CE, opt, digits, epochs=2, state=state, progress=False)
    finally:
        logging.getLogger("jax").removeHandler(counter)
    assert counter.messages == [] and int(more.step) == 4 * 23


def test_hooks_see_each_round_trip_and_early_stopping_stops(digits, tmp_path):
    seen = []
    log = tmp_path / "history.jsonl"
    stop = train.early_stopping("test_loss", patience=2)

    def record(progress):
        seen.append((progress.epoch, progress.metrics["test_loss"], int(progress.state.step)))

    model, opt = mlp(), optax.adam(0.05)  # a large step: the test loss soon stops improving
    state, history = jaxnets.fit(model, CE, opt, digits, epochs=40, hooks=[record, stop], history_file=str(log),
                                 progress=False)
    n = len(history["epoch"])
    assert 3 <= n < 40 and [s[0] for s in seen] == history["epoch"] and seen[-1][2] == int(state.step) == 23 * n
    losses_ = history["test_loss"]
    best = int(np.argmin(losses_))
    assert n - 1 - best == 2  # stopped exactly `patience` epochs after the best
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["epoch"] for line in lines] == history["epoch"]
    assert [line["test_loss"] for line in lines] == history["test_loss"]


def test_a_hook_that_raises_is_named(digits):
    def broken(progress):
        raise KeyError("oops")

    with pytest.raises(KeyError, match="oops") as info:
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), digits, epochs=2, callbacks=[broken])
    assert any("raised by the callback 'broken' after step 23 of the run (epoch 1)" in note
               for note in info.value.__notes__)
    assert int(info.value.state.step) == 23 and info.value.history["epoch"] == [1]  # what was learned is kept


def regression(rng):
    x = rng.normal(size=(256, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], np.float32)).astype(np.float32)


def test_divergence_stops_keeps_the_last_finite_state_and_names_epoch_and_step(rng):
    x, y = regression(rng)
    opt = optax.sgd(3.0)  # far too large for this quadratic: the loss grows to Inf, then NaN
    with pytest.raises(jaxnets.NonFiniteError, match=r"NaN/Inf at epoch (\d+), step (\d+) \(step (\d+) of the epoch\)"
                       r".*jaxnets.debug.locate_nonfinite\(model, params, x, y, loss=loss, state=model_state\)") as info:
        jaxnets.fit(L.Dense(1), losses.mean_squared_error, opt, (x, y), epochs=50, batch_size=32, progress=False)
    error = info.value
    assert error.epoch >= 2 and error.history["epoch"] == list(range(1, error.epoch))
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(error.state.params))
    assert error.step == 8 * (error.epoch - 1) + int(str(error).split("step ")[2].split(" ")[0])
    # The kept state is exactly the run stopped one epoch earlier.
    before, _ = jaxnets.fit(L.Dense(1), losses.mean_squared_error, opt, (x, y), epochs=error.epoch - 1, batch_size=32,
                            progress=False)
    leaves_equal(before.params, error.state.params)
    # With on_nonfinite="warn" it trains on, warning once.
    with pytest.warns(RuntimeWarning, match="training goes on"):
        _, history = jaxnets.fit(L.Dense(1), losses.mean_squared_error, opt, (x, y), epochs=error.epoch + 1,
                                 batch_size=32, on_nonfinite="warn", progress=False)
    assert not np.isfinite(history["train_loss"][-1])


def test_nan_in_the_data_is_refused_before_compiling(digits):
    x = digits.x_train.copy()
    x[5, 3] = np.nan
    with pytest.raises(ValueError, match=r"data x holds 1 non-finite value\(s\) \(NaN or Inf\); the first at row 5, column 3"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), (x, digits.y_train), progress=False)
    with pytest.raises(ValueError, match=r"test\['image'\] holds 1 non-finite"):
        jaxnets.fit(mlp(), optimizer=optax.adam(1e-3), data={"image": digits.x_test}, test={"image": x},
                    objective=lambda p, b, k, s: jnp.mean(b["image"]), input_shape=(-1, 64), progress=False)


def test_bad_inputs_of_the_engine(digits, key):
    model, opt = mlp(), optax.adam(1e-3)
    with pytest.raises(TypeError, match="fit needs exactly one of loss .* and objective .*, got neither"):
        jaxnets.fit(model, optimizer=opt, data=digits)
    with pytest.raises(TypeError, match="fit needs exactly one of loss .* got both"):
        jaxnets.fit(model, CE, opt, digits, objective=lambda p, b, k, s: 0.0)
    with pytest.raises(ValueError, match=r"objective must return a scalar loss, got shape \(64,\)"):
        jaxnets.fit(model, optimizer=opt, data=digits, progress=False,
                    objective=lambda p, b, k, s: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, b[0]), b[1]))
    with pytest.raises(TypeError, match=r"metrics\['acc'\] must be callable as fn\(outputs, targets\) or one of \['accuracy'\], got 'acuracy'"):
        jaxnets.fit(model, CE, opt, digits, metrics={"acc": "acuracy"}, progress=False)
    _, history = jaxnets.fit(model, CE, opt, (digits.x_train, digits.y_train), test=digits, metrics={"acc": "accuracy"},
                             epochs=1, progress=False)  # a Dataset as test: its held-out split
    assert "test_acc" in history and "train_acc" in history
    with pytest.raises(ValueError, match=r"n must be below 2\*\*31 \(indices are int32\), got 2147483649"):
        train.permutation(key, 2**31 + 1)
    other = train.init_train_state(mlp(8), opt, digits.input_shape, key=key)
    # caught where the params enter the model (jaxnets.layers.check_params), before anything is compiled
    with pytest.raises(ValueError, match=r"the params do not match the model .*\n  params dense_0/b: expected shape \(32,\), got \(8,\)"):
        jaxnets.fit(model, CE, opt, digits, state=other, progress=False)
    with pytest.raises(TypeError, match="fit needs a model and input_shape, or a state"):
        jaxnets.fit(model, optimizer=opt, data={"x": digits.x_train}, objective=lambda p, b, k, s: 0.0, progress=False)
    with pytest.warns(DeprecationWarning, match="fit\\(train=...\\) is deprecated"):
        jaxnets.fit(model, CE, opt, train=digits, epochs=1, progress=False)


def test_a_donated_state_gets_a_clear_error(digits, key):
    model, opt = mlp(), optax.adam(1e-3)
    state = train.init_train_state(model, opt, digits.input_shape, key=key)
    step = train.make_train_step(model, CE, opt)
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    step(state, x, y)
    message = r"state was donated to a previous call .* jax.tree_util.tree_map\(jnp.copy, state\)"
    with pytest.raises(ValueError, match=message):
        step(state, x, y)
    with pytest.raises(ValueError, match=message):
        jaxnets.fit(model, CE, opt, digits, state=state, progress=False)
    with pytest.raises(ValueError, match=r"params was donated"):
        jaxnets.predict(model, state.params, x)


def test_population_hyperparameters_are_checked_per_member(digits):
    with pytest.raises(ValueError, match=r"members\['learning_rate'\]\[1\] \(member 1\) must be \[0, inf\), got -0.1"):
        population.fit_population(mlp(), CE, optax.adam, digits, members={"learning_rate": [0.1, -0.1]}, progress=False)
    with pytest.raises(ValueError, match=r"members\['b1'\]\[0\] \(member 0\) must be \[0, 1\), got 1.5"):
        population.fit_population(mlp(), CE, optax.adam, digits, members={"b1": [1.5]}, progress=False)


def test_per_example_labels_out_of_range(digits, key):
    model = mlp()
    _, params = model.init(key, digits.input_shape)
    with pytest.raises(ValueError, match=r"y \(labels\) must lie in \[0, 10\) for 10 classes, got values in \[0, 10\]"):
        per_example.grads(model, CE, params, digits.x_train[:8], np.array([0, 1, 2, 3, 4, 5, 6, 10]))


def test_locator_advice_is_one_constant():
    assert train.history.LOCATE_ADVICE.startswith("run jaxnets.debug.locate_nonfinite(model, params, x, y, loss=loss, state=model_state)")
