"""Training: a train state, a jitted step, and ``fit`` with whole epochs compiled.

One training step is a pure function

    (state, x, y) -> (state, metrics)

doing forward (``model.apply_with_state`` in training mode), loss,
``jax.grad``, ``optimizer.update`` and ``optax.apply_updates``. It works with
any ``optax.GradientTransformation``. :func:`make_train_step` returns it
jitted, with the incoming state's buffers donated to the outgoing one.

:func:`fit` keeps the whole data set on the device. Each epoch is one
compiled program: a ``jax.random`` permutation of the example indices, then
``lax.scan`` of the step over batches gathered on the device. Python runs
once per epoch, to read the epoch's metrics and update the progress bar.

Batching: an epoch has ``ceil(n / batch_size)`` steps, all of the same shape.
The last batch is completed with the first examples of the same shuffled
order, so every example is used at least once per epoch, nothing is dropped,
and no step recompiles. (Padding with masked rows instead would bias
BatchNorm's batch statistics.)
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks
from jaxnets.layers import Layer
from jaxnets.losses import accuracy

__all__ = [
    "TrainState",
    "init_train_state",
    "make_train_step",
    "fit",
    "evaluate",
    "predict",
]

Metrics = Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]]


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's parameters (nested dict).
      opt_state: the optimizer's state.
      model_state: the model's state, e.g. BatchNorm running statistics (``{}`` if none).
      step: number of optimizer steps taken; an int32 array (so it never retraces).
      key: ``jax.random`` key, split once per step and once per epoch.
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    key: jax.Array


def _check_model(model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer (e.g. serial(...)), got {type(model).__name__}")
    return model


def _check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (with init and update), got {optimizer!r}")
    return optimizer


def _as_key(key: Any = None, seed: Any = None) -> jax.Array:
    if key is not None:
        if seed is not None:
            raise ValueError("pass either key or seed, not both")
        if not isinstance(key, jax.Array):
            raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
        return key
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return jax.random.key(int(seed))


def init_train_state(
    model: Layer, optimizer: optax.GradientTransformation, input_shape, *, key: jax.Array | None = None, seed: int | None = None
) -> TrainState:
    """Initial params, optimizer state and model state for ``input_shape`` (batch -1).

    The key (or ``jax.random.key(seed)``, seed 0 by default) is split: one
    part initialises the params, the other is kept for dropout and shuffling.
    """
    model, optimizer = _check_model(model), _check_optimizer(optimizer)
    init_key, train_key = jax.random.split(_as_key(key, seed))
    _, params, model_state = model.init_with_state(init_key, input_shape)
    return TrainState(params, optimizer.init(params), model_state, jnp.zeros((), jnp.int32), train_key)


def _default_metrics(y: Any) -> dict:
    return {"accuracy": accuracy} if np.issubdtype(np.dtype(y.dtype), np.integer) else {}


def make_train_step(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    metrics: Metrics | None = None,
    jit: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The training step ``(state, x, y) -> (state, metrics)``.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``, e.g.
        ``jaxnets.losses.softmax_cross_entropy_with_integer_labels``.
      optimizer: any ``optax.GradientTransformation``.
      metrics: extra ``name -> fn(outputs, targets)`` computed on the step's
        (training-mode) outputs; ``"loss"`` is always included.
      jit: return ``jax.jit(step, donate_argnums=0)`` (default), or the pure
        function to compose into your own program.
    """
    model, optimizer = _check_model(model), _check_optimizer(optimizer)
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    metrics = dict(metrics or {})

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
        key, step_key = jax.random.split(state.key)

        def objective(params):
            outputs, model_state = model.apply_with_state(params, state.model_state, x, key=step_key, train=True)
            return loss(outputs, y), (outputs, model_state)

        (value, (outputs, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logged = {"loss": value, **{name: fn(outputs, y) for name, fn in metrics.items()}}
        return TrainState(params, opt_state, model_state, state.step + 1, key), logged

    return jax.jit(step, donate_argnums=0) if jit else step


def _check_xy(data: Any, name: str) -> tuple[np.ndarray | jax.Array, np.ndarray | jax.Array]:
    if hasattr(data, "x_train") and name == "train":
        data = (data.x_train, data.y_train)
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y) of arrays or a Dataset, got {type(data).__name__}")
    x, y = data
    _checks.array_like(x, f"{name} x")
    _checks.array_like(y, f"{name} y")
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{name} x and y must have the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty (0 examples)")
    return x, y


def _check_labels(y, out_shape, name: str) -> None:
    if np.issubdtype(np.dtype(y.dtype), np.integer) and out_shape and out_shape[-1] != -1:
        _checks.labels_in_range(y, out_shape[-1], f"{name} labels")


def _batched_outputs(model: Layer, batch_size: int, params, model_state, x):
    """Outputs of ``model`` on ``x`` in evaluation mode, as a ``lax.scan`` over fixed-size batches.

    The last batch is padded with zeros and the padded rows are cut off the
    result, so every example is counted exactly once.
    """
    n = x.shape[0]
    steps = -(-n // batch_size)
    pad = steps * batch_size - n
    x_padded = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    batches = x_padded.reshape((steps, batch_size) + x.shape[1:])  # (steps, batch, *features)

    def body(_, xb):
        return None, model.apply_with_state(params, model_state, xb, train=False)[0]

    _, outs = jax.lax.scan(body, None, batches)
    return outs.reshape((steps * batch_size,) + outs.shape[2:])[:n]  # drop the padding


def predict(model: Layer, params: Any, x: Any, *, model_state: Any = None, batch_size: int = 1024) -> jax.Array:
    """The model's outputs on ``x`` in evaluation mode, computed in batches of ``batch_size``."""
    model = _check_model(model)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    _checks.array_like(x, "x")
    return _predict_program(model, min(batch_size, x.shape[0]))(params, model_state or {}, jnp.asarray(x))


@functools.lru_cache(maxsize=64)
def _predict_program(model: Layer, batch_size: int):
    """One jitted program per (model, batch size), so repeated ``predict``/``evaluate`` calls never recompile."""
    return jax.jit(functools.partial(_batched_outputs, model, batch_size))


def _score(outputs, y, loss, metrics) -> dict:
    return {"loss": loss(outputs, y), **{name: fn(outputs, y) for name, fn in metrics.items()}}


def evaluate(
    model: Layer,
    params: Any,
    data: Any,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    *,
    model_state: Any = None,
    metrics: Metrics | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss and metrics of a model on held-out data, in evaluation mode.

    Args:
      data: a pair ``(x, y)``.
      metrics: ``name -> fn(outputs, targets)``; default ``accuracy`` for
        integer labels.

    Returns:
      ``{"loss": ..., "accuracy": ..., ...}`` as Python floats, computed over
      all examples exactly (no example counted twice, none dropped).
    """
    x, y = _check_xy(data, "data")
    metrics = _default_metrics(y) if metrics is None else dict(metrics)
    outputs = predict(model, params, x, model_state=model_state, batch_size=batch_size)
    _check_labels(y, outputs.shape, "data")
    return {k: float(v) for k, v in jax.device_get(_score(outputs, jnp.asarray(y), loss, metrics)).items()}


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress extra is not installed: print a line per epoch instead
        return None
    return tqdm(total=total, unit="epoch", dynamic_ncols=True)


def fit(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    train: Any,
    *,
    test: Any = None,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int | None = None,
    key: jax.Array | None = None,
    state: TrainState | None = None,
    metrics: Metrics | None = None,
    eval_batch_size: int = 1024,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Trains ``model`` on ``train``; each epoch is one compiled program.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``.
      optimizer: any ``optax.GradientTransformation``.
      train: a :class:`jaxnets.data.Dataset` (its test split becomes ``test``
        unless given), or a pair ``(x, y)``.
      test: held-out pair ``(x, y)``, evaluated after every epoch.
      epochs: number of passes over ``train``.
      batch_size: examples per step (see the module docstring for the last batch).
      seed, key: where training starts; ``seed=0`` if neither is given.
      state: continue from this :class:`TrainState` instead of a fresh one
        (it is copied, never consumed).
      metrics: ``name -> fn(outputs, targets)``; default ``accuracy`` for
        integer labels.
      eval_batch_size: batch size of the evaluation passes.
      progress: show a progress bar (needs ``tqdm``).
      verbose: also print one line per epoch.

    Returns:
      ``(state, history)``: the trained state, and per epoch lists
      ``history["train_loss"]`` (mean over the epoch's steps),
      ``history["train_<metric>"]`` and ``history["test_<...>"]`` (measured
      in evaluation mode after the epoch), and ``history["time"]`` (seconds
      since ``fit`` began).
    """
    model, optimizer = _check_model(model), _check_optimizer(optimizer)
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    if test is None and hasattr(train, "x_test"):
        test = (train.x_test, train.y_test)
    x, y = _check_xy(train, "train")
    if test is not None:
        x_test, y_test = _check_xy(test, "test")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"test x must have the feature shape of train x {tuple(x.shape[1:])}, got {tuple(x_test.shape[1:])}")
    n = x.shape[0]
    if batch_size > n:
        raise ValueError(f"batch_size must be at most the number of training examples ({n}), got {batch_size}")
    metrics = _default_metrics(y) if metrics is None else dict(metrics)

    input_shape = (-1,) + tuple(x.shape[1:])
    if state is None:
        state = init_train_state(model, optimizer, input_shape, key=key, seed=seed)
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    else:
        state = jax.tree_util.tree_map(jnp.copy, state)  # the epoch donates its input; keep the caller's
    out_shape = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], state.params, state.model_state,
                               jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)).shape
    _check_labels(y, out_shape, "train")
    if test is not None:
        _check_labels(y_test, out_shape, "test")

    step = make_train_step(model, loss, optimizer, metrics=metrics, jit=False)
    steps = math.ceil(n / batch_size)

    @jax.jit
    def eval_program(params, model_state, xs, ys):
        outputs = _batched_outputs(model, min(eval_batch_size, xs.shape[0]), params, model_state, xs)
        return _score(outputs, ys, loss, metrics)

    def run_epoch(state, xs, ys):
        key, perm_key = jax.random.split(state.key)
        order = jax.random.permutation(perm_key, n)
        batches = order[jnp.arange(steps * batch_size) % n].reshape(steps, batch_size)  # (steps, batch)
        state, logged = jax.lax.scan(lambda s, idx: step(s, xs[idx], ys[idx]), state._replace(key=key), batches)
        return state, jax.tree_util.tree_map(jnp.mean, logged)

    run_epoch = jax.jit(run_epoch, donate_argnums=0)
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    if test is not None:
        xs_test, ys_test = jnp.asarray(x_test), jnp.asarray(y_test)

    history: dict[str, list[float]] = {"epoch": [], "train_loss": []}
    bar = _progress(epochs, progress)
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            state, logged = run_epoch(state, xs, ys)
            results = {"train_loss": logged["loss"]}
            for name, value in eval_program(state.params, state.model_state, xs, ys).items():
                if name != "loss":
                    results[f"train_{name}"] = value
            if test is not None:
                for name, value in eval_program(state.params, state.model_state, xs_test, ys_test).items():
                    results[f"test_{name}"] = value
            results = {k: float(v) for k, v in jax.device_get(results).items()}  # one host sync per epoch
            history["epoch"].append(epoch)
            for k, v in results.items():
                history.setdefault(k, []).append(v)
            history.setdefault("time", []).append(time.perf_counter() - start)
            line = " ".join(f"{k}={v:.4f}" for k, v in results.items())
            if bar is not None:
                bar.set_postfix_str(line, refresh=False)
                bar.update(1)
            if verbose or (progress and bar is None):
                print(f"epoch {epoch:3d}/{epochs} {line}", flush=True)
    finally:
        if bar is not None:
            bar.close()
    return state, history
