"""Multi-device runs for tests/test_distributed.py, on 8 forced CPU devices: ``python distributed_child.py WHAT OUT``.

The pytest process has initialised JAX with one CPU device, so these run in
a child started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
WHAT is ``equal`` (data parallel on 1, 2, 4 and 8 devices against no mesh,
the compiled step's collectives, a checkpoint resumed on another mesh) or
``sharded`` (FSDP against replicated, a population over 8 devices). Each
writes OUT/WHAT.json with the figures the test asserts on.
"""

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnets
import jaxnets.layers as L
from jaxnets import data, distributed, losses, population

CE = losses.softmax_cross_entropy_with_integer_labels
EPOCHS = 3


def digits(images=False):
    d = data.load_digits(as_images=images)
    return (d.x_train[:512], d.y_train[:512]), (d.x_test[:256], d.y_test[:256])


def mlp():
    return L.serial(L.Dense(64), L.Relu(), L.Dropout(0.2), L.Dense(10))


def cnn():
    # no bias before BatchNorm: its gradient is exactly 0, and Adam would turn the rounding noise into steps
    return L.serial(L.Conv2D(8, 3, use_bias=False), L.BatchNorm(), L.Relu(), L.MaxPool((2, 2)), L.Flatten(), L.Dense(10))


def max_relative(a, b):
    """max over leaves of max|a - b| / max|b| (the leaf's scale: entries near 0 make an entrywise ratio meaningless)."""
    out = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30)))
    return out


def history_gap(h, g):
    keys = [k for k in h if k not in ("time", "epoch")]
    assert sorted(keys) == sorted(k for k in g if k not in ("time", "epoch")), (sorted(h), sorted(g))
    return max(abs(a - b) / max(abs(b), 1e-30) for k in keys for a, b in zip(h[k], g[k]))


def collectives(text):
    """Counts of the data-moving collectives in a compiled HLO text (async starts counted once)."""
    out = {}
    for op in ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"):
        out[op] = len(re.findall(rf"= [^=\n]*\b{op}(?:-start)?\(", text))
    return out


def equal(out):
    devices = jax.devices()
    result = {"devices": len(devices)}
    for name, model, batch, images in (("mlp_dropout", mlp, 64, False), ("cnn_batchnorm", cnn, 32, True)):
        train, test = digits(images)
        kwargs = dict(test=test, epochs=EPOCHS, batch_size=batch, seed=1, progress=False)
        ref, h_ref = jaxnets.fit(model(), CE, optax.adam(1e-3), train, **kwargs)
        rows = {}
        for n in (1, 2, 4, 8):
            got, h = jaxnets.fit(model(), CE, optax.adam(1e-3), train, mesh=devices[:n], **kwargs)
            spec = {str(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(got.params)}
            rows[n] = {"params": max_relative(got.params, ref.params), "model_state": max_relative(got.model_state, ref.model_state),
                       "history": history_gap(h, h_ref), "param_specs": sorted(spec),
                       "devices_used": len(jax.tree_util.tree_leaves(got.params)[0].sharding.device_set)}
        result[name] = rows
    # the compiled data-parallel step (the general step, jitted over a sharded batch and a replicated state)
    for name, model, images, batch in (("mlp_dropout", mlp, False, 64), ("cnn_batchnorm", cnn, True, 32)):
        (x, y), _ = digits(images)
        mesh = distributed.data_mesh(devices[:4])
        opt = optax.adam(1e-3)
        state = jaxnets.init_train_state(model(), opt, (-1,) + x.shape[1:], seed=0)
        state = distributed.shard(state, distributed.state_shardings(state, mesh))
        batch_ = distributed.shard_batch((x[:batch], y[:batch]), mesh)
        step = jaxnets.make_step(jaxnets.train.objective_from_loss(model(), CE), opt)
        text = step.lower(state, batch_).compile().as_text()
        result[f"hlo_{name}"] = collectives(text)
        result[f"hlo_{name}_all_reduce_lines"] = [line.strip()[:300] for line in text.splitlines()
                                                  if re.search(r"\ball-reduce(?:-start)?\(", line)]
    # a checkpoint written on 2 devices resumes on 4 (the host copy is the global value; fit places it on the new mesh)
    train, test = digits()
    kwargs = dict(test=test, batch_size=64, seed=1, progress=False)
    folder = os.path.join(out, "ckpt")
    jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, epochs=2, mesh=devices[:2], checkpoint_dir=folder, **kwargs)
    resumed, h_res = jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, epochs=EPOCHS, mesh=devices[:4], checkpoint_dir=folder, **kwargs)
    straight, h_str = jaxnets.fit(mlp(), CE, optax.adam(1e-3), train, epochs=EPOCHS, **kwargs)
    result["resume_on_another_mesh"] = {"params": max_relative(resumed.params, straight.params),
                                        "history": history_gap(h_res, h_str), "epochs": h_res["epoch"]}
    return result


def sharded(out):
    devices = jax.devices()
    train, test = digits()
    model = L.serial(L.Dense(256), L.Relu(), L.Dropout(0.2), L.Dense(64), L.Relu(), L.Dense(10))
    kwargs = dict(test=test, epochs=EPOCHS, batch_size=64, seed=2, progress=False)
    replicated, h_rep = jaxnets.fit(model, CE, optax.adam(1e-3), train, mesh=devices, **kwargs)
    fsdp, h_fsdp = jaxnets.fit(model, CE, optax.adam(1e-3), train, mesh=devices, param_sharding="fsdp", **kwargs)
    result = {"fsdp_params": max_relative(fsdp.params, replicated.params),
              "fsdp_opt_state": max_relative(fsdp.opt_state, replicated.opt_state),
              "fsdp_history": history_gap(h_fsdp, h_rep),
              "fsdp_specs": {jax.tree_util.keystr(p): str(leaf.sharding.spec)
                             for p, leaf in jax.tree_util.tree_flatten_with_path(fsdp.params)[0]},
              "bytes_replicated": distributed.param_bytes_per_device((replicated.params, replicated.opt_state)),
              "bytes_fsdp": distributed.param_bytes_per_device((fsdp.params, fsdp.opt_state))}
    members = population.grid(seed=range(32))
    small = L.serial(L.Dense(32), L.Relu(), L.Dense(10))
    pkw = dict(test=test, epochs=2, batch_size=64, progress=False)
    one, h_one = population.fit_population(small, CE, optax.adam(1e-3), train, members=members, **pkw)
    spread, h_spread = population.fit_population(small, CE, optax.adam(1e-3), train, members=members, mesh=devices, **pkw)
    result["population_params"] = max_relative(spread.params, one.params)
    result["population_history"] = max(float(np.max(np.abs(h_spread[k] - h_one[k]) / np.maximum(np.abs(h_one[k]), 1e-30)))
                                       for k in h_one if k.startswith(("train_", "test_")))
    result["population_devices"] = len(jax.tree_util.tree_leaves(spread.params)[0].sharding.device_set)
    result["population_spec"] = str(jax.tree_util.tree_leaves(spread.params)[0].sharding.spec)
    # the population's compiled program, as fit_population builds it: no collective at all
    opt = optax.adam(1e-3)
    keys = jnp.stack([jax.random.key(s) for s in range(32)])
    state = jax.vmap(lambda k: jaxnets.init_train_state(small, opt, (-1, 64), key=k))(keys)
    place = distributed.placement(devices, members=32)
    step = jaxnets.train.setup.cached_step(small, opt, loss=CE, metrics=(("accuracy", losses.accuracy),))
    source = jaxnets.train.ArraySource(train, 64, place=place.data)
    built = jaxnets.train.program.build(step, source, length=source.steps_per_epoch, max_count=1, freeze=False)
    program = jax.jit(jax.vmap(built, in_axes=(0, None, None, None, None, None, None),
                               out_axes=(0, {"sums": 1, "lasts": 1, "nonfinite": 1, "done": 0})), donate_argnums=0)
    text = program.lower(place.state(state), None, jnp.int32(0), jnp.int32(0), jnp.int32(1), source.data,
                         None).compile().as_text()
    result["hlo_population"] = collectives(text)
    # the FSDP step on 8 devices: what XLA inserts for the sharded weights
    fsdp_state = jaxnets.init_train_state(model, opt, (-1, 64), seed=0)
    fsdp_state = distributed.shard(fsdp_state, distributed.state_shardings(fsdp_state, devices, "fsdp"))
    step = jaxnets.make_step(jaxnets.train.objective_from_loss(model, CE), opt)
    text = step.lower(fsdp_state, distributed.shard_batch((train[0][:64], train[1][:64]), devices)).compile().as_text()
    result["hlo_fsdp"] = collectives(text)
    refused, folder = {}, os.path.join(out, "refused")
    os.makedirs(folder)
    for name, call in (("batch", lambda: jaxnets.fit(model, CE, optax.adam(1e-3), train, batch_size=60, mesh=devices, progress=False,
                                                     history_file=os.path.join(folder, "h.jsonl"),
                                                     checkpoint_dir=os.path.join(folder, "ckpt"))),
                       ("members", lambda: population.fit_population(small, CE, optax.adam(1e-3), train, members=population.grid(
                           seed=range(30)), mesh=devices, progress=False))):
        try:
            call()
        except (TypeError, ValueError) as error:
            refused[name] = f"{type(error).__name__}: {error}"
    refused["written"] = os.listdir(folder)
    result["refused"] = refused
    return result


if __name__ == "__main__":
    what, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    res = {"equal": equal, "sharded": sharded}[what](out)
    with open(os.path.join(out, f"{what}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(json.dumps(res, indent=1, default=str))
