"""Sequence layers: attention, positions, recurrence, pooling. Hand rules against jax.grad (masks
included), jax.nn.dot_product_attention, finite differences; bad inputs; fully masked rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import gradcheck

TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _rel(got, expected):
    """``||g - e|| / ||e||`` over all leaves together (``None`` cotangents skipped)."""
    g = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(got)])
    e = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(expected)])
    return float(jnp.linalg.norm(g - e) / jnp.linalg.norm(e))


def _rule_vs_vjp(layer, x, diff, key, dtype):
    """The layer's rule against ``jax.vjp`` of its forward, for the float inputs picked by ``diff(x)``.

    ``diff`` splits the input into ``(float_part, rebuild)``: the part that is
    differentiated, and a function putting it back with the rest (masks). The output may be a pytree
    (``(y, carry)``): each leaf gets its own random cotangent.
    """
    k_init, k_bar = jax.random.split(key)
    with jax.enable_x64(dtype == "float64"):
        x = _cast(x, dtype)
        shapes = jax.tree_util.tree_map(lambda a: tuple(a.shape), x)
        _, params = layer.init(k_init, shapes)
        params = _cast(params, dtype)
        part, rebuild = diff(x)
        forward = lambda p, part: layer.apply(p, rebuild(part))  # noqa: E731
        leaves, tree = jax.tree_util.tree_flatten(jax.eval_shape(forward, params, part))
        y_bar = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, a.shape, a.dtype) for k, a in
                                                    zip(jax.random.split(k_bar, len(leaves)), leaves)])
        # jax.vjp's cotangents and the rule's in one program: one compilation per case
        ref, (got_p, got_x) = jax.jit(lambda p, part, x: (jax.vjp(forward, p, part)[1](y_bar),
                                                          layer.backward(p, {}, x, y_bar)))(params, part, x)
        got_part, _ = diff(got_x) if isinstance(got_x, tuple) else (got_x, None)
        assert jax.tree_util.tree_structure(got_p) == jax.tree_util.tree_structure(ref[0])
        return _rel((got_p, got_part), ref)


def _whole(x):
    return x, lambda part: part


def _without_mask(x):
    """``(*arrays, mask) -> (arrays, rebuild)``."""
    *arrays, mask = x
    return tuple(arrays), lambda part: (*part, mask)


def _random_mask(key, shape, keep=0.6):
    return jax.random.bernoulli(key, keep, shape)


# ---------------------------------------------------------------------------
# dot_product_attention
# ---------------------------------------------------------------------------


def _qkv(key, b=2, t=5, s=6, n=3, h=4, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(key, 3)
    return (jax.random.normal(kq, (b, t, n, h), dtype), jax.random.normal(kk, (b, s, n, h), dtype),
            jax.random.normal(kv, (b, s, n, h), dtype))


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "random"])
def test_dot_product_attention_equals_jax_nn(mask_kind, key):
    q, k, v = _qkv(key)
    masks = {"none": None, "causal": L.causal_mask(5, 6),
             "padding": L.padding_mask(jnp.arange(6)[None, :] < jnp.array([[4], [6]])),
             "random": _random_mask(jax.random.key(3), (2, 3, 5, 6)).at[..., 0].set(True)}
    mask = masks[mask_kind]
    ours = L.dot_product_attention(q, k, v, mask)
    theirs = jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else jnp.broadcast_to(mask, (2, 3, 5, 6)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.dot_product_attention(q, k, v, mask, scale=0.3),
                               jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else jnp.broadcast_to(mask, (2, 3, 5, 6)), scale=0.3),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dot_product_attention_rule_matches_jax_vjp_with_masks(dtype, key):
    with jax.enable_x64(dtype == "float64"):
        q, k, v = _qkv(key, dtype=dtype)
        mask = _random_mask(jax.random.key(1), (2, 3, 5, 6)).at[0, 1, 2].set(False)  # one fully masked row
        o_bar = jax.random.normal(jax.random.key(2), q.shape, dtype)
        ref = jax.vjp(lambda q, k, v: L.dot_product_attention(q, k, v, mask), q, k, v)[1](o_bar)
        got = L.dot_product_attention.backward(q, k, v, mask, o_bar)
        assert _rel(got, ref) <= TOLERANCE[dtype]


def test_fully_masked_row_gives_zeros_and_no_nan(key):
    q, k, v = _qkv(key)
    mask = jnp.ones((2, 3, 5, 6), bool).at[1, 2, 4].set(False)
    o = L.dot_product_attention(q, k, v, mask)
    assert np.all(np.isfinite(o))
    np.testing.assert_array_equal(o[1, 4, 2], jnp.zeros(4))
    grads = jax.grad(lambda q, k, v: jnp.sum(L.dot_product_attention(q, k, v, mask) ** 2), argnums=(0, 1, 2))(q, k, v)
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(grads[0][1, 4, 2], jnp.zeros(4))  # that query learns nothing
    hand = L.dot_product_attention.backward(q, k, v, mask, 2 * o)
    assert all(np.all(np.isfinite(g)) for g in hand)
    np.testing.assert_array_equal(hand[0][1, 4, 2], jnp.zeros(4))
    # everything masked: zeros everywhere, finite gradients
    nothing = jnp.zeros((6,), bool)
    np.testing.assert_array_equal(L.dot_product_attention(q, k, v, nothing), jnp.zeros_like(q))
    assert all(np.all(np.isfinite(g)) for g in L.dot_product_attention.backward(q, k, v, nothing, q))


def test_dot_product_attention_bad_inputs(key):
    q, k, v = _qkv(key)
    with pytest.raises(ValueError, match=r"dot_product_attention: mask of shape \(4, 6\) does not broadcast to the "
                                         r"attention scores \(..., heads, queries, keys\) = \(2, 3, 5, 6\)"):
        L.dot_product_attention(q, k, v, jnp.ones((4, 6), bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        L.dot_product_attention(q, k, v, jnp.ones((5, 6)))
    with pytest.raises(ValueError, match=r"sequences must not be empty.*S=0"):
        L.dot_product_attention(q, k[:, :0], v[:, :0])
    with pytest.raises(ValueError, match="k and v must have one shape"):
        L.dot_product_attention(q, k, v[:, :3])


# ---------------------------------------------------------------------------
# MultiHeadAttention
# ---------------------------------------------------------------------------

ATTENTION = {
    "self": (lambda: L.MultiHeadAttention(2), lambda k: jax.random.normal(k, (2, 5, 8)), _whole),
    "causal": (lambda: L.MultiHeadAttention(4, causal=True, out_features=3), lambda k: jax.random.normal(k, (2, 6, 8)), _whole),
    "self+mask": (lambda: L.MultiHeadAttention(2, mask_input=True, causal=True),
                  lambda k: (jax.random.normal(k, (2, 5, 8)),
                             _random_mask(jax.random.fold_in(k, 1), (2, 2, 5, 5)).at[1, :, 3].set(False)), _without_mask),
    "cross": (lambda: L.MultiHeadAttention(2, cross=True, head_dim=3),
              lambda k: (jax.random.normal(k, (3, 4, 6)), jax.random.normal(jax.random.fold_in(k, 1), (3, 7, 5))), _whole),
    "cross+padding": (lambda: L.MultiHeadAttention(3, cross=True, mask_input=True),
                      lambda k: (jax.random.normal(k, (2, 4, 6)), jax.random.normal(jax.random.fold_in(k, 1), (2, 7, 5)),
                                 L.padding_mask(jnp.arange(7)[None] < jnp.array([[3], [0]]))), _without_mask),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_attention_rule_matches_jax_vjp(name, dtype, key):
    make, make_x, diff = ATTENTION[name]
    assert _rule_vs_vjp(make(), make_x(jax.random.key(7)), diff, key, dtype) <= TOLERANCE[dtype]


@pytest.mark.slow  # finite differences: many forward passes in float64
def test_attention_passes_finite_differences():
    layer = L.MultiHeadAttention(2, cross=True, out_features=5)
    report = gradcheck.check_layer(layer, ((2, 4, 8), (2, 6, 3)))
    assert report.passed, report


def test_attention_fully_masked_query_returns_the_output_bias(key):
    layer = L.MultiHeadAttention(2, cross=True, mask_input=True)
    x_q, x_kv = jax.random.normal(key, (2, 3, 4)), jax.random.normal(jax.random.key(1), (2, 5, 4))
    mask = L.padding_mask(jnp.array([[True] * 5, [False] * 5]))  # the second example has no key at all
    _, params = layer.init(key, ((2, 3, 4), (2, 5, 4), mask.shape))
    params["out"]["b"] = jnp.arange(4.0)
    y = layer.apply(params, (x_q, x_kv, mask))
    np.testing.assert_array_equal(y[1], jnp.broadcast_to(jnp.arange(4.0), (3, 4)))
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, (x_q, x_kv, mask)) ** 2))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_attention_is_causal(key):
    layer = L.MultiHeadAttention(2, causal=True)
    x = jax.random.normal(key, (1, 6, 4))
    _, params = layer.init(key, x.shape)
    changed = x.at[0, 4:].set(0.0)  # the future of position 3 changes
    np.testing.assert_allclose(layer.apply(params, x)[0, :4], layer.apply(params, changed)[0, :4], rtol=1e-6)


def test_attention_hand_gradients_model_trains_like_autodiff(key):
    from jaxnets import backprop, losses

    model = L.serial(L.Dense(8), L.MultiHeadAttention(2, mask_input=False, causal=True), L.Dense(5))
    x, y = jax.random.normal(key, (3, 6, 4)), jax.random.randint(key, (3, 6), 0, 5)
    _, params = model.init(key, x.shape)
    ce = losses.softmax_cross_entropy_with_integer_labels
    g_auto = jax.grad(lambda p: ce(model.apply(p, x), y))(params)
    g_hand = jax.jit(jax.grad(lambda p: ce(backprop.hand_gradients(model).apply(p, x), y)))(params)
    assert _rel(g_hand, g_auto) <= 1e-5
    # with a mask as an input: the rule gives the mask no cotangent, custom_vjp accepts it
    masked = L.MultiHeadAttention(2, mask_input=True)
    mask = L.padding_mask(jnp.arange(6)[None] < jnp.array([[2], [6], [4]]))
    _, params = masked.init(key, (x.shape, mask.shape))
    g_auto = jax.grad(lambda p, x: jnp.sum(masked.apply(p, (x, mask)) ** 2), argnums=(0, 1))(params, x)
    g_hand = jax.grad(lambda p, x: jnp.sum(backprop.hand_gradients(masked).apply(p, (x, mask)) ** 2), argnums=(0, 1))(params, x)
    assert _rel(g_hand, g_auto) <= 1e-5


def test_attention_bad_inputs(key):
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(3\): num_heads=3 does not divide the model width 8"):
        L.MultiHeadAttention(3).init(key, (-1, 5, 8))
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(2\): sequences must not be empty, got x of shape \(-1, 0, 8\)"):
        L.MultiHeadAttention(2).init(key, (-1, 0, 8))
    layer = L.MultiHeadAttention(2, mask_input=True)
    _, params = layer.init(key, ((-1, 5, 8), (5, 5)))
    x = jnp.ones((2, 5, 8))
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(2, mask_input=True\): mask of shape \(5, 4\) does not "
                                         r"broadcast to the attention scores \(..., heads, queries, keys\) = \(2, 2, 5, 5\)"):
        layer.apply(params, (x, jnp.ones((5, 4), bool)))
    with pytest.raises(ValueError, match=r"expects the input \(x, mask\), got one ArrayImpl"):
        layer.apply(params, x)
    with pytest.raises(ValueError, match=r"sequences must not be empty, got x of shape \(2, 0, 8\)"):
        layer.apply(params, (jnp.ones((2, 0, 8)), jnp.ones((0, 0), bool)))


# ---------------------------------------------------------------------------
# Recurrent layers
# ---------------------------------------------------------------------------

RECURRENT = {
    "rnn": lambda **kw: L.SimpleRNN(5, **kw),
    "lstm": lambda **kw: L.LSTM(5, **kw),
    "gru": lambda **kw: L.GRU(5, **kw),
}
VARIANTS = {
    "all": dict(),
    "last": dict(return_sequences=False),
    "learned": dict(initial_state="learned"),
    "truncated": dict(truncate=3),
}


def _recurrent_input(kind, variant):
    x = jax.random.normal(jax.random.key(11), (3, 8, 4))
    if variant != "input":
        return x
    parts = 2 if kind == "lstm" else 1
    return (x,) + tuple(jax.random.normal(jax.random.key(12 + i), (3, 5)) for i in range(parts))


# every cell and variant in float64; float32 for two variants (the rules are the same code in both)
BPTT_CASES = [(kind, variant, dtype) for kind in sorted(RECURRENT) for variant in sorted(VARIANTS) + ["input"]
              for dtype in (("float32", "float64") if variant in ("all", "input") else ("float64",))]


@pytest.mark.parametrize("kind,variant,dtype", BPTT_CASES)
def test_bptt_rule_matches_jax_vjp(kind, variant, dtype, key):
    layer = RECURRENT[kind](**(dict(initial_state="input") if variant == "input" else VARIANTS[variant]))
    err = _rule_vs_vjp(layer, _recurrent_input(kind, variant), _whole, key, dtype)
    assert err <= TOLERANCE[dtype]


@pytest.mark.slow  # finite differences: many forward passes in float64
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_bptt_passes_finite_differences(kind):
    report = gradcheck.check_layer(RECURRENT[kind](return_sequences=False, initial_state="learned"), (2, 6, 3))
    assert report.passed, report


def test_truncation_cuts_the_gradient_at_window_boundaries(key):
    """With truncate=3 the loss at the last step (t=7) reaches back only to t=6: x_0..x_5 get no gradient."""
    layer = L.SimpleRNN(4, truncate=3, return_sequences=False)
    x = jax.random.normal(key, (2, 8, 3))
    _, params = layer.init(key, x.shape)
    _, x_bar = layer.backward(params, {}, x, jnp.ones((2, 4)))
    np.testing.assert_array_equal(x_bar[:, :6], 0.0)
    assert np.all(np.abs(x_bar[:, 6:]) > 0)
    full = L.SimpleRNN(4, return_sequences=False)
    np.testing.assert_allclose(full.apply(params, x), layer.apply(params, x), rtol=1e-6)  # the forward is unchanged


def test_lstm_matches_an_independent_loop(key):
    """The LSTM against a plain Python loop over time written from the equations."""
    layer = L.LSTM(3)
    x = jax.random.normal(key, (2, 4, 5))
    _, params = layer.init(key, x.shape)
    h = c = jnp.zeros((2, 3))
    outs = []
    for t in range(4):
        z = x[:, t] @ params["wx"] + h @ params["wh"] + params["b"]
        i, f, g, o = (jax.nn.sigmoid(z[:, :3]), jax.nn.sigmoid(z[:, 3:6]), jnp.tanh(z[:, 6:9]), jax.nn.sigmoid(z[:, 9:]))
        c = f * c + i * g
        h = o * jnp.tanh(c)
        outs.append(h)
    np.testing.assert_allclose(layer.apply(params, x), jnp.stack(outs, axis=1), rtol=1e-5, atol=1e-6)


def test_hand_gradients_lstm_model_trains_like_autodiff(key):
    from jaxnets import backprop, losses

    model = L.serial(L.LSTM(6), L.SequencePool("last"), L.Dense(3))
    x, y = jax.random.normal(key, (4, 5, 2)), jnp.array([0, 1, 2, 1])
    _, params = model.init(key, x.shape)
    ce = losses.softmax_cross_entropy_with_integer_labels
    g_auto = jax.grad(lambda p: ce(model.apply(p, x), y))(params)
    g_hand = jax.jit(jax.grad(lambda p: ce(backprop.hand_gradients(model).apply(p, x), y)))(params)
    assert _rel(g_hand, g_auto) <= 1e-5


def test_recurrent_bad_inputs(key):
    with pytest.raises(ValueError, match=r"LSTM\(4, initial_state='input'\): h0 must have shape \(2, 4\) "
                                         r"\(x's leading axes, hidden\), got \(3, 4\)"):
        L.LSTM(4, initial_state="input").init(key, ((2, 5, 3), (3, 4), (2, 4)))
    layer = L.GRU(4, initial_state="input")
    _, params = layer.init(key, ((-1, 5, 3), (-1, 4)))
    with pytest.raises(ValueError, match=r"GRU\(4, initial_state='input'\): h0 must have shape \(2, 4\).*got \(2, 5\)"):
        layer.apply(params, (jnp.ones((2, 5, 3)), jnp.ones((2, 5))))
    with pytest.raises(ValueError, match=r"expects the input \(x, h0\)"):
        layer.apply(params, jnp.ones((2, 5, 3)))
    with pytest.raises(ValueError, match=r"SimpleRNN\(4\): sequences must not be empty, got x of shape \(2, 0, 3\)"):
        L.SimpleRNN(4).init(key, (2, 0, 3))
    rnn = L.SimpleRNN(4)
    _, params = rnn.init(key, (-1, 5, 3))
    with pytest.raises(ValueError, match=r"SimpleRNN\(4\): sequences must not be empty, got x of shape \(2, 0, 3\)"):
        rnn.apply(params, jnp.ones((2, 0, 3)))
    with pytest.raises(ValueError, match="initial_state must be one of"):
        L.LSTM(4, initial_state="random")


CELLS = {"rnn": (L.SimpleRNN, L.SimpleRNNCell), "lstm": (L.LSTM, L.LSTMCell), "gru": (L.GRU, L.GRUCell)}


def _carry_zeros(kind, batch, hidden):
    h = jnp.zeros((batch, hidden))
    return (h, h) if kind == "lstm" else h


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_scanned_over_time_equals_the_layer(kind, key):
    """The one-step cell on the layer's params, stepped in a Python loop, gives the layer's outputs and final carry."""
    seq, cell = CELLS[kind][0](5, return_state=True), CELLS[kind][1](5)
    x = jax.random.normal(key, (3, 6, 4))
    _, params = seq.init(key, x.shape)
    cell.init(key, (((-1, 5), (-1, 5)) if kind == "lstm" else (-1, 5), (-1, 4)))  # the shapes agree
    ys, final = seq.apply(params, x)
    carry, outs = _carry_zeros(kind, 3, 5), []
    step = jax.jit(lambda c, x_t: cell.apply(params, (c, x_t)))
    for t in range(6):
        carry, y_t = step(carry, x[:, t])
        outs.append(y_t)
    np.testing.assert_allclose(jnp.stack(outs, axis=1), ys, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(final)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lstm_final_carry_is_h_and_c_of_an_independent_loop(key):
    layer = L.LSTM(3, return_sequences=False, return_state=True)
    x = jax.random.normal(key, (2, 4, 5))
    _, params = layer.init(key, x.shape)
    h = c = jnp.zeros((2, 3))
    for t in range(4):
        z = x[:, t] @ params["wx"] + h @ params["wh"] + params["b"]
        i, f, g, o = (jax.nn.sigmoid(z[:, :3]), jax.nn.sigmoid(z[:, 3:6]), jnp.tanh(z[:, 6:9]), jax.nn.sigmoid(z[:, 9:]))
        c = f * c + i * g
        h = o * jnp.tanh(c)
    y, (h_got, c_got) = layer.apply(params, x)
    np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_got, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_got, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_encoder_carry_starts_a_decoder_as_one_long_sequence(kind, key):
    """An encoder's final carry fed to a decoder (initial_state='input', same params) continues the sequence."""
    x = jax.random.normal(key, (2, 7, 3))
    encoder = CELLS[kind][0](4, return_state=True)
    decoder = CELLS[kind][0](4, initial_state="input")
    _, params = encoder.init(key, x.shape)
    _, carry = encoder.apply(params, x[:, :4])
    parts = carry if kind == "lstm" else (carry,)
    continued = decoder.apply(params, (x[:, 4:],) + tuple(parts))
    whole = CELLS[kind][0](4).apply(params, x)
    np.testing.assert_allclose(continued, whole[:, 4:], rtol=1e-5, atol=1e-6)


def _with_lengths_input(kind, initial):
    x = jax.random.normal(jax.random.key(21), (3, 6, 2))
    lengths = jnp.array([6, 2, 0])
    parts = (2 if kind == "lstm" else 1) if initial == "input" else 0
    return (x, lengths) + tuple(jax.random.normal(jax.random.key(22 + i), (3, 4)) for i in range(parts))


def _without_lengths(x):
    """``(x, lengths, *h0) -> ((x, *h0), rebuild)``: the integer lengths are not differentiated."""
    arrays, lengths = (x[0],) + tuple(x[2:]), x[1]
    return arrays, lambda part: (part[0], lengths) + tuple(part[1:])


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("initial", ["zeros", "learned", "input"])
def test_lengths_give_each_sequences_own_end(kind, initial, key):
    """With lengths, each sequence's outputs and final carry equal the layer run on that sequence alone;
    outputs past the end are zero; a zero length keeps the initial state."""
    layer = CELLS[kind][0](4, lengths_input=True, return_state=True, initial_state=initial)
    alone = CELLS[kind][0](4, return_state=True, initial_state=initial)
    inputs = _with_lengths_input(kind, initial)
    x, lengths, given = inputs[0], inputs[1], inputs[2:]
    _, params = layer.init(key, jax.tree_util.tree_map(jnp.shape, inputs))
    params = jax.tree_util.tree_map(lambda a: a + 0.3, params)  # a learned initial state other than zero
    ys, carry = layer.apply(params, inputs)
    for b in range(3):
        n = int(lengths[b])
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        if n == 0:
            names = ("h0", "c0") if kind == "lstm" else ("h0",)
            if initial == "input":
                start = [a[b] for a in given]
            elif initial == "learned":
                start = [params[n] for n in names]
            else:
                start = [jnp.zeros(4) for _ in names]
            for a, s in zip(jax.tree_util.tree_leaves(carry), start):
                np.testing.assert_allclose(a[b], s, rtol=1e-6)
            continue
        one = (x[b:b + 1, :n],) + tuple(a[b:b + 1] for a in given)
        y_alone, carry_alone = alone.apply(params, one if len(one) > 1 else one[0])
        np.testing.assert_allclose(ys[b, :n], y_alone[0], rtol=1e-5, atol=1e-6)
        for a, e in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(carry_alone)):
            np.testing.assert_allclose(a[b], e[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("variant", [dict(), dict(return_sequences=False, initial_state="learned"),
                                     dict(initial_state="input", truncate=2)], ids=["all", "last-learned", "input-trunc"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lengths_and_final_carry_rule_matches_jax_vjp(kind, variant, dtype, key):
    layer = CELLS[kind][0](4, lengths_input=True, return_state=True, **variant)
    inputs = _with_lengths_input(kind, variant.get("initial_state", "zeros"))
    err = _rule_vs_vjp(layer, inputs, _without_lengths, key, dtype)
    assert err <= TOLERANCE[dtype]


@pytest.mark.slow  # three dtypes and finite differences per layer
@pytest.mark.parametrize("name,layer,shapes", [
    ("lstm-final-carry", L.LSTM(3, return_state=True, return_sequences=False), (2, 4, 2)),
    ("gru-final-carry", L.GRU(3, return_state=True, initial_state="learned"), (2, 4, 2)),
    ("lstm-cell", L.LSTMCell(3), (((2, 3), (2, 3)), (2, 2))),
    ("gru-cell", L.GRUCell(3), ((2, 3), (2, 2))),
    ("rnn-cell", L.SimpleRNNCell(3), ((2, 3), (2, 2))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_new_recurrent_rules_pass_check_layer_in_three_dtypes(name, layer, shapes):
    report = gradcheck.check_layer(layer, shapes, dtypes=("float32", "float64", "bfloat16"))
    assert report.passed, report


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CELLS))
def test_lengths_rule_passes_check_layer_in_three_dtypes(kind):
    """The lengths rule through check_layer: fixed lengths closed over by a define_layer wrapper (x in, (y, carry) out)."""
    layer = CELLS[kind][0](3, lengths_input=True, return_state=True, initial_state="learned")
    lengths = jnp.array([5, 2, 0])

    def backward(params, x, y_bar):
        p_bar, (x_bar, _) = layer.backward(params, {}, (x, lengths), y_bar)
        return p_bar, x_bar

    fixed = L.define_layer(f"{kind}_with_lengths", lambda key, shape: layer.init(key, (shape, shape[:-2]))[1],
                           lambda params, x: layer.apply(params, (x, lengths)), backward=backward)
    report = gradcheck.check_layer(fixed, (3, 5, 2), dtypes=("float32", "float64", "bfloat16"))
    assert report.passed, report


@pytest.mark.standard_promotion("the float32/float64 promotion is what is tested (Dense promotes the same way)")
@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("initial", ["zeros", "learned", "input"])
def test_float32_params_with_float64_input_promote(kind, initial, key):
    """As Dense: float32 params and float64 input run in float64 (the scan's carry included), rule too."""
    layer = CELLS[kind][0](3, initial_state=initial, return_state=True)
    parts = (2 if kind == "lstm" else 1) if initial == "input" else 0
    with jax.enable_x64(True):
        x = (jax.random.normal(key, (2, 4, 2), jnp.float64),) + tuple(jnp.ones((2, 3), jnp.float32) for _ in range(parts))
        x = x if parts else x[0]
        _, params = layer.init(key, jax.tree_util.tree_map(jnp.shape, x))
        y, carry = jax.eval_shape(layer.apply, params, x)
        assert y.dtype == jnp.float64 and all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(carry))
        y_bar = (jnp.ones(y.shape, y.dtype), jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, a.dtype), carry))
        (got_p, got_x), (ref_p, ref_x) = jax.jit(lambda p, x: (layer.backward(p, {}, x, y_bar), jax.vjp(
            layer.apply, p, x)[1](y_bar)))(params, x)  # one compilation: the rule and jax.vjp
        assert _rel(got_p, ref_p) <= 1e-6 and _rel(got_x, ref_x) <= 1e-6  # jax.vjp rounds params cotangents to float32
        if parts:  # a given initial state's cotangent in its own dtype
            assert all(a.dtype == jnp.float32 for a in got_x[1:])
    cell = CELLS[kind][1](3)
    with jax.enable_x64(True):
        carry = _carry_zeros(kind, 2, 3)
        _, params = cell.init(key, jax.tree_util.tree_map(jnp.shape, (carry, jnp.ones((2, 2)))))
        new, y_t = cell.apply(params, (carry, jnp.ones((2, 2), jnp.float64)))
        assert y_t.dtype == jnp.float64


def test_new_recurrent_options_bad_inputs(key):
    layer = L.LSTM(4, lengths_input=True)
    with pytest.raises(ValueError, match=r"LSTM\(4, lengths_input=True\) expects the input \(x, lengths\), so input_shape "
                                         r"must be a tuple of 2 shapes"):
        layer.init(key, (2, 5, 3))
    with pytest.raises(ValueError, match=r"LSTM\(4, lengths_input=True\): lengths must have shape \(2,\) "
                                         r"\(x's leading axes\), got \(3,\)"):
        layer.init(key, ((2, 5, 3), (3,)))
    _, params = layer.init(key, ((-1, 5, 3), (-1,)))
    with pytest.raises(TypeError, match="lengths_input=True.*integer"):
        layer.apply(params, (jnp.ones((2, 5, 3)), jnp.ones((2,))))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) \(x's leading axes\), got \(2, 1\)"):
        layer.apply(params, (jnp.ones((2, 5, 3)), jnp.ones((2, 1), jnp.int32)))
    with pytest.raises(ValueError, match=r"GRU\(4, initial_state='input', lengths_input=True\) expects the input "
                                         r"\(x, lengths, h0\)"):
        L.GRU(4, initial_state="input", lengths_input=True).init(key, ((2, 5, 3), (2,)))
    with pytest.raises(TypeError, match=r"LSTM: return_state must be a bool, got 1"):
        L.LSTM(4, return_state=1)
    cell = L.LSTMCell(4)
    with pytest.raises(ValueError, match=r"LSTMCell\(4\) expects the input_shape \(carry, x_t\), got a tuple of 3"):
        cell.init(key, (2, 5, 3))
    with pytest.raises(ValueError, match=r"LSTMCell\(4\): the carry's input_shape must be the pair \(h, c\) of shapes"):
        cell.init(key, ((2, 4), (2, 3)))
    with pytest.raises(ValueError, match=r"LSTMCell\(4\): c must have shape \(2, 4\) \(x_t's leading axes, hidden\), "
                                         r"got \(2, 5\)"):
        cell.init(key, (((2, 4), (2, 5)), (2, 3)))
    _, params = cell.init(key, (((-1, 4), (-1, 4)), (-1, 3)))
    with pytest.raises(ValueError, match=r"LSTMCell\(4\): the carry must be the pair \(h, c\), got one"):
        cell.apply(params, (jnp.ones((2, 4)), jnp.ones((2, 3))))
    with pytest.raises(ValueError, match=r"LSTMCell\(4\) expects x_t with 3 features \(last axis\), got \(2, 2\)"):
        cell.apply(params, ((jnp.ones((2, 4)), jnp.ones((2, 4))), jnp.ones((2, 2))))


# ---------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "last"])
def test_sequence_pool_respects_masks(mode, key):
    x = jax.random.normal(key, (3, 5, 2))
    lengths = jnp.array([5, 2, 0])
    mask = jnp.arange(5)[None] < lengths[:, None]
    layer = L.SequencePool(mode, mask_input=True)
    _, params = layer.init(key, (x.shape, mask.shape))
    y = layer.apply(params, (x, mask))
    if mode == "mean":
        np.testing.assert_allclose(y[:2], jnp.stack([x[0].mean(0), x[1, :2].mean(0)]), rtol=1e-6)
    else:
        np.testing.assert_array_equal(y[:2], jnp.stack([x[0, 4], x[1, 1]]))
    np.testing.assert_array_equal(y[2], jnp.zeros(2))  # no valid position: zeros
    y_bar = jax.random.normal(jax.random.key(1), y.shape)
    ref = jax.vjp(lambda x: layer.apply(params, (x, mask)), x)[1](y_bar)[0]
    _, (got, mask_bar) = layer.backward(params, {}, (x, mask), y_bar)
    assert mask_bar is None
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)


def test_sequence_pool_bad_inputs(key):
    layer = L.SequencePool("mean", mask_input=True)
    with pytest.raises(ValueError, match=r"mask must have x's shape without the features \(2, 5\), got \(2, 4\)"):
        layer.apply({}, (jnp.ones((2, 5, 3)), jnp.ones((2, 4), bool)))
    with pytest.raises(ValueError, match="mode must be one of"):
        L.SequencePool("max")


# ---------------------------------------------------------------------------
# Positions and the Transformer block
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["learned", "sinusoidal", "rotary", "attention+rotary", "block"])
def test_positional_and_block_rules_match_jax_vjp(name, dtype, key):
    layer = {"learned": lambda: L.PositionalEmbedding(9), "sinusoidal": lambda: L.SinusoidalEncoding(),
             "rotary": lambda: L.RotaryEmbedding(), "attention+rotary": lambda: L.MultiHeadAttention(2, rotary=True, causal=True),
             "block": lambda: L.TransformerBlock(8, 2, causal=True, rotary=True)}[name]()
    x = jax.random.normal(jax.random.key(4), (2, 6, 8))
    assert _rule_vs_vjp(layer, x, _whole, key, dtype) <= TOLERANCE[dtype]


def test_sinusoidal_encoding_values():
    pe = L.sinusoidal_encoding(50, 6)
    t, i = 7, 1
    np.testing.assert_allclose(pe[t, 2 * i], np.sin(t / 10000 ** (2 * i / 6)), rtol=1e-6)
    np.testing.assert_allclose(pe[t, 2 * i + 1], np.cos(t / 10000 ** (2 * i / 6)), rtol=1e-6)


def test_rotary_scores_depend_on_relative_position_only(key):
    q, k = jax.random.normal(key, (2, 8))
    pos = lambda v, t: L.rotary_embedding(jnp.zeros((t + 1, 8)).at[t].set(v))[t]  # noqa: E731
    np.testing.assert_allclose(pos(q, 5) @ pos(k, 3), pos(q, 2) @ pos(k, 0), rtol=1e-5)


def test_block_is_the_composition_of_its_parts(key):
    block = L.TransformerBlock(8, 2)
    x = jax.random.normal(key, (2, 5, 8))
    _, params = block.init(key, x.shape)
    same = L.serial(L.residual(L.LayerNorm(), L.MultiHeadAttention(2)), L.residual(L.LayerNorm(), L.Dense(32), L.Gelu(), L.Dense(8)))
    np.testing.assert_array_equal(block.apply(params, x), same.apply(params, x))
    assert sorted(params) == ["residual_0", "residual_1"]


def test_positional_bad_inputs(key):
    layer = L.PositionalEmbedding(4)
    with pytest.raises(ValueError, match=r"PositionalEmbedding\(4\): sequences of length 6 are longer than max_length=4"):
        layer.init(key, (-1, 6, 3))
    with pytest.raises(ValueError, match="the last axis must be even"):
        L.RotaryEmbedding().init(key, (-1, 5, 3))
    with pytest.raises(ValueError, match=r"rotary embeddings need an even head_dim, got 3"):
        L.MultiHeadAttention(2, rotary=True).init(key, (-1, 5, 6))
    with pytest.raises(ValueError, match="TransformerBlock: num_heads=3 does not divide features=8"):
        L.TransformerBlock(8, 3)
