"""Transformer pieces for a GPT and generation: attention and block dropout, initializers, the tied embedding,
the key/value cache (incremental decoding equals full recomputation), sampling against closed forms, bad inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnets.layers as L
from jaxnets import generate, gradcheck
from jaxnets import initializers as I
from jaxnets.layers import incremental

DTYPES = ("float32", "float64", "bfloat16")


# ---------------------------------------------------------------------------
# Every new rule: gradcheck in float32, float64 and bfloat16
# ---------------------------------------------------------------------------

RULES = {
    "attention dropout (train)": (lambda: L.MultiHeadAttention(2, causal=True, drop_prob=0.3), (2, 5, 8), False, True),
    "attention dropout (eval)": (lambda: L.MultiHeadAttention(2, causal=True, drop_prob=0.3), (2, 5, 8), False, False),
    "cross attention, rotary, dropout": (lambda: L.MultiHeadAttention(2, cross=True, rotary=True, drop_prob=0.5,
                                                                      b_init=I.normal(0.5)),
                                         ((2, 4, 8), (2, 6, 8)), False, True),
    "block with dropout and GPT-2 init": (lambda: L.TransformerBlock(8, 2, causal=True, mlp_features=12, drop_prob=0.2,
                                                                     w_init=I.normal(0.3), residual_scale=0.5),
                                          (2, 5, 8), False, True),
    "tied embedding, GPT body": (lambda: L.TiedEmbedding(9, 4, L.PositionalEmbedding(6), L.Dropout(0.2),
                                                         L.TransformerBlock(4, 1, causal=True, mlp_features=4, drop_prob=0.1),
                                                         L.LayerNorm()),
                                 (2, 5), True, True),
    "tied embedding alone": (lambda: L.TiedEmbedding(9, 4), (3, 5), True, True),
}


HEAVY = {"block with dropout and GPT-2 init", "tied embedding, GPT body"}  # a few compilations of a whole block each


@pytest.mark.sweep
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in RULES])
def test_new_rules_pass_gradcheck_in_three_dtypes(name):
    make, shape, integer, train = RULES[name]
    report = gradcheck.check_layer(make(), shape, integer_input=integer, train=train, dtypes=DTYPES, max_full=16,
                                   directions=4)
    assert report.passed, f"{name}:\n{report}"


# ---------------------------------------------------------------------------
# Dropout: the mask's rate and scaling against a closed form; evaluation is deterministic
# ---------------------------------------------------------------------------


def _weights_reader(drop_prob, length):
    """One head whose output *is* its (dropped) attention weights: zero query/key weights give uniform causal
    rows P[t, s] = 1 / (t + 1) for s <= t; one-hot inputs and identity value/output weights make Y = P'."""
    layer = L.MultiHeadAttention(1, causal=True, drop_prob=drop_prob)
    _, params = layer.init(jax.random.key(0), (-1, length, length))
    eye = jnp.eye(length)
    params = {"query": {"w": 0 * eye, "b": jnp.zeros(length)}, "key": {"w": 0 * eye},
              "value": {"w": eye, "b": jnp.zeros(length)}, "out": {"w": eye, "b": jnp.zeros(length)}}
    x = jnp.broadcast_to(eye, (400, length, length))  # 400 copies: 400 independent masks
    return layer, params, x


def test_attention_dropout_keeps_the_right_fraction_scaled_by_one_over_keep():
    d, t = 0.3, 16
    layer, params, x = _weights_reader(d, t)
    p = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # the closed form of P
    np.testing.assert_allclose(layer.apply(params, x)[0], p, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(layer.apply(params, x), layer.apply(params, x, key=jax.random.key(5)))  # eval: no key used
    y = np.asarray(layer.apply(params, x, key=jax.random.key(1), train=True))
    allowed = np.broadcast_to(p > 0, y.shape)
    kept = y[allowed] != 0
    # 400 * 136 = 54,400 Bernoulli(0.7) draws: standard error 0.002; allow 5 of them
    assert abs(kept.mean() - (1 - d)) < 0.01
    np.testing.assert_allclose(y[allowed][kept], np.broadcast_to(p / (1 - d), y.shape)[allowed][kept], rtol=1e-6)
    assert np.all(y[~allowed] == 0)
    np.testing.assert_allclose(y.mean(axis=0), p, atol=0.05)  # E[P'] = P
    again = layer.apply(params, x, key=jax.random.key(1), train=True)
    other = layer.apply(params, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(y, again)
    assert not np.array_equal(y, other)


def test_random_layers_in_training_need_a_key_and_evaluation_is_deterministic(key):
    x = jax.random.normal(key, (2, 5, 8))
    attention = L.MultiHeadAttention(2, causal=True, drop_prob=0.3)
    _, params = attention.init(key, (-1, 5, 8))
    with pytest.raises(ValueError, match=r"MultiHeadAttention\(2, causal=True, drop_prob=0.3\) is random in training "
                                         r"\(attention dropout\): pass key="):
        attention.apply(params, x, train=True)
    block = L.TransformerBlock(8, 2, causal=True, drop_prob=0.2, attention_drop_prob=0.0)
    plain = L.TransformerBlock(8, 2, causal=True)
    _, bp = block.init(key, (-1, 5, 8))
    _, pp = plain.init(key, (-1, 5, 8))
    jax.tree_util.tree_map(np.testing.assert_array_equal, bp, pp)  # dropout holds no params: the same init
    with pytest.raises(ValueError, match=r"residual_0/dropout_0: Dropout\(drop_prob=0.2\) is random in training"):
        block.apply(bp, x, train=True)
    np.testing.assert_array_equal(block.apply(bp, x), plain.apply(pp, x))  # eval: the block without dropout
    np.testing.assert_array_equal(block.apply(bp, x, key=jax.random.key(3)), block.apply(bp, x))
    a = block.apply(bp, x, key=jax.random.key(1), train=True)
    np.testing.assert_array_equal(a, block.apply(bp, x, key=jax.random.key(1), train=True))
    assert not np.allclose(a, block.apply(bp, x, key=jax.random.key(2), train=True))


def test_block_residual_dropout_is_the_branch_dropped_then_added(key):
    """The first residual with drop_prob d: y = x + M * f(x) / (1 - d), f the attention branch (M from the key)."""
    d = 0.5
    block = L.TransformerBlock(8, 2, causal=True, drop_prob=d, attention_drop_prob=0.0)
    _, params = block.init(key, (-1, 5, 8))
    first = block.children[0][1]  # residual(LayerNorm, attention, Dropout)
    x = jax.random.normal(jax.random.key(1), (500, 5, 8))
    branch = first.apply(params["residual_0"], x) - x  # eval: f(x)
    y = first.apply(params["residual_0"], x, key=jax.random.key(4), train=True) - x
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - (1 - d)) < 5 * math.sqrt(d * (1 - d) / kept.size)  # 5 standard errors
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(branch)[kept] / (1 - d), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Initializers of the block
# ---------------------------------------------------------------------------


def test_block_initializers_and_the_residual_scale(key):
    n_layers, width = 6, 64
    scale = 1 / math.sqrt(2 * n_layers)
    block = L.TransformerBlock(width, 4, causal=True, w_init=I.normal(0.02), b_init=I.ones, residual_scale=scale)
    _, params = block.init(key, (-1, 3, width))
    attention, mlp = params["residual_0"]["attention_0"], params["residual_1"]
    for w in (attention["query"]["w"], attention["key"]["w"], attention["value"]["w"], mlp["dense_0"]["w"]):
        assert abs(float(jnp.std(w)) / 0.02 - 1) < 0.05  # 4096 or more entries: std error about 1%
    for w in (attention["out"]["w"], mlp["dense_1"]["w"]):
        assert abs(float(jnp.std(w)) / (0.02 * scale) - 1) < 0.05
    for b in (attention["query"]["b"], attention["value"]["b"], attention["out"]["b"], mlp["dense_0"]["b"], mlp["dense_1"]["b"]):
        np.testing.assert_array_equal(b, 1.0)
    np.testing.assert_array_equal(params["residual_0"]["layer_norm_0"]["scale"], 1.0)  # LayerNorms keep theirs
    # the default keeps the layers' own initialization (lecun_normal, zero biases)
    _, default = L.TransformerBlock(width, 4).init(key, (-1, 3, width))
    assert abs(float(jnp.std(default["residual_1"]["dense_1"]["w"])) * math.sqrt(4 * width) - 1) < 0.05


# ---------------------------------------------------------------------------
# The tied embedding
# ---------------------------------------------------------------------------


@pytest.mark.sweep
def test_tied_embedding_is_the_untied_chain_with_the_table_as_head(key):
    body = (L.PositionalEmbedding(8), L.TransformerBlock(6, 2, causal=True), L.LayerNorm())
    tied = L.TiedEmbedding(11, 6, *body)
    untied = L.serial(L.Embedding(11, 6), *body)
    out_shape, params = tied.init(key, (-1, 7))
    assert out_shape == (-1, 7, 11)
    _, untied_params = untied.init(key, (-1, 7))
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(untied_params)  # the same params
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, 11)
    table = params["embedding_0"]["table"]
    np.testing.assert_allclose(tied.apply(params, ids), untied.apply(params, ids) @ table.T, rtol=1e-5, atol=1e-6)
    # the table's gradient is the sum of its two uses
    r = jax.random.normal(jax.random.key(2), (3, 7, 11))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(tied.apply(p, ids) * r)))(params)["embedding_0"]["table"]
    as_head = jax.jit(jax.grad(lambda t: jnp.sum((untied.apply(params, ids) @ t.T) * r)))(table)
    as_lookup = jax.jit(jax.grad(lambda t: jnp.sum((untied.apply({**params, "embedding_0": {"table": t}}, ids) @ table.T) * r)))(table)
    np.testing.assert_allclose(grad, as_head + as_lookup, rtol=1e-5, atol=1e-6)
    hand, _ = jax.jit(lambda p: tied.backward(p, {}, ids, r))(params)
    np.testing.assert_allclose(hand["embedding_0"]["table"], grad, rtol=1e-5, atol=1e-6)


def test_a_gpt_with_dropout_and_tied_weights_builds_from_public_layers_and_trains(key):
    """nanoGPT's recipe: token and position embeddings, dropout 0.2, blocks, a final LayerNorm, the tied head."""
    vocab, context, width, heads, n_layers = 13, 8, 16, 2, 2
    gpt = L.TiedEmbedding(vocab, width, L.PositionalEmbedding(context), L.Dropout(0.2),
                          *[L.TransformerBlock(width, heads, causal=True, drop_prob=0.2, w_init=I.normal(0.02),
                                               residual_scale=1 / math.sqrt(2 * n_layers)) for _ in range(n_layers)],
                          L.LayerNorm(), embedding_init=I.normal(0.02))
    _, params = gpt.init(key, (-1, context))
    ids = jax.random.randint(jax.random.key(1), (4, context + 1), 0, vocab)

    def loss(p, k):
        logits = gpt.apply(p, ids[:, :-1], key=k, train=True)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], axis=-1))

    first = loss(params, jax.random.key(0))
    step = jax.jit(lambda p, k: jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p, jax.grad(loss)(p, k)))
    for i in range(30):
        params = step(params, jax.random.key(i))
    assert loss(params, jax.random.key(99)) < first - 0.3
    assert gpt.has_rule


def test_tied_embedding_bad_body(key):
    with pytest.raises(ValueError, match=r"TiedEmbedding\(5, 4, Dense\(3\)\): the layers between the embedding and the "
                                         r"head must end in width 4"):
        L.TiedEmbedding(5, 4, L.Dense(3)).init(key, (-1, 6))
    with pytest.raises(ValueError, match="num_embeddings must be a positive integer, got 0"):
        L.TiedEmbedding(0, 4)
    with pytest.raises(TypeError, match=r"TiedEmbedding: layer 0 \(after num_embeddings and features\) must be a Layer, "
                                        r"got .*did you forget to call it"):
        L.TiedEmbedding(5, 4, L.LayerNorm)


# ---------------------------------------------------------------------------
# The key/value cache: incremental decoding equals full recomputation
# ---------------------------------------------------------------------------


def _gpt(rotary=False, sinusoidal=False, vocab=17, width=16, context=24):
    positions = L.SinusoidalEncoding() if sinusoidal else L.PositionalEmbedding(context)
    return L.TiedEmbedding(vocab, width, positions, L.Dropout(0.1),
                           L.TransformerBlock(width, 4, causal=True, rotary=rotary, drop_prob=0.1, mlp_features=16),
                           L.residual(L.LayerNorm(), L.Dense(width), L.Gelu(), L.Dense(width)),
                           L.TransformerBlock(width, 2, causal=True, rotary=rotary, mlp_features=16), L.LayerNorm())


def _decode(dec, params, x, chunks):
    """Step ``dec`` through ``x`` (B, T, ...) in chunks of the given lengths (along the sequence axis)."""
    cache = dec.init_cache(params, x.shape[:1])
    step = jax.jit(dec.step)
    out, position = [], 0
    axis = 1
    for n in chunks:
        y, cache = step(params, cache, jax.lax.slice_in_dim(x, position, position + n, axis=axis), position)
        out.append(y)
        position += n
    return jnp.concatenate(out, axis=1), cache


@pytest.mark.sweep
@pytest.mark.parametrize("kind", ["learned positions", "rotary", "sinusoidal"])
def test_incremental_decoding_equals_full_recomputation(kind, key):
    model = _gpt(rotary=kind == "rotary", sinusoidal=kind == "sinusoidal")
    _, params = model.init(key, (-1, 20))
    ids = jax.random.randint(jax.random.key(1), (3, 20), 0, 17)
    full = model.apply(params, ids)
    dec = generate.decoder(model, 24)
    got, cache = _decode(dec, params, ids, [5, 1, 1, 3, 1, 2, 7])
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)  # float32 rounding
    k = cache["transformer_block_0"]["residual_0"]["attention_0"]["k"]
    assert k.shape == (3, 24, 4, 4) and np.all(np.asarray(k[:, 20:]) == 0)  # rows past the last position untouched


def test_incremental_attention_layer_alone_in_float64(key):
    with jax.enable_x64(True):
        layer = L.MultiHeadAttention(2, causal=True, rotary=True, head_dim=6)
        _, params = layer.init(key, (-1, 9, 8))
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        x = jax.random.normal(jax.random.key(1), (2, 9, 8), jnp.float64)
        got, cache = _decode(generate.decoder(layer, 12), params, x, [4, 1, 1, 1, 2])
        assert cache["k"].dtype == jnp.float64 and cache["k"].shape == (2, 12, 2, 6)
        np.testing.assert_allclose(got, layer.apply(params, x), rtol=1e-12, atol=1e-12)


def test_decoder_refuses_what_it_cannot_cache(key):
    with pytest.raises(ValueError, match=r"residual_0/attention_0: MultiHeadAttention\(2\) has no incremental \(cached\) "
                                         r"step: a key/value cache serves causal self-attention only"):
        generate.decoder(L.serial(L.Embedding(5, 4), L.residual(L.MultiHeadAttention(2)), L.Dense(5)), 8)
    with pytest.raises(ValueError, match=r"conv_0: Conv\(4, \(3,\).*has no incremental \(cached\) step"):
        generate.decoder(L.serial(L.Embedding(5, 4), L.Conv1D(4, 3), L.Dense(5)), 8)
    with pytest.raises(ValueError, match=r"softmax_0: Softmax\(axis=-2\) has no incremental"):
        generate.decoder(L.serial(L.Dense(3), L.Softmax(axis=-2)), 8)
    with pytest.raises(ValueError, match=r"PositionalEmbedding\(8\): sequences of length 9 are longer than max_length=8"):
        generate.decoder(L.serial(L.Embedding(5, 4), L.PositionalEmbedding(8)), 9)
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        generate.decoder(L.Dense(3), 0)
    model = L.serial(L.Embedding(5, 4), L.PositionalEmbedding(8), L.MultiHeadAttention(2, causal=True), L.Dense(5))
    _, params = model.init(key, (-1, 8))
    dec = generate.decoder(model, 6)
    cache = dec.init_cache(params, 2)
    with pytest.raises(ValueError, match=r"positions 4 \.\. 6 do not fit the cache of max_length=6"):
        dec.step(params, cache, jnp.zeros((2, 3), jnp.int32), 4)
    with pytest.raises(TypeError, match="position must be an integer scalar"):
        dec.step(params, cache, jnp.zeros((2, 1), jnp.int32), 1.5)
    with pytest.raises(ValueError, match=r"the cache holds a batch of shape \(2,\), got x of shape \(3, 1, 4\)"):
        dec.step(params, cache, jnp.zeros((3, 1), jnp.int32), 0)


# ---------------------------------------------------------------------------
# Generation: cached == recomputed == a plain Python loop; compiled once
# ---------------------------------------------------------------------------


def _naive(model, params, prompt, n, context, choose):
    """nanoGPT's loop in NumPy: crop to the context, run the model, choose from the last logits, append."""
    tokens = np.asarray(prompt)
    apply = jax.jit(model.apply)
    for i in range(n):
        logits = apply(params, jnp.asarray(tokens[:, -context:]))[:, -1]
        tokens = np.concatenate([tokens, np.asarray(choose(i, logits))[:, None]], axis=1)
    return tokens


@pytest.mark.sweep
def test_greedy_with_the_cache_equals_recomputation_and_a_plain_loop(key):
    model = _gpt(rotary=True)
    _, params = model.init(key, (-1, 24))
    prompt = jax.random.randint(jax.random.key(1), (3, 6), 0, 17)
    cached = generate.greedy(model, params, prompt, 6, use_cache=True)
    recomputed = generate.greedy(model, params, prompt, 6, use_cache=False)
    naive = _naive(model, params, prompt, 6, 24, lambda i, z: jnp.argmax(z, -1))
    np.testing.assert_array_equal(cached, naive)
    np.testing.assert_array_equal(recomputed, naive)
    assert cached.dtype == prompt.dtype and cached.shape == (3, 12)
    np.testing.assert_array_equal(generate.greedy(model, params, prompt[0], 6), naive[0])  # one prompt, no batch axis


def test_past_the_context_the_window_slides(key):
    model = _gpt(context=5)
    _, params = model.init(key, (-1, 5))
    prompt = jax.random.randint(jax.random.key(1), (2, 3), 0, 17)
    out = generate.greedy(model, params, prompt, 6)  # automatic: 3 + 6 - 1 > 5, so recomputed over the last 5
    np.testing.assert_array_equal(out, _naive(model, params, prompt, 6, 5, lambda i, z: jnp.argmax(z, -1)))
    with pytest.raises(ValueError, match=r"use_cache=True, but the key/value cache cannot serve here: the 3 \+ 6 tokens "
                                         r"exceed the context of 5"):
        generate.greedy(model, params, prompt, 6, use_cache=True)


@pytest.mark.sweep
def test_sampling_with_the_cache_equals_recomputation_and_a_plain_loop(key):
    model = _gpt()
    _, params = model.init(key, (-1, 24))
    prompt = jax.random.randint(jax.random.key(1), (4, 3), 0, 17)
    options = dict(temperature=0.7, top_k=6, top_p=0.8)
    k = jax.random.key(7)
    cached = generate.sample(model, params, prompt, 5, key=k, use_cache=True, **options)
    recomputed = generate.sample(model, params, prompt, 5, key=k, use_cache=False, **options)
    keys = jax.random.split(k, 5)
    naive = _naive(model, params, prompt, 5, 24, lambda i, z: generate.sample_logits(keys[i], z, **options))
    np.testing.assert_array_equal(cached, naive)
    np.testing.assert_array_equal(recomputed, naive)
    assert not np.array_equal(cached, generate.sample(model, params, prompt, 5, key=jax.random.key(8), **options))


def test_generation_is_one_scan_compiled_once(key):
    traces = []

    def counted(x):
        traces.append(1)  # runs when the model is traced, not per token
        return x

    model = L.serial(L.Embedding(7, 8), L.Lambda(counted, name="counted"), L.Dense(7))  # no cached step: recomputed
    _, params = model.init(key, (-1, 4))
    prompt = jnp.zeros((2, 3), jnp.int32)
    generate.sample(model, params, prompt, 20, key=jax.random.key(0))  # the first call also runs init's shape checks
    counts = []
    for n in (4, 12):
        before = len(traces)
        generate.sample(model, params, prompt, n, key=jax.random.key(0))
        counts.append(len(traces) - before)
    assert counts[0] == counts[1] <= 4  # 4 new tokens or 12: the model traced as often (the scan's body, not per token)
    generate.sample(model, params, prompt, 20, key=jax.random.key(0), top_p=0.5)  # top_p None or not: two programs
    once = len(traces)
    params2 = jax.tree_util.tree_map(lambda a: a + 1, params)
    generate.sample(model, params2, prompt + 1, 20, key=jax.random.key(1), temperature=0.5, top_p=0.9)
    assert len(traces) == once  # new params, prompt, key, temperature, top_p: the same program
    # the cached path: the program does not grow with the number of new tokens
    gpt = _gpt()
    _, gp = gpt.init(key, (-1, 24))
    size = [len(jax.make_jaxpr(lambda p, k, n=n: generate.sample(gpt, p, prompt, n, key=k, use_cache=True))(
        gp, jax.random.key(0)).jaxpr.eqns) for n in (3, 12)]
    assert size[0] == size[1]


# ---------------------------------------------------------------------------
# Sampling distributions against closed forms
# ---------------------------------------------------------------------------

Z = np.array([2.0, 1.0, 0.5, 1.0, -1.0, 0.0, 3.0], np.float32)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _closed_form(temperature=1.0, top_k=None, top_p=None):
    """The distribution by the module's rules, in float64 NumPy."""
    z = Z.astype(np.float64) / temperature
    keep = np.ones(len(z), bool)
    if top_k is not None:
        keep &= z >= np.sort(z)[::-1][top_k - 1]
    if top_p is not None:
        p = _softmax(np.where(keep, z, -np.inf))
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]
        nucleus = np.zeros(len(z), bool)
        nucleus[order[before < top_p]] = True
        keep &= nucleus
    return _softmax(np.where(keep, z, -np.inf))


CLOSED_FORMS = [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=1), dict(top_k=3), dict(top_p=0.5),
                dict(top_p=0.8), dict(temperature=0.7, top_k=4, top_p=0.9), dict(top_p=1.0), dict(top_k=7)]


@pytest.mark.parametrize("options", CLOSED_FORMS, ids=[str(o) for o in CLOSED_FORMS])
def test_filtered_distribution_equals_the_closed_form(options):
    got = np.asarray(jax.nn.softmax(generate.filter_logits(jnp.asarray(Z), **options)))
    np.testing.assert_allclose(got, _closed_form(**options), rtol=1e-5, atol=1e-7)


def test_top_k_and_top_p_by_hand():
    # Z's order: 3.0 (id 6), 2.0 (0), 1.0 (1 and 3, a tie), 0.5 (2), 0.0 (5), -1.0 (4)
    assert set(np.flatnonzero(np.isfinite(generate.filter_logits(Z, top_k=2)))) == {6, 0}
    assert set(np.flatnonzero(np.isfinite(generate.filter_logits(Z, top_k=3)))) == {6, 0, 1, 3}  # ties kept
    p = _softmax(Z.astype(np.float64))  # p6 = 0.574, p0 = 0.211: p6 < 0.6 <= p6 + p0
    assert set(np.flatnonzero(np.isfinite(generate.filter_logits(Z, top_p=0.6)))) == {6, 0}
    assert set(np.flatnonzero(np.isfinite(generate.filter_logits(Z, top_p=float(p[6]) * 0.999)))) == {6}


@pytest.mark.parametrize("options", [dict(temperature=0.8), dict(top_k=3), dict(top_p=0.8), dict(temperature=1.5, top_k=5, top_p=0.95)],
                         ids=["temperature", "top_k", "top_p", "all three"])
def test_empirical_frequencies_match_the_closed_form(options):
    n = 40_000
    ids = np.asarray(generate.sample_logits(jax.random.key(3), jnp.broadcast_to(jnp.asarray(Z), (n, len(Z))), **options))
    freq = np.bincount(ids, minlength=len(Z)) / n
    p = _closed_form(**options)
    assert np.all(freq[p == 0] == 0)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12), (freq, p)  # 5 standard errors


def test_sample_draws_each_new_token_from_the_filtered_distribution(key):
    """End to end: a model whose logits are Z whatever the input; 4,000 rows of 2 new tokens each."""
    model = L.serial(L.Embedding(len(Z), len(Z), embedding_init=lambda k, s, d=jnp.float32: jnp.broadcast_to(jnp.asarray(Z, d), s)))
    _, params = model.init(key, (-1, 1))
    rows = 4000
    out = np.asarray(generate.sample(model, params, jnp.zeros((rows, 1), jnp.int32), 2, key=jax.random.key(1),
                                     temperature=0.9, top_p=0.85))
    p = _closed_form(temperature=0.9, top_p=0.85)
    for column in (1, 2):
        freq = np.bincount(out[:, column], minlength=len(Z)) / rows
        assert np.all(freq[p == 0] == 0)
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / rows) + 1e-12), (freq, p)


# ---------------------------------------------------------------------------
# Bad inputs: errors naming what is wrong
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    model = L.serial(L.Embedding(9, 8), L.PositionalEmbedding(6), L.MultiHeadAttention(2, causal=True), L.Dense(9))
    _, params = model.init(jax.random.key(0), (-1, 6))
    return model, params


BAD_SAMPLE = [
    (dict(temperature=0.0), ValueError, r"temperature must be finite and > 0, got 0.0 \(for the argmax, use greedy"),
    (dict(temperature=-1.0), ValueError, r"temperature must be finite and > 0, got -1.0"),
    (dict(temperature=float("nan")), ValueError, r"temperature must be finite and > 0, got nan"),
    (dict(temperature="hot"), TypeError, r"temperature must be a real number"),
    (dict(top_k=0), ValueError, r"top_k must be in \[1, 9\] \(the vocabulary\), got 0"),
    (dict(top_k=10), ValueError, r"top_k must be in \[1, 9\] \(the vocabulary\), got 10"),
    (dict(top_k=2.5), TypeError, r"top_k must be a positive int \(the number of tokens kept\) or None, got 2.5"),
    (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\] \(the probability mass kept\), got 0.0"),
    (dict(top_p=1.5), ValueError, r"top_p must be in \(0, 1\] \(the probability mass kept\), got 1.5"),
    (dict(key=None), TypeError, r"key must be a jax.random key"),
    (dict(key=0), TypeError, r"key must be a jax.random key.*got the integer 0"),
    (dict(use_cache="yes"), TypeError, r"use_cache must be None \(automatic\), True or False, got 'yes'"),
    (dict(num_new_tokens=0), ValueError, r"num_new_tokens must be a positive integer, got 0"),
    (dict(prompt=jnp.zeros((2, 7), jnp.int32)), ValueError,
     r"the prompt of length 7 is longer than the context of 6 tokens the model can see"),
    (dict(prompt=jnp.zeros((2, 3), jnp.int32), context=2), ValueError,
     r"the prompt of length 3 is longer than the context of 2 tokens"),
    (dict(prompt=jnp.zeros((2, 0), jnp.int32)), ValueError, r"prompt must be token ids \(batch, length\) or \(length,\) "
                                                             r"with length >= 1, got shape \(2, 0\)"),
    (dict(prompt=jnp.zeros((2, 2, 2), jnp.int32)), ValueError, r"prompt must be token ids"),
    (dict(prompt=jnp.zeros((2, 3))), TypeError, r"prompt must have an integer dtype"),
    (dict(context=0), ValueError, r"context must be a positive integer, got 0"),
]


@pytest.mark.parametrize("change,error,message", BAD_SAMPLE, ids=[str(c) for c, _, _ in BAD_SAMPLE])
def test_sample_bad_arguments(lm, change, error, message):
    model, params = lm
    args = dict(prompt=jnp.zeros((2, 3), jnp.int32), num_new_tokens=2, key=jax.random.key(0))
    args.update(change)
    with pytest.raises(error, match=message):
        generate.sample(model, params, args.pop("prompt"), args.pop("num_new_tokens"), **args)


def test_generation_bad_models_and_logits(lm, key):
    model, params = lm
    with pytest.raises(TypeError, match="model must be a jaxnets Layer, got function"):
        generate.greedy(lambda x: x, params, jnp.zeros((1, 2), jnp.int32), 2)
    pooled = L.serial(L.Embedding(9, 8), L.SequencePool("mean"), L.Dense(9))  # (B, T) -> (B, V): not per position
    _, pp = pooled.init(key, (-1, 4))
    with pytest.raises(ValueError, match=r"generation needs a model mapping ids \(B, T\) to logits \(B, T, vocab\); for ids "
                                         r"of shape \(1, 3\) it gives \(1, 9\)"):
        generate.greedy(pooled, pp, jnp.zeros((1, 2), jnp.int32), 2)
    with pytest.raises(ValueError, match=r"use_cache=True, but the key/value cache cannot serve here: sequence_pool_0: "
                                         r"SequencePool"):
        generate.greedy(pooled, pp, jnp.zeros((1, 2), jnp.int32), 2, use_cache=True)
    with pytest.raises(TypeError, match=r"filter_logits logits must have a floating dtype"):
        generate.filter_logits(jnp.arange(3))
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 7\]"):
        generate.sample_logits(jax.random.key(0), jnp.asarray(Z), top_k=8)


def test_new_layer_options_bad_arguments():
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\), got 1.0"):
        L.MultiHeadAttention(2, drop_prob=1.0)
    with pytest.raises(ValueError, match=r"attention_drop_prob must be in \[0, 1\), got -0.5"):
        L.TransformerBlock(8, 2, attention_drop_prob=-0.5)
    with pytest.raises(ValueError, match=r"residual_scale must be finite and > 0, got 0.0"):
        L.TransformerBlock(8, 2, residual_scale=0.0)
    with pytest.raises(TypeError, match=r"w_init must be an initializer"):
        L.TransformerBlock(8, 2, w_init="normal")
    with pytest.raises(TypeError, match=r"out_w_init must be an initializer"):
        L.MultiHeadAttention(2, out_w_init=3)
    with pytest.raises(ValueError, match=r"rotary_embedding: a traced offset needs max_length="):
        jax.jit(lambda x, o: L.rotary_embedding(x, offset=o))(jnp.ones((3, 4)), 1)
