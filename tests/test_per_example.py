"""Per-example gradients: against jax.grad on each example alone, their mean against the batch gradient; clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import losses, per_example

CE = losses.softmax_cross_entropy_with_integer_labels


def setup(key, model, batch=8, features=6, classes=4):
    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, features))
    y = jax.random.randint(ky, (batch,), 0, classes)
    _, params = model.init(kp, (-1, features))
    return params, x, y


MODELS = {
    "mlp": lambda: L.serial(L.Dense(16), L.Tanh(), L.Dense(4)),
    "layer_norm": lambda: L.serial(L.Dense(16), L.LayerNorm(), L.Relu(), L.Dense(4)),
    "residual": lambda: L.serial(L.Dense(8), L.residual(L.Dense(8), L.Relu()), L.Dense(4)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_per_example_grads_are_each_examples_gradient_and_average_to_the_batch_gradient(name, key):
    model = MODELS[name]()
    params, x, y = setup(key, model)
    g = jax.jit(per_example.grads, static_argnums=(0, 1))(model, CE, params, x, y)
    alone_grad = jax.jit(jax.grad(lambda p, xb, yb: CE(model.apply(p, xb), yb)))
    for b in (0, 5):  # independently: jax.grad on a batch holding only example b
        alone = alone_grad(params, x[b:b + 1], y[b:b + 1])
        jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a[b], e, rtol=1e-5, atol=1e-6), g, alone)
    batch = alone_grad(params, x, y)
    jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a.mean(0), e, rtol=1e-5, atol=1e-6), g, batch)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)


def test_dropout_masks_are_per_example(key):
    model = L.serial(L.Dense(16), L.Dropout(0.5), L.Dense(4))
    params, x, y = setup(key, model)
    k = jax.random.key(7)
    g = per_example.grads(model, CE, params, x, y, key=k, train=True)
    b = 3
    alone = jax.grad(lambda p: CE(model.apply(p, x[b:b + 1], key=jax.random.fold_in(k, b), train=True), y[b:b + 1]))(params)
    jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a[b], e, rtol=1e-5, atol=1e-6), g, alone)


def test_clip_bounds_each_example_and_keeps_small_ones(key):
    model = MODELS["mlp"]()
    params, x, y = setup(key, model, batch=16)
    g = per_example.grads(model, CE, params, x, y)
    before = np.asarray(per_example.norms(g))
    expected = np.sqrt(sum(np.sum(np.asarray(leaf).reshape(16, -1) ** 2, axis=1) for leaf in jax.tree_util.tree_leaves(g)))
    np.testing.assert_allclose(before, expected, rtol=1e-6)
    bound = float(np.median(before))
    clipped = per_example.clip(g, bound)
    after = np.asarray(per_example.norms(clipped))
    np.testing.assert_allclose(after, np.minimum(before, bound), rtol=1e-5)
    small = before <= bound
    jax.tree_util.tree_map(lambda c, o: np.testing.assert_array_equal(np.asarray(c)[small], np.asarray(o)[small]), clipped, g)
    # clipped ones keep their direction
    big = int(np.argmax(before))
    jax.tree_util.tree_map(lambda c, o: np.testing.assert_allclose(c[big] * before[big] / bound, o[big], rtol=1e-5, atol=1e-7),
                           clipped, g)


def test_errors(key):
    model = MODELS["mlp"]()
    params, x, y = setup(key, model)
    with pytest.raises(ValueError, match=r"x and y must have the same number of examples, got x \(8, 6\) and y \(7,\)"):
        per_example.grads(model, CE, params, x, y[:7])
    with pytest.raises(ValueError, match=r"max_norm must be finite and > 0, got 0.0"):
        per_example.clip(per_example.grads(model, CE, params, x, y), 0.0)
    bn = L.serial(L.Dense(8), L.BatchNorm(), L.Dense(4))
    _, bn_params, bn_state = bn.init_with_state(key, (-1, 6))
    with pytest.raises(ValueError, match="per-example gradients in training mode need a model without state"):
        per_example.grads(bn, CE, bn_params, x, y, model_state=bn_state, train=True)
    with pytest.raises(TypeError, match="model must be a jaxnets Layer"):
        per_example.grads(lambda p, x: x, CE, params, x, y)
    with pytest.raises(ValueError, match="needs the same leading"):
        per_example.norms({"a": jnp.ones((3, 2)), "b": jnp.ones((4,))})
