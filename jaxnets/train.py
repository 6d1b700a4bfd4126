"""Training: a train state, a jitted step, fused epochs, and ``fit``.

One training step is a pure function

    (state, x, y) -> (state, metrics)

doing forward (``model.apply_with_state`` in training mode), loss,
``jax.grad``, ``optimizer.update`` and ``optax.apply_updates``, and nothing
else: by default the only metric is the loss, and the step's random key is
derived from the state's fixed key and step counter (``fold_in``), so a
deterministic model's step compiles to the same program as a hand-written
raw-JAX step. :func:`make_train_step` returns it jitted, with the incoming
state's buffers donated to the outgoing one.

An epoch is one more pure function, :func:`make_epoch`: a pseudo-random
permutation of the example indices computed on the device
(:func:`permutation`), then ``lax.scan`` of the step over batches gathered on
the device. :func:`fit` compiles one program that runs up to
``epochs_per_call`` epochs, each followed by its evaluation passes, with the
history gathered on the device; Python reads it once per call.

Batching (:func:`epoch_indices`): an epoch has ``ceil(n / batch_size)``
steps, all of the same shape. The last batch is completed with the first
examples of the same shuffled order, so every example is used at least once
per epoch and no step recompiles. (Padding with masked rows instead would
bias BatchNorm's batch statistics.) With ``drop_last=True`` an epoch has
``floor(n / batch_size)`` steps and the ``n % batch_size`` examples at the end
of that epoch's order are skipped for that epoch.

Randomness: :class:`TrainState` holds one fixed key. The step that starts
with counter ``s`` gives the model (dropout) ``fold_in(key, 2 s)``, and the
epoch that starts at ``s`` shuffles with ``fold_in(key, 2 s + 1)``. Nothing
random is carried from step to step, so an unused key costs nothing: XLA
removes it.
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
    "make_epoch",
    "epoch_indices",
    "permutation",
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
      key: a fixed ``jax.random`` key; each step's and each epoch's keys are
        derived from it and ``step`` (see the module docstring).
    """

    params: Any
    opt_state: Any
    model_state: Any
    step: jax.Array
    key: jax.Array


def _model_key(state: TrainState) -> jax.Array:
    """The key the model gets (e.g. for dropout) on the step that starts at ``state.step``."""
    return jax.random.fold_in(state.key, 2 * state.step)


def _shuffle_key(state: TrainState) -> jax.Array:
    """The key that orders the epoch that starts at ``state.step``."""
    return jax.random.fold_in(state.key, 2 * state.step + 1)


def _mix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which each input bit flips each output bit w.p. ~1/2."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


def _unmix32(x: jax.Array) -> jax.Array:
    """The inverse of :func:`_mix32`: each step undone in reverse order."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7ED1B41D)  # 0xC2B2AE35 ** -1 mod 2**32
    x = x ^ (x >> np.uint32(13)) ^ (x >> np.uint32(26))
    x = x * np.uint32(0xA5CB9243)  # 0x85EBCA6B ** -1 mod 2**32
    return x ^ (x >> np.uint32(16))


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A uniformly shuffled ``0 .. n-1``, from one sort of ``n`` distinct uint32 values.

    ``jax.random.permutation`` draws random sort keys and sorts them with the
    indices as a payload; XLA's CPU sort of key-value pairs costs more than a
    training step of a small model (about 280 us for 1,437 indices on 2
    cores). Here the sort keys are a keyed bijection of the indices,
    ``h(i) = mix(mix(i xor k1) xor k2)`` with ``mix`` MurmurHash3's 32-bit
    finaliser and ``k1, k2`` the key's bits, so they are distinct (no ties,
    no payload). One single-operand sort orders them, and ``h^-1`` turns the
    sorted values back into indices: about 40 us for the same 1,437.

    Args:
      key: a ``jax.random`` key.
      n: number of indices (a Python int, below ``2**31``).

    Returns:
      ``(n,)`` int32 holding each of ``0 .. n-1`` once. The same key gives the
      same order on every backend. The tests check that every index is
      equally likely at every position, and every ordered pair equally likely
      to be adjacent (chi-squared tests over many keys).
    """
    n = _checks.positive_int(n, "n")
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)  # 2 words (threefry) or 4 (rbg)
    k1, k2 = words[0], _mix32(words[1:].sum(dtype=jnp.uint32) ^ words[0])
    hashed = _mix32(_mix32(jnp.arange(n, dtype=jnp.uint32) ^ k1) ^ k2)
    return (_unmix32(_unmix32(jnp.sort(hashed)) ^ k2) ^ k1).astype(jnp.int32)


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


def _check_loss(loss: Any) -> Callable:
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    return loss


def make_train_step(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    metrics: Metrics | None = None,
    jit: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """The training step ``(state, x, y) -> (state, metrics)``.

    Forward in training mode, loss, ``jax.value_and_grad``,
    ``optimizer.update``, ``optax.apply_updates``, ``step + 1``; the key in
    the state is passed through unchanged (the model gets
    ``fold_in(key, 2 step)``). With the default ``metrics`` this is the
    program a hand-written raw-JAX step compiles to
    (``experiments/benchmarks/w1.py`` measures it).

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``, e.g.
        ``jaxnets.losses.softmax_cross_entropy_with_integer_labels``.
      optimizer: any ``optax.GradientTransformation``.
      metrics: extra ``name -> fn(outputs, targets)`` computed on the step's
        (training-mode) outputs; ``"loss"`` is always returned. Each costs
        time on every step.
      jit: return ``jax.jit(step, donate_argnums=0)`` (default), or the pure
        function to compose into your own program.
    """
    model, optimizer, loss = _check_model(model), _check_optimizer(optimizer), _check_loss(loss)
    metrics = dict(metrics or {})

    def step(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
        def objective(params):
            outputs, model_state = model.apply_with_state(params, state.model_state, x, key=_model_key(state), train=True)
            return loss(outputs, y), (outputs, model_state)

        (value, (outputs, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logged = {"loss": value, **{name: fn(outputs, y) for name, fn in metrics.items()}}
        return TrainState(params, opt_state, model_state, state.step + 1, state.key), logged

    return jax.jit(step, donate_argnums=0) if jit else step


def _steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    if batch_size > num_examples:
        raise ValueError(f"batch_size must be at most the number of examples ({num_examples}), got {batch_size}")
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)


def epoch_indices(state: TrainState, num_examples: int, batch_size: int, *, drop_last: bool = False) -> jax.Array:
    """The example indices of each step of the epoch that starts at ``state``.

    The order is :func:`permutation` under the state's epoch key. Without
    ``drop_last`` the last batch wraps around to the start of the same order;
    with it, the examples that do not fill a batch are skipped this epoch.

    Returns:
      ``(steps, batch_size)`` int32; row ``i`` holds the indices of step ``i``.
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    steps = _steps_per_epoch(num_examples, batch_size, drop_last)
    order = permutation(_shuffle_key(state), num_examples)
    if steps * batch_size > num_examples:  # wrap around: complete the last batch from the start of the order
        order = jnp.concatenate([order, order[: steps * batch_size - num_examples]])
    return order[: steps * batch_size].reshape(steps, batch_size)  # (steps, batch)


def make_epoch(
    model: Layer,
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    optimizer: optax.GradientTransformation,
    *,
    num_examples: int,
    batch_size: int,
    drop_last: bool = False,
    metrics: Metrics | None = None,
    jit: bool = True,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
    """One epoch as one program: ``(state, x, y) -> (state, mean metrics)``.

    ``x, y`` hold all ``num_examples`` examples on the device. The batches are
    :func:`epoch_indices` of the incoming state, and the step of
    :func:`make_train_step` runs over them in a ``lax.scan``; the returned
    metrics are the means over the epoch's steps.

    Args:
      num_examples: ``x.shape[0]`` (static: it fixes the number of steps).
      batch_size, drop_last: see :func:`epoch_indices`.
      metrics, jit: as for :func:`make_train_step` (jitted with the state donated).
    """
    num_examples = _checks.positive_int(num_examples, "num_examples")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    _steps_per_epoch(num_examples, batch_size, drop_last)
    step = make_train_step(model, loss, optimizer, metrics=metrics, jit=False)

    def epoch(state: TrainState, x: jax.Array, y: jax.Array) -> tuple[TrainState, dict]:
        if x.shape[0] != num_examples or y.shape[0] != num_examples:
            raise ValueError(f"this epoch was built for num_examples={num_examples}, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        batches = epoch_indices(state, num_examples, batch_size, drop_last=drop_last)

        def body(state, idx):
            return step(state, jnp.take(x, idx, axis=0, mode="clip"), jnp.take(y, idx, axis=0, mode="clip"))

        state, logged = jax.lax.scan(body, state, batches)
        return state, jax.tree_util.tree_map(jnp.mean, logged)

    return jax.jit(epoch, donate_argnums=0) if jit else epoch


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


class _Run(NamedTuple):
    """Checked inputs of a training run (shared by :func:`fit` and :func:`jaxnets.population.fit_population`)."""

    data: tuple  # (x, y, x_test, y_test) as device arrays; the test pair is (None, None) without test data
    input_shape: tuple
    metrics: dict
    epochs: int
    batch_size: int
    epochs_per_call: int


def _check_run(model, loss, train, test, *, epochs, batch_size, epochs_per_call, drop_last, metrics) -> _Run:
    """Everything but the optimizer, which :func:`fit` and ``fit_population`` accept in different forms."""
    _check_model(model)
    _check_loss(loss)
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    epochs_per_call = _checks.positive_int(epochs_per_call, "epochs_per_call")
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
    if test is None and hasattr(train, "x_test"):
        test = (train.x_test, train.y_test)
    x, y = _check_xy(train, "train")
    x_test = y_test = None
    if test is not None:
        x_test, y_test = _check_xy(test, "test")
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"test x must have the feature shape of train x {tuple(x.shape[1:])}, got {tuple(x_test.shape[1:])}")
    _steps_per_epoch(x.shape[0], batch_size, drop_last)
    metrics = _default_metrics(y) if metrics is None else dict(metrics)
    as_device = (lambda a: None if a is None else jnp.asarray(a))
    return _Run((as_device(x), as_device(y), as_device(x_test), as_device(y_test)), (-1,) + tuple(x.shape[1:]),
                metrics, epochs, batch_size, min(epochs_per_call, epochs))


def _check_state_fits(optimizer: optax.GradientTransformation, state: TrainState) -> None:
    """A state made by another optimizer fails here, printing both structures, not deep inside ``update``."""
    expected = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, state.params))
    got = jax.tree_util.tree_structure(state.opt_state)
    if expected != got:
        raise ValueError(f"state.opt_state does not fit this optimizer (was the state made with another one?): "
                         f"the optimizer's state has structure {expected}, state.opt_state has {got}")


def _check_targets(model: Layer, state: TrainState, run: _Run) -> None:
    """Labels out of range for the model's outputs fail here, not as garbage losses."""
    x, y, _, y_test = run.data
    out_shape = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], state.params, state.model_state,
                               jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype)).shape
    _check_labels(y, out_shape, "train")
    if y_test is not None:
        _check_labels(y_test, out_shape, "test")


def _chunk_program(model, loss, optimizer, run: _Run, *, drop_last: bool, eval_batch_size: int) -> Callable:
    """The pure function ``(state, count, x, y, x_test, y_test) -> (state, results)`` that :func:`fit` compiles.

    It runs ``count <= run.epochs_per_call`` epochs (``count`` is a traced
    int32, so the last, shorter call reuses the program), each followed by
    its evaluation passes, and returns ``results[name]`` with a leading axis
    of length ``run.epochs_per_call`` whose first ``count`` rows are filled.
    """
    x0, _, x_test0, _ = run.data
    epoch = make_epoch(model, loss, optimizer, num_examples=x0.shape[0], batch_size=run.batch_size,
                       drop_last=drop_last, jit=False)

    def scores(params, model_state, xs, ys, prefix, skip_loss):
        outputs = _batched_outputs(model, min(eval_batch_size, xs.shape[0]), params, model_state, xs)
        return {f"{prefix}_{k}": v for k, v in _score(outputs, ys, loss, run.metrics).items() if not (skip_loss and k == "loss")}

    def one_epoch(state, x, y, x_test, y_test):
        state, logged = epoch(state, x, y)
        results = {"train_loss": logged["loss"], **scores(state.params, state.model_state, x, y, "train", True)}
        if x_test is not None:
            results.update(scores(state.params, state.model_state, x_test, y_test, "test", False))
        return state, results

    names = ["train_loss"] + [f"train_{k}" for k in run.metrics]
    if x_test0 is not None:
        names += ["test_loss"] + [f"test_{k}" for k in run.metrics]

    def program(state, count, x, y, x_test, y_test):
        dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
        buffers = {k: jnp.zeros((run.epochs_per_call,), dtype) for k in names}

        def body(i, carry):
            state, buffers = carry
            state, results = one_epoch(state, x, y, x_test, y_test)
            for k, v in results.items():
                if jnp.shape(v) != ():
                    raise ValueError(f"{k[k.index('_') + 1:]} must return a scalar, got shape {jnp.shape(v)}")
            return state, {k: buffers[k].at[i].set(jnp.asarray(results[k]).astype(dtype)) for k in names}

        return jax.lax.fori_loop(0, count, body, (state, buffers))

    return program


def _drive(program, state, run: _Run, *, progress: bool, verbose: bool, describe: Callable[[dict], str]):
    """Calls ``program`` until ``run.epochs`` epochs are done; yields ``(state, epoch, results, seconds)`` per epoch.

    Results are read from the device once per call. ``seconds`` is the time
    since the start at which the epoch's call returned (epochs of one call
    share it).
    """
    bar = _progress(run.epochs, progress)
    start = time.perf_counter()
    done = 0
    try:
        while done < run.epochs:
            count = min(run.epochs_per_call, run.epochs - done)
            state, results = program(state, jnp.int32(count), *run.data)
            results = jax.device_get(results)  # one host sync per call
            seconds = time.perf_counter() - start
            for i in range(count):
                done += 1
                row = {k: v[i] for k, v in results.items()}
                line = describe(row)
                if verbose or (progress and bar is None):
                    print(f"epoch {done:3d}/{run.epochs} {line}", flush=True)
                yield state, done, row, seconds
            if bar is not None:
                bar.set_postfix_str(line, refresh=False)
                bar.update(count)
    finally:
        if bar is not None:
            bar.close()


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
    epochs_per_call: int = 1,
    drop_last: bool = False,
    eval_batch_size: int = 1024,
    progress: bool = True,
    verbose: bool = False,
) -> tuple[TrainState, dict[str, list[float]]]:
    """Trains ``model`` on ``train`` with whole epochs, and their evaluation, compiled.

    One program is compiled per call of ``fit`` (never per epoch): it runs up
    to ``epochs_per_call`` epochs, each an on-device shuffle and a
    ``lax.scan`` of the step (:func:`make_epoch`), followed by evaluation
    passes over the training set and ``test`` in evaluation mode. Its
    metrics stay on the device until the call returns.

    Args:
      model: the network.
      loss: ``loss(outputs, targets) -> scalar``.
      optimizer: any ``optax.GradientTransformation``.
      train: a :class:`jaxnets.data.Dataset` (its test split becomes ``test``
        unless given), or a pair ``(x, y)``.
      test: held-out pair ``(x, y)``, evaluated after every epoch.
      epochs: number of passes over ``train``.
      batch_size: examples per step.
      seed, key: where training starts; ``seed=0`` if neither is given.
      state: continue from this :class:`TrainState` instead of a fresh one
        (it is copied, never consumed).
      metrics: ``name -> fn(outputs, targets)`` for the evaluation passes;
        default ``accuracy`` for integer labels.
      epochs_per_call: epochs per host round-trip. ``1`` updates the progress
        bar every epoch; more saves one dispatch and one device-to-host copy
        per epoch (on an accelerator, where those dominate small models).
      drop_last: skip the examples that do not fill a last batch instead of
        completing it from the start of the epoch's order (module docstring).
      eval_batch_size: batch size of the evaluation passes.
      progress: show a progress bar (needs ``tqdm``).
      verbose: also print one line per epoch.

    Returns:
      ``(state, history)``: the trained state, and per epoch lists
      ``history["train_loss"]`` (mean over the epoch's training-mode steps),
      ``history["train_<metric>"]`` and ``history["test_<...>"]`` (evaluation
      mode, after the epoch), and ``history["time"]`` (seconds since ``fit``
      began, when the epoch's results reached the host).

    Raises:
      TypeError, ValueError: on a wrong model, loss, optimizer, data,
        hyperparameter or state, before anything is compiled.
    """
    _check_optimizer(optimizer)
    run = _check_run(model, loss, train, test, epochs=epochs, batch_size=batch_size,
                     epochs_per_call=epochs_per_call, drop_last=drop_last, metrics=metrics)
    eval_batch_size = _checks.positive_int(eval_batch_size, "eval_batch_size")
    if state is None:
        state = init_train_state(model, optimizer, run.input_shape, key=key, seed=seed)
    elif not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    else:
        _check_state_fits(optimizer, state)
        state = jax.tree_util.tree_map(jnp.copy, state)  # the program donates its input; keep the caller's
    _check_targets(model, state, run)
    program = jax.jit(_chunk_program(model, loss, optimizer, run, drop_last=drop_last, eval_batch_size=eval_batch_size),
                      donate_argnums=0)

    history: dict[str, list[float]] = {"epoch": []}
    describe = (lambda row: " ".join(f"{k}={float(v):.4f}" for k, v in row.items()))
    for state, epoch, row, seconds in _drive(program, state, run, progress=progress, verbose=verbose, describe=describe):
        history["epoch"].append(epoch)
        for k, v in row.items():
            history.setdefault(k, []).append(float(v))
        history.setdefault("time", []).append(seconds)
    return state, history
