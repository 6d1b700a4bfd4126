"""jaxnets.summary: params counted by hand, FLOPs against XLA's count of the same computation written in raw JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jaxnets
import jaxnets.layers as L
from jaxnets.summary import LayerSummary, Summary


def xla_flops(fn, *shapes):
    """XLA's FLOP count of ``fn`` compiled for float32 arguments of these shapes."""
    cost = jax.jit(fn).lower(*(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"]


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_layers_params_and_flops(batch):
    model = L.serial(L.Dense(128), L.Relu(), L.Dense(10))
    result = jaxnets.summary(model, (-1, 64), batch=batch)
    assert isinstance(result, Summary) and all(isinstance(r, LayerSummary) for r in result.rows)
    assert [r.path for r in result.rows] == ["dense_0", "relu_0", "dense_1"]
    assert [r.output_shape for r in result.rows] == [(batch, 128), (batch, 128), (batch, 10)]
    # params by hand: W (in, out) and b (out,)
    assert [r.params for r in result.rows] == [64 * 128 + 128, 0, 128 * 10 + 10]
    assert result.params == 64 * 128 + 128 + 128 * 10 + 10 == L.count_params(model.init(jax.random.key(0), (-1, 64))[1])
    assert result.state == result.state_bytes == 0 and result.input_shape == (batch, 64) and result.output_shape == (batch, 10)
    # FLOPs: XLA's count of the same affine map in raw JAX; about 2 * in * out per example for the product
    affine = lambda x, w, b: x @ w + b  # noqa: E731
    for row, (n_in, n_out) in zip((result.rows[0], result.rows[2]), ((64, 128), (128, 10))):
        assert row.flops == xla_flops(affine, (batch, n_in), (n_in, n_out), (n_out,))
        assert row.flops == pytest.approx(2 * n_in * n_out * batch, rel=1 / n_in)  # + the bias's batch * out additions
    assert result.rows[1].flops == xla_flops(jax.nn.relu, (batch, 128))
    # the total: the whole model in raw JAX, compiled as one program
    mlp = lambda x, w0, b0, w1, b1: jax.nn.relu(x @ w0 + b0) @ w1 + b1  # noqa: E731
    assert result.flops == xla_flops(mlp, (batch, 64), (64, 128), (128,), (128, 10), (10,))


def test_nested_layers_state_and_a_primitive_model():
    model = L.serial(L.Dense(16), L.BatchNorm(), L.residual(L.Dense(16), L.Relu()), L.Dense(4))
    result = jaxnets.summary(model, (-1, 8), batch=2)
    assert [(r.path, r.depth) for r in result.rows] == [
        ("dense_0", 0), ("batch_norm_0", 0), ("residual_0", 0), ("residual_0/dense_0", 1), ("residual_0/relu_0", 1),
        ("dense_1", 0)]
    rows = {r.path: r for r in result.rows}
    assert rows["batch_norm_0"].state == 2 * 16 and rows["batch_norm_0"].params == 2 * 16  # mean, var; scale, offset
    assert result.state == 32 and result.state_bytes == 32 * 4  # float32 running statistics
    assert rows["residual_0"].params == rows["residual_0/dense_0"].params == 16 * 16 + 16
    assert rows["residual_0"].flops == rows["residual_0/dense_0"].flops + rows["residual_0/relu_0"].flops
    assert result.params == sum(r.params for r in result.rows if r.depth == 0)
    single = jaxnets.summary(L.Dense(3), (5,))
    assert [(r.path, r.params, r.output_shape) for r in single.rows] == [("dense", 18, (3,))]
    assert single.flops == xla_flops(lambda x, w, b: x @ w + b, (5,), (5, 3), (3,))


def test_the_table_is_aligned_and_names_every_layer():
    text = str(jaxnets.summary(L.serial(L.Dense(128), L.Relu(), L.Dense(10)), (-1, 64)))
    lines = text.splitlines()
    assert lines[0] == "serial(Dense(128), Relu(), Dense(10)) on input (1, 64)"
    table = lines[1:-1]
    assert table[0].split() == ["path", "layer", "output", "shape", "params", "state", "FLOPs"]
    assert len({len(line) for line in table}) == 1  # right-aligned numbers end in one column
    assert table[-1].split()[:1] == ["total"] and "9,610" in table[-1] and lines[-1] == "state: none"


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a jaxnets Layer, got function"):
        jaxnets.summary(lambda x: x, (-1, 3))
    with pytest.raises(ValueError, match="batch"):
        jaxnets.summary(L.Dense(3), (-1, 3), batch=0)
    with pytest.raises(ValueError, match="input_shape"):
        jaxnets.summary(L.Dense(3), (-1, 0))
