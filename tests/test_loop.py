"""The general loop: any step over any state, for steps or epochs, fused calls equal single steps, sources, callbacks
on a schedule, several networks and optimizers in one program, a moving average inside the step, hyperparameters
logged, and checkpoints that resume any state exactly, keep the best, refuse another run's configuration and
verify their bytes."""

import json
import math
import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets import data, losses, train

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam mixes its int32 count with floats"


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def mlp(hidden=16):
    return L.serial(L.Dense(hidden), L.Relu(), L.Dense(10))


def _data(leaf):
    return jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf


def same(a, b):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(_data(x), _data(y)), a, b)


def _state(model, opt, shape=(-1, 64), seed=0):
    return train.init_train_state(model, opt, shape, seed=seed)


def test_an_epoch_of_the_loop_is_an_epoch_of_scan_epoch(digits):
    """ArraySource epochs through the one program builder equal make_epoch's, bitwise, fused or not."""
    model, opt = mlp(), optax.adam(1e-2)
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    step = train.make_step(train.objective_from_loss(model, CE), opt, jit=False)
    epoch = train.make_epoch(model, CE, opt, num_examples=x.shape[0], batch_size=50)
    reference = jax.device_put(_state(model, opt), may_alias=False)
    losses_ = []
    for _ in range(3):
        reference, logged = epoch(reference, x, y)
        losses_.append(float(logged["loss"]))
    source = train.ArraySource((x, y), 50)
    for per_call in (None, 3 * source.steps_per_epoch):
        state, history = train.loop(step, _state(model, opt), source, epochs=3, steps_per_call=per_call)
        same(state, reference)
        np.testing.assert_allclose(history["train_loss"], losses_, rtol=1e-6)
        assert history["epoch"] == [1, 2, 3] and history["step"] == [29, 58, 87]


def test_steps_fused_in_one_call_equal_one_step_per_call_and_compile_once(digits):
    """K steps per round-trip, across epoch boundaries, equal K=1; a row every log_every steps; one trace."""
    model, opt = mlp(), optax.sgd(0.1)
    traces = []

    def objective(params, batch, key, model_state):
        traces.append(1)
        x, y = batch
        return CE(model.apply(params, x), y), {}

    step = train.make_step(objective, opt, jit=False)
    source = train.ArraySource((digits.x_train[:200], digits.y_train[:200]), 32)  # 7 steps an epoch
    one, h_one = train.loop(step, _state(model, opt), source, steps=40, steps_per_call=1, log_every=1)
    traces.clear()
    fused, h_fused = train.loop(step, _state(model, opt), source, steps=40, steps_per_call=20, log_every=10)
    same(one, fused)
    assert h_fused["step"] == [10, 20, 30, 40]
    np.testing.assert_allclose(h_fused["train_loss"], np.mean(np.reshape(h_one["train_loss"], (4, 10)), 1), rtol=1e-5)
    tracing = len(traces)
    again, _ = train.loop(step, _state(model, opt), source, steps=40, steps_per_call=20, log_every=10)
    assert len(traces) == tracing  # compiled once per configuration: the second loop traced nothing
    same(again, fused)


def test_a_sampler_draws_random_windows_and_a_split_run_equals_the_whole(key):
    """An iteration-based LM's source: random windows of a corpus on the device, (key, step) -> batch."""
    corpus = jnp.asarray(np.random.default_rng(0).integers(0, 17, 500), jnp.int32)
    context, batch_size = 8, 4

    def windows(key, step, corpus):
        start = jax.random.randint(key, (batch_size,), 0, corpus.shape[0] - context - 1)
        idx = start[:, None] + jnp.arange(context + 1)
        tokens = corpus[idx]
        return {"x": tokens[:, :-1], "y": tokens[:, 1:]}

    model = L.serial(L.Embedding(17, 8), L.Dense(17))
    opt = optax.adam(1e-2)

    def objective(params, batch, key, model_state):
        return CE(model.apply(params, batch["x"]), batch["y"]), {}

    step = train.make_step(objective, opt, jit=False)
    source = train.Sampler(windows, data=corpus)
    state = train.init_train_state(model, opt, (-1, context), key=key)
    whole, h = train.loop(step, state, source, steps=30, steps_per_call=10)
    first, _ = train.loop(step, state, source, steps=12, steps_per_call=4)
    second, _ = train.loop(step, first, source, steps=18, steps_per_call=6)  # starts at first.step
    same(whole, second)
    assert h["step"] == [10, 20, 30] and "epoch" not in h and h["train_loss"][-1] < h["train_loss"][0]
    with pytest.raises(ValueError, match="needs a source with epochs"):
        train.loop(step, state, source, epochs=2)


def test_fit_takes_a_transform_that_changes_the_batch_structure(digits):
    """B4: a transform from {"i": indices} to {"x", "y"} (windows drawn in the step) trains; names come from the step."""
    x, y = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    model = mlp()

    def transform(key, batch):
        return {"x": x[batch["i"]], "y": y[batch["i"]]}

    def objective(params, batch, key, model_state):
        logits = model.apply(params, batch["x"])
        return CE(logits, batch["y"]), {"accuracy": losses.accuracy(logits, batch["y"])}

    state = train.init_train_state(model, optax.adam(1e-2), digits.input_shape)
    _, history = jaxnets.fit(None, optimizer=optax.adam(1e-2), data={"i": jnp.arange(x.shape[0])}, objective=objective,
                             transform=transform, state=state, epochs=3, callbacks=[])
    assert history["train_accuracy"][-1] > 0.8 and history["epoch"] == [1, 2, 3]


def _gan_parts():
    """A tiny GAN: a generator and a discriminator, each with BatchNorm and its own optimizer."""
    gen = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dense(4))
    disc = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dense(1))
    g_opt, d_opt = optax.adam(1e-3, eps=1e-2), optax.sgd(0.05, momentum=0.9)  # eps: rounding not amplified

    def d_objective(params, batch, key, model_state):
        real, fake = batch["real"], batch["fake"]
        logits, state = disc.apply_with_state(params, model_state, jnp.concatenate([real, fake]), train=True)
        labels = jnp.concatenate([jnp.ones(real.shape[0]), jnp.zeros(fake.shape[0])])
        loss = optax.sigmoid_binary_cross_entropy(logits[:, 0], labels).mean()
        return loss, {"model_state": state}

    def g_objective(params, batch, key, model_state):
        fake, g_state = gen.apply_with_state(params, model_state, batch["noise"], train=True)
        logits, d_state = disc.apply_with_state(batch["d_params"], batch["d_state"], fake, train=True)
        loss = optax.sigmoid_binary_cross_entropy(logits[:, 0], jnp.ones(fake.shape[0])).mean()
        return loss, {"model_state": g_state, "fake": jax.lax.stop_gradient(fake), "d_state": d_state}

    d_step = train.make_step(d_objective, d_opt, jit=False)
    g_step = train.make_step(g_objective, g_opt, jit=False)

    def gan_step(state, batch):
        g, d = state["generator"], state["discriminator"]
        g, g_metrics = g_step(g, {"noise": batch["noise"], "d_params": d.params, "d_state": d.model_state})
        fake = g_metrics.pop("fake")
        d = d._replace(model_state=g_metrics.pop("d_state"))  # the discriminator's statistics moved on the fakes
        d, d_metrics = d_step(d, {"real": batch["real"], "fake": fake})  # sees the generator's new samples
        return {"generator": g, "discriminator": d}, {"g_loss": g_metrics["loss"], "d_loss": d_metrics["loss"]}

    def sample(key, step):
        k1, k2 = jax.random.split(key)
        return {"noise": jax.random.normal(k1, (16, 3)),
                "real": 2.0 + 0.5 * jax.random.normal(k2, (16, 4))}

    def fresh():
        return {"generator": train.init_train_state(gen, g_opt, (-1, 3), seed=1),
                "discriminator": train.init_train_state(disc, d_opt, (-1, 4), seed=2)}

    return gan_step, train.Sampler(sample), fresh


@pytest.mark.standard_promotion(STANDARD_PROMOTION_REASON)
def test_two_networks_and_two_optimizers_in_one_fused_program():
    """Alternating updates in one program equal a hand loop of jitted steps; both BatchNorm states carried."""
    gan_step, source, fresh = _gan_parts()
    key = jax.random.key(7)
    state, history = train.loop(gan_step, fresh(), source, steps=24, steps_per_call=8, key=key, watch=("g_loss", "d_loss"))
    by_hand = fresh()
    jitted = jax.jit(gan_step)
    for t in range(24):
        batch = source.batch(None, jax.tree_util.tree_map(lambda a: a[0], source.inputs(None, None, key, t, 0, 1)))
        by_hand, _ = jitted(by_hand, batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(_data(a), _data(b), rtol=1e-5, atol=1e-6), state, by_hand)
    assert int(state["generator"].step) == int(state["discriminator"].step) == 24
    assert set(history) >= {"train_g_loss", "train_d_loss", "step"}
    moved = state["discriminator"].model_state["batch_norm_0"]["mean"]
    assert float(jnp.abs(moved).max()) > 0  # the running statistics were carried, not reset


@pytest.mark.standard_promotion(STANDARD_PROMOTION_REASON)
def test_gan_checkpointed_and_resumed_bitwise(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from jaxnets import checkpoint

    gan_step, source, fresh = _gan_parts()
    key = jax.random.key(7)
    straight, h_straight = train.loop(gan_step, fresh(), source, steps=20, steps_per_call=5, key=key)
    train.loop(gan_step, fresh(), source, steps=10, steps_per_call=5, key=key,
               callbacks=[checkpoint.Checkpoint(tmp_path, async_save=False)])
    resumed, h_resumed = train.loop(gan_step, fresh(), source, steps=20, steps_per_call=5, key=key,
                                    callbacks=[checkpoint.Checkpoint(tmp_path)])
    same(straight, resumed)
    assert {k: v for k, v in h_straight.items() if k != "time"} == {k: v for k, v in h_resumed.items() if k != "time"}


def test_a_moving_average_of_params_inside_the_step(digits):
    model, opt = mlp(), optax.sgd(0.1)
    step = train.make_step(train.objective_from_loss(model, CE), opt, jit=False)
    source = train.ArraySource((digits.x_train[:256], digits.y_train[:256]), 64)
    state, _ = train.loop(train.with_ema(step, 0.9), train.ema_state(_state(model, opt)), source, steps=12,
                          steps_per_call=6)
    manual, ema = _state(model, opt), _state(model, opt).params
    jitted = jax.jit(step)
    xs = source.inputs(source.data, None, manual.key, jnp.int32(0), jnp.int32(0), 12)
    for t in range(12):
        manual, _ = jitted(manual, source.batch(source.data, xs[t]))
        ema = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, ema, manual.params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state.ema, ema)
    same(state.state.params, manual.params)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        train.with_ema(step, 1.0)


@pytest.mark.standard_promotion(STANDARD_PROMOTION_REASON)
def test_the_learning_rate_of_a_schedule_is_logged(digits):
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=10, decay_steps=40)
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=schedule)
    _, history = jaxnets.fit(mlp(), CE, opt, (digits.x_train[:320], digits.y_train[:320]), steps=40, log_every=10,
                             callbacks=[])
    # the value at each row's end is the rate of the last step's update (schedule at count = step - 1)
    np.testing.assert_allclose(history["learning_rate"], [float(schedule(s - 1)) for s in (10, 20, 30, 40)], rtol=1e-5)


def test_evaluate_runs_on_its_own_schedule_and_leaves_the_other_rows_nan(digits):
    model, opt = mlp(), optax.adam(1e-2)
    step = train.make_step(train.objective_from_loss(model, CE), opt, jit=False)
    source = train.ArraySource((digits.x_train, digits.y_train), 64)
    score = train.evaluator(model, CE, (("accuracy", losses.accuracy),))
    seen = []
    state, history = train.loop(step, _state(model, opt), source, steps=60, log_every=10, steps_per_call=30,
                                callbacks=[train.Evaluate(score, (digits.x_test, digits.y_test), every=20),
                                           lambda p: seen.append(p.step)])
    assert history["step"] == [10, 20, 30, 40, 50, 60]
    assert [not math.isnan(v) for v in history["test_loss"]] == [False, True, False, True, False, True]
    assert seen == [20, 30, 40, 60]  # calls end where Evaluate is due (20, 40, 60) and every 30 steps
    expected = jaxnets.evaluate(model, state.params, (digits.x_test, digits.y_test), loss=CE)
    np.testing.assert_allclose(history["test_loss"][-1], expected["loss"], rtol=1e-5)


def test_early_stopping_and_a_history_file_rewound_on_resume(digits, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    from jaxnets import checkpoint

    path = tmp_path / "history.jsonl"
    stopper = train.EarlyStopping("train_loss", patience=1, mode="max")  # the loss falls: "max" stops at once
    _, history = jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epochs=10, callbacks=[stopper])
    assert history["epoch"] == [1, 2]
    args = (mlp(), CE, optax.adam(1e-2), digits)
    jaxnets.fit(*args, epochs=4, callbacks=[train.HistoryFile(path), checkpoint.Checkpoint(tmp_path / "c", every=(2, "epochs"))])
    lines = path.read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in lines] == [1, 2, 3, 4]
    path.write_text("\n".join(lines[:3]) + "\n")  # as a run killed after epoch 3's line, before its checkpoint...
    import shutil
    shutil.rmtree(tmp_path / "c" / "4")
    _, resumed = jaxnets.fit(*args, epochs=5, callbacks=[train.HistoryFile(path), checkpoint.Checkpoint(tmp_path / "c")])
    assert [json.loads(r)["epoch"] for r in path.read_text().splitlines()] == [1, 2, 3, 4, 5]  # epoch 3 not repeated
    assert resumed["epoch"] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad, match", [
    (lambda tmp: str(tmp), "is a directory"),
    (lambda tmp: str(tmp / "missing" / "h.jsonl"), "folder that does not exist"),
    (lambda tmp: 3, "must be a path"),
])
def test_history_file_paths_are_checked_before_training(digits, tmp_path, bad, match):
    compiled = []
    with pytest.raises((ValueError, TypeError), match=match):
        jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epochs=1,
                    callbacks=[train.HistoryFile(bad(tmp_path)), lambda p: compiled.append(1)])
    assert compiled == []


def test_tensorboard_writes_an_event_file(digits, tmp_path):
    pytest.importorskip("tensorboardX")
    jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epochs=2, callbacks=[train.TensorBoard(tmp_path)])
    events = list(pathlib.Path(tmp_path).glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboardX.proto import event_pb2
    import struct
    raw, tags = events[0].read_bytes(), []
    i = 0
    while i < len(raw):  # TFRecord framing: length, crc, payload, crc
        (n,) = struct.unpack("<Q", raw[i:i + 8])
        event = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
        tags += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    assert {t for t, _, _ in tags} >= {"train_loss", "test_loss", "test_accuracy"}
    assert sorted(s for t, s, _ in tags if t == "train_loss") == [23, 46]


def test_errors_carry_the_last_good_state_and_a_bad_state_is_refused(digits):
    def failing(progress):
        if progress.epoch == 2:
            raise RuntimeError("the disk is full")

    with pytest.raises(RuntimeError, match="the disk is full") as caught:
        jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epochs=4, callbacks=[failing])
    assert int(caught.value.state.step) == 2 * 23 and caught.value.history["epoch"] == [1, 2]
    state = _state(mlp(), optax.adam(1e-2))
    broken = state._replace(params={**state.params, "dense_0": {**state.params["dense_0"],
                                                               "w": state.params["dense_0"]["w"].at[0, 0].set(jnp.inf)}})
    with pytest.raises(ValueError, match=r"state\.params\['dense_0'\]\['w'\] holds 1 non-finite value"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, state=broken, epochs=1, callbacks=[])


def test_the_loop_refuses_bad_arguments(digits):
    model, opt = mlp(), optax.sgd(0.1)
    step = train.make_step(train.objective_from_loss(model, CE), opt, jit=False)
    source = train.ArraySource((digits.x_train, digits.y_train), 64)
    state = _state(model, opt)
    with pytest.raises(TypeError, match="exactly one of steps and epochs"):
        train.loop(step, state, source)
    with pytest.raises(TypeError, match="source must implement"):
        train.loop(step, state, (digits.x_train, digits.y_train), steps=3)
    with pytest.raises(ValueError, match="steps_per_call must be a positive int"):
        train.loop(step, state, source, steps=3, steps_per_call=0)
    with pytest.raises(TypeError, match="key must be given"):
        train.loop(lambda s, b: (s, {}), {"w": jnp.ones(3)}, source, steps=3)
    with pytest.raises(ValueError, match="every must be a positive int"):
        train.loop(step, state, source, steps=3, callbacks=[train.Evaluate(lambda s, d: {}, None, every=0)])
    with pytest.raises(ValueError, match="metric 'x' must be a scalar per step"):
        train.loop(lambda s, b: (s, {"x": jnp.ones(3), "loss": jnp.float32(0)}), state, source, steps=3)


def test_the_keywords_of_0_1_still_work_for_one_release_and_say_what_replaces_them(digits, tmp_path):
    pytest.importorskip("orbax.checkpoint")
    seen = []
    with pytest.warns(DeprecationWarning) as warned:
        _, history = jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epochs=2, hooks=[lambda p: seen.append(p.epoch)],
                                 history_file=str(tmp_path / "h.jsonl"), checkpoint_dir=str(tmp_path / "c"),
                                 progress=False)
    messages = " ".join(str(w.message) for w in warned)
    for old, new in (("hooks", "callbacks=[...]"), ("history_file", "HistoryFile"), ("checkpoint_dir", "Checkpoint"),
                     ("progress", "ProgressBar")):
        assert f"fit({old}=...) is deprecated" in messages and new in messages
    assert seen == [1, 2] and len((tmp_path / "h.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.isdigit()) == ["1", "2"]
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['epoch'\]"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-2), digits, epoch=2)
