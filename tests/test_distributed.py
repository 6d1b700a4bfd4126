"""Scale-out: data parallel fit on 1, 2, 4 and 8 devices equals one device; the compiled step's collectives;
FSDP equals replicated; a population over 8 devices equals one device; bad meshes and batch sizes are refused
before any device work, with nothing written.

Multi-device runs need a JAX with 8 CPU devices, which this process (one device) cannot become: they run in
``tests/distributed_child.py`` under ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, one child per
group, each checking several device counts over subsets of the 8 devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

import jaxnets
import jaxnets.layers as L
from jaxnets import data, distributed, losses, population

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam mixes its int32 count with floats"
ROOT = pathlib.Path(__file__).resolve().parent.parent
#: float32 reduction order: a sum split over devices adds in another order (the issue's bound).
RTOL = 1e-5
#: The FSDP step of the test's MLP (64-256-64-10, batch 64 over 8 devices): XLA's choice, pinned so a change shows.
#: The partitioner gathers what is smaller per product (8 examples per device make activations cheap to gather),
#: so no reduce-scatter appears: the gradients of sharded weights come back through two all-reduces, one a
#: tuple with the replicated leaves' gradients and the loss.
HLO_FSDP = {"all-reduce": 2, "all-gather": 3, "reduce-scatter": 0, "collective-permute": 0, "all-to-all": 0}


def run_child(script, *args, devices=8, timeout=400):
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_data_parallel_equals_one_device_and_moves_only_the_gradients(tmp_path):
    run_child("distributed_child.py", "equal", tmp_path)
    result = json.loads((tmp_path / "equal.json").read_text())
    for name in ("mlp_dropout", "cnn_batchnorm"):
        for n, row in result[name].items():
            assert row["devices_used"] == int(n), (name, n, row)
            assert row["param_specs"] == ["P()"], (name, n, row)  # replicated in, replicated out
            assert row["params"] <= RTOL and row["history"] <= RTOL, (name, n, row)
            assert row["model_state"] <= RTOL, (name, n, row)  # BatchNorm's running statistics: global, as on one device
        assert result[name]["1"]["params"] == 0.0  # one device: the same program's numbers
    # The MLP step moves one thing: every gradient and the loss, combined by XLA into one tuple all-reduce.
    assert result["hlo_mlp_dropout"] == {"all-reduce": 1, "all-gather": 0, "reduce-scatter": 0, "collective-permute": 0,
                                         "all-to-all": 0}
    (line,) = result["hlo_mlp_dropout_all_reduce_lines"]
    assert "(f32[64]{0}, f32[64,64]{1,0}, f32[10]{0}, f32[10,64]{1,0}, f32[])" in line
    # BatchNorm's global statistics cost 2 more all-reduces, each a tuple of two (C,) vectors: the batch's two
    # one-pass sums forward, and the two sums of its closed-form backward (they are the bias and scale gradients);
    # the rest of the gradients and the loss come in one tuple all-reduce, as for the MLP. Nothing else moves. (The
    # step is one per call, so impl="auto" is XLA's convolution: its kernel's gradient is (3, 3, 1, 8).)
    assert result["hlo_cnn_batchnorm"] == {"all-reduce": 3, "all-gather": 0, "reduce-scatter": 0, "collective-permute": 0,
                                           "all-to-all": 0}
    lines = result["hlo_cnn_batchnorm_all_reduce_lines"]
    assert sum("f32[3,3,1,8]{3,2,1,0}, f32[10]{0}, f32[10,128]{1,0}, f32[])" in x for x in lines) == 1
    assert sum("= (f32[8]{0}, f32[8]{0}) all-reduce(" in x for x in lines) == 2
    # a checkpoint written on 2 devices resumes on 4 and ends where one device would have
    resumed = result["resume_on_another_mesh"]
    assert resumed["epochs"] == [1, 2, 3] and resumed["params"] <= RTOL and resumed["history"] <= RTOL


@pytest.mark.slow
def test_fsdp_equals_replicated_and_a_population_spreads_over_devices(tmp_path):
    run_child("distributed_child.py", "sharded", tmp_path)
    result = json.loads((tmp_path / "sharded.json").read_text())
    assert result["fsdp_params"] <= RTOL and result["fsdp_opt_state"] <= RTOL and result["fsdp_history"] <= RTOL, result
    assert result["fsdp_specs"] == {"['dense_0']['b']": "P()", "['dense_0']['w']": "P(None, 'data')",
                                    "['dense_1']['b']": "P()", "['dense_1']['w']": "P('data',)",
                                    "['dense_2']['b']": "P()", "['dense_2']['w']": "P('data',)"}
    replicated, sharded = result["bytes_replicated"], result["bytes_fsdp"]
    assert len(set(replicated.values())) == 1 and len(set(sharded.values())) == 1 and len(sharded) == 8
    # params + Adam's mu and nu: (64*256 + 256*64 + 64*10) * 3 floats split 8 ways; biases and the count whole
    whole = 4 * (256 + 64 + 10) * 3 + 4
    assert replicated["0"] == 4 * (64 * 256 + 256 + 256 * 64 + 64 + 64 * 10 + 10) * 3 + 4
    assert sharded["0"] == 4 * (64 * 256 + 256 * 64 + 64 * 10) * 3 // 8 + whole
    assert result["population_devices"] == 8 and result["population_spec"] == "P('data',)"
    assert result["population_params"] <= RTOL and result["population_history"] <= RTOL, result
    assert result["hlo_population"] == {"all-reduce": 0, "all-gather": 0, "reduce-scatter": 0, "collective-permute": 0,
                                        "all-to-all": 0}  # members never talk
    assert result["hlo_fsdp"] == HLO_FSDP, result["hlo_fsdp"]
    refused = result["refused"]  # on 8 devices, before any device work, nothing written
    assert refused["batch"] == ("ValueError: batch_size must be divisible by the 8 devices of mesh axis 'data' (each takes "
                                "an equal slice of every batch), got 60")
    assert refused["members"] == ("ValueError: the number of members must be divisible by the 8 devices of mesh axis "
                                  "'data' (each trains an equal share), got 30")
    assert refused["written"] == []


# --- in this process (one device) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    d = data.load_digits()
    return (d.x_train[:256], d.y_train[:256]), (d.x_test[:128], d.y_test[:128])


def mlp():
    return L.serial(L.Dense(16), L.Relu(), L.Dropout(0.2), L.Dense(10))


def test_a_one_device_mesh_computes_what_no_mesh_computes(digits):
    train, test = digits
    kwargs = dict(test=test, epochs=2, batch_size=32, seed=3, progress=False)
    plain, h_plain = jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, **kwargs)
    meshed, h_meshed = jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, mesh=distributed.data_mesh(), **kwargs)
    jax.tree_util.tree_map(np.testing.assert_array_equal, plain.params, meshed.params)
    assert {k: v for k, v in h_plain.items() if k != "time"} == {k: v for k, v in h_meshed.items() if k != "time"}
    assert isinstance(jax.tree_util.tree_leaves(meshed.params)[0].sharding, NamedSharding)


def test_mesh_axes_are_auto_and_the_fsdp_rule():
    mesh = distributed.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.axis_types == (AxisType.Auto,)
    assert distributed.data_mesh(jax.devices(), axis="batch").axis_names == ("batch",)
    assert distributed.fsdp_spec((784, 1024), 8) == P(None, "data")
    assert distributed.fsdp_spec((1024, 10), 8) == P("data")
    assert distributed.fsdp_spec((10, 1030), 8) == P()  # the largest axis does not divide: replicated
    assert distributed.fsdp_spec((1024,), 8) == P()  # vectors stay whole
    assert distributed.fsdp_spec((3, 3, 16, 32), 4, "x") == P(None, None, None, "x")
    state = jaxnets.init_train_state(mlp(), optax.adam(1e-3), (-1, 64))
    shardings = distributed.state_shardings(state, mesh, "fsdp")
    assert shardings.key.spec == P() and shardings.params["dense_0"]["b"].spec == P()
    placed = distributed.shard(state, shardings)
    sizes = distributed.param_bytes_per_device(placed.params)
    assert sizes == {jax.devices()[0].id: 4 * (64 * 16 + 16 + 16 * 10 + 10)}


def test_bad_meshes_and_batch_sizes_are_refused_before_any_device_work(digits, tmp_path):
    train, _ = digits
    history = tmp_path / "history.jsonl"
    kwargs = dict(epochs=1, progress=False, history_file=str(history), checkpoint_dir=str(tmp_path / "ckpt"))
    model_mesh = Mesh(np.array(jax.devices()), ("model",), axis_types=(AxisType.Auto,))
    with pytest.raises(ValueError, match=r"mesh has no axis 'data' \(data_axis\): its axes are \('model',\)"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, mesh=model_mesh, **kwargs)
    explicit = jax.make_mesh((1,), ("data",), axis_types=(AxisType.Explicit,))
    with pytest.raises(ValueError, match=r"mesh axis 'data' must be AxisType.Auto .*got AxisType.Explicit"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, mesh=explicit, **kwargs)
    with pytest.raises(TypeError, match=r"mesh must be a jax.sharding.Mesh or a list of jax devices, got str"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, mesh="cpu", **kwargs)
    with pytest.raises(ValueError, match=r"param_sharding must be one of \('replicated', 'fsdp'\) .*got 'zero3'"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, mesh=jax.devices(), param_sharding="zero3", **kwargs)
    with pytest.raises(TypeError, match=r"param_sharding='fsdp' needs a mesh"):
        jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, param_sharding="fsdp", **kwargs)
    assert not history.exists() and not (tmp_path / "ckpt").exists()


# --- processes -----------------------------------------------------------------------------------------------------


def script(*args, devices=None, **popen):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    small = ("--examples", 512, "--hidden", 64, "--learning-rate", 1e-3, "--batch-size", 64, "--epochs", 3)  # quick
    return subprocess.Popen([sys.executable, str(ROOT / "experiments" / "distributed_digits.py"), "--no-progress",
                             *map(str, small + tuple(args))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def params(folder, index=0):
    with np.load(folder / f"params_{index}.npz") as f:
        return {k: f[k] for k in f}


@pytest.mark.slow
def test_two_processes_agree_bitwise_resume_exactly_and_refuse_a_count_mismatch(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    straight = script("--launch", 2, "--devices-per-process", 2, "--out", two)
    reference = script("--out", one, devices=4)  # one process, 4 devices: the same mesh size
    (code, out), (code_ref, out_ref) = finish(straight), finish(reference)
    assert code == 0 and code_ref == 0, out[-3000:] + out_ref[-3000:]
    assert "2 process(es), 4 devices" in out and out.count("epoch   1/3") == 1  # only process 0 speaks
    assert len((two / "history.jsonl").read_text().splitlines()) == 3  # ... and writes the history, once
    p0, p1, ref = params(two, 0), params(two, 1), params(one, 0)
    for k in ref:
        np.testing.assert_array_equal(p0[k], p1[k])
        assert np.max(np.abs(p0[k] - ref[k])) <= RTOL * np.max(np.abs(ref[k])), k
    # killed after epoch 2 (its checkpoint not yet written), then resumed from epoch 1's: bitwise the straight run
    killed, ckpt = tmp_path / "killed", tmp_path / "ckpt"
    code, out = finish(script("--launch", 2, "--devices-per-process", 2, "--out", killed, "--checkpoint-dir", ckpt,
                              "--kill-after-epoch", 2))
    assert code != 0 and sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["1"], out[-3000:]
    code, out = finish(script("--launch", 2, "--devices-per-process", 2, "--out", killed, "--checkpoint-dir", ckpt))
    assert code == 0, out[-3000:]
    for index in (0, 1):
        for k, v in params(killed, index).items():
            np.testing.assert_array_equal(v, p0[k])
    history = json.loads((two / "metrics.json").read_text())["history"]
    resumed = json.loads((killed / "metrics.json").read_text())["history"]
    assert {k: v for k, v in resumed.items() if k != "time"} == {k: v for k, v in history.items() if k != "time"}
    # a process started with another process count: both refuse, naming the two counts, and write nothing
    port = __import__("socket").socket()
    port.bind(("localhost", 0))
    address = f"localhost:{port.getsockname()[1]}"
    port.close()
    bad = tmp_path / "bad"
    coordinator = script("--coordinator", address, "--num-processes", 2, "--process-id", 0, "--out", bad, "--timeout", 20, devices=2)
    worker = script("--coordinator", address, "--num-processes", 3, "--process-id", 1, "--out", bad, "--timeout", 20, devices=2)
    (code0, out0), (code1, out1) = finish(coordinator, 120), finish(worker, 120)
    assert code0 != 0 and code1 != 0
    assert ("ValueError: num_processes=2 in the coordinator (process 0), but process 1 was started with num_processes=3"
            in out0), out0[-2000:]
    assert "ValueError: num_processes=3 in process 1, but the coordinator (process 0) was started with num_processes=2" in out1
    assert not bad.exists()
