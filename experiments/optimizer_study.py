"""Optimizer study: each hand-written jaxnets optimizer beside its optax twin, on digits.

    python experiments/optimizer_study.py
    python experiments/optimizer_study.py --quick      # 2 epochs, few timing rounds

The same MLP (64-128-10) is trained with every optimizer twice, once with
``jaxnets.optim.<name>`` and once with ``optax.<name>``, from the same initial
params and the same shuffled batches. Reported per optimizer:

* final test accuracy of each twin;
* max relative parameter deviation with shared gradients: ``jaxnets.optim.compare``
  feeds both the gradients of the optax trajectory on the same digits batches
  for as many steps as training takes;
* relative difference of the final params when each twin follows its own gradients;
* step time: the median of the jitted training step over interleaved rounds,
  as a ratio jaxnets / optax (on a step of ~0.1 ms on a shared 2-core CPU,
  repeated runs vary by about +-10%);
* XLA's cost analysis of each compiled step (flops, bytes accessed), a
  deterministic measure of the work each twin does, as a ratio.

Writes ``optimizer_study.json``, ``optimizer_study.md`` (the table) and
``loss_curves.png`` (loss per epoch, both twins overlaid) to ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import parse_config, run_folder, run_record, write_json_atomic  # noqa: E402

# name -> keyword arguments given to both twins (learning rates suited to this MLP)
OPTIMIZERS = {
    "sgd": dict(learning_rate=0.05, momentum=0.9),
    "adagrad": dict(learning_rate=0.05),
    "rmsprop": dict(learning_rate=1e-3),
    "adam": dict(learning_rate=1e-3),
    "adamw": dict(learning_rate=1e-3, weight_decay=1e-4),
    "adamax": dict(learning_rate=2e-3),
    "nadam": dict(learning_rate=1e-3),
    "amsgrad": dict(learning_rate=1e-3),
    "lion": dict(learning_rate=3e-4),
}


@dataclasses.dataclass
class Config:
    hidden: int = 128
    batch_size: int = 64
    epochs: int = 20
    timing_rounds: int = 7  # interleaved rounds of timed steps
    timing_steps: int = 200  # steps per round
    seed: int = 0
    optimizers: str = ",".join(OPTIMIZERS)  # comma-separated subset to run
    quick: bool = False
    out: str = "runs/optimizer_study"


def relative_difference(a, b) -> float:
    import jax
    import jax.numpy as jnp

    diff = jnp.sqrt(sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))
    ref = jnp.sqrt(sum(jnp.sum(y**2) for y in jax.tree_util.tree_leaves(b)))
    return float(diff / ref)


def time_steps(steps_by_name: dict, rounds: int, n: int) -> dict:
    """Median seconds per step of each jitted step, interleaved so machine noise hits all alike."""
    import jax

    for name, (step, state, batch) in steps_by_name.items():  # compile; the step donates its input state
        state, logged = step(state, *batch)
        jax.block_until_ready(logged["loss"])
        steps_by_name[name] = (step, state, batch)
    times = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, (step, state, batch) in steps_by_name.items():
            s = state
            t = time.perf_counter()
            for _ in range(n):
                s, logged = step(s, *batch)
            jax.block_until_ready(logged["loss"])
            times[name].append((time.perf_counter() - t) / n)
            steps_by_name[name] = (step, s, batch)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compiled_cost(step, state, batch) -> dict:
    """XLA's own estimate of the compiled step's work: floating-point operations and bytes accessed."""
    analysis = step.lower(state, *batch).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX returns one dict per computation
        analysis = analysis[0]
    return {"flops": float(analysis.get("flops", float("nan"))), "bytes": float(analysis.get("bytes accessed", float("nan")))}


def main(argv=None) -> dict:
    config = parse_config(Config, __doc__.splitlines()[0], argv)
    if config.quick:
        config = dataclasses.replace(config, epochs=2, timing_rounds=2, timing_steps=10)
    import jax
    import jax.numpy as jnp
    import optax

    import jaxnets
    import jaxnets.layers as L
    from jaxnets import data, losses, optim, train

    ce = losses.softmax_cross_entropy_with_integer_labels
    digits = data.load_digits()
    model = L.serial(L.Dense(config.hidden), L.Relu(), L.Dense(10))
    n = digits.x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    xs, ys = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    order = jax.random.permutation(jax.random.key(config.seed), n)
    batches = order[jnp.arange(total_steps * config.batch_size) % n].reshape(total_steps, config.batch_size)

    def grad_fn(params, step):  # the digits loss on batch `step`
        idx = batches[step]
        return jax.grad(lambda p: ce(model.apply(p, xs[idx]), ys[idx]))(params)

    chosen = [name.strip() for name in config.optimizers.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(OPTIMIZERS))
    if unknown or not chosen:
        raise ValueError(f"optimizers must be a comma-separated subset of {list(OPTIMIZERS)}, got {config.optimizers!r}")
    rows, curves, timed = [], {}, {}
    for name in chosen:
        kwargs = OPTIMIZERS[name]
        ours, theirs = getattr(optim, name)(**kwargs), getattr(optax, name)(**kwargs)
        runs = {}
        for lib, opt in (("jaxnets", ours), ("optax", theirs)):
            state, history = jaxnets.fit(model, ce, opt, digits, epochs=config.epochs, batch_size=config.batch_size,
                                         seed=config.seed, callbacks=[])
            runs[lib] = (state, history)
            curves[f"{name}/{lib}"] = history["train_loss"]
            step = train.make_train_step(model, ce, opt)
            timed[f"{name}/{lib}"] = (step, train.init_train_state(model, opt, digits.input_shape, seed=config.seed),
                                      (xs[batches[0]], ys[batches[0]]))
        start = runs["optax"][0].params
        _, init_params = model.init(jax.random.split(jax.random.key(config.seed))[0], digits.input_shape)
        shared = optim.compare(ours, theirs, init_params, grad_fn, steps=total_steps)
        rows.append({
            "optimizer": name,
            "kwargs": kwargs,
            "jaxnets_test_accuracy": runs["jaxnets"][1]["test_accuracy"][-1],
            "optax_test_accuracy": runs["optax"][1]["test_accuracy"][-1],
            "max_rel_deviation_shared_grads": shared.worst_rel,
            "max_abs_deviation_shared_grads": shared.worst_abs,
            "final_rel_difference_own_grads": relative_difference(runs["jaxnets"][0].params, start),
        })
        print(f"{name:8s} trained: test accuracy jaxnets {rows[-1]['jaxnets_test_accuracy']:.4f} "
              f"optax {rows[-1]['optax_test_accuracy']:.4f}; {shared}", flush=True)

    costs = {name: compiled_cost(step, state, batch) for name, (step, state, batch) in timed.items()}
    step_time = time_steps(timed, config.timing_rounds, config.timing_steps)
    for row in rows:
        ours_t, theirs_t = step_time[f"{row['optimizer']}/jaxnets"], step_time[f"{row['optimizer']}/optax"]
        row.update(jaxnets_step_us=ours_t * 1e6, optax_step_us=theirs_t * 1e6, step_time_ratio=ours_t / theirs_t)
        ours_c, theirs_c = costs[f"{row['optimizer']}/jaxnets"], costs[f"{row['optimizer']}/optax"]
        row.update(flops_ratio=ours_c["flops"] / theirs_c["flops"], bytes_ratio=ours_c["bytes"] / theirs_c["bytes"])

    header = ("| optimizer | test acc. jaxnets | test acc. optax | max rel. deviation, shared grads | "
              "final rel. difference, own grads | step time jaxnets / optax | XLA flops, bytes jaxnets / optax |")
    lines = [header, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['jaxnets_test_accuracy']:.4f} | {r['optax_test_accuracy']:.4f} | "
                     f"{r['max_rel_deviation_shared_grads']:.1e} | {r['final_rel_difference_own_grads']:.1e} | "
                     f"{r['step_time_ratio']:.2f} ({r['jaxnets_step_us']:.0f} / {r['optax_step_us']:.0f} us) | "
                     f"{r['flops_ratio']:.3f}, {r['bytes_ratio']:.3f} |")
    table = "\n".join(lines)
    print(f"\nMLP 64-{config.hidden}-10 on digits, {config.epochs} epochs of {steps_per_epoch} steps, batch {config.batch_size}")
    print(table)

    result = {**run_record(config), "steps": total_steps, "rows": rows, "curves": curves}
    with run_folder(config.out) as folder:  # the three files appear together or not at all
        write_json_atomic(os.path.join(folder, "optimizer_study.json"), result)
        with open(os.path.join(folder, "optimizer_study.md"), "w") as f:
            f.write(table + "\n")
        plot(curves, os.path.join(folder, "loss_curves.png"))
    print(f"wrote {config.out}/optimizer_study.json, optimizer_study.md, loss_curves.png")
    return result


def plot(curves: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: pip install 'jaxnets[plots]'")
        return
    names = [key.split("/")[0] for key in curves if key.endswith("/jaxnets")]
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), sharex=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        ours, theirs = curves[f"{name}/jaxnets"], curves[f"{name}/optax"]
        epochs = range(1, len(ours) + 1)
        ax.plot(epochs, theirs, color="tab:orange", lw=4, alpha=0.5, label="optax")
        ax.plot(epochs, ours, color="tab:blue", lw=1.5, ls="--", label="jaxnets")
        ax.set(title=name, yscale="log")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("train loss")
    fig.suptitle("Each hand-written optimizer over its optax twin (same init, same batches)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
