"""Layers: shapes agree with init, jit/vmap/determinism, values against independent references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import gradcheck
from layer_cases import BY_NAME, CASES as LAYER_CASES, NOT_LAYERS

# The registry of cases lives in tests/layer_cases.py (a plain module of data).
# name -> (factory, list of input shapes, input kind)
REGISTRY = {case.name: (case.make, list(case.shapes), case.kind) for case in LAYER_CASES}


def test_every_public_layer_has_a_case():
    public = set(L.__all__) - NOT_LAYERS
    named = {name.split(" (")[0] for name in BY_NAME}  # "MultiHeadAttention (attention dropout)": an option's case
    missing = public - named
    assert not missing, f"layers without a case (add them to tests/layer_cases.py): {sorted(missing)}"
    assert not named - public, "a case names a layer that is not public"


def test_every_public_layer_is_in_the_gradient_report():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "experiments" / "gradient_report.py"
    spec = importlib.util.spec_from_file_location("gradient_report", path)
    gradient_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gradient_report)
    reported = {name.split(" ")[0] for name in gradient_report.LAYERS}
    missing = set(L.__all__) - NOT_LAYERS - reported
    assert not missing, f"layers missing from experiments/gradient_report.py LAYERS: {sorted(missing)}"


def _is_multi(shape):
    return isinstance(shape[0], tuple)


def _make_input(key, shape, kind):
    if _is_multi(shape):
        return tuple(_make_input(k, s, kind) for k, s in zip(jax.random.split(key, len(shape)), shape))
    if kind == "int":
        return jax.random.randint(key, shape, 0, 11)
    return jax.random.normal(key, shape)


def _abstract(shape):
    """The input shape with the batch left unknown."""
    if _is_multi(shape):
        return tuple(_abstract(s) for s in shape)
    return (-1,) + tuple(shape[1:])


def _batch(shape):
    """The batch size: the first axis of the first input (shapes may nest: an LSTM cell's ``((h, c), x)``)."""
    return _batch(shape[0]) if _is_multi(shape) else shape[0]


def _shapes_of(y):
    return jax.tree_util.tree_map(lambda a: a.shape, y)


def _substitute_batch(predicted, batch):
    if isinstance(predicted, tuple) and predicted and isinstance(predicted[0], tuple):
        return tuple(_substitute_batch(p, batch) for p in predicted)
    return tuple(batch if d == -1 else d for d in predicted)


CASES = [(name, shape) for name, (_, shapes, _) in REGISTRY.items() for shape in shapes]


@pytest.mark.sweep
@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_output_shape_matches_init(name, shape, key):
    factory, _, kind = REGISTRY[name]
    layer = factory()
    k_init, k_x, k_apply = jax.random.split(key, 3)
    x = _make_input(k_x, shape, kind)
    batch = _batch(shape)
    for train in (False, True):
        predicted, params, state = layer.init_with_state(k_init, _abstract(shape))
        # traced, not run: the shapes apply gives are those of its trace (test_jit_equals_eager runs it eagerly)
        y = jax.eval_shape(lambda p, s, x: layer.apply_with_state(p, s, x, key=k_apply, train=train)[0], params, state, x)
        actual = _shapes_of(y)
        expected = _substitute_batch(predicted, batch)
        assert actual == expected, f"{name}: init predicted {predicted}, apply gave {actual}"
    concrete, _, _ = layer.init_with_state(k_init, shape)
    assert concrete == _shapes_of(y)


@pytest.mark.sweep
@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_jit_equals_eager_and_is_deterministic(name, shape, key):
    factory, _, kind = REGISTRY[name]
    layer = factory()
    k_init, k_x, k_apply = jax.random.split(key, 3)
    x = _make_input(k_x, shape, kind)
    _, params, state = layer.init_with_state(k_init, _abstract(shape))
    _, params_again, _ = layer.init_with_state(k_init, _abstract(shape))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params_again)
    for train in (False, True):
        # one eager run per mode against the compiled program, which is deterministic (two calls bitwise equal); a
        # layer drawing randomness anywhere but from its key (a global generator) differs between its eager run and
        # its trace
        jitted = jax.jit(lambda p, s, x, k: layer.apply_with_state(p, s, x, key=k, train=train))
        eager, _ = layer.apply_with_state(params, state, x, key=k_apply, train=train)
        first, _ = jitted(params, state, x, k_apply)
        again, _ = jitted(params, state, x, k_apply)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), eager, first)
        jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)


@pytest.mark.sweep
@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_vmap_over_a_stack_of_batches(name, shape, key):
    factory, _, kind = REGISTRY[name]
    layer = factory()
    k_init, k_x = jax.random.split(key)
    xs = [_make_input(k, shape, kind) for k in jax.random.split(k_x, 3)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs)
    _, params, state = layer.init_with_state(k_init, _abstract(shape))
    mapped, _ = jax.jit(jax.vmap(lambda x: layer.apply_with_state(params, state, x)))(stacked)
    one = jax.jit(lambda x: layer.apply_with_state(params, state, x))  # compiled once, called per batch
    for i, x in enumerate(xs):
        single, _ = one(x)
        jax.tree_util.tree_map(lambda m, s: np.testing.assert_allclose(m[i], s, rtol=1e-5, atol=1e-5), mapped, single)


# ---------------------------------------------------------------------------
# Values against independent references
# ---------------------------------------------------------------------------


def test_dense_is_affine(key):
    layer = L.Dense(3)
    _, params = layer.init(key, (-1, 4))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = x @ np.asarray(params["w"]) + np.asarray(params["b"])
    np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), expected, rtol=1e-6)
    assert set(params) == {"w", "b"} and params["w"].shape == (4, 3)
    _, no_bias = L.Dense(3, use_bias=False).init(key, (-1, 4))
    assert set(no_bias) == {"w"}


def _naive_conv(x, w, strides, padding):
    """Cross-correlation by explicit loops over output positions (NumPy)."""
    n = w.ndim - 2
    k = w.shape[:n]
    sizes = x.shape[1:-1]
    if padding == "SAME":
        outs = [-(-d // s) for d, s in zip(sizes, strides)]
        pads = [max((o - 1) * s + kk - d, 0) for o, s, kk, d in zip(outs, strides, k, sizes)]
        x = np.pad(x, [(0, 0)] + [(p // 2, p - p // 2) for p in pads] + [(0, 0)])
    else:
        outs = [(d - kk) // s + 1 for d, kk, s in zip(sizes, k, strides)]
    y = np.zeros((x.shape[0], *outs, w.shape[-1]))
    for pos in itertools.product(*(range(o) for o in outs)):
        window = tuple(slice(p * s, p * s + kk) for p, s, kk in zip(pos, strides, k))
        patch = x[(slice(None),) + window]  # (b, *k, c_in)
        y[(slice(None),) + pos] = np.tensordot(patch, w, axes=(list(range(1, n + 2)), list(range(n + 1))))
    return y


def _naive_conv_transpose(x, w, strides, padding):
    """Each input scatters w's window scaled by its value at stride s; then crop for SAME (NumPy)."""
    n = w.ndim - 2
    k = w.shape[:n]
    sizes = x.shape[1:-1]
    full = [(d - 1) * s + kk for d, s, kk in zip(sizes, strides, k)]
    y = np.zeros((x.shape[0], *full, w.shape[-1]))
    for pos in itertools.product(*(range(d) for d in sizes)):
        window = tuple(slice(p * s, p * s + kk) for p, s, kk in zip(pos, strides, k))
        contrib = np.tensordot(x[(slice(None),) + pos], w, axes=([1], [n]))  # (b, *k, c_out)
        y[(slice(None),) + window] += contrib
    if padding == "VALID":
        outs = [d * s + max(kk - s, 0) for d, s, kk in zip(sizes, strides, k)]
        pad = [o - f for o, f in zip(outs, full)]  # zero rows added at the end when s > k
        return np.pad(y, [(0, 0)] + [(0, p) for p in pad] + [(0, 0)])
    outs = [d * s for d, s in zip(sizes, strides)]
    starts = []
    for f, o, kk, s in zip(full, outs, k, strides):
        total = kk + s - 2
        lo = kk - 1 if s > kk - 1 else -(-total // 2)
        starts.append(kk - 1 - lo)  # lax.conv_transpose's SAME crop, stated independently
    if any(st < 0 for st in starts):
        y = np.pad(y, [(0, 0)] + [(max(-st, 0), 0) for st in starts] + [(0, 0)])
        starts = [max(st, 0) for st in starts]
    y = np.pad(y, [(0, 0)] + [(0, max(0, st + o - y.shape[i + 1])) for i, (st, o) in enumerate(zip(starts, outs))] + [(0, 0)])
    return y[(slice(None),) + tuple(slice(st, st + o) for st, o in zip(starts, outs)) + (slice(None),)]


CONV_CASES = [
    (k, s, pad, impl)
    for k, s, pad in itertools.product([(1,), (3,), (2, 2), (3, 2)], [1, 2], ["SAME", "VALID"])
    for impl in ("xla", "im2col")
]


@pytest.mark.parametrize("kernel,stride,padding,impl", CONV_CASES)
def test_conv_matches_naive_loops(kernel, stride, padding, impl, rng):
    n = len(kernel)
    x = rng.normal(size=(2,) + (7,) * n + (3,)).astype(np.float32)
    layer = L.Conv(4, kernel, strides=stride, padding=padding, impl=impl)
    _, params = layer.init(jax.random.key(1), (-1,) + x.shape[1:])
    params["b"] = jnp.asarray(rng.normal(size=4).astype(np.float32))
    y = layer.apply(params, jnp.asarray(x))
    expected = _naive_conv(x, np.asarray(params["w"]), (stride,) * n, padding) + np.asarray(params["b"])
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.sweep
@pytest.mark.parametrize("kernel,stride,padding,impl", CONV_CASES)
def test_conv_transpose_matches_naive_scatter(kernel, stride, padding, impl, rng):
    n = len(kernel)
    x = rng.normal(size=(2,) + (4,) * n + (3,)).astype(np.float32)
    layer = L.ConvTranspose(2, kernel, strides=stride, padding=padding, impl=impl)
    _, params = layer.init(jax.random.key(1), (-1,) + x.shape[1:])
    y = layer.apply(params, jnp.asarray(x))
    expected = _naive_conv_transpose(x, np.asarray(params["w"]), (stride,) * n, padding)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "im2col"])
@pytest.mark.parametrize("kernel,stride", [((3,), 1), ((3,), 2), ((3, 3), 2), ((2, 3), 1)])
def test_conv_transpose_is_the_adjoint_of_conv(kernel, stride, impl, rng):
    """<Conv(x; W), y> = <x, ConvTranspose(y; W with its channel axes swapped)>."""
    n = len(kernel)
    size = 2 * stride + max(kernel)  # (size - k) divisible by the stride for k in {2, 3} when stride <= 2
    size += (size - max(kernel)) % stride
    x = jnp.asarray(rng.normal(size=(2,) + (size,) * n + (3,)).astype(np.float32))
    conv = L.Conv(4, kernel, strides=stride, padding="VALID", impl=impl, use_bias=False)
    _, params = conv.init(jax.random.key(0), (-1,) + x.shape[1:])
    y_shape = conv.init(jax.random.key(0), x.shape)[0]
    y = jnp.asarray(rng.normal(size=y_shape).astype(np.float32))
    transpose = L.ConvTranspose(3, kernel, strides=stride, padding="VALID", impl=impl, use_bias=False)
    back = transpose.apply({"w": jnp.swapaxes(params["w"], -1, -2)}, y)
    back = back[(slice(None),) + tuple(slice(0, size) for _ in range(n))]  # drop rows no input reaches
    lhs = float(jnp.vdot(conv.apply(params, x), y))
    rhs = float(jnp.vdot(x, back))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs))


def test_conv_impls_have_equal_gradients(rng):
    x = jnp.asarray(rng.normal(size=(3, 6, 6, 2)).astype(np.float32))
    grads = []
    for impl in ("xla", "im2col"):
        layer = L.Conv2D(3, 3, strides=2, impl=impl)
        _, params = layer.init(jax.random.key(0), (-1, 6, 6, 2))
        grads.append(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1))(params, x))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)



def test_conv_auto_is_xla_in_a_one_step_program_and_im2col_in_a_fused_epoch_on_cpu():
    """``impl="auto"`` by where it runs (``one_step_program``): XLA counts the work of the impl it traced."""
    import optax

    from jaxnets import losses, train
    ce = losses.softmax_cross_entropy_with_integer_labels
    x, y = jnp.ones((2, 6, 6, 1)), jnp.zeros((2,), jnp.int32)

    def flops(fn, *args):
        cost = fn.lower(*args).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    counted = {}
    for impl in ("auto", "xla", "im2col"):
        model = L.serial(L.Conv2D(4, 3, impl=impl), L.Relu(), L.Flatten(), L.Dense(3))
        state = train.init_train_state(model, optax.sgd(0.1), (-1, 6, 6, 1), seed=0)
        counted[impl] = (flops(train.make_train_step(model, ce, optax.sgd(0.1)), state, x, y),
                         flops(train.make_epoch(model, ce, optax.sgd(0.1), num_examples=2, batch_size=2), state, x, y))
    assert counted["xla"] != counted["im2col"]  # the two impls are told apart in both programs
    if jax.default_backend() == "cpu":
        assert counted["auto"] == (counted["xla"][0], counted["im2col"][1])
    else:
        assert counted["auto"] == counted["xla"]

def test_pooling_matches_numpy(rng):
    x = rng.normal(size=(2, 6, 4, 3)).astype(np.float32)
    blocks = x.reshape(2, 3, 2, 2, 2, 3)  # (b, 3, 2, 2, 2, c): 2x2 windows
    np.testing.assert_allclose(L.MaxPool(2).apply({}, jnp.asarray(x)), blocks.max(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_allclose(L.AvgPool(2).apply({}, jnp.asarray(x)), blocks.mean(axis=(2, 4)), rtol=1e-6, atol=1e-7)


def test_avg_pool_same_padding_excludes_padding(rng):
    x = rng.normal(size=(1, 3, 3, 1)).astype(np.float32)
    y = np.asarray(L.AvgPool(2, strides=1, padding="SAME").apply({}, jnp.asarray(x)))
    # SAME for a 2-wide window pads one row/column at the end: the last row averages 2 values.
    np.testing.assert_allclose(y[0, 2, 0, 0], x[0, 2, 0:2, 0].mean(), rtol=1e-6)
    np.testing.assert_allclose(y[0, 2, 2, 0], x[0, 2, 2, 0], rtol=1e-6)
    np.testing.assert_allclose(y[0, 0, 0, 0], x[0, 0:2, 0:2, 0].mean(), rtol=1e-6)


def test_flatten_keeps_batch(rng):
    x = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(L.Flatten().apply({}, jnp.asarray(x)), x.reshape(3, 40))


def test_layer_norm_normalises_each_example(rng):
    x = jnp.asarray(rng.normal(3.0, 5.0, size=(4, 16)).astype(np.float32))
    layer = L.LayerNorm()
    _, params = layer.init(jax.random.key(0), (-1, 16))
    y = np.asarray(layer.apply(params, x))
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, rtol=1e-3)
    params = {"scale": jnp.full((16,), 2.0), "bias": jnp.full((16,), -1.0)}
    np.testing.assert_allclose(layer.apply(params, x), 2.0 * y - 1.0, rtol=1e-5, atol=1e-5)


def test_batch_norm_train_normalises_and_updates_running_stats(rng):
    x = jnp.asarray(rng.normal(4.0, 3.0, size=(256, 5)).astype(np.float32))
    layer = L.BatchNorm(momentum=0.9)
    _, params, state = layer.init_with_state(jax.random.key(0), (-1, 5))
    y, new_state = layer.apply_with_state(params, state, x, train=True)
    y = np.asarray(y)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.var(axis=0), 1.0, rtol=1e-3)
    xn = np.asarray(x)
    np.testing.assert_allclose(new_state["mean"], 0.1 * xn.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(new_state["var"], 0.9 + 0.1 * xn.var(axis=0), rtol=1e-5)


def test_batch_norm_eval_uses_running_stats(rng):
    x = jnp.asarray(rng.normal(size=(8, 3)).astype(np.float32))
    layer = L.BatchNorm(eps=1e-5)
    _, params, _ = layer.init_with_state(jax.random.key(0), (-1, 3))
    state = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([4.0, 1.0, 0.25])}
    y, same_state = layer.apply_with_state(params, state, x, train=False)
    expected = (np.asarray(x) - np.array([1.0, 2.0, 3.0])) / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert same_state is state


def test_batch_norm_running_stats_converge_to_data_stats(rng):
    layer = L.BatchNorm(momentum=0.9)
    _, params, state = layer.init_with_state(jax.random.key(0), (-1, 2))
    step = jax.jit(lambda s, x: layer.apply_with_state(params, s, x, train=True)[1])
    for _ in range(200):
        state = step(state, jnp.asarray(rng.normal([2.0, -1.0], [0.5, 3.0], size=(128, 2)).astype(np.float32)))
    np.testing.assert_allclose(state["mean"], [2.0, -1.0], atol=0.15)
    np.testing.assert_allclose(state["var"], [0.25, 9.0], rtol=0.1)


def test_batch_norm_over_spatial_axes(rng):
    x = jnp.asarray(rng.normal(2.0, 2.0, size=(4, 5, 5, 3)).astype(np.float32))
    layer = L.BatchNorm()
    _, params, state = layer.init_with_state(jax.random.key(0), (-1, 5, 5, 3))
    y, _ = layer.apply_with_state(params, state, x, train=True)
    np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-4)



def _two_pass_batch_norm(scale, bias, state, x, momentum, eps):
    """BatchNorm's training forward written plainly (two-pass statistics), for jax.grad to differentiate."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    var = jnp.square(x - mean).mean(axes)
    y = (x - mean) / jnp.sqrt(var + eps) * scale + bias
    return y, {"mean": momentum * state["mean"] + (1 - momentum) * mean, "var": momentum * state["var"] + (1 - momentum) * var}


@pytest.mark.parametrize("use_scale,use_bias", [(True, True), (False, True), (True, False), (False, False)])
def test_batch_norm_training_derivative_is_autodiff_of_the_plain_formula(rng, use_scale, use_bias):
    # BatchNorm's training forward carries a closed-form derivative (a custom_vjp): it must equal jax.grad of the
    # plain two-pass formula, through the output and through the running statistics, in float64
    layer = L.BatchNorm(momentum=0.8, eps=1e-3, use_scale=use_scale, use_bias=use_bias)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(5.0, 2.0, size=(6, 3, 3, 4)))
        scale, bias = jnp.asarray(rng.normal(size=4)), jnp.asarray(rng.normal(size=4))
        state = {"mean": jnp.asarray(rng.normal(size=4)), "var": jnp.asarray(rng.uniform(0.5, 2.0, size=4))}
        w, u, v = (jnp.asarray(rng.normal(size=s)) for s in (x.shape, 4, 4))
        params = {**({"scale": scale} if use_scale else {}), **({"bias": bias} if use_bias else {})}

        def score(apply):
            def f(params, x):
                y, new = apply(params, x)
                return jnp.sum(w * y) + jnp.sum(u * new["mean"]) + jnp.sum(v * new["var"])
            return f

        ours = score(lambda p, x: layer.apply_with_state(p, state, x, train=True))
        plain = score(lambda p, x: _two_pass_batch_norm(p.get("scale", 1.0), p.get("bias", 0.0), state, x, 0.8, 1e-3))
        np.testing.assert_allclose(ours(params, x), plain(params, x), rtol=1e-12)
        got, want = jax.grad(ours, argnums=(0, 1))(params, x), jax.grad(plain, argnums=(0, 1))(params, x)
        for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
        # and the second derivative (reverse over reverse) of the output path
        hvp = lambda f: jax.grad(lambda x: jnp.vdot(jax.grad(f, argnums=1)(params, x), w))(x)  # noqa: E731
        np.testing.assert_allclose(hvp(ours), hvp(plain), rtol=1e-8, atol=1e-10)


def test_batch_norm_training_derivative_keeps_16_bit_dtypes(rng):
    # bfloat16 activations and params (as under a bfloat16 policy; the running statistics stay float32): each
    # cotangent in its primal's dtype
    layer = L.BatchNorm()
    _, params, state = layer.init_with_state(jax.random.key(0), (-1, 8))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params)
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)
    gp, gx = jax.grad(lambda p, x: jnp.sum(layer.apply_with_state(p, state, x, train=True)[0]), argnums=(0, 1))(params, x)
    assert gx.dtype == gp["scale"].dtype == gp["bias"].dtype == jnp.bfloat16
    # sum(y) does not depend on x through the normalised values: its gradient is zero up to bfloat16 rounding
    np.testing.assert_allclose(np.asarray(gx, np.float32), 0.0, atol=0.05)
    np.testing.assert_allclose(gp["bias"], 16.0)


def test_batch_norm_statistics_survive_a_large_mean(rng):
    # one-pass statistics shifted by the running mean: a channel whose mean is 1e4 standard deviations away
    layer = L.BatchNorm(momentum=0.5)
    _, params, _ = layer.init_with_state(jax.random.key(0), (-1, 2))
    x = jnp.asarray(rng.normal([1e4, 0.0], [1.0, 1.0], size=(512, 2)), jnp.float32)
    state = {"mean": jnp.array([1e4, 0.0], jnp.float32), "var": jnp.ones(2)}
    y, new = layer.apply_with_state(params, state, x, train=True)
    xd = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(y).var(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(2 * (np.asarray(new["var"]) - 0.5), xd.var(0), rtol=1e-3)


def test_dropout_keeps_the_right_fraction_and_the_mean(key):
    drop_prob = 0.3
    x = jnp.ones((200, 500))
    y = np.asarray(L.Dropout(drop_prob).apply({}, x, key=key, train=True))
    kept = (y != 0).mean()
    # 100,000 Bernoulli(0.7) draws: standard error 0.0014; allow 5 of them.
    assert abs(kept - (1 - drop_prob)) < 0.007
    np.testing.assert_allclose(y[y != 0], 1 / (1 - drop_prob), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.01


def test_dropout_is_identity_in_evaluation_and_needs_a_key_in_training(key):
    x = jnp.arange(6.0).reshape(2, 3)
    layer = L.Dropout(0.5)
    np.testing.assert_array_equal(layer.apply({}, x), x)
    np.testing.assert_array_equal(layer.apply({}, x, train=False, key=key), x)
    with pytest.raises(ValueError, match=r"Dropout\(drop_prob=0.5\) is random in training: pass key="):
        layer.apply({}, x, train=True)
    a = layer.apply({}, x, key=key, train=True)
    b = layer.apply({}, x, key=jax.random.key(1), train=True)
    assert not np.array_equal(a, b) or np.all(np.asarray(x) == 0)


def test_embedding_equals_one_hot_matmul(key):
    layer = L.Embedding(7, 4)
    _, params = layer.init(key, (-1, 3))
    ids = jnp.array([[0, 6, 2], [3, 3, 1]])
    expected = np.asarray(jax.nn.one_hot(ids, 7)) @ np.asarray(params["table"])
    np.testing.assert_allclose(layer.apply(params, ids), expected, rtol=1e-6)


def test_embedding_rejects_bad_ids(key):
    layer = L.Embedding(5, 2)
    _, params = layer.init(key, (-1,))
    with pytest.raises(TypeError, match="integer dtype, got float32"):
        layer.apply(params, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\) for 5 classes, got values in \[0, 5\]"):
        layer.apply(params, jnp.array([0, 5]))
    out = jax.jit(layer.apply)(params, jnp.array([1, 9]))  # under jit: nan rows, not silent clamping
    assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[0]))


# ---------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------


def test_serial_params_are_readable_nested_dicts(key):
    model = L.serial(L.Dense(128), L.Relu(), L.Dense(128), L.Relu(), L.Dense(10))
    out_shape, params = model.init(key, (-1, 64))
    assert out_shape == (-1, 10)
    assert jax.tree_util.tree_map(jnp.shape, params) == {
        "dense_0": {"w": (64, 128), "b": (128,)},
        "dense_1": {"w": (128, 128), "b": (128,)},
        "dense_2": {"w": (128, 10), "b": (10,)},
    }
    assert L.count_params(params) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def test_serial_composes_in_order(key):
    d1, d2 = L.Dense(3), L.Dense(2)
    model = L.serial(d1, L.Tanh(), d2)
    _, params = model.init(key, (-1, 4))
    x = jnp.ones((5, 4))
    expected = d2.apply(params["dense_1"], jnp.tanh(d1.apply(params["dense_0"], x)))
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)


def test_serial_gives_each_random_layer_its_own_key(key):
    model = L.serial(L.Dropout(0.5), L.Dropout(0.5))
    single = L.Dropout(0.5)
    x = jnp.ones((50, 50))
    y = np.asarray(model.apply({}, x, key=key, train=True))
    # Two independent draws keep 1/4 of the entries; the same draw twice would keep 1/2.
    assert abs((y != 0).mean() - 0.25) < 0.03
    assert not np.array_equal(y != 0, np.asarray(single.apply({}, x, key=key, train=True)) != 0)


def test_residual_adds_its_input(key):
    body = L.serial(L.Dense(4), L.Relu(), L.Dense(4))
    model = L.residual(L.Dense(4), L.Relu(), L.Dense(4))
    _, params = model.init(key, (-1, 4))
    assert set(params) == {"dense_0", "dense_1"}
    x = jax.random.normal(jax.random.key(3), (2, 4))
    np.testing.assert_allclose(model.apply(params, x), x + body.apply(params, x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"must keep the input shape \(-1, 4\), but it gives \(-1, 3\)"):
        L.residual(L.Dense(3)).init(key, (-1, 4))


def test_fan_out_parallel_fan_in(key):
    model = L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Dense(3)), L.FanInSum())
    out_shape, params = model.init(key, (-1, 5))
    assert out_shape == (-1, 3)
    assert set(params) == {"parallel_0"} and set(params["parallel_0"]) == {"dense_0", "dense_1"}
    x = jnp.ones((2, 5))
    p = params["parallel_0"]
    expected = L.Dense(3).apply(p["dense_0"], x) + L.Dense(3).apply(p["dense_1"], x)
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)
    concat = L.serial(L.FanOut(2), L.parallel(L.Dense(3), L.Identity()), L.FanInConcat())
    out_shape, params = concat.init(key, (-1, 5))
    assert out_shape == (-1, 8)
    assert concat.apply(params, x).shape == (2, 8)


def test_batch_norm_inside_serial_threads_state(key):
    model = L.serial(L.Dense(4), L.BatchNorm(), L.Relu(), L.Dense(2), L.BatchNorm())
    _, params, state = model.init_with_state(key, (-1, 3))
    assert set(state) == {"batch_norm_0", "batch_norm_1"}
    x = jax.random.normal(jax.random.key(1), (16, 3))
    y, new_state = model.apply_with_state(params, state, x, train=True)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert not np.allclose(new_state["batch_norm_0"]["mean"], state["batch_norm_0"]["mean"])
    y_eval, same = model.apply_with_state(params, new_state, x, train=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same, new_state)


# ---------------------------------------------------------------------------
# Bad input: clear errors naming what is wrong, before any XLA error
# ---------------------------------------------------------------------------


def test_dense_wrong_input_features(key):
    model = L.serial(L.Dense(8), L.Relu(), L.Dense(2))
    _, params = model.init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"dense_0: Dense\(8\) expects inputs with last dimension 4 \(w has shape \(4, 8\)\), got x of shape \(3, 5\)"):
        model.apply(params, jnp.ones((3, 5)))
    with pytest.raises(ValueError, match="dense_0"):
        jax.jit(model.apply)(params, jnp.ones((3, 5)))


def test_conv_wrong_rank_and_channels(key):
    layer = L.Conv2D(4, 3)
    with pytest.raises(ValueError, match=r"expects an input_shape of rank 4, got \(-1, 8, 8\)"):
        layer.init(key, (-1, 8, 8))
    _, params = layer.init(key, (-1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"expects input of rank 4, got x of shape \(2, 8, 8\)"):
        layer.apply(params, jnp.ones((2, 8, 8)))
    with pytest.raises(ValueError, match=r"expects 1 input channels \(last axis; layout NHWC\), got x of shape \(2, 8, 8, 3\)"):
        layer.apply(params, jnp.ones((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="window 5 is larger than the input size 4 with padding 'VALID'"):
        L.Conv2D(1, 5, padding="VALID").init(key, (-1, 4, 4, 1))


def test_integer_input_to_dense_is_a_type_error(key):
    layer = L.Dense(2)
    _, params = layer.init(key, (-1, 3))
    with pytest.raises(TypeError, match=r"Dense\(2\) input x must have a floating dtype, got int32"):
        layer.apply(params, jnp.ones((2, 3), jnp.int32))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\), got 1.0"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\), got -0.1"):
        L.Dropout(-0.1)
    with pytest.raises(ValueError, match="out_features must be a positive integer, got 0"):
        L.Dense(0)
    with pytest.raises(TypeError, match="out_features must be a positive integer, got 2.5"):
        L.Dense(2.5)
    with pytest.raises(ValueError, match="padding must be 'SAME' or 'VALID', got 'full'"):
        L.Conv2D(3, 3, padding="full")
    with pytest.raises(ValueError, match="impl must be one of"):
        L.Conv2D(3, 3, impl="cudnn")
    with pytest.raises(TypeError, match=r"argument 1 must be a Layer, got .*did you forget to call it, e\.g\. Relu\(\)\?"):
        L.serial(L.Dense(3), L.Relu)
    with pytest.raises(ValueError, match="serial needs at least one layer"):
        L.serial()
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.5"):
        L.BatchNorm(momentum=1.5)


def test_bad_input_shapes(key):
    with pytest.raises(ValueError, match=r"input_shape must hold positive ints or -1 \(unknown batch\), got \(-1, 0\)"):
        L.Dense(3).init(key, (-1, 0))
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        L.Dense(3).init(key, 64)
    with pytest.raises(ValueError, match=r"needs a known last dimension \(features\)"):
        L.Dense(3).init(key, (8, -1))


def test_params_mismatch_names_the_keys(key):
    model = L.serial(L.Dense(3), L.Dense(2))
    _, params = model.init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"params has entries \['dense_9'\] that match no layer; the layers are \['dense_0', 'dense_1'\]"):
        model.apply({**params, "dense_9": {}}, jnp.ones((1, 4)))
    broken = {"dense_0": {"b": params["dense_0"]["b"]}, "dense_1": params["dense_1"]}
    with pytest.raises(ValueError, match=r"dense_0: Dense\(3\): params has no entry 'w'; it has \['b'\]"):
        model.apply(broken, jnp.ones((1, 4)))


def test_stateful_model_through_stateless_api_says_what_to_do(key):
    model = L.serial(L.Dense(3), L.BatchNorm())
    _, params = model.init(key, (-1, 4))
    with pytest.raises(ValueError, match="batch_norm_0: BatchNorm.*build with init_with_state and call apply_with_state"):
        model.apply(params, jnp.ones((2, 4)))


def test_parallel_arity(key):
    model = L.parallel(L.Dense(2), L.Dense(2))
    with pytest.raises(ValueError, match="expects input_shape to be a tuple of 2 items, one per layer, got 3 items"):
        model.init(key, ((-1, 2), (-1, 2), (-1, 2)))


def test_fan_in_sum_shape_mismatch(key):
    with pytest.raises(ValueError, match=r"FanInSum\(\) needs inputs of one shape"):
        L.FanInSum().init(key, ((-1, 2), (-1, 3)))


# ---------------------------------------------------------------------------
# New parameter-free layers against independent references
# ---------------------------------------------------------------------------


def test_global_pools_match_numpy(rng):
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(L.GlobalAvgPool().apply({}, jnp.asarray(x)), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(L.GlobalMaxPool().apply({}, jnp.asarray(x)), x.max(axis=(1, 2)), rtol=1e-6)
    assert L.GlobalAvgPool().init(jax.random.key(0), (-1, 3, 4, 5))[0] == (-1, 5)


def test_global_max_pool_rule_sends_the_cotangent_to_the_first_maximum():
    x = jnp.array([[[1.0], [3.0], [3.0], [2.0]]])  # (1, 4, 1): a tie at positions 1 and 2
    _, x_bar = L.GlobalMaxPool().backward({}, {}, x, jnp.array([[5.0]]))
    np.testing.assert_array_equal(x_bar[0, :, 0], [0.0, 5.0, 0.0, 0.0])
    np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(jnp.max(x, axis=1)))(x)[0, :, 0], [0.0, 0.5, 0.5, 0.0])


def test_reshape_keeps_the_batch_and_checks_sizes(key):
    layer = L.Reshape((3, -1))
    assert layer.init(key, (-1, 2, 6))[0] == (-1, 3, 4)
    x = jnp.arange(24.0).reshape(2, 2, 6)
    np.testing.assert_array_equal(layer.apply({}, x), np.arange(24.0).reshape(2, 3, 4))
    with pytest.raises(ValueError, match=r"Reshape\(\(3, -1\)\) cannot reshape an example of shape \(5,\)"):
        layer.init(key, (-1, 5))
    with pytest.raises(ValueError, match="shape may hold at most one -1"):
        L.Reshape((-1, -1))


def test_lambda_infers_its_shape_and_differentiates_by_autodiff(key):
    layer = L.Lambda(lambda x: x[:, ::2] * 2.0, name="every_other")
    out_shape, params = layer.init(key, (-1, 7))
    assert out_shape == (-1, 4) and params == {}
    x = jnp.arange(14.0).reshape(2, 7)
    _, x_bar = layer.backward({}, {}, x, jnp.ones((2, 4)))
    np.testing.assert_array_equal(x_bar[0], [2.0, 0, 2.0, 0, 2.0, 0, 2.0])


# ---------------------------------------------------------------------------
# Defining layers, and the checks at a model's entry
# ---------------------------------------------------------------------------


def _scale_layer(**kwargs):
    return L.define_layer("scale", lambda key, shape: {"s": jnp.ones(shape[-1:])}, lambda p, x: x * p["s"], **kwargs)


def test_define_layer_infers_the_output_shape_with_the_batch_unknown(key):
    layer = L.define_layer("pair_sum", lambda key, shape: {}, lambda p, x: x.reshape(x.shape[0], -1, 2).sum(-1))
    assert layer.init(key, (-1, 3, 4))[0] == (-1, 6)
    assert layer.init(key, (5, 3, 4))[0] == (5, 6)
    assert layer.has_rule is False
    with pytest.raises(ValueError, match=r"PairSum\(\) has no hand-derived backward rule"):
        layer.backward({}, {}, jnp.ones((2, 3, 4)), jnp.ones((2, 6)))


def test_define_layer_checks_the_promised_output_shape(key):
    liar = _scale_layer(output_shape=lambda shape: shape[:-1] + (1,))
    _, params = liar.init(key, (-1, 3))
    with pytest.raises(ValueError, match=r"Scale\(\): apply returned shape \(2, 3\), but output_shape promised \(2, 1\)"):
        liar.apply(params, jnp.ones((2, 3)))


def test_define_layer_checks_the_rules_structure(key):
    bad = _scale_layer(backward=lambda p, x, y_bar: ({"t": y_bar}, y_bar[:, :1]))
    _, params = bad.init(key, (-1, 3))
    with pytest.raises(ValueError, match=r"(?s)params_bar s: missing.*params_bar t: not made by init.*x_bar: expected shape \(2, 3\)"):
        bad.backward(params, {}, jnp.ones((2, 3)), jnp.ones((2, 3)))


def test_params_from_another_model_are_refused_naming_the_leaves(key):
    _, small = L.Dense(3).init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"(?s)Dense\(4\): the params do not match.*params b: expected shape \(4,\), got \(3,\)"):
        L.Dense(4).apply(small, jnp.ones((2, 4)))
    wide = L.serial(L.Dense(32), L.Relu(), L.Dense(2))
    narrow = L.serial(L.Dense(8), L.Relu(), L.Dense(2))
    _, p8 = narrow.init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"params dense_0/w: expected shape \(4, 32\), got \(4, 8\)"):
        wide.apply(p8, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"params dense_0/w: expected shape \(4, 32\), got \(4, 8\)"):
        jax.jit(wide.apply)(p8, jnp.ones((2, 4)))
    # a LayerNorm of another width: named, not a broadcasting error
    _, ln6 = L.LayerNorm().init(key, (-1, 6))
    with pytest.raises(ValueError, match=r"params scale: expected shape \(4,\), got \(6,\)"):
        L.LayerNorm().apply(ln6, jnp.ones((2, 4)))
    # a state leaf of another shape fails inside XLA's broadcasting; the check names it instead
    model = L.serial(L.BatchNorm())
    _, p, _ = model.init_with_state(key, (-1, 4))
    with pytest.raises(ValueError, match=r"state batch_norm_0/var: expected shape \(4,\), got \(3,\)"):
        model.apply_with_state(p, {"batch_norm_0": {"mean": jnp.zeros(4), "var": jnp.ones(3)}}, jnp.ones((2, 4)))
    # float64 params (gradient checks) and other float widths are accepted
    _, params = L.Dense(3).init(key, (-1, 4))
    L.check_params(L.Dense(3), jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params), jnp.ones((2, 4)))


def test_an_int_key_is_refused_with_the_fix(key):
    with pytest.raises(TypeError, match=r"key must be a jax.random key: use jax.random.key\(0\) .*; got the integer 0"):
        L.Dense(3).init(0, (-1, 4))
    _, p = L.Dropout(0.5).init(key, (-1, 4))
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        L.Dropout(0.5).apply(p, jnp.ones((2, 4)), key=0, train=True)


def test_errors_inside_nested_layers_keep_their_path_and_traceback(key):
    import traceback

    def apply(params, x):
        raise ValueError("my own check failed")  # the line a user needs to see

    inner = L.define_layer("mine", lambda key, shape: {}, apply, output_shape=lambda s: s)
    model = L.serial(L.Dense(4), L.residual(L.Dense(4), inner))
    _, params = model.init(key, (-1, 3))
    with pytest.raises(ValueError, match=r"^residual_0/mine_0: my own check failed$") as info:
        model.apply(params, jnp.ones((2, 3)))
    assert "the line a user needs to see" in "".join(traceback.format_exception(info.value))

    def buggy(params, x):
        return x / undefined_name  # noqa: F821

    model = L.serial(L.Dense(4), L.define_layer("buggy", lambda key, shape: {}, buggy, output_shape=lambda s: s))
    _, params = model.init(key, (-1, 3))
    with pytest.raises(NameError) as info:
        model.apply(params, jnp.ones((2, 3)))
    assert "raised inside layer buggy_0" in "".join(traceback.format_exception(info.value))
    assert "undefined_name" in "".join(traceback.format_exception(info.value))


def test_jit_of_apply_with_a_traced_train_flag(key):
    model = L.serial(L.Dense(8), L.BatchNorm(), L.Dropout(0.5), L.Dense(2))
    _, params, state = model.init_with_state(key, (-1, 4))
    x = jax.random.normal(key, (6, 4))
    k = jax.random.key(3)
    for train in (True, False):
        traced = jax.jit(model.apply_with_state)(params, state, x, key=k, train=train)
        static = model.apply_with_state(params, state, x, key=k, train=train)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), traced, static)
    with pytest.raises(ValueError, match="make train static: jax.jit\\(model.apply, static_argnames='train'\\)"):
        jax.jit(model.apply_with_state)(params, state, x, train=False)


def test_elementwise_that_changes_the_shape_names_itself(key):
    model = L.serial(L.Dense(7), L.Elementwise(lambda x: x.reshape(-1, 2) if x.size % 2 == 0 else x, "pairs"), L.Dense(3))
    _, params = model.init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"pairs_0: Pairs\(\) must keep the shape of its input .*use Lambda\(fn\)"):
        model.apply(params, jnp.ones((4, 4)))


def test_combinators_compile_the_same_program_as_plain_functions(key):
    """The taped forward is the forward: jit of apply holds nothing but the layers' own operations."""
    model = L.serial(L.Dense(16), L.Relu(), L.residual(L.Dense(16), L.Tanh()), L.Dense(3))
    _, params = model.init(key, (-1, 8))
    x = jnp.ones((4, 8))

    def by_hand(p, x):
        h = jax.nn.relu(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
        r = p["residual_0"]["dense_0"]
        h = h + jnp.tanh(h @ r["w"] + r["b"])
        return h @ p["dense_1"]["w"] + p["dense_1"]["b"]

    ours = jax.jit(model.apply).lower(params, x).compile().cost_analysis()
    theirs = jax.jit(by_hand).lower(params, x).compile().cost_analysis()
    ours, theirs = (c[0] if isinstance(c, list) else c for c in (ours, theirs))
    assert ours["flops"] == theirs["flops"]
    assert ours["bytes accessed"] == theirs["bytes accessed"]


def test_define_layer_whose_init_and_apply_disagree_is_named_at_init(key):
    layer = L.define_layer("proj", lambda key, shape: {"w": jnp.ones((shape[-1], 2))}, lambda p, x: x @ p["w"].T)
    with pytest.raises(ValueError, match=r"Proj\(\): could not infer the output shape by running apply on an input of shape \(-1, 3\)"):
        layer.init(key, (-1, 3))


# ---------------------------------------------------------------------------
# Convolution options: explicit padding, dilation, feature groups; PReLU
# ---------------------------------------------------------------------------

CONV_OPTIONS = {
    "pad-int": dict(padding=1),
    "pad-pairs-stride": dict(padding=((1, 2), (0, 3)), strides=2),
    "pad-per-axis": dict(padding=(2, 0)),
    "dilation-same": dict(dilation=2),
    "dilation-valid-stride": dict(dilation=(2, 1), padding="VALID", strides=(1, 2)),
    "groups": dict(feature_groups=2),
    "depthwise-dilated": dict(feature_groups=4, padding=2, dilation=2),
}


def _lax_padding(padding):
    if isinstance(padding, str):
        return padding
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    return [p if isinstance(p, tuple) else (p, p) for p in padding]


@pytest.mark.parametrize("impl", ["im2col", "xla"])
@pytest.mark.parametrize("option", sorted(CONV_OPTIONS))
def test_conv_options_equal_lax_conv_general_dilated(option, impl, key):
    kw = CONV_OPTIONS[option]
    out = 8 if kw.get("feature_groups") == 4 else 6
    layer = L.Conv2D(out, 3, impl=impl, **kw)
    x = jax.random.normal(key, (2, 9, 8, 4))
    shape, params = layer.init(key, (-1, 9, 8, 4))
    y = layer.apply(params, x)
    dil = kw.get("dilation", 1)
    strides = kw.get("strides", 1)
    ref = jax.lax.conv_general_dilated(
        x, params["w"], (strides,) * 2 if isinstance(strides, int) else strides, _lax_padding(kw.get("padding", "SAME")),
        rhs_dilation=(dil,) * 2 if isinstance(dil, int) else dil, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=kw.get("feature_groups", 1)) + params["b"]
    assert y.shape == ref.shape == (2,) + shape[1:]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


TRANSPOSE_OPTIONS = {
    "pad-int": dict(padding=1, strides=2),
    "pad-pairs-dilated": dict(padding=((1, 0), (2, 1)), strides=2, dilation=2),
    "groups": dict(feature_groups=2, strides=2),
    "dilated-valid": dict(dilation=2, padding="VALID", strides=3),
}


@pytest.mark.parametrize("option", sorted(TRANSPOSE_OPTIONS))
def test_conv_transpose_options_im2col_equals_xla_and_is_convs_adjoint(option, key):
    """Both impls agree, and the transposed conv is the adjoint (vjp in x) of the convolution with the same kernel."""
    kw = TRANSPOSE_OPTIONS[option]
    x = jax.random.normal(key, (2, 5, 4, 4))
    ys = []
    for impl in ("im2col", "xla"):
        layer = L.ConvTranspose2D(6, 3, use_bias=False, impl=impl, **kw)
        shape, params = layer.init(key, (-1, 5, 4, 4))
        ys.append(layer.apply(params, x))
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-5, atol=1e-5)
    assert ys[0].shape == (2,) + shape[1:]
    if kw.get("feature_groups", 1) == 1 and not (isinstance(kw.get("padding"), str)):
        # <conv(u), x> = <u, convT(x)>: conv with W^T (in and out swapped), PyTorch's padding convention
        w = jnp.swapaxes(params["w"], -1, -2)  # (kh, kw, 6, 4)
        pad = kw["padding"]
        pads = [(pad, pad)] * 2 if isinstance(pad, int) else list(pad)
        u = jax.random.normal(jax.random.key(5), ys[0].shape)
        conv_u = jax.lax.conv_general_dilated(u, w, (kw["strides"],) * 2, pads, rhs_dilation=(kw.get("dilation", 1),) * 2,
                                              dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert conv_u.shape == x.shape
        np.testing.assert_allclose(jnp.vdot(conv_u, x), jnp.vdot(u, ys[0]), rtol=1e-4)


@pytest.mark.slow  # three dtypes and finite differences per option
@pytest.mark.parametrize("option", sorted(CONV_OPTIONS) + [f"T-{o}" for o in sorted(TRANSPOSE_OPTIONS)])
def test_conv_option_rules_pass_check_layer_in_three_dtypes(option):
    if option.startswith("T-"):
        layer = L.ConvTranspose2D(4, 3, **TRANSPOSE_OPTIONS[option[2:]])
        shape = (2, 3, 4, 4)
    else:
        kw = CONV_OPTIONS[option]
        layer = L.Conv2D(8 if kw.get("feature_groups") == 4 else 6, 3, **kw)
        shape = (2, 7, 6, 4)
    report = gradcheck.check_layer(layer, shape, dtypes=("float32", "float64", "bfloat16"))
    assert report.passed, report


@pytest.mark.parametrize("option", ["pad-pairs-stride", "depthwise-dilated"])
def test_conv_option_rules_match_jax_vjp(option, key):
    kw = CONV_OPTIONS[option]
    layer = L.Conv2D(8 if kw.get("feature_groups") == 4 else 6, 3, **kw)
    x = jax.random.normal(key, (2, 7, 6, 4))
    _, params = layer.init(key, x.shape)
    y_bar = jax.random.normal(jax.random.key(3), layer.apply(params, x).shape)
    ref = jax.vjp(layer.apply, params, x)[1](y_bar)
    got = layer.backward(params, {}, x, y_bar)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, ref)


def test_conv_options_equal_torch_conv2d(key):
    torch = pytest.importorskip("torch")
    x = np.asarray(jax.random.normal(key, (2, 9, 8, 4)))
    layer = L.Conv2D(6, (3, 2), strides=2, padding=(1, 2), dilation=(1, 2), feature_groups=2)
    _, params = layer.init(key, x.shape)
    w = torch.from_numpy(np.asarray(params["w"]).transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
    ref = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), w,
                                     torch.from_numpy(np.asarray(params["b"])), stride=2, padding=(1, 2),
                                     dilation=(1, 2), groups=2).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), ref, rtol=1e-5, atol=1e-5)
    t_layer = L.ConvTranspose2D(6, 4, strides=2, padding=((1, 0), (1, 0)), feature_groups=2)  # PyTorch p=1, output_padding=1
    _, tp = t_layer.init(key, x.shape)
    # PyTorch's transposed weight is (in, out / G, kh, kw) and unflipped; ours is the flipped correlation's (kh, kw, in / G, out)
    g, wt = 2, np.asarray(tp["w"])
    tw = wt.reshape(4, 4, 2, g, 3).transpose(3, 2, 4, 0, 1).reshape(4, 3, 4, 4)  # (in, out / G, kh, kw)
    ref_t = torch.nn.functional.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                                 torch.from_numpy(tw.copy()), torch.from_numpy(np.asarray(tp["b"])),
                                                 stride=2, padding=1, output_padding=1, groups=2)
    np.testing.assert_allclose(t_layer.apply(tp, jnp.asarray(x)), ref_t.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_conv_options_bad_inputs(key):
    with pytest.raises(ValueError, match=r"Conv: padding must not be negative, got -1 at axis 0 \(low\)"):
        L.Conv2D(4, 3, padding=((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match=r"Conv: padding must not be negative, got -2 at every side"):
        L.Conv2D(4, 3, padding=-2)
    with pytest.raises(ValueError, match=r"padding must be 'SAME', 'VALID', an int, 2 ints .* got \(1, 2, 3\)"):
        L.Conv2D(4, 3, padding=(1, 2, 3))
    with pytest.raises(ValueError, match=r"padding must be 'SAME' or 'VALID', got 'FULL'"):
        L.Conv2D(4, 3, padding="FULL")
    with pytest.raises(ValueError, match=r"dilation\[0\]"):
        L.Conv2D(4, 3, dilation=0)
    with pytest.raises(ValueError, match="feature_groups"):
        L.Conv2D(4, 3, feature_groups=0)
    with pytest.raises(ValueError, match=r"Conv: out_channels \(5\) must be divisible by feature_groups \(2\)"):
        L.Conv2D(5, 3, feature_groups=2)
    with pytest.raises(ValueError, match=r"in_channels \(3\) must be divisible by feature_groups \(2\)"):
        L.Conv2D(4, 3, feature_groups=2).init(key, (-1, 8, 8, 3))
    layer = L.Conv2D(4, 3, feature_groups=2)
    _, params = layer.init(key, (-1, 8, 8, 4))
    with pytest.raises(ValueError, match=r"expects 4 input channels \(2 per group, 2 groups\)"):
        layer.apply(params, jnp.ones((1, 8, 8, 6)))
    with pytest.raises(ValueError, match=r"the \(dilated\) window 5 is larger than the padded input size 4"):
        L.Conv2D(4, 3, dilation=2, padding=1).init(key, (-1, 2, 8, 1))
    with pytest.raises(ValueError, match=r"ConvTranspose: padding crops the full output by at most .* = 2 per side, "
                                         r"got \(3, 3\) on axis 0"):
        L.ConvTranspose2D(4, 3, padding=3)


def test_prelu_values_and_kink_convention(key):
    """PReLU against its definition; at x = 0 the rule takes the left-hand slope a (as leaky_relu), a_bar gets 0."""
    layer = L.PReLU(0.2, per_channel=True)
    x = jnp.array([[-2.0, 0.0, 3.0], [1.0, -1.0, 0.0]])
    _, params = layer.init(key, (-1, 3))
    params = {"alpha": jnp.array([0.1, 0.2, 0.3])}
    np.testing.assert_allclose(layer.apply(params, x), np.where(x > 0, x, x * np.array([0.1, 0.2, 0.3])))
    p_bar, x_bar = layer.backward(params, {}, x, jnp.ones_like(x))
    np.testing.assert_allclose(x_bar, [[0.1, 0.2, 1.0], [1.0, 0.2, 0.3]])  # x = 0 gets a
    np.testing.assert_allclose(p_bar["alpha"], [-2.0, -1.0, 0.0])  # sum of min(x, 0)
    g = jax.grad(lambda p, x: jnp.sum(layer.apply(p, x)), argnums=(0, 1))(params, x)
    np.testing.assert_allclose(g[1], x_bar)  # jnp.where(x > 0, ...) takes the same branch at 0
    scalar = L.PReLU()
    _, sp = scalar.init(key, (-1, 3))
    assert sp["alpha"].shape == () and float(sp["alpha"]) == 0.25
    with pytest.raises(ValueError, match=r"PReLU\(0.2, per_channel=True\) expects 3 channels \(last axis\), got x of shape \(2, 4\)"):
        layer.apply(params, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="per_channel must be a bool"):
        L.PReLU(per_channel=1)


def test_prelu_equals_torch(key):
    torch = pytest.importorskip("torch")
    x = np.asarray(jax.random.normal(key, (4, 5, 3)))
    m = torch.nn.PReLU(num_parameters=3, init=0.3)
    ref = m(torch.from_numpy(x.transpose(0, 2, 1).copy())).detach().numpy().transpose(0, 2, 1)
    layer = L.PReLU(0.3, per_channel=True)
    _, params = layer.init(key, x.shape)
    np.testing.assert_allclose(layer.apply(params, jnp.asarray(x)), ref, rtol=1e-6)


def test_define_layer_residuals_reach_the_rule_and_the_forward_runs_once(key):
    """residuals=True: apply returns (y, residuals), the rule gets them; the rule never calls apply again."""
    calls = []

    def init(key, shape):
        return {"w": jax.random.normal(key, (shape[-1], 3))}

    def apply(params, x):
        calls.append(1)
        y = jnp.tanh(x @ params["w"])
        return y, {"y": y}

    def backward(params, x, saved, y_bar):
        g = y_bar * (1 - saved["y"] ** 2)  # tanh' from the saved output
        return {"w": x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, 3)}, g @ params["w"].T

    layer = L.define_layer("tanh_dense", init, apply, backward=backward, residuals=True)
    shape, params = layer.init(key, (-1, 4))
    assert shape == (-1, 3)
    x = jax.random.normal(key, (2, 4))
    assert layer.apply(params, x).shape == (2, 3)  # the output is y alone
    calls.clear()
    y_bar = jnp.ones((2, 3))
    got = layer.backward(params, {}, x, y_bar)
    assert len(calls) == 1  # the forward ran once; the rule used what it saved
    ref = jax.vjp(layer.apply, params, x)[1](y_bar)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, ref)
    report = gradcheck.check_layer(L.serial(L.Dense(4), layer), (3, 5))
    assert report.passed, report
    with pytest.raises(ValueError, match=r"an apply with residuals=True must return \(y, residuals\)"):
        L.define_layer("bad", init, lambda p, x: x @ p["w"], backward=backward, residuals=True).init(key, (-1, 4))
    with pytest.raises(TypeError, match="residuals must be a bool"):
        L.define_layer("bad", init, apply, residuals="yes")


def test_define_layer_residuals_with_state(key):
    """A stateful layer with residuals: apply -> (y, state, residuals); backward(params, state, x, residuals, y_bar)."""

    def init(key, shape):
        return {"scale": jnp.ones(shape[-1])}, {"count": jnp.zeros(())}

    def apply(params, state, x):
        y = x * params["scale"]
        return y, {"count": state["count"] + 1}, x * 1.0

    def backward(params, state, x, saved, y_bar):
        return {"scale": jnp.sum(y_bar * saved, axis=0)}, y_bar * params["scale"]

    layer = L.define_layer("scale", init, apply, backward=backward, stateful=True, residuals=True)
    _, params, state = layer.init_with_state(key, (-1, 3))
    x = jax.random.normal(key, (4, 3))
    y, new_state = layer.apply_with_state(params, state, x)
    assert float(new_state["count"]) == 1.0
    p_bar, x_bar = layer.backward(params, state, x, jnp.ones_like(y))
    np.testing.assert_allclose(p_bar["scale"], jnp.sum(x, axis=0), rtol=1e-6)
    np.testing.assert_allclose(x_bar, jnp.ones_like(x))
