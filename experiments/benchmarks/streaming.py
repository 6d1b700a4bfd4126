"""Streamed data: W2 trained from a memory-mapped file of a few GB, against the same model with its data in device memory.

    python experiments/benchmarks/streaming.py                  # 1,000,000 x 784 float32: a 3.1 GB file
    python experiments/benchmarks/streaming.py --quick          # small sizes: checks the script, not the speed

Writes ``--rows`` random float32 rows of 784 features and int32 labels to two
memory-mapped files under ``--dir`` (the system's temporary folder by
default; float32 on disk is the harder case: four times the bytes of uint8
images, nothing left to do on the device but train), and removes them at the
end. Then, interleaved over ``--rounds`` rounds in one process (medians):

* **streamed**: ``fit`` on ``jaxnets.streaming.from_arrays(x_file, y_file)``,
  ``--steps`` steps per epoch (``steps_per_epoch``: each epoch is the first
  batches of a permutation of all ``--rows`` rows, so reads are spread over
  the whole file), ``--chunk`` steps per transfer and scanned program;
* **in memory**: ``fit`` on the first ``--steps`` x 512 rows already in
  device memory (the fused epoch: one program per epoch, no transfers).

Both are MLP 784-1024-1024-10, batch 512, Adam 1e-3, ``--epochs`` epochs
per ``fit`` call (all in one host round-trip, ``epochs_per_call``) with
compiled programs reused (a warm-up call each first);
steps/s counts every step of a call over its wall time, so each pays its own
per-call costs (the streamed one: one permutation of all rows per epoch and a
first chunk not yet prefetched). The streamed run's reader timings (host
seconds reading and checking rows, issuing transfers, and the training loop's
seconds waiting for a chunk) say which side sets the pace. Writes
``streaming.json`` and ``streaming.md`` to ``--out``.

The file is written just before the runs, so on a machine with more free RAM
than its size the reads come from the page cache; the record says how much
memory the machine has.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import optax

import _workloads as W
from _common import interleaved_medians, write_results


def write_files(folder: str, rows: int, features: int, classes: int, seed: int = 0) -> tuple[str, str]:
    """Random float32 rows and int32 labels as raw memory-mapped files, written block by block."""
    x_path, y_path = os.path.join(folder, "x.f32"), os.path.join(folder, "y.i32")
    x = np.memmap(x_path, np.float32, "w+", shape=(rows, features))
    y = np.memmap(y_path, np.int32, "w+", shape=(rows,))
    rng = np.random.default_rng(seed)
    block = 65536
    for start in range(0, rows, block):
        stop = min(rows, start + block)
        x[start:stop] = rng.standard_normal((stop - start, features), np.float32)
        y[start:stop] = rng.integers(0, classes, stop - start, dtype=np.int32)
    x.flush(), y.flush()
    del x, y
    return x_path, y_path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=400, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit call")
    parser.add_argument("--chunk", type=int, default=20, help="steps per chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the memory-mapped files are written (and removed)")
    parser.add_argument("--out", default="runs/benchmarks")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, batch, rows, steps, epochs, chunk, rounds = (784, 64, 64, 10), 64, 4096, 8, 1, 4, 1
    else:
        sizes, batch, rows, steps, epochs, chunk, rounds = (W.W2["sizes"], W.W2["batch"], args.rows, args.steps,
                                                           args.epochs, args.chunk, args.rounds)
    if steps * batch > rows:
        raise ValueError(f"--rows must be at least --steps x batch = {steps * batch}, got {rows}")

    import jaxnets
    from jaxnets import losses, streaming

    loss = losses.softmax_cross_entropy_with_integer_labels
    optimizer = optax.adam(1e-3)
    model = W.jaxnets_model(sizes)
    folder = tempfile.mkdtemp(prefix="jaxnets-streaming-", dir=args.dir)
    try:
        began = time.perf_counter()
        x_path, y_path = write_files(folder, rows, sizes[0], sizes[-1])
        write_seconds = time.perf_counter() - began
        file_bytes = os.path.getsize(x_path) + os.path.getsize(y_path)
        x_file = np.memmap(x_path, np.float32, "r", shape=(rows, sizes[0]))
        y_file = np.memmap(y_path, np.int32, "r", shape=(rows,))
        stream = streaming.from_arrays(x_file, y_file, steps_per_chunk=chunk, steps_per_epoch=steps)
        x_dev, y_dev = jax.device_put(np.asarray(x_file[:steps * batch])), jax.device_put(np.asarray(y_file[:steps * batch]))
        options = dict(epochs=epochs, epochs_per_call=epochs, batch_size=batch, progress=False, metrics={})
        results = {}

        def contender(name, data):
            def run():
                state, history = jaxnets.fit(model, loss, optimizer, data, **options)
                jax.block_until_ready(state.params)
                results[name] = history["train_loss"][-1]
            return run

        medians = interleaved_medians({"streamed": contender("streamed", stream),  # each warmed up (compiled) first
                                       "in memory": contender("in memory", (x_dev, y_dev))}, rounds, steps * epochs)
        timings = dict(stream.timings)  # every streamed call's chunks, the warm-up's included
    finally:
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)

    rows_out = []
    for name in ("in memory", "streamed"):
        rows_out.append({"contender": name, "ms_per_step": medians[name] * 1e3, "steps_per_s": 1 / medians[name],
                         "relative_speed": medians["in memory"] / medians[name]})
    chunks = max(timings["chunks"], 1)
    per_chunk = {"read_ms": timings["read_s"] / chunks * 1e3, "transfer_ms": timings["transfer_s"] / chunks * 1e3,
                 "wait_ms": timings["wait_s"] / chunks * 1e3, "train_ms": medians["streamed"] * chunk * 1e3}
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory_gib = None
    result = {"benchmark": "streaming", "workload": f"MLP {'-'.join(map(str, sizes))}, random data, batch {batch}, Adam 1e-3",
              **W.environment(), "quick": args.quick, "rounds": rounds, "rows": rows, "file_bytes": file_bytes,
              "file_write_seconds": write_seconds, "memory_gib": memory_gib, "steps_per_epoch": steps,
              "epochs_per_call": epochs, "steps_per_chunk": chunk, "ratio": medians["in memory"] / medians["streamed"],
              "per_chunk": per_chunk, "rows": rows_out}
    text = W.table(rows_out, [("contender", "contender", ""), ("ms per step", "ms_per_step", ".2f"),
                              ("steps/s", "steps_per_s", ".2f"), ("speed relative to in memory", "relative_speed", ".3f")])
    text += (f"\n\nStreamed from a {file_bytes / 1e9:.2f} GB memory-mapped file ({rows} rows), {chunk} steps per chunk; "
             f"per chunk: {per_chunk['read_ms']:.1f} ms reading and checking rows, {per_chunk['transfer_ms']:.1f} ms "
             f"issuing the transfer, {per_chunk['wait_ms']:.1f} ms the training loop waited, against "
             f"{per_chunk['train_ms']:.1f} ms of training.")
    print(f"streaming on {result['device']}: {rounds} rounds x {steps * epochs} steps, medians")
    print(text)
    write_results(args.out, "streaming", result, text)
    return result


if __name__ == "__main__":
    main()
