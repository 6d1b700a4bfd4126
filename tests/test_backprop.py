"""Hand-derived backward rules: every layer against jax.vjp, whole models against jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxnets
import jaxnets.layers as L
from jaxnets import backprop, data, gradcheck, losses
from layer_cases import CASES as LAYER_CASES
from test_layers import REGISTRY, _abstract, _make_input

pytestmark = pytest.mark.sweep  # every rule, model and random stack: the library's arithmetic, not its dependencies'

CE = losses.softmax_cross_entropy_with_integer_labels
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def test_every_registry_layer_has_a_rule():
    missing = [name for name, (factory, _, _) in REGISTRY.items() if not factory().has_rule]
    assert not missing, f"layers without a hand-derived backward rule: {missing}"


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _rel(got, expected):
    g = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(got)] or [jnp.zeros(0)])
    e = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(expected)] or [jnp.zeros(0)])
    norm = float(jnp.linalg.norm(e))
    return float(jnp.linalg.norm(g - e)) / norm if norm > 0 else float(jnp.linalg.norm(g - e))


# Training mode only changes Dropout, BatchNorm and combinators holding them; the rest
# are checked in one mode, every layer in both precisions.
MODE_DEPENDENT = {case.name for case in LAYER_CASES if case.train_differs}
CASES = [(name, shape, train, dtype) for name, (_, shapes, _) in REGISTRY.items() for shape in shapes
         for train in ((False, True) if name in MODE_DEPENDENT else (True,)) for dtype in ("float32", "float64")]


@pytest.mark.parametrize("name,shape,train,dtype", CASES, ids=[f"{n}-{s}-{'train' if t else 'eval'}-{d}" for n, s, t, d in CASES])
def test_rule_matches_jax_vjp(name, shape, train, dtype):
    factory, _, kind = REGISTRY[name]
    layer = factory()
    k_init, k_x, k_apply, k_bar = jax.random.split(jax.random.key(5), 4)
    with jax.enable_x64(dtype == "float64"):
        x = _cast(_make_input(k_x, shape, kind), dtype)
        _, params, state = layer.init_with_state(k_init, _abstract(shape))
        params, state = _cast(params, dtype), _cast(state, dtype)
        forward = lambda p, x: layer.apply_with_state(p, state, x, key=k_apply, train=train)[0]  # noqa: E731
        y = jax.eval_shape(forward, params, x)
        y_bar = jax.tree_util.tree_map(lambda a: jax.random.normal(k_bar, a.shape, a.dtype), y)

        @jax.jit  # jax.vjp's cotangents and the rule's in one program: one compilation per case
        def both(p, x, y_bar):
            if kind == "int":  # integer inputs have no cotangent: compare the params' only
                ref = (jax.vjp(lambda p: forward(p, x), p)[1](y_bar)[0], None)
            else:
                ref = jax.vjp(forward, p, x)[1](y_bar)
            return ref, layer.backward(p, state, x, y_bar, key=k_apply, train=train)

        if dtype == "float32":
            # float32: the cotangents' structure, shapes and dtypes, traced (no compilation); the numbers are
            # compared in float64 here (to 1e-12) and in bfloat16 by test_precision (within the derived tolerance)
            (ref_params, ref_x), (got_params, got_x) = jax.eval_shape(both, params, x, y_bar)
            pairs = [(got_params, ref_params)] + ([] if ref_x is None else [(got_x, ref_x)])
            for got, ref in pairs:
                assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
                for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
                    assert g.shape == r.shape and g.dtype == r.dtype == jnp.float32
            return
        (ref_params, ref_x), (got_params, got_x) = both(params, x, y_bar)
        assert jax.tree_util.tree_structure(got_params) == jax.tree_util.tree_structure(ref_params)
        for g, r in zip(jax.tree_util.tree_leaves(got_params), jax.tree_util.tree_leaves(ref_params)):
            assert g.shape == r.shape and g.dtype == r.dtype
        assert _rel(got_params, ref_params) <= TOLERANCE[dtype]
        if ref_x is not None:
            assert _rel(got_x, ref_x) <= TOLERANCE[dtype]


# ---------------------------------------------------------------------------
# Whole models against jax.grad and finite differences
# ---------------------------------------------------------------------------

# Finite differences need a loss that is smooth within the step h ~ 6e-6: models checked
# against them use smooth activations where a kink would be crossed by thousands of
# pre-activations at once (a bias feeding a ReLU); ReLU's and max-pooling's rules are
# checked exactly against jax.vjp above.
MODELS = {
    "mlp": (lambda: L.serial(L.Dense(16), L.Tanh(), L.Dense(16), L.Gelu(), L.Dense(10)), (-1, 64), "flat"),
    "cnn": (lambda: L.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool(2), L.Conv2D(6, 3, strides=2, padding="VALID"),
                             L.Silu(), L.Flatten(), L.Dense(10)), (-1, 8, 8, 1), "images"),
    "residual_mlp": (lambda: L.serial(L.Dense(12), L.residual(L.LayerNorm(), L.Dense(12), L.Elu(), L.Dense(12)),
                                      L.residual(L.Dense(12), L.Softplus()), L.Dense(10)), (-1, 64), "flat"),
    "fan_out": (lambda: L.serial(L.Dense(8), L.FanOut(3), L.parallel(L.Dense(8), L.Identity(), L.Sigmoid()),
                                 L.FanInSum(), L.FanOut(2), L.parallel(L.Dense(5), L.LeakyRelu()), L.FanInConcat(), L.Dense(10)),
                (-1, 64), "flat"),
    "batch_norm_dropout": (lambda: L.serial(L.Dense(16), L.BatchNorm(), L.Relu(), L.Dropout(0.3), L.Dense(10)), (-1, 64), "flat"),
    "conv_transpose_avgpool": (lambda: L.serial(L.ConvTranspose2D(3, 3, strides=2), L.Tanh(), L.AvgPool(2, padding="SAME"),
                                                L.Flatten(), L.Dense(10)), (-1, 8, 8, 1), "images"),
}


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def _batch(digits, kind, n=24):
    x = digits.x_train[:n]
    return jnp.asarray(x.reshape(n, 8, 8, 1) if kind == "images" else x), jnp.asarray(digits.y_train[:n])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_gradients_match_jax_grad_and_finite_differences(name, digits):
    factory, input_shape, kind = MODELS[name]
    model = factory()
    _, params, state = model.init_with_state(jax.random.key(2), input_shape)
    x, y = _batch(digits, kind)
    key = jax.random.key(9)
    hand = backprop.grad(model, CE)
    report = gradcheck.assert_grads_close(
        lambda p, x, y, s: hand(p, x, y, state=s, key=key),
        lambda p, x, y, s: CE(model.apply_with_state(p, s, x, key=key, train=True)[0], y),
        params, x, y, state,
    )
    assert report.max_relative_error("float32 vs jax.grad") <= 1e-5
    assert len(report.leaves) == len(jax.tree_util.tree_leaves(params))


def test_grad_has_exactly_the_params_structure(digits):
    model = MODELS["residual_mlp"][0]()
    _, params = model.init(jax.random.key(0), (-1, 64))
    x, y = _batch(digits, "flat")
    grads = jax.jit(backprop.grad(model, CE))(params, x, y)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    value, grads2 = backprop.value_and_grad(model, CE)(params, x, y)
    assert float(value) == pytest.approx(float(CE(model.apply(params, x, train=True), y)), rel=1e-6)


def test_fan_out_accumulates_the_cotangents_of_a_value_used_twice():
    """x feeds two branches: its cotangent must be the sum of both (the classic bug is to keep one)."""
    model = L.serial(L.FanOut(2), L.parallel(L.Dense(3, use_bias=False), L.Dense(3, use_bias=False)), L.FanInSum())
    _, params = model.init(jax.random.key(0), (-1, 4))
    x = jnp.ones((2, 4))
    y_bar = jnp.ones((2, 3))
    _, x_bar = model.backward(params, {}, x, y_bar)
    w0, w1 = params["parallel_0"]["dense_0"]["w"], params["parallel_0"]["dense_1"]["w"]
    np.testing.assert_allclose(x_bar, y_bar @ w0.T + y_bar @ w1.T, rtol=1e-6)


@pytest.mark.standard_promotion("fit uses optax.adam")
def test_hand_gradients_model_trains_like_autodiff(digits):
    model = L.serial(L.Dense(32), L.Relu(), L.Dropout(0.2), L.Dense(10))
    hand_model = backprop.hand_gradients(model)
    x, y = _batch(digits, "flat")
    _, params = model.init(jax.random.key(0), (-1, 64))
    key = jax.random.key(4)
    g_auto = jax.grad(lambda p: CE(model.apply(p, x, key=key, train=True), y))(params)
    g_hand = jax.jit(jax.grad(lambda p: CE(hand_model.apply(p, x, key=key, train=True), y)))(params)
    assert _rel(g_hand, g_auto) <= 1e-5
    auto_state, auto_hist = jaxnets.fit(model, CE, optax.adam(1e-3), digits, epochs=3, progress=False)
    hand_state, hand_hist = jaxnets.fit(hand_model, CE, optax.adam(1e-3), digits, epochs=3, progress=False)
    assert _rel(hand_state.params, auto_state.params) <= 1e-4
    assert hand_hist["test_accuracy"][-1] == pytest.approx(auto_hist["test_accuracy"][-1], abs=1 / 360 + 1e-9)


def test_hand_gradients_with_batch_norm_state(digits):
    # SGD keeps the two runs' roundoff differences at roundoff level; Adam divides each
    # coordinate by its own gradient scale and so amplifies differences on coordinates
    # whose gradient is near 0 (a bias before BatchNorm is exactly 0 analytically).
    model = L.serial(L.Dense(16, use_bias=False), L.BatchNorm(), L.Relu(), L.Dense(10))
    opt = optax.sgd(0.05, momentum=0.9)
    auto, auto_hist = jaxnets.fit(model, CE, opt, digits, epochs=3, progress=False)
    hand, hand_hist = jaxnets.fit(backprop.hand_gradients(model), CE, opt, digits, epochs=3, progress=False)
    assert _rel(hand.params, auto.params) <= 1e-4
    assert _rel(hand.model_state, auto.model_state) <= 1e-4
    assert not np.allclose(hand.model_state["batch_norm_0"]["mean"], 0.0)
    assert hand_hist["test_accuracy"][-1] == pytest.approx(auto_hist["test_accuracy"][-1], abs=1 / 360 + 1e-9)


def test_a_layer_without_a_rule_is_named():
    model = L.serial(L.Dense(4), L.Elementwise(jnp.sin, "sin"), L.Dense(2))
    _, params = model.init(jax.random.key(0), (-1, 3))
    with pytest.raises(ValueError, match=r"sin_0: Sin\(\) has no hand-derived backward rule \(for Elementwise, pass vjp=\.\.\.; for your own layer, define_layer\(\.\.\., backward=\.\.\.\)\)"):
        backprop.grad(model, losses.mean_squared_error)(params, jnp.ones((2, 3)), jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="has no hand-derived backward rule"):
        backprop.hand_gradients(L.Elementwise(jnp.sin, "sin"))


def test_a_loss_without_a_gradient_is_named():
    def my_loss(outputs, targets):
        return jnp.mean(jnp.abs(outputs - targets))

    with pytest.raises(ValueError, match=r"loss my_loss has no hand-derived gradient \(loss.backward\); pass loss_grad=\.\.\."):
        backprop.grad(L.Dense(2), my_loss)
    grad_fn = backprop.grad(L.Dense(2), my_loss, loss_grad=lambda o, t: jnp.sign(o - t) / o.size)
    _, params = L.Dense(2).init(jax.random.key(0), (-1, 3))
    x, t = jnp.ones((4, 3)), jnp.zeros((4, 2))
    expected = jax.grad(lambda p: my_loss(L.Dense(2).apply(p, x), t))(params)
    assert _rel(grad_fn(params, x, t), expected) <= 1e-6


def test_user_elementwise_rule_is_checked():
    cube = L.Elementwise(lambda x: x**3, "cube", vjp=lambda x, y_bar: 3 * x**2 * y_bar)
    wrong = L.Elementwise(lambda x: x**3, "cube", vjp=lambda x, y_bar: 2 * x**2 * y_bar)
    for layer, ok in ((cube, True), (wrong, False)):
        model = L.serial(L.Dense(3), layer, L.Dense(1))
        _, params = model.init(jax.random.key(0), (-1, 2))
        x, t = jax.random.normal(jax.random.key(1), (5, 2)), jnp.zeros((5, 1))
        report = gradcheck.check_grads(backprop.grad(model, losses.mean_squared_error),
                                       lambda p, x, t: losses.mean_squared_error(model.apply(p, x, train=True), t), params, x, t)
        assert report.passed is ok
        if not ok:
            assert {leaf.path for leaf in report.leaves if not leaf.passed} == {"dense_0/w", "dense_0/b"}


ACTIVATIONS = [L.Relu, L.Tanh, L.Sigmoid, L.Gelu, L.Silu, L.Softplus, L.Elu, L.Identity]


@settings(max_examples=8, deadline=None)
@given(
    widths=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    activations=st.lists(st.integers(0, len(ACTIVATIONS) - 1), min_size=4, max_size=4),
    in_features=st.integers(1, 6),
    batch=st.integers(1, 5),
    leading=st.sampled_from([(), (2,)]),
    seed=st.integers(0, 2**16),
)
# Dead ReLUs feed Elu exactly 0: autodiff through min(x, 0) once gave Elu'(0) = 1/2 there, the hand rule 1.
@example(widths=[1, 1, 1, 1], activations=[0, 0, 0, 6], in_features=1, batch=1, leading=(), seed=0)
def test_random_stacks_match_jax_grad(widths, activations, in_features, batch, leading, seed):
    layers = []
    for width, a in zip(widths, activations):
        layers += [L.Dense(width), ACTIVATIONS[a]()]
    model = L.serial(*layers)
    k_init, k_x, k_t = jax.random.split(jax.random.key(seed), 3)
    with jax.enable_x64(True):
        _, params = model.init(k_init, (-1,) + leading + (in_features,))
        params = _cast(params, "float64")
        x = jax.random.normal(k_x, (batch,) + leading + (in_features,), jnp.float64)
        t = jax.random.normal(k_t, (batch,) + leading + (widths[-1],), jnp.float64)
        hand = jax.jit(backprop.grad(model, losses.mean_squared_error))(params, x, t)
        auto = jax.jit(jax.grad(lambda p, x, t: losses.mean_squared_error(model.apply(p, x, train=True), t)))(params, x, t)
        assert _rel(hand, auto) <= 1e-12 or float(jnp.linalg.norm(jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(auto)]))) < 1e-12


@settings(max_examples=6, deadline=None)
@given(
    channels=st.integers(1, 4), kernel=st.integers(1, 4), stride=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]), size=st.integers(4, 9), seed=st.integers(0, 2**16),
    pool=st.sampled_from([None, "max", "avg"]),
)
def test_random_conv_stacks_match_jax_grad(channels, kernel, stride, padding, size, seed, pool):
    layers = [L.Conv2D(channels, kernel, strides=stride, padding=padding), L.Tanh()]
    if pool and size >= 2 * kernel:
        layers.append((L.MaxPool if pool == "max" else L.AvgPool)(2, strides=1, padding="SAME"))
    model = L.serial(*layers, L.Flatten(), L.Dense(3))
    k_init, k_x, k_t = jax.random.split(jax.random.key(seed), 3)
    with jax.enable_x64(True):
        _, params = model.init(k_init, (-1, size, size, 2))
        params = _cast(params, "float64")
        x = jax.random.normal(k_x, (2, size, size, 2), jnp.float64)
        t = jax.random.normal(k_t, (2, 3), jnp.float64)
        hand = jax.jit(backprop.grad(model, losses.mean_squared_error))(params, x, t)
        auto = jax.jit(jax.grad(lambda p, x, t: losses.mean_squared_error(model.apply(p, x, train=True), t)))(params, x, t)
        assert _rel(hand, auto) <= 1e-12
