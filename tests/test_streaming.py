"""Streamed data (jaxnets.streaming): the same training as in memory, exact resume, memmaps, grain, and bad records."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets import data, losses, streaming

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam mixes int32 counts with floats"
OPTIONS = dict(batch_size=100, progress=False)  # 1,437 digits: 15 steps per epoch, the last one wrapped around


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def mlp():
    return L.serial(L.Dense(32), L.Relu(), L.Dense(10))


def assert_same_training(a, b, *, names=None):
    (state_a, history_a), (state_b, history_b) = a, b
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0, atol=1e-6), state_a.params, state_b.params)
    assert int(state_a.step) == int(state_b.step)
    for name in names or [k for k in history_a if k != "time"]:
        np.testing.assert_allclose(history_a[name], history_b[name], rtol=1e-6, err_msg=name)


def test_streamed_fit_equals_fit_in_memory(digits):
    """Chunks of 4 steps (the epoch's last chunk shorter) train to the params fit gives with the arrays in memory."""
    model, opt = mlp(), optax.adam(1e-2)
    test = (digits.x_test, digits.y_test)
    in_memory = jaxnets.fit(model, CE, opt, (digits.x_train, digits.y_train), test=test, epochs=2, **OPTIONS)
    stream = streaming.from_arrays(digits.x_train, digits.y_train, steps_per_chunk=4)
    streamed = jaxnets.fit(model, CE, opt, stream, test=test, epochs=2, **OPTIONS)
    assert_same_training(streamed, in_memory)
    assert "train_accuracy" in streamed[1]  # the training steps' own accuracy: no second pass over the stream
    assert stream.timings["chunks"] == 2 * 4


def test_objective_dict_records_drop_last_and_epochs_per_call(digits):
    """An objective on dict records with aux metrics, drop_last, two epochs per call: as in memory."""
    model, opt = mlp(), optax.sgd(0.1)

    def objective(params, batch, key, model_state):
        logits = model.apply(params, batch["image"])
        return CE(logits, batch["label"]), {"accuracy": losses.accuracy(logits, batch["label"])}

    records = {"image": digits.x_train, "label": digits.y_train}
    test = {"image": digits.x_test, "label": digits.y_test}
    options = dict(objective=objective, input_shape=digits.input_shape, test=test, epochs=3, epochs_per_call=2,
                   drop_last=True, **OPTIONS)
    in_memory = jaxnets.fit(model, None, opt, records, **options)
    streamed = jaxnets.fit(model, None, opt, streaming.from_arrays(records, steps_per_chunk=5), **options)
    assert_same_training(streamed, in_memory)
    assert int(streamed[0].step) == 3 * 14 and "train_accuracy" in streamed[1]


def test_memory_mapped_files(digits, tmp_path):
    """np.load(mmap_mode='r') files written by the test stream as the arrays do; float64 on disk trains as float32."""
    np.save(tmp_path / "x.npy", digits.x_train.astype(np.float64))
    np.save(tmp_path / "y.npy", digits.y_train)
    x, y = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    assert isinstance(x, np.memmap)
    model, opt = mlp(), optax.adam(1e-2)
    streamed = jaxnets.fit(model, CE, opt, streaming.from_arrays(x, y, steps_per_chunk=8), epochs=1, **OPTIONS)
    in_memory = jaxnets.fit(model, CE, opt, (digits.x_train, digits.y_train), epochs=1, **OPTIONS)
    assert_same_training(streamed, in_memory)


def test_steps_per_epoch_caps_each_epoch(digits):
    """An epoch of 6 steps is the first 6 batches of the in-memory epoch's order: one epoch equals 6 in-memory steps."""
    model, opt = mlp(), optax.sgd(0.1)
    stream = streaming.from_arrays(digits.x_train, digits.y_train, steps_per_chunk=4, steps_per_epoch=6)
    state, history = jaxnets.fit(model, CE, opt, stream, epochs=2, **OPTIONS)
    assert int(state.step) == 12 and history["epoch"] == [1, 2]
    first = jaxnets.init_train_state(model, opt, digits.input_shape, seed=0)
    order = jaxnets.train.epoch_indices(first, 1437, 100)[:6]
    step = jaxnets.make_train_step(model, CE, opt)
    manual = jax.device_put(first, may_alias=False)
    for idx in np.asarray(order):
        manual, _ = step(manual, digits.x_train[idx], digits.y_train[idx])
    streamed_one, _ = jaxnets.fit(model, CE, opt, stream, epochs=1, **OPTIONS)
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-6), streamed_one.params, manual.params)


def test_resume_is_exact(digits, tmp_path):
    """Stopped after epoch 2 and resumed to 3: the params and history of an uninterrupted run of 3."""
    pytest.importorskip("orbax.checkpoint")
    model, opt = mlp(), optax.adam(1e-2)
    stream = streaming.from_arrays(digits.x_train, digits.y_train, steps_per_chunk=4)
    whole = jaxnets.fit(model, CE, opt, stream, epochs=3, **OPTIONS)
    folder = tmp_path / "ckpt"
    jaxnets.fit(model, CE, opt, stream, epochs=2, checkpoint_dir=str(folder), **OPTIONS)
    resumed = jaxnets.fit(model, CE, opt, stream, epochs=3, checkpoint_dir=str(folder), **OPTIONS)
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed[0].params, whole[0].params)
    assert resumed[1]["train_loss"] == whole[1]["train_loss"]
    other = streaming.from_arrays(digits.x_train[:1000], digits.y_train[:1000])
    with pytest.raises(ValueError, match=r"(?s)another configuration \(nothing was overwritten\).*source/num_examples: the checkpoint has 1437, this run 1000"):
        jaxnets.fit(model, CE, opt, other, epochs=4, checkpoint_dir=str(folder), **OPTIONS)
    assert jaxnets.checkpoint.Checkpoints(str(folder)).epochs()[-1] == 3


class Records:
    """A random-access source of (x, y) records, as grain's RandomAccessDataSource protocol describes one."""

    def __init__(self, x, y, bad=None):
        self.x, self.y, self.bad = x, y, bad or {}

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.bad[i] if i in self.bad else (self.x[i], self.y[i])


def test_random_access_source_equals_arrays(digits):
    model, opt = mlp(), optax.adam(1e-2)
    source = streaming.from_source(Records(digits.x_train, digits.y_train), steps_per_chunk=8)
    streamed = jaxnets.fit(model, CE, opt, source, epochs=1, **OPTIONS)
    in_memory = jaxnets.fit(model, CE, opt, (digits.x_train, digits.y_train), epochs=1, **OPTIONS)
    assert_same_training(streamed, in_memory)


def test_grain_map_dataset(digits):
    grain = pytest.importorskip("grain.python")
    records = [{"image": x, "label": np.int32(y)} for x, y in zip(digits.x_train, digits.y_train)]
    dataset = grain.MapDataset.source(records)
    model, opt = mlp(), optax.adam(1e-2)

    def objective(params, batch, key, model_state):
        return CE(model.apply(params, batch["image"]), batch["label"]), {}

    options = dict(objective=objective, input_shape=digits.input_shape, epochs=1, **OPTIONS)
    streamed = jaxnets.fit(model, None, opt, streaming.from_source(dataset, steps_per_chunk=8), **options)
    in_memory = jaxnets.fit(model, None, opt, {"image": digits.x_train, "label": digits.y_train}, **options)
    assert_same_training(streamed, in_memory)


@pytest.mark.parametrize("bad, message", [
    ((np.zeros((8, 8), np.float32), np.int32(0)),
     r"record 700 \(one of records \d+\.\.\d+ read for steps 8\.\.14 of this epoch\) differs at field 0: record 0 has shape "
     r"\(64,\) dtype float32, record 700 has shape \(8, 8\) dtype float32"),
    ((np.zeros(64, np.float64), np.int32(0)), r"differs at field 0: record 0 has shape \(64,\) dtype float32, record 700 has "
                                              r"shape \(64,\) dtype float64"),
    ((np.zeros(64, np.float32),), r"record 700 .* differs at its structure"),
])
def test_a_record_that_changes_midway_is_named(digits, bad, message):
    """Record 700 is first read in the second chunk: the error names it, the field and both shapes and dtypes."""
    first = jaxnets.init_train_state(mlp(), optax.sgd(0.1), digits.input_shape, seed=0)
    order = np.asarray(jaxnets.train.epoch_indices(first, 1437, 100))
    index = int(order[10, 0])  # step 10: in the second chunk of 8
    source = Records(digits.x_train, digits.y_train, {index: bad})
    message = message.replace("700", str(index))
    with pytest.raises(ValueError, match=message):
        jaxnets.fit(mlp(), CE, optax.sgd(0.1), streaming.from_source(source, steps_per_chunk=8), epochs=1, **OPTIONS)


def test_bad_streams_fail_before_training(digits):
    x, y = digits.x_train, digits.y_train
    fit = lambda data, **kw: jaxnets.fit(mlp(), CE, optax.sgd(0.1), data, epochs=1, **{**OPTIONS, **kw})  # noqa: E731
    with pytest.raises(ValueError, match=r"source is empty \(0 records\)"):
        streaming.from_source([])
    with pytest.raises(ValueError, match=r"data is empty \(0 examples\)"):
        streaming.from_arrays(x[:0], y[:0])
    with pytest.raises(ValueError, match=r"batch_size must be at most the number of examples \(1437\), got 2000"):
        fit(streaming.from_arrays(x, y), batch_size=2000)
    with pytest.raises(TypeError, match=r"source records must be pytrees of arrays or numbers, but record 0 holds str 'seven' at field 1"):
        streaming.from_source([(x[0], "seven")])
    with pytest.raises(TypeError, match=r"data\[0\] must be a NumPy array .* got a jax.Array already on the device"):
        streaming.from_arrays(jnp.asarray(x), y)
    with pytest.raises(ValueError, match=r"data arrays must have the same number of examples"):
        streaming.from_arrays(x, y[:10])
    with pytest.raises(TypeError, match=r"data records must be pairs \(x, y\) to train with a loss"):
        fit(streaming.from_arrays({"image": x, "label": y}))
    with pytest.raises(ValueError, match=r"steps_per_chunk must be a positive int"):
        streaming.from_arrays(x, y, steps_per_chunk=0)
    with pytest.raises(ValueError, match=r"test x must have the feature shape of data x \(64,\), got \(10,\)"):
        fit(streaming.from_arrays(x, y), test=(x[:, :10], y))


def test_bad_values_are_named_with_their_record(digits):
    x, y = digits.x_train.copy(), digits.y_train.copy()
    x[1000, 3] = np.nan
    with pytest.raises(ValueError, match=r"data record 1000 holds a non-finite value \(NaN or Inf\) at field 0"):
        jaxnets.fit(mlp(), CE, optax.sgd(0.1), streaming.from_arrays(x, y), epochs=1, **OPTIONS)
    x, y = digits.x_train, digits.y_train.copy()
    y[5] = 12
    with pytest.raises(ValueError, match=r"data labels must lie in \[0, 10\) for 10 classes, got 12 in record 5"):
        jaxnets.fit(mlp(), CE, optax.sgd(0.1), streaming.from_arrays(x, y), epochs=1, **OPTIONS)


def test_divergence_keeps_the_last_finite_state(digits):
    """A huge record makes epoch 1 diverge: fit raises NonFiniteError holding the state before it, as in memory."""
    x = digits.x_train.copy()
    x[7] = 1e30
    model, opt = mlp(), optax.sgd(0.1)
    errors = []
    for data_ in ((x, digits.y_train), streaming.from_arrays(x, digits.y_train, steps_per_chunk=4)):
        with pytest.raises(jaxnets.NonFiniteError) as info:
            jaxnets.fit(model, CE, opt, data_, epochs=2, metrics={}, **OPTIONS)
        errors.append(info.value)
    assert errors[0].epoch == errors[1].epoch == 1 and errors[0].step == errors[1].step
    # in memory the last finite state is the epoch's start; a stream keeps the state before its diverging chunk,
    # which is the in-memory run stopped at that step
    assert int(errors[0].state.step) == 0 and 0 < int(errors[1].state.step) <= errors[1].step
    upto, _ = jaxnets.fit(model, CE, opt, (x, digits.y_train), steps=int(errors[1].state.step), metrics={},
                          batch_size=OPTIONS["batch_size"], callbacks=[])
    jax.tree_util.tree_map(np.testing.assert_array_equal, upto.params, errors[1].state.params)


@pytest.mark.slow
def test_two_devices_each_hold_half_of_every_batch(tmp_path):
    """On 2 forced host devices, a chunk sharded P(None, 'data') trains to the single-device params."""
    script = textwrap.dedent("""
        import jax, numpy as np, optax
        import jaxnets, jaxnets.layers as L
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jaxnets import data, losses, streaming
        assert jax.device_count() == 2
        d = data.load_digits()
        model, opt = L.serial(L.Dense(32), L.Relu(), L.Dense(10)), optax.sgd(0.1)
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P(None, "data"))
        kw = dict(epochs=2, batch_size=100, progress=False)
        one, _ = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, opt,
                             streaming.from_arrays(d.x_train, d.y_train, steps_per_chunk=4), **kw)
        two, _ = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, opt,
                             streaming.from_arrays(d.x_train, d.y_train, steps_per_chunk=4, sharding=sharding), **kw)
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(one.params),
                                                             jax.tree_util.tree_leaves(two.params)))
        print("max difference", err)
        assert err < 1e-5
        # fit(mesh=...) splits a stream given no sharding over the mesh's data axis, the state replicated
        mesh = jaxnets.distributed.data_mesh()
        stream = streaming.from_arrays(d.x_train, d.y_train, steps_per_chunk=4)
        three, h3 = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, opt, stream, mesh=mesh,
                                test=(d.x_test, d.y_test), **kw)
        _, h1 = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, opt, (d.x_train, d.y_train),
                            test=(d.x_test, d.y_test), **kw)
        assert abs(h3["test_accuracy"][-1] - h1["test_accuracy"][-1]) < 1e-6  # the test data placed on the mesh
        assert stream.sharding is None and stream.timings["chunks"] > 0  # the caller's stream is not changed, but counts
        leaf = jax.tree_util.tree_leaves(three.params)[0]
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 2
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(one.params),
                                                             jax.tree_util.tree_leaves(three.params)))
        assert err < 1e-5, err
    """)
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_float16_with_loss_scaling_streams_as_in_memory(digits):
    """precision= and loss scaling go through the streaming path too: the same params, the skips counted alike."""
    from jaxnets import optim, precision

    ce = losses.softmax_cross_entropy_with_integer_labels
    model = L.serial(L.Dense(16), L.Relu(), L.Dense(10))
    opt = precision.loss_scaling(optim.adam(1e-3), "dynamic", init_scale=2.0 ** 24, max_scale=2.0 ** 24)
    kw = dict(epochs=2, batch_size=64, seed=0, precision="float16", loss_scale=None, progress=False)
    memory, h_memory = jaxnets.fit(model, ce, opt, digits, **kw)
    streamed, h_streamed = jaxnets.fit(model, ce, opt, streaming.from_arrays(digits.x_train, digits.y_train, steps_per_chunk=5),
                                       test=(digits.x_test, digits.y_test), **kw)
    assert h_streamed["skipped_steps"] == h_memory["skipped_steps"] and h_memory["skipped_steps"][0] > 0
    assert h_streamed["loss_scale"] == h_memory["loss_scale"]
    for a, b in zip(jax.tree_util.tree_leaves(streamed.params), jax.tree_util.tree_leaves(memory.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_a_file_changed_during_training_is_a_clear_error_carrying_the_state(digits, tmp_path):
    """A memory-mapped file rewritten during training stops the run before the next chunk is read (never SIGBUS)."""
    path = tmp_path / "x.npy"
    np.save(path, digits.x_train)
    x = np.load(path, mmap_mode="r")
    stream = streaming.from_arrays(x, digits.y_train, steps_per_chunk=23, prefetch=1)

    def rewrite(progress):
        if progress.epoch == 1:
            np.save(tmp_path / "new.npy", digits.x_train[::-1].copy())  # same size, other data
            os.replace(tmp_path / "new.npy", path)  # (the old mapping stays valid: no SIGBUS in this test)

    with pytest.raises(ValueError, match=r"x\.npy was rewritten during training") as caught:
        jaxnets.fit(mlp(), CE, optax.sgd(0.1), stream, epochs=4, callbacks=[rewrite])
    assert int(caught.value.state.step) % 23 == 0 and caught.value.history["epoch"][0] == 1
    np.save(tmp_path / "y.npy", digits.x_train)
    short = streaming.from_arrays(np.load(tmp_path / "y.npy", mmap_mode="r"), digits.y_train)
    with open(tmp_path / "y.npy", "r+b") as f:
        f.truncate(1024)
    with pytest.raises(ValueError, match=r"y\.npy shrank during training"):
        short.check_unchanged()
