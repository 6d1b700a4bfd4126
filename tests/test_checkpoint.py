"""Checkpoints: resume is exact, the last few and the best are kept, another run's checkpoint is refused, a corrupt
one is skipped, a SIGKILL at any moment (during a save too) loses nothing; params in safetensors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import warnings

import jax
import numpy as np
import optax
import pytest

pytest.importorskip("orbax.checkpoint")
pytest.importorskip("safetensors")

import jaxnets  # noqa: E402
import jaxnets.layers as L  # noqa: E402
from jaxnets import checkpoint, data, losses, train  # noqa: E402

CE = losses.softmax_cross_entropy_with_integer_labels
STANDARD_PROMOTION_REASON = "optax.adam mixes its int32 count with floats"
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def model():
    return L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10))


def assert_same_run(a, ha, b, hb):
    jax.tree_util.tree_map(np.testing.assert_array_equal, (a.params, a.opt_state, a.step), (b.params, b.opt_state, b.step))
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    assert {k: v for k, v in ha.items() if k != "time"} == {k: v for k, v in hb.items() if k != "time"}


def test_resume_is_bitwise_the_uninterrupted_run(digits, tmp_path):
    opt = optax.adam(1e-3)
    straight, h_straight = jaxnets.fit(model(), CE, opt, digits, epochs=5, seed=1, progress=False)
    jaxnets.fit(model(), CE, opt, digits, epochs=2, seed=1, checkpoint_dir=str(tmp_path), progress=False)
    resumed, h_resumed = jaxnets.fit(model(), CE, opt, digits, epochs=5, seed=1, checkpoint_dir=str(tmp_path),
                                     epochs_per_call=2, progress=False)
    assert_same_run(straight, h_straight, resumed, h_resumed)
    done, h_done = jaxnets.fit(model(), CE, opt, digits, epochs=5, seed=1, checkpoint_dir=str(tmp_path), progress=False)
    assert_same_run(straight, h_straight, done, h_done)  # nothing left to do: the checkpoint is returned


def test_keeps_the_last_few_and_the_best(digits, tmp_path):
    folder = checkpoint.Checkpoints(str(tmp_path), keep=2, best="test_loss", async_save=False)  # every epoch written
    _, history = jaxnets.fit(model(), CE, optax.adam(0.05), digits, epochs=7, checkpoint_dir=folder, progress=False)
    best = int(np.argmin(history["test_loss"])) + 1
    kept = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert kept == sorted({6, 7, best}), (kept, best, history["test_loss"])


def test_another_models_checkpoint_is_refused_and_left_alone(digits, tmp_path):
    jaxnets.fit(model(), CE, optax.adam(1e-3), digits, epochs=1, checkpoint_dir=str(tmp_path), progress=False)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    other = L.serial(L.Dense(16), L.Relu(), L.Dense(10))
    with pytest.raises(ValueError, match=r"holds another model's or optimizer's state \(nothing was overwritten\)"
                                         r":\n  opt_state/0/mu/dense_0/b: this run has \[\[16\], 'float32'\], the checkpoint \[\[32\], 'float32'\]"):
        jaxnets.fit(other, CE, optax.adam(1e-3), digits, epochs=2, checkpoint_dir=str(tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"(?s)another model.s or optimizer.s state.*opt_state/0/mu/dense_0/b: this run has nothing, the checkpoint"):
        jaxnets.fit(model(), CE, optax.sgd(0.1), digits, epochs=2, checkpoint_dir=str(tmp_path), progress=False)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_a_corrupt_checkpoint_is_skipped_with_a_warning_naming_it(digits, tmp_path):
    opt = optax.adam(1e-3)
    straight, h_straight = jaxnets.fit(model(), CE, opt, digits, epochs=3, progress=False)
    # written synchronously: with background saves, a loaded machine may coalesce epoch 1's save into epoch 2's,
    # and this test needs both on disk
    jaxnets.fit(model(), CE, opt, digits, epochs=2, progress=False,
                checkpoint_dir=checkpoint.Checkpoints(str(tmp_path), async_save=False))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1", "2"]
    for path in (tmp_path / "2").rglob("*"):  # truncate every file of the latest checkpoint
        if path.is_file():
            path.write_bytes(path.read_bytes()[: 7])
    with pytest.warns(RuntimeWarning, match=r"unreadable checkpoint\(s\) skipped:\n.*/2: .*\nresuming from .*/1"):
        resumed, h_resumed = jaxnets.fit(model(), CE, opt, digits, epochs=3, checkpoint_dir=str(tmp_path), progress=False)
    assert_same_run(straight, h_straight, resumed, h_resumed)


def test_safetensors_round_trip_and_errors(digits, tmp_path, key):
    from safetensors.numpy import load_file

    net = model()
    _, params = net.init(key, digits.input_shape)
    path = str(tmp_path / "params.safetensors")
    checkpoint.save_params(path, params)
    assert sorted(load_file(path)) == ["dense_0/b", "dense_0/w", "dense_1/b", "dense_1/w"]  # names any tool reads
    like = jax.eval_shape(lambda k: net.init(k, digits.input_shape)[1], key)
    jax.tree_util.tree_map(np.testing.assert_array_equal, checkpoint.load_params(path, like), params)
    assert [p.name for p in tmp_path.iterdir()] == ["params.safetensors"]  # no temporary file left behind
    wider = L.serial(L.Dense(48), L.Relu(), L.Dropout(0.2), L.Dense(10))
    with pytest.raises(ValueError, match=r"does not fit the params:\n  dense_0/b: expected shape \(48,\), the file has \(32,\)"):
        checkpoint.load_params(path, jax.eval_shape(lambda k: wider.init(k, digits.input_shape)[1], key))
    deeper = {**params, "dense_2": {"w": np.zeros((10, 3), np.float32)}}
    with pytest.raises(ValueError, match=r"dense_2/w: missing from the file \(expected shape \(10, 3\)\)"):
        checkpoint.load_params(path, deeper)
    with pytest.raises(ValueError, match=r"dense_1/w: in the file \(shape \(32, 10\)\) but not in the params"):
        checkpoint.load_params(path, {"dense_0": params["dense_0"], "dense_1": {"b": params["dense_1"]["b"]}})


def test_a_superseded_save_never_loses_the_best_checkpoint(tmp_path):
    """Saves that arrive while the writer is busy or resting replace each other, but the best-scoring one waits its turn."""
    folder = checkpoint.Checkpoints(str(tmp_path), keep=1, best="test_loss", writer_share=0.01)
    losses_by_epoch = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 0.5, 6: 0.9, 7: 0.7}
    for epoch, value in losses_by_epoch.items():  # faster than one save: all but the first wait or are superseded
        folder.save(epoch, {"w": np.full(3, value, np.float32)}, {"test_loss": [value]}, {})
    folder.close()
    reopened = checkpoint.Checkpoints(str(tmp_path), keep=1, best="test_loss")
    assert reopened.best_epoch() == 5 and reopened.epochs()[-1] == 7  # the best and the newest, whatever was skipped
    assert set(folder.skipped) | set(reopened.epochs()) <= set(losses_by_epoch) and 5 not in folder.skipped
    with pytest.raises(ValueError, match=r"writer_share must be a number in \(0, 1\], got 0"):
        checkpoint.Checkpoints(str(tmp_path / "other"), writer_share=0)
    reopened.close()


def test_a_save_due_while_the_writer_rests_is_skipped_before_any_copy(tmp_path, monkeypatch):
    """Without best, a mid-run save (final=False) that the writer could not start now is not copied at all."""
    folder = checkpoint.Checkpoints(str(tmp_path), keep=5, writer_share=0.001)  # after one save, a long rest
    copies = []
    real_copy = checkpoint._copy_to_host
    monkeypatch.setattr(checkpoint, "_copy_to_host", lambda tree: copies.append(1) or real_copy(tree))
    assert folder.save(1, {"w": np.ones(3, np.float32)}, {"loss": [1.0]}, {}, final=False)
    folder.wait()  # written; the writer now rests about 1000 times the save's time
    assert not folder.save(2, {"w": np.full(3, 2.0, np.float32)}, {"loss": [1.0, 0.5]}, {}, final=False)
    assert len(copies) == 1 and folder.skipped == [2]
    assert folder.save(3, {"w": np.full(3, 3.0, np.float32)}, {"loss": [1.0, 0.5, 0.2]}, {})  # final: always taken
    folder.close()
    assert folder.epochs() == [1, 3] and len(copies) == 2
    restored, history, _ = checkpoint.Checkpoints(str(tmp_path)).restore({"w": np.zeros(3, np.float32)})
    np.testing.assert_array_equal(restored["w"], 3.0)
    # with best, a mid-run save is never skipped this way: it may be the best one
    best = checkpoint.Checkpoints(str(tmp_path / "best"), best="loss", writer_share=0.001)
    assert best.save(1, {"w": np.ones(3, np.float32)}, {"loss": [1.0]}, {}, final=False)
    best.wait()
    assert best.save(2, {"w": np.ones(3, np.float32)}, {"loss": [1.0, 0.5]}, {}, final=False)
    best.close()
    assert best.epochs() == [1, 2]


def test_background_saves_never_make_training_wait_and_the_newest_is_written(digits, tmp_path):
    folder = checkpoint.Checkpoints(str(tmp_path), keep=50)
    state, history = jaxnets.fit(model(), CE, optax.adam(1e-3), digits, epochs=12, checkpoint_dir=folder, progress=False)
    saved = folder.epochs()
    assert saved[-1] == 12 and sorted(saved + folder.skipped) == list(range(1, 13))  # each epoch saved or superseded
    restored, restored_history, _ = checkpoint.Checkpoints(str(tmp_path)).restore(state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, state.params)
    assert restored_history == history


def _child(ckpt, out, kill, *, timeout=300):
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "checkpoint_child.py"), str(ckpt), str(out), kill],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _like():
    """A fresh state of the child's run (the structure a restore needs)."""
    return jaxnets.init_train_state(L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10)), optax.adam(1e-3), (-1, 64))


def _finish(ckpt, out):
    proc = _child(ckpt, out, "none")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    leaves = np.load(out / "result.npz")
    return [leaves[k] for k in sorted(leaves.files, key=lambda k: int(k.split("_")[1]))], json.loads((out / "history.json").read_text())


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    reference = _finish(tmp_path / "ref_ckpt", tmp_path / "ref")
    # after an epoch, and during a save (kills at random moments of epoch, step and GAN runs are in test_faults)
    kills = ["epoch:4", "save:3"]
    for kill in kills:
        ckpt, out = tmp_path / f"{kill}_ckpt".replace(":", "_"), tmp_path / kill.replace(":", "_")
        proc = _child(ckpt, out, kill)
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, kill
        if kill.startswith("save"):  # the previous checkpoint is readable, whatever state the killed save is in
            killed = int(kill.split(":")[1])
            # the newest written before it (saves due while the writer rested were skipped; the first is always taken)
            folder = checkpoint.Checkpoints(str(ckpt))
            previous = max(e for e in folder.epochs() if e < killed)
            restored = folder.restore(_like(), epoch=previous)
            folder.close()
            assert restored[1]["epoch"] == list(range(1, previous + 1))
        leaves, history = _finish(ckpt, out)
        assert history == reference[1], kill
        for a, b in zip(leaves, reference[0]):
            np.testing.assert_array_equal(a, b, err_msg=kill)
        leftovers = [p.name for p in ckpt.iterdir() if "tmp" in p.name]
        assert leftovers == [], (kill, leftovers)


def _fit(tmp_path, net=None, opt=None, **kwargs):
    callback = kwargs.pop("callback", None) or checkpoint.Checkpoint(tmp_path, async_save=False)
    return jaxnets.fit(net or model(), CE, opt or optax.adam(1e-3), kwargs.pop("data"), callbacks=[callback], **kwargs)


@pytest.mark.parametrize("change, field", [
    (dict(net=L.serial(L.Dense(32), L.Tanh(), L.Dropout(0.2), L.Dense(10))), "fit/model"),
    (dict(opt=optax.nadam(1e-3)), "fit/optimizer"),
    (dict(opt=optax.adam(2e-3)), "fit/optimizer"),
    (dict(batch_size=32), "source/batch_size"),
    (dict(seed=5), "fit/key"),
    (dict(drop_last=True), "source/drop_last"),
])
def test_resume_refuses_another_configuration_naming_what_differs(digits, tmp_path, change, field):
    _fit(tmp_path, data=digits, epochs=1)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=rf"(?s)another configuration \(nothing was overwritten\):\n.*  {field}: .*"
                                         r"check_config=False"):
        _fit(tmp_path, data=digits, epochs=2, **change)
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    forced = checkpoint.Checkpoint(tmp_path, check_config=False, async_save=False)
    _, history = _fit(tmp_path, data=digits, epochs=2, callback=forced, **change)
    assert history["epoch"][-1] == 2  # continued anyway, when asked


def test_another_data_set_and_fewer_epochs_are_refused(digits, tmp_path):
    _fit(tmp_path, data=digits, epochs=3)
    with pytest.raises(ValueError, match=r"(?s)source/(num_examples|fingerprint)"):
        _fit(tmp_path, data=(digits.x_train[:1000], digits.y_train[:1000]), epochs=4)
    with pytest.raises(ValueError, match="past the 46 steps asked for"):
        _fit(tmp_path, data=digits, epochs=2)


def test_a_flipped_byte_in_the_array_data_is_caught_by_its_checksum(digits, tmp_path):
    opt = optax.adam(1e-3)
    straight, h_straight = jaxnets.fit(model(), CE, opt, digits, epochs=3, callbacks=[])
    _fit(tmp_path, opt=opt, data=digits, epochs=2)
    data_files = sorted((p for p in (tmp_path / "2").rglob("*") if p.is_file() and p.stat().st_size > 4096),
                        key=lambda p: p.stat().st_size)
    target = data_files[-1]  # the largest file holds the array bytes
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match=r"(?s)unreadable checkpoint\(s\) skipped:\n.*/2: the array data does not "
                                            r"match its checksums.*resuming from .*/1"):
        resumed, h_resumed = _fit(tmp_path, opt=opt, data=digits, epochs=3)
    assert_same_run(straight, h_straight, resumed, h_resumed)


def test_retention_counts_every_checkpoint_in_the_folder_and_best_resumes(digits, tmp_path):
    def callback(**kw):
        return checkpoint.Checkpoint(tmp_path, keep=1, best="test_loss", async_save=False, **kw)

    _fit(tmp_path, opt=optax.adam(0.05), data=digits, epochs=3, callback=callback())
    _, history = _fit(tmp_path, opt=optax.adam(0.05), data=digits, epochs=6, callback=callback())
    kept = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    best = int(np.argmin(history["test_loss"])) + 1
    assert kept == sorted({6, best}), (kept, history["test_loss"])  # keep=1 and the best, across the resume
    restored = checkpoint.Checkpoints(str(tmp_path), keep=1, best="test_loss").restore(
        jaxnets.init_train_state(model(), optax.adam(0.05), digits.input_shape), epoch=best)
    assert restored[1]["epoch"] == list(range(1, best + 1))


def test_save_improved_only_writes_better_checkpoints(digits, tmp_path):
    cb = checkpoint.Checkpoint(tmp_path, keep=10, best="test_loss", save="improved", async_save=False)
    _, history = _fit(tmp_path, opt=optax.adam(0.05), data=digits, epochs=6, callback=cb)
    losses_ = history["test_loss"]
    improved = [i + 1 for i, v in enumerate(losses_) if v < min(losses_[:i], default=np.inf)]
    kept = sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit())
    assert kept == sorted(set(improved) | {6})  # every improvement, and the end of the run
    with pytest.raises(ValueError, match="need best="):
        checkpoint.Checkpoint(tmp_path, save="improved")
    folder = checkpoint.Checkpoints(str(tmp_path / "no_best"), async_save=False)  # a folder with no best: never improves
    for kwargs in ({"save": "improved"}, {"resume": "best"}):
        with pytest.raises(ValueError, match=r"opened without one: open it as Checkpoints\(\.\.\., best="):
            checkpoint.Checkpoint(folder, **kwargs)
    with pytest.raises(ValueError, match=r"best='test_loss' differs from the Checkpoints folder's own best=None"):
        checkpoint.Checkpoint(folder, best="test_loss")
    folder.close()


def test_a_folder_is_used_by_one_run_at_a_time_and_paths_are_checked_first(tmp_path):
    first = checkpoint.Checkpoints(str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"is in use by another run"):
        checkpoint.Checkpoints(str(tmp_path / "a"))
    first.close()
    checkpoint.Checkpoints(str(tmp_path / "a")).close()  # released
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file: give a folder"):
        checkpoint.Checkpoint(tmp_path / "file")
    with pytest.raises(TypeError, match="must be a path"):
        checkpoint.Checkpoint(3)
    with pytest.raises(ValueError, match="cannot be created"):  # a folder inside a file: no run can write it
        checkpoint.Checkpoints(str(tmp_path / "file" / "c"))


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path/disk`` (mounting needs root: skipped with the reason where it fails)."""
    import shutil

    folder = tmp_path / "disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                                 text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"a small tmpfs needs mount(8): {error}")
    if mounted.returncode != 0:
        pytest.skip(f"a small tmpfs needs root (CAP_SYS_ADMIN) to mount; the injected ENOSPC case covers the same "
                    f"path: {mounted.stderr.strip()}")
    yield folder
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("disk, async_save", [("tmpfs", True), ("tmpfs", False), ("injected", True)])
def test_a_full_disk_stops_the_run_with_its_state_and_leaves_the_earlier_checkpoints_restorable(
        request, tmp_path, monkeypatch, disk, async_save):
    """The disk fills after epoch 1's checkpoint: the error names the full disk and the folder, carries the last good
    state and history (the background save's failure was raised from the checkpoint's final save, losing them), no
    temporary folder is left, and checkpoint 1 restores and resumes the run. ``injected``: orbax's save raises
    ``OSError(ENOSPC)`` after writing a partial temporary folder, as a full disk does (no root needed)."""
    import errno

    root = request.getfixturevalue("small_disk") if disk == "tmpfs" else tmp_path
    folder = str(root / "ckpt")
    x = jax.random.normal(jax.random.key(1), (64, 8))
    data = (x, (x[:, 0] > 0).astype(jax.numpy.int32))
    net = L.serial(L.Dense(16), L.Relu(), L.Dense(2))
    ckpt = checkpoint.Checkpoint(folder, async_save=async_save)

    def fill(progress):
        if progress.epoch != 2:
            return
        ckpt.folder.wait()  # epoch 1's checkpoint is on disk before the disk fills
        if disk == "tmpfs":
            with open(root / "filler", "wb") as f:
                with pytest.raises(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
            return
        def full(step, *args, **kwargs):
            partial = os.path.join(folder, f"{step}.orbax-checkpoint-tmp-1")
            os.makedirs(partial, exist_ok=True)
            pathlib.Path(partial, "state").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), partial)

        monkeypatch.setattr(ckpt.folder.manager, "save", full)  # this run's folder only: the resume below opens another

    run = dict(epochs=5, batch_size=16)
    with pytest.raises(RuntimeError, match=rf"saving a checkpoint in {folder} failed \(the disk is full\): OSError: "
                                           rf"\[Errno 28\] No space left on device") as caught:
        jaxnets.fit(net, CE, optax.adam(1e-2), data, callbacks=[train.Hook(fill), ckpt], **run)
    error = caught.value
    epochs_done = error.history["epoch"][-1]
    assert epochs_done >= 2 and error.history["epoch"] == list(range(1, epochs_done + 1))
    assert int(error.state.step) == 4 * epochs_done  # the state of the history's last row, readable (not donated)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(error.state.params))
    assert [n for n in os.listdir(folder) if "tmp" in n] == []  # no temporary folder left behind
    if disk == "tmpfs":
        os.remove(root / "filler")
    folder_ = checkpoint.Checkpoints(folder)  # the run released the folder's lock
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no checkpoint skipped as unreadable
        state, history, _ = folder_.restore(error.state)
    folder_.close()
    assert int(state.step) == 4 and history["epoch"] == [1]  # epoch 1's checkpoint, whole
    resumed, history = jaxnets.fit(net, CE, optax.adam(1e-2), data, callbacks=[checkpoint.Checkpoint(folder)], **run)
    assert int(resumed.step) == 20 and history["epoch"] == [1, 2, 3, 4, 5]

