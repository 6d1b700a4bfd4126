"""Dense (affine) layers and embeddings: the two layers that are a matrix product.

``Dense`` is ``y = x W + b`` on the last axis; ``Embedding`` is a row lookup,
``one_hot(ids) @ T``. Each hand rule sits right after its forward function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnets import _checks
from jaxnets import initializers as inits
from jaxnets.layers import _util, core
from jaxnets.layers.core import Layer

__all__ = ["Dense", "Embedding"]


def Dense(
    out_features: int,
    *,
    use_bias: bool = True,
    w_init: inits.Initializer | None = None,
    b_init: inits.Initializer = inits.zeros,
) -> Layer:
    """Affine map on the last axis: ``y = x W + b``.

    Args:
      out_features: size of the output's last axis.
      use_bias: add ``b``; without it the params hold only ``w``.
      w_init: initializer of ``W``; default ``lecun_normal()`` (variance
        ``1 / in_features``, flax's default; use ``he_normal()`` for deep
        ReLU stacks).
      b_init: initializer of ``b``; default zeros.

    Shapes:
      x: ``(..., in_features)``; params ``{"w": (in_features, out_features),
      "b": (out_features,)}``; y: ``(..., out_features)``.

    Raises:
      ValueError: if ``x``'s last axis is not ``in_features``.
    """
    out_features = _checks.positive_int(out_features, "out_features")
    w_init = _util.check_initializer(w_init or inits.lecun_normal(), "w_init")
    b_init = _util.check_initializer(b_init, "b_init")
    spec = f"Dense({out_features}{'' if use_bias else ', use_bias=False'})"

    def init(key, input_shape):
        _util.check_rank(input_shape, spec)
        in_features = _util.check_last_dim(input_shape, spec)
        k_w, k_b = jax.random.split(key)
        params = {"w": w_init(k_w, (in_features, out_features), jnp.float32)}
        if use_bias:
            params["b"] = b_init(k_b, (out_features,), jnp.float32)
        return input_shape[:-1] + (out_features,), params

    def apply(params, x, *, key=None, train=False):
        del key, train
        w = _util.entry(params, "w", "params", spec)
        _util.check_input(x, spec)
        if x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{spec} expects inputs with last dimension {w.shape[0]} (w has shape {tuple(w.shape)}), "
                f"got x of shape {tuple(x.shape)}"
            )
        y = x @ w
        if use_bias:
            y = y + _util.entry(params, "b", "params", spec)
        return y

    def backward(params, x, y_bar, *, key=None, train=False):
        """With the batch (and any leading axes) flattened into the rows of X:

        dL/dW = X^T Y_bar  (in, out);   dL/db = sum of Y_bar's rows;   dL/dX = Y_bar W^T.
        """
        del key, train
        w = _util.entry(params, "w", "params", spec)
        rows_x = x.reshape(-1, x.shape[-1])  # (rows, in)
        rows_y = y_bar.reshape(-1, y_bar.shape[-1])  # (rows, out)
        grads = {"w": _util.batch_matmul_t(rows_x, rows_y)}  # summed over rows in float32 for 16-bit dtypes
        if use_bias:
            grads["b"] = _util.sum_leading(rows_y)
        return grads, y_bar @ w.T

    return core.build_stateless("dense", spec, init, apply, backward)


def Embedding(num_embeddings: int, features: int, *, embedding_init: inits.Initializer | None = None) -> Layer:
    """Looks up rows of a table: ``y[..., :] = table[ids[...], :]``.

    Equivalent to ``one_hot(ids) @ table`` without building the one-hot.

    Args:
      num_embeddings: number of rows (the vocabulary size).
      features: size of each row.
      embedding_init: default ``normal(1.0)`` (standard deviation 1, as
        PyTorch's ``nn.Embedding``; flax's ``nn.Embed`` uses standard
        deviation ``1 / sqrt(features)``).

    Shapes: ids ``(...)`` of an integer dtype; params ``{"table": (num_embeddings,
    features)}``; y ``(..., features)``.

    Raises:
      TypeError: for non-integer ids.
      ValueError: for ids outside ``[0, num_embeddings)`` when their values are
        known (outside ``jit``). Under ``jit`` such ids give rows of ``nan``,
        so the error shows in the loss instead of passing silently.
    """
    num_embeddings = _checks.positive_int(num_embeddings, "num_embeddings")
    features = _checks.positive_int(features, "features")
    embedding_init = _util.check_initializer(embedding_init or inits.normal(1.0), "embedding_init")
    spec = f"Embedding({num_embeddings}, {features})"

    def init(key, input_shape):
        return input_shape + (features,), {"table": embedding_init(key, (num_embeddings, features), jnp.float32)}

    def apply(params, ids, *, key=None, train=False):
        del key, train
        table = _util.entry(params, "table", "params", spec)
        _util.check_input(ids, spec, min_rank=0, dtype="integer")
        _checks.labels_in_range(ids, num_embeddings, f"{spec} ids")
        return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)

    def backward(params, ids, y_bar, *, key=None, train=False):
        """``y = onehot(ids) T``, so ``T_bar = onehot(ids)^T y_bar``: each looked-up row
        collects the cotangents of every place it was used (added, not
        overwritten). The integer ids get no cotangent (``None``)."""
        del key, train
        table = _util.entry(params, "table", "params", spec)
        rows = y_bar.reshape(-1, table.shape[-1])  # (number of ids, features)
        acc = _util.accumulation_dtype(rows.dtype)  # a row used by many ids adds many terms: float32 for 16-bit dtypes
        return {"table": jnp.zeros(table.shape, acc).at[ids.reshape(-1)].add(rows.astype(acc), mode="drop")}, None

    return core.build_stateless("embedding", spec, init, apply, backward)
