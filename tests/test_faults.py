"""Fault injection, in real processes: SIGKILL at random moments of an epoch-based, a step-based and a two-optimizer
run, each resumed from its checkpoints to the bitwise result of the run that was never killed (and the other faults:
flipped bytes, configuration changes, full disks and shrinking stream files, are in test_checkpoint and
test_streaming, in one process)."""

import json
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _start(kind, ckpt, out):
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "fault_child.py"), kind, str(ckpt), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(kind, ckpt, out):
    proc = _start(kind, ckpt, out)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    saved = np.load(out / "result.npz")
    return [saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))], json.loads((out / "history.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["epochs", "steps", "gan"])
def test_sigkill_at_random_moments_then_resume_is_bitwise_the_run_never_killed(tmp_path, kind):
    reference = _finish(kind, tmp_path / "ref_ckpt", tmp_path / "ref")
    rng, ckpt, survived = random.Random(kind), tmp_path / "ckpt", 0
    kills = 2 if kind == "steps" else 1  # the step run is killed twice: a resume of a resumed run
    for attempt in range(kills):
        proc = _start(kind, ckpt, tmp_path / "killed")
        wanted, seen = rng.randint(1, 3), 0
        for line in proc.stdout:
            seen += line.startswith("step ")
            if seen >= wanted:
                break
        time.sleep(rng.uniform(0.0, 0.05))  # after a call, during the next one or during a save
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        survived += proc.returncode == -signal.SIGKILL
    leaves, history = _finish(kind, ckpt, tmp_path / "final")
    assert survived == kills  # every kill landed inside a run
    assert history == reference[1]
    for a, b in zip(leaves, reference[0]):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in ckpt.iterdir() if "tmp" in p.name] == []  # no temporary folder left behind
