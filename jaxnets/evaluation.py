"""Evaluation: a model's outputs, losses and metrics on held-out data, in fixed-size batches.

Two forms, as for training (:mod:`jaxnets.train`):

* a model and ``loss(outputs, targets)`` with ``metrics`` of ``(outputs,
  targets)``, on data ``(x, y)``; outputs may be any pytree (a tuple, a dict)
  and :func:`predict` returns the same structure;
* an objective ``(params, batch, key, model_state) -> (loss, aux)`` on any
  data pytree: the loss and every scalar entry of ``aux`` are averaged over
  the examples. A key is passed, so an evaluation may be random (a VAE's ELBO
  draws its latent samples).

Both are exact: every example is counted once, none twice (the last batch is
padded and the padding cut off, or, for an objective, a shorter last batch
is weighted by its size).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, cast

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from jaxnets import _checks, _inputs
from jaxnets.layers import Layer
from jaxnets.losses import accuracy

__all__ = ["predict", "evaluate", "resolve_metrics", "KNOWN_METRICS"]

#: Metrics that may be named by a string in ``metrics={"acc": "accuracy"}``.
KNOWN_METRICS: dict[str, Callable[..., Any]] = {"accuracy": accuracy}


def resolve_metrics(metrics: Any, y: Any = None) -> dict[str, Callable[..., Any]]:
    """``name -> fn(outputs, targets)``; strings name :data:`KNOWN_METRICS`; default accuracy for integer labels."""
    if metrics is None:
        is_int = isinstance(y, (jax.Array, np.ndarray)) and np.issubdtype(np.dtype(y.dtype), np.integer)
        return {"accuracy": accuracy} if is_int else {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping name -> fn(outputs, targets) or a known name, got {metrics!r}")
    out = {}
    for name, fn in metrics.items():
        if isinstance(fn, str):
            if fn not in KNOWN_METRICS:
                raise TypeError(f"metrics[{name!r}] must be callable as fn(outputs, targets) or one of "
                                f"{sorted(KNOWN_METRICS)}, got {fn!r}")
            fn = KNOWN_METRICS[fn]
        elif not callable(fn):
            raise TypeError(f"metrics[{name!r}] must be callable as fn(outputs, targets) or one of "
                            f"{sorted(KNOWN_METRICS)}, got {fn!r}")
        out[str(name)] = fn
    return out


def batched_outputs(model: Layer, batch_size: int, params: Any, model_state: Any, x: Any,
                    key: jax.Array | None = None) -> Any:
    """Outputs of ``model`` on the pytree ``x`` in evaluation mode, as a ``lax.scan`` over fixed-size batches.

    The last batch is padded with zeros and the padded rows are cut off every
    output leaf, so every example is counted exactly once. Batch ``i`` gets
    ``fold_in(key, i)`` when a key is given.
    """
    n = _inputs.leading(x)
    steps = -(-n // batch_size)
    pad = steps * batch_size - n

    def batches_of(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((steps, batch_size) + a.shape[1:])  # (steps, batch, *features)

    def body(_, args):
        i, xb = args
        k = None if key is None else jax.random.fold_in(key, i)
        return None, model.apply_with_state(params, model_state, xb, key=k, train=False)[0]

    _, outs = jax.lax.scan(body, None, (jnp.arange(steps), jax.tree_util.tree_map(batches_of, x)))
    return jax.tree_util.tree_map(lambda o: o.reshape((steps * batch_size,) + o.shape[2:])[:n], outs)  # drop the padding


def objective_means(objective: Callable[..., Any], batch_size: int, params: Any, model_state: Any, data: Any,
                    key: jax.Array) -> dict[str, Any]:
    """``{"loss": ..., **aux}``: the objective's loss and scalar aux entries, averaged over all examples.

    Full batches run in a ``lax.scan``, a shorter last batch once more;
    batch means are weighted by their sizes, so a per-example-mean objective
    gives the exact mean over the data.
    """
    n = _inputs.leading(data)
    full, rest = divmod(n, batch_size)

    def one(batch, k):
        value, aux = objective(params, batch, k, model_state)
        return {"loss": value, **{name: v for name, v in aux.items() if name != "model_state"}}

    total = None
    if full:
        head = jax.tree_util.tree_map(lambda a: a[: full * batch_size].reshape((full, batch_size) + a.shape[1:]), data)
        _, means = jax.lax.scan(lambda c, args: (c, one(args[1], jax.random.fold_in(key, args[0]))), None,
                                (jnp.arange(full), head))
        total = {k: v.sum(0) * batch_size for k, v in means.items()}
    if rest:
        tail = one(jax.tree_util.tree_map(lambda a: a[full * batch_size:], data), jax.random.fold_in(key, full))
        tail = {k: v * rest for k, v in tail.items()}
        total = tail if total is None else {k: total[k] + tail[k] for k in total}
    return {k: v / n for k, v in total.items()}


def _check_model_state(model_state: Any) -> None:
    if model_state is not None and not isinstance(model_state, Mapping):
        raise TypeError(f"model_state must be the model's state, a dict keyed by layer name (or None), got "
                        f"{type(model_state).__name__}")


def _check_params(params: Any) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if not isinstance(leaf, (jax.Array, np.ndarray, jax.core.Tracer)):
            raise TypeError(f"params must be a pytree of arrays (as the model's init returns), got {type(leaf).__name__} "
                            f"{leaf!r:.40} at params{jax.tree_util.keystr(path)}")


def predict(model: Layer, params: Any, x: Any, *, model_state: Any = None, batch_size: int = 1024,
            key: jax.Array | None = None) -> Any:
    """The model's outputs on ``x`` (an array or a pytree of arrays) in evaluation mode, in batches of ``batch_size``.

    Returns the model's output structure (an array, a tuple, a dict) with a
    leading axis of ``x``'s length; zero rows give zero-row outputs.
    """
    model = _inputs.check_model(model)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    for leaf in jax.tree_util.tree_leaves(x):
        _checks.real_array(leaf, "x")
        if np.ndim(leaf) < 1:
            raise ValueError(f"x must have a leading example axis (a batch), got a scalar of shape {np.shape(leaf)}")
    _check_params(params)
    _check_model_state(model_state)
    if key is not None:
        _checks.prng_key(key, "key")
    _inputs.check_not_donated(params, "params")
    model_state = {} if model_state is None else model_state
    n = _inputs.leading(x)
    if n == 0:  # the output shapes of one row, with zero rows
        one = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((1,) + a.shape[1:], a.dtype), x)
        shapes = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0], params, model_state, one)
        return jax.tree_util.tree_map(lambda s: jnp.zeros((0,) + s.shape[1:], s.dtype), shapes)
    return _predict_program(model, min(batch_size, n))(params, model_state, jax.tree_util.tree_map(jnp.asarray, x), key)


@functools.lru_cache(maxsize=64)
def _predict_program(model: Layer, batch_size: int):
    """One jitted program per (model, batch size), so repeated ``predict``/``evaluate`` calls never recompile."""
    return jax.jit(functools.partial(batched_outputs, model, batch_size))


@functools.lru_cache(maxsize=64)
def _objective_program(objective: Callable[..., Any], batch_size: int):
    return jax.jit(functools.partial(objective_means, objective, batch_size))


def score(outputs: Any, y: Any, loss: Callable[[Any, Any], jax.Array],
          metrics: Mapping[str, Callable[[Any, Any], jax.Array]]) -> dict[str, Any]:
    return {"loss": loss(outputs, y), **{name: fn(outputs, y) for name, fn in metrics.items()}}


def evaluate(
    model: Layer,
    params: Any,
    data: Any,
    loss: Callable[..., Any] | None = None,
    *,
    objective: Callable[..., Any] | None = None,
    key: jax.Array | None = None,
    model_state: Any = None,
    metrics: Mapping[str, Callable[..., Any] | str] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Loss and metrics of a model on held-out data, in evaluation mode.

    Args:
      data: a pair ``(x, y)`` (with ``loss``), or any data pytree (with ``objective``).
      loss: ``loss(outputs, targets) -> scalar``.
      objective: instead of ``loss``: ``(params, batch, key, model_state) ->
        (loss, aux)``; the loss and every scalar of ``aux`` (but
        ``"model_state"``) are averaged over the examples.
      key: passed to the model (``fold_in(key, batch index)``) or the
        objective, for a random evaluation; default ``jax.random.key(0)``
        with an objective.
      metrics: ``name -> fn(outputs, targets)`` or a known name (``"accuracy"``);
        default ``accuracy`` for integer labels. Only with ``loss``.

    Returns:
      ``{"loss": ..., "accuracy": ..., ...}`` as Python floats, computed over
      all examples exactly (no example counted twice, none dropped).
    """
    if objective is None or model is not None:  # an objective needs no model
        model = _inputs.check_model(model)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if key is not None:
        _checks.prng_key(key, "key")
    _inputs.check_not_donated(params, "params")
    _check_model_state(model_state)
    model_state = {} if model_state is None else model_state
    if (loss is None) == (objective is None):
        raise TypeError("evaluate needs exactly one of loss (loss(outputs, targets)) and objective "
                        "(objective(params, batch, key, model_state)), got " + ("both" if loss is not None else "neither"))
    if objective is not None:
        if metrics is not None:
            raise TypeError("metrics go with loss; an objective returns its metrics in aux")
        data, n = _inputs.check_data(data, "data", pair=False)
        key = _inputs.as_key(key)
        program = _objective_program(normalized_objective(objective), min(batch_size, n))
        return {k: float(v) for k, v in jax.device_get(program(params, model_state, data, key)).items()}
    _inputs.check_loss(loss)
    (x, y), _ = _inputs.check_data(data, "data", pair=True)
    metrics = resolve_metrics(metrics, y)
    outputs = predict(model, params, x, model_state=model_state, batch_size=batch_size, key=key)
    if isinstance(outputs, jax.Array) and isinstance(y, (jax.Array, np.ndarray)):
        _inputs.check_labels(y, outputs.shape, "data")
    return {k: float(v) for k, v in jax.device_get(score(outputs, jax.tree_util.tree_map(jnp.asarray, y), cast(Callable[..., Any], loss), metrics)).items()}


def normalized_objective(objective: Callable[..., Any]) -> Callable[..., Any]:
    """``objective`` made to return ``(loss, aux dict)``, with the loss checked to be a scalar (at trace time).

    The same objective always gives the same wrapper, so programs built on it are reused.
    """
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(params, batch, key, model_state), got {objective!r}")
    if getattr(objective, "_jaxnets_normalized", False):
        return objective
    return _normalized(objective)


@functools.lru_cache(maxsize=256)
def _normalized(objective: Callable[..., Any]) -> Callable[..., Any]:

    @functools.wraps(objective)
    def wrapped(params, batch, key, model_state):
        out = objective(params, batch, key, model_state)
        value, aux = cast(tuple[Any, Any], out if isinstance(out, tuple) and len(out) == 2 else (out, {}))
        if not isinstance(aux, Mapping):
            raise TypeError(f"objective must return loss or (loss, aux) with aux a dict of metrics (and optionally "
                            f"'model_state'), got aux of type {type(aux).__name__}")
        if jnp.shape(value) != ():
            raise ValueError(f"objective must return a scalar loss, got shape {jnp.shape(value)} "
                             "(reduce it, e.g. with .mean())")
        return value, dict(aux)

    cast(Any, wrapped)._jaxnets_normalized = True
    return wrapped
