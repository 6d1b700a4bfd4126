"""Run machinery shared by :func:`jaxnets.fit` and :func:`jaxnets.population.fit_population`.

Nothing here is specific to one model or one member: checks of the model,
optimizer, key and data pytrees (NaN/Inf refused before compiling), the keys
derived from a train state's counter, the compiled chunk of epochs with its
finiteness flags, and the host loop that calls it. The library's public
modules import these names; users never need them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnets import _checks
from jaxnets.layers import Layer

#: The divergence error's advice; one constant, so the locator's name can change in one place.
LOCATE_ADVICE = ("run jaxnets.debug.locate_nonfinite(model, params, x, y, loss=loss, state=model_state) on a batch, with the "
                 "params of the last finite state (error.state), to name the first layer whose output or gradient is not finite")

#: What a donated (consumed) state's error says; raised by :func:`check_not_donated`.
DONATED_MSG = ("{name} was donated to a previous call (its buffers now belong to the state that call returned) and "
               "cannot be used again: use the returned state, or keep a copy first with "
               "jax.tree_util.tree_map(jnp.copy, {name})")


# --- checks ------------------------------------------------------------------------------------------------------


def check_model(model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise TypeError(f"model must be a jaxnets Layer (e.g. serial(...)), got {type(model).__name__}")
    return model


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"optimizer must be an optax.GradientTransformation (with init and update), got {optimizer!r}")
    return optimizer


def check_loss(loss: Any) -> Callable:
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(outputs, targets), got {loss!r}")
    return loss


def as_key(key: Any = None, seed: Any = None) -> jax.Array:
    """``key`` (a typed ``jax.random`` key), or ``jax.random.key(seed)`` (seed 0 if neither is given)."""
    if key is not None:
        if seed is not None:
            raise ValueError("pass either key or seed, not both")
        if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            raise TypeError(f"key must be a typed jax.random key (jax.random.key(seed)), got {type(key).__name__} "
                            f"of dtype {getattr(key, 'dtype', None)}")
        return key
    if seed is None:
        seed = 0
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return jax.random.key(int(seed))


def is_deleted(tree: Any) -> bool:
    """True when any leaf of ``tree`` is a JAX array whose buffer was donated or deleted."""
    return any(isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer) and leaf.is_deleted()
               for leaf in jax.tree_util.tree_leaves(tree))


def check_not_donated(tree: Any, name: str) -> None:
    if is_deleted(tree):
        raise ValueError(DONATED_MSG.format(name=name))


def check_state_fits(optimizer: optax.GradientTransformation, state: Any) -> None:
    """A state made by another optimizer fails here, printing both structures, not deep inside ``update``."""
    expected = jax.tree_util.tree_structure(jax.eval_shape(optimizer.init, state.params))
    got = jax.tree_util.tree_structure(state.opt_state)
    if expected != got:
        raise ValueError(f"state.opt_state does not fit this optimizer (was the state made with another one?): "
                         f"the optimizer's state has structure {expected}, state.opt_state has {got}")


def shapes_by_path(tree: Any) -> dict[str, tuple]:
    """``{"dense_0/w": (shape, dtype name)}`` for every leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[path_name(path)] = (tuple(np.shape(leaf)), np.dtype(leaf.dtype).name if hasattr(leaf, "dtype") else type(leaf).__name__)
    return out


def path_name(path) -> str:
    """A pytree path as ``dense_0/w`` (dict keys, sequence indices and attribute names joined by ``/``)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def compare_trees(expected: Any, got: Any, what: str) -> None:
    """Raise ValueError listing the paths whose presence, shape or dtype differ between two pytrees."""
    want, have = shapes_by_path(expected), shapes_by_path(got)
    if want == have and jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(got):
        return
    lines = [f"  {p}: expected {want.get(p, 'nothing')}, got {have.get(p, 'nothing')}"
             for p in sorted(set(want) | set(have)) if want.get(p) != have.get(p)]
    if not lines:
        lines = [f"  structure: expected {jax.tree_util.tree_structure(expected)}, got {jax.tree_util.tree_structure(got)}"]
    raise ValueError(f"{what} does not fit (was it made for another model or optimizer?):\n" + "\n".join(lines[:20]))


# --- data pytrees ------------------------------------------------------------------------------------------------


def _leaf_label(name: str, path, pair: bool) -> str:
    if pair and path:
        head = "x" if path[0].idx == 0 else "y"
        rest = jax.tree_util.keystr(tuple(path[1:]))
        return f"{name} {head}{rest}"
    return name + jax.tree_util.keystr(tuple(path))


def check_data(data: Any, name: str, *, pair: bool) -> tuple[Any, int]:
    """A data pytree (``pair``: exactly ``(x, y)``) whose array leaves share a leading axis of ``n >= 1`` finite rows.

    Returns the pytree (lists made tuples) and ``n``. NaN or Inf in any
    floating leaf is refused here, before anything is compiled, naming the
    array, the row and the column.
    """
    if isinstance(data, list):
        data = tuple(data)
    if pair and (not isinstance(data, tuple) or len(data) != 2):
        raise TypeError(f"{name} must be a pair (x, y) of arrays or a jaxnets.data.Dataset, got {type(data).__name__}")
    flat, _ = jax.tree_util.tree_flatten_with_path(data)
    if not flat:
        raise ValueError(f"{name} holds no arrays")
    sizes = {}
    for path, leaf in flat:
        label = _leaf_label(name, path, pair)
        _checks.array_like(leaf, label)
        if np.ndim(leaf) < 1:
            raise ValueError(f"{label} must have a leading example axis, got a scalar")
        sizes[label] = leaf.shape[0]
    if len(set(sizes.values())) != 1:
        if pair and len(sizes) == 2:
            (_, x), (_, y) = flat
            raise ValueError(f"{name} x and y must have the same number of examples, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        raise ValueError(f"{name} arrays must have the same number of examples, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"{name} is empty (0 examples)")
    for path, leaf in flat:
        check_finite_array(leaf, _leaf_label(name, path, pair))
    return data, n


def check_finite_array(array: Any, label: str) -> None:
    """NaN/Inf in a concrete floating array: a ValueError naming ``label``, the first bad row and column."""
    if _checks.is_traced(array) or not jnp.issubdtype(array.dtype, jnp.inexact):
        return
    host = np.asarray(array)
    bad = ~np.isfinite(host)
    if bad.any():
        index = np.argwhere(bad)[0]
        where = f"row {index[0]}" + (f", column {tuple(int(i) for i in index[1:])}" if len(index) > 2 else
                                      f", column {index[1]}" if len(index) == 2 else "")
        raise ValueError(f"{label} holds {int(bad.sum())} non-finite value(s) (NaN or Inf); the first at {where}: "
                         f"{host[tuple(index)]}. Clean or impute the data before training")


def leading(data: Any) -> int:
    return jax.tree_util.tree_leaves(data)[0].shape[0]


def take(data: Any, idx: jax.Array) -> Any:
    """Rows ``idx`` of every leaf of a data pytree (gathered on the device)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    if batch_size > num_examples:
        raise ValueError(f"batch_size must be at most the number of examples ({num_examples}), got {batch_size}")
    return num_examples // batch_size if drop_last else math.ceil(num_examples / batch_size)


# --- keys derived from the step counter ---------------------------------------------------------------------------


def model_key(state: Any) -> jax.Array:
    """The key of the step that starts at ``state.step`` (the model's dropout, a transform, DP noise)."""
    return jax.random.fold_in(state.key, 2 * state.step)


def shuffle_key(state: Any) -> jax.Array:
    """The key that orders the epoch that starts at ``state.step``."""
    return jax.random.fold_in(state.key, 2 * state.step + 1)


def eval_key(state: Any, which: int) -> jax.Array:
    """The key of evaluation pass ``which`` (0 train, 1 test) after the epoch that ended at ``state.step``."""
    return jax.random.fold_in(jax.random.fold_in(shuffle_key(state), 1), which)


# --- the compiled chunk of epochs ----------------------------------------------------------------------------------


class Run(NamedTuple):
    """Checked inputs of a training run."""

    data: Any  # the training data pytree, on the device
    test: Any  # the held-out pytree, or None
    num_examples: int
    epochs: int
    batch_size: int
    epochs_per_call: int


def chunk_program(one_epoch: Callable, epochs_per_call: int, *, freeze_nonfinite: bool,
                  names: Callable | None = None) -> Callable:
    """The pure function ``(state, count, data, test) -> (state, out)`` that ``fit`` compiles.

    It runs ``count <= epochs_per_call`` epochs (``count`` is a traced int32,
    so a shorter last call reuses the program). ``one_epoch(state, data,
    test) -> (state, results, nonfinite_step)`` trains one epoch and runs its
    evaluation passes; ``nonfinite_step`` is -1 when the loss and the params
    stayed finite, else the index in the epoch of the first step whose loss
    (or, at the last step, whose params) was not. With ``freeze_nonfinite``
    the loop stops at such an epoch and returns the state before it.

    ``out["results"][name]`` has a leading axis of ``epochs_per_call`` whose
    first ``out["done"]`` rows are filled; ``out["nonfinite_step"]`` likewise.
    ``names(state, data, test)`` lists the results' names (by default found
    by tracing ``one_epoch`` once more).
    """

    def program(state, count, data, test):
        keys = names(state, data, test) if names is not None else list(jax.eval_shape(one_epoch, state, data, test)[1])
        dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
        buffers = {k: jnp.zeros((epochs_per_call,), dtype) for k in keys}
        flags = jnp.full((epochs_per_call,), -1, jnp.int32)

        def cond(carry):
            i, _, _, _, bad = carry
            return (i < count) & ~bad if freeze_nonfinite else i < count

        def body(carry):
            i, state, buffers, flags, bad = carry
            new, results, nonfinite = one_epoch(state, data, test)
            for name, value in results.items():
                if jnp.shape(value) != ():
                    raise ValueError(f"metric {name!r} must be a scalar per epoch, got shape {jnp.shape(value)}")
            if set(results) != set(buffers):
                raise ValueError(f"the epoch's metrics {sorted(results)} differ from those announced {sorted(buffers)}")
            ok = nonfinite < 0
            if freeze_nonfinite:  # keep the last finite state: nothing learned is lost
                new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
            buffers = {k: buffers[k].at[i].set(jnp.asarray(results[k]).astype(dtype)) for k in buffers}
            return i + 1, new, buffers, flags.at[i].set(nonfinite), bad | ~ok

        i, state, buffers, flags, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), state, buffers, flags, jnp.bool_(False)))
        return state, {"results": buffers, "nonfinite_step": flags, "done": i}

    return program


# --- the host loop -------------------------------------------------------------------------------------------------


def progress_bar(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the progress extra is not installed: print a line per epoch instead
        return None
    return tqdm(total=total, initial=initial, unit="epoch", dynamic_ncols=True)


class Chunk(NamedTuple):
    """What one host round-trip brought back."""

    state: Any
    rows: list  # [(epoch number, {name: value})], one per epoch run, the non-finite one included
    nonfinite: list  # [(epoch number, step index in that epoch)] for epochs whose nonfinite_step >= 0
    seconds: float  # since the run started


def drive(program, state, run: Run, *, done: int = 0, progress: bool, verbose: bool,
          describe: Callable[[dict], str], vectorised: bool = False):
    """Calls ``program`` until ``run.epochs`` epochs are done (``done`` already were); yields a :class:`Chunk` per call.

    Results are read from the device once per call. A caller that stops
    iterating (early stopping, divergence) simply closes the generator.
    """
    bar = progress_bar(run.epochs, progress, done)
    start = time.perf_counter()
    try:
        while done < run.epochs:
            count = min(run.epochs_per_call, run.epochs - done)
            state, out = program(state, jnp.int32(count), run.data, run.test)
            out = jax.device_get(out)  # one host sync per call
            seconds = time.perf_counter() - start
            ran = int(np.max(out["done"]))
            rows, nonfinite = [], []
            for i in range(ran):
                epoch = done + i + 1
                row = {k: v[i] for k, v in out["results"].items()}
                rows.append((epoch, row))
                flag = out["nonfinite_step"][i]
                if np.any(flag >= 0):
                    nonfinite.append((epoch, flag))
                line = describe(row)
                if verbose or (progress and bar is None):
                    print(f"epoch {epoch:3d}/{run.epochs} {line}", flush=True)
            done += ran
            if bar is not None:
                bar.set_postfix_str(line, refresh=False)
                bar.update(ran)
            yield Chunk(state, rows, nonfinite, seconds)
            if ran < count and not vectorised:
                return
    finally:
        if bar is not None:
            bar.close()


# --- shuffling ----------------------------------------------------------------------------------------------------


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
    if n >= 2**31:  # checked before anything is allocated
        raise ValueError(f"n must be below 2**31 (indices are int32), got {n}")
    words = jax.random.key_data(key).reshape(-1).astype(jnp.uint32)  # 2 words (threefry) or 4 (rbg)
    k1, k2 = words[0], _mix32(words[1:].sum(dtype=jnp.uint32) ^ words[0])
    hashed = _mix32(_mix32(jnp.arange(n, dtype=jnp.uint32) ^ k1) ^ k2)
    return (_unmix32(_unmix32(jnp.sort(hashed)) ^ k2) ^ k1).astype(jnp.int32)


# --- checks of a run's data, state and targets; hooks; divergence -----------------------------------------------


def check_labels(y, out_shape, name: str) -> None:
    if np.issubdtype(np.dtype(y.dtype), np.integer) and out_shape and out_shape[-1] != -1:
        _checks.labels_in_range(y, out_shape[-1], f"{name} labels")


class Progress(NamedTuple):
    """What a hook of :func:`fit` sees between host round-trips.

    Attributes:
      epoch: epochs done so far (in this run, resumed ones included).
      epochs: epochs asked for.
      metrics: the last epoch's ``{name: float}``.
      history: the history so far (lists per name, as ``fit`` returns it).
      state: the train state after ``epoch`` epochs (do not keep it: the next
        call donates its buffers; copy what you need with ``jnp.copy``).
    """

    epoch: int
    epochs: int
    metrics: dict
    history: dict
    state: Any


def early_stopping(metric: str = "test_loss", *, patience: int = 5, mode: str | None = None,
                   min_delta: float = 0.0) -> Callable[[Progress], bool]:
    """A hook for :func:`fit` that stops when ``metric`` has not improved for ``patience`` epochs.

    It reads only the history, so it behaves the same in a resumed run.
    ``mode`` is ``"min"`` (default for names ending in ``loss``) or ``"max"``;
    an improvement must exceed ``min_delta``.
    """
    patience = _checks.positive_int(patience, "patience")
    min_delta = _checks.positive_float(min_delta, "min_delta", allow_zero=True)
    mode = mode or ("min" if metric.endswith("loss") else "max")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")

    def hook(progress: Progress) -> bool:
        if metric not in progress.history:
            raise ValueError(f"early_stopping metric must be one of the history's {sorted(progress.history)}, got {metric!r}")
        best_value, best_epoch = np.inf, 0
        for i, value in enumerate(progress.history[metric]):
            value = value if mode == "min" else -value
            if value < best_value - min_delta:
                best_value, best_epoch = value, i
        return len(progress.history[metric]) - 1 - best_epoch >= patience

    hook.__name__ = f"early_stopping({metric!r}, patience={patience})"
    return hook


def first_nonfinite(losses: jax.Array, params: Any, skipped: jax.Array | None = None) -> jax.Array:
    """Index of the first step whose loss is NaN/Inf; the last step's if only the final params are; else -1.

    With ``skipped`` (each step's count of steps skipped by a loss scale), an
    epoch whose every step was skipped is non-finite too (at step 0): its
    gradients were never finite, whatever the scale, which is a divergence
    that only the skipping kept out of the params.
    """
    bad = ~jnp.isfinite(losses)
    if skipped is not None:
        bad = bad | jnp.all(skipped > 0)
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    params_ok = jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])) if leaves else jnp.bool_(True)
    last = jnp.where(params_ok, -1, losses.shape[0] - 1)
    return jnp.where(bad.any(), jnp.argmax(bad), last).astype(jnp.int32)


class NonFiniteError(ValueError):
    """Training diverged: a loss or the params became NaN/Inf. Carries what was learned before.

    Attributes:
      epoch, step: the first non-finite epoch (1-based) and global step.
      state: the last finite train state (after epoch ``epoch - 1``).
      history: the history up to that state.
    """

    def __init__(self, message: str, *, epoch: int, step: int, state: Any, history: dict):
        super().__init__(message)
        self.epoch, self.step, self.state, self.history = epoch, step, state, history


def _split_data(data: Any, test: Any, objective_mode: bool):
    """``(data, test)`` from a Dataset, a pair or a pytree; a Dataset's test split is ``test`` unless given."""
    if test is None and hasattr(data, "x_test"):
        test = (data.x_test, data.y_test)
    if hasattr(data, "x_train"):
        data = (data.x_train, data.y_train)
    if hasattr(test, "x_test"):  # a Dataset given as test: its held-out split
        test = (test.x_test, test.y_test)
    data, n = check_data(data, "data", pair=not objective_mode)
    if test is not None:
        test, _ = check_data(test, "test", pair=not objective_mode)
        want = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), data)
        got = jax.tree_util.tree_map(lambda a: tuple(a.shape[1:]), test)
        if jax.tree_util.tree_structure(data) != jax.tree_util.tree_structure(test) or want != got:
            if not objective_mode and jax.tree_util.tree_structure(data) == jax.tree_util.tree_structure(test):
                raise ValueError(f"test x must have the feature shape of data x {want[0]}, got {got[0]}")
            raise ValueError(f"test must have the structure and feature shapes of data {want}, got {got}")
    return data, test, n


def prepare_run(data: Any, test: Any, *, objective_mode: bool, epochs: int, batch_size: int, epochs_per_call: int,
                drop_last: bool, place: Callable | None = None) -> Run:
    """Checked data and schedule of a run, data moved to the device (shared by ``fit`` and ``fit_population``).

    ``place(tree) -> tree`` puts the data elsewhere than the default device
    (``jaxnets.distributed.Placement.data``: replicated over a mesh).
    """
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    epochs_per_call = _checks.positive_int(epochs_per_call, "epochs_per_call")
    if not isinstance(drop_last, bool):
        raise TypeError(f"drop_last must be a bool, got {drop_last!r}")
    data, test, n = _split_data(data, test, objective_mode)
    steps_per_epoch(n, batch_size, drop_last)
    device = functools.partial(jax.tree_util.tree_map, jnp.asarray) if place is None else place
    return Run(device(data), None if test is None else device(test), n, epochs, batch_size, min(epochs_per_call, epochs))


def check_state_for_model(model: Layer, state: Any, input_shape) -> None:
    """A state whose params or model state another model made fails here, listing the differing paths."""
    expected = jax.eval_shape(lambda k: model.init_with_state(k, input_shape)[1:], jax.random.key(0))
    compare_trees(expected[0], state.params, "state.params")
    compare_trees(expected[1], state.model_state, "state.model_state")


def check_targets(model: Layer, state: Any, run: Run) -> None:
    """Labels out of range for the model's outputs fail here, not as garbage losses (pairs of arrays only)."""
    (x, y), test = run.data, run.test
    if not isinstance(x, jax.Array) or not isinstance(y, jax.Array):
        return
    out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], state.params, state.model_state,
                         jax.ShapeDtypeStruct((1,) + tuple(x.shape[1:]), x.dtype))
    if isinstance(out, jax.ShapeDtypeStruct):
        check_labels(y, out.shape, "data")
        if test is not None:
            check_labels(test[1], out.shape, "test")


def append_lines(path: str, rows: list[dict]) -> None:
    """Append JSON lines and flush them to disk, so a crashed run leaves its curve behind."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())
