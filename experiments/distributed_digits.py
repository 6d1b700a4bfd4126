"""Data-parallel training of the digits MLP over several processes (``jax.distributed``) or local devices.

One machine, two processes with two CPU devices each (the script starts them):

    python experiments/distributed_digits.py --launch 2 --devices-per-process 2

Several hosts, one process per host, host0 serving the coordinator (run on
each host, ``$I`` being its index 0 .. 3; the same command everywhere else):

    python experiments/distributed_digits.py --coordinator host0:12345 --num-processes 4 --process-id $I

(or set ``JAXNETS_COORDINATOR``, ``JAXNETS_NUM_PROCESSES``, ``JAXNETS_PROCESS_ID``).
Every process loads the whole data set and runs the same program over one
mesh of every process's devices (:mod:`jaxnets.distributed`); process 0
prints, shows the progress bar and writes ``--out``/``metrics.json`` and
``history.jsonl``; every process writes ``params_<process id>.npz`` (its
copy of the trained params, which must agree bitwise) and takes part in the
orbax checkpoints of ``--checkpoint-dir``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, require_positive, write_json_atomic  # noqa: E402


@dataclasses.dataclass
class Config:
    # data: the first `examples` digits of the training split (0: all 1,437); the test split held out
    examples: int = 0
    # model: 64 -> hidden -> dropout -> 10; Adam
    hidden: int = 128
    drop_prob: float = 0.2
    learning_rate: float = 3e-3
    batch_size: int = 128  # global: split over every device of every process
    epochs: int = 20
    param_sharding: str = "replicated"  # or "fsdp"
    # processes
    coordinator: str = ""  # host:port of process 0; empty: the JAXNETS_COORDINATOR variable, or one process
    num_processes: int = 0  # 0: JAXNETS_NUM_PROCESSES, or 1
    process_id: int = -1  # -1: JAXNETS_PROCESS_ID, or 0
    devices_per_process: int = 0  # > 0: force this many CPU devices per process (set before JAX starts)
    launch: int = 0  # > 0: start this many local processes on localhost and wait for them
    timeout: int = 60  # seconds for every process to connect
    # run
    seed: int = 1
    checkpoint_dir: str = ""
    kill_after_epoch: int = 0  # > 0: SIGKILL every process once this epoch's results are in (before its checkpoint)
    out: str = "runs/distributed_digits"
    progress: bool = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(config: Config, argv: list[str]) -> int:
    """Start ``config.launch`` copies of this script on localhost, one per process id; their worst exit code."""
    address = f"localhost:{free_port()}"
    rest = []
    skip = False
    for i, arg in enumerate(argv):  # drop --launch N from the children's arguments
        if skip:
            skip = False
            continue
        if arg == "--launch":
            skip = True
            continue
        if not arg.startswith("--launch="):
            rest.append(arg)
    children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest, "--coordinator", address,
                                  "--num-processes", str(config.launch), "--process-id", str(i)])
                for i in range(config.launch)]
    codes = [child.wait() for child in children]
    return max(codes, key=abs)


def main(argv=None) -> dict | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    require_positive(config, "hidden", "learning_rate", "batch_size", "epochs", "timeout",
                     allow_zero=("examples", "drop_prob", "devices_per_process", "launch", "kill_after_epoch"))
    if config.launch:
        sys.exit(launch(config, argv))
    if config.devices_per_process:  # before JAX starts: the CPU backend reads it once
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={config.devices_per_process}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import numpy as np
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import data, distributed, losses

    coordinator = config.coordinator or os.environ.get("JAXNETS_COORDINATOR")
    num_processes = config.num_processes or int(os.environ.get("JAXNETS_NUM_PROCESSES", 1))
    process_id = config.process_id if config.process_id >= 0 else int(os.environ.get("JAXNETS_PROCESS_ID", 0))
    if num_processes > 1 or coordinator:
        distributed.initialize(coordinator, num_processes, process_id, timeout=config.timeout)
    mesh = distributed.data_mesh()  # every device of every process, one Auto axis "data"
    main_process = distributed.is_main_process()
    if main_process:
        print(f"{jax.process_count()} process(es), {len(jax.devices())} devices: {jax.devices()}", flush=True)

    digits = data.load_digits()
    count = config.examples or len(digits.x_train)
    train = (digits.x_train[:count], digits.y_train[:count])
    model = L.serial(L.Dense(config.hidden), L.Relu(), L.Dropout(config.drop_prob), L.Dense(10))
    hooks = []
    if config.kill_after_epoch:
        hooks.append(lambda p: os.kill(os.getpid(), signal.SIGKILL) if p.epoch == config.kill_after_epoch else None)
    os.makedirs(config.out, exist_ok=True)
    callbacks = hooks + [jaxnets.train.HistoryFile(os.path.join(config.out, "history.jsonl")),
                         jaxnets.train.ProgressBar(lines=True, bar=config.progress)]
    if config.checkpoint_dir:
        from jaxnets import checkpoint

        callbacks.append(checkpoint.Checkpoint(config.checkpoint_dir))
    t0 = time.perf_counter()
    state, history = jaxnets.fit(model, losses.softmax_cross_entropy_with_integer_labels, optax.adam(config.learning_rate),
                                 train, test=(digits.x_test, digits.y_test), epochs=config.epochs,
                                 batch_size=config.batch_size, seed=config.seed,
                                 placement=distributed.placement(mesh, rule=config.param_sharding,
                                                                 batch_size=config.batch_size),
                                 callbacks=callbacks)
    seconds = time.perf_counter() - t0
    leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    from jax.experimental import multihost_utils  # FSDP leaves span processes: gather them (every process calls it)

    host = {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
            for p, leaf in leaves}
    np.savez(os.path.join(config.out, f"params_{jax.process_index()}.npz"), **host)
    result = {"config": dataclasses.asdict(config), "command": [sys.executable, *sys.argv],
              "processes": jax.process_count(), "devices": len(jax.devices()), "seconds": seconds,
              "history": {k: v for k, v in history.items()}}
    if main_process:
        write_json_atomic(os.path.join(config.out, "metrics.json"), result)
        print(f"final test accuracy {history['test_accuracy'][-1]:.4f} after {seconds:.1f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
