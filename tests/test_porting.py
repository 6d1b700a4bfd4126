"""Params trained with stax and flax.linen load into the same jaxnets model and give the same outputs;
the defaults the porting page states are those of the installed libraries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.example_libraries import stax

import jaxnets.layers as L
from jaxnets import porting

STANDARD_PROMOTION_REASON = "flax.linen mixes int32 and float32 (avg_pool divides by an int window size)"

nn = pytest.importorskip("flax.linen", reason="flax is a test dependency: pip install -e '.[test]'")


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_stax_mlp_and_cnn_load_and_agree(key):
    x = jax.random.normal(key, (3, 8, 8, 1))
    init_fn, apply_fn = stax.serial(stax.Conv(4, (3, 3), padding="SAME"), stax.Relu, stax.MaxPool((2, 2), strides=(2, 2)),
                                    stax.Flatten, stax.Dense(16), stax.Tanh, stax.Dense(10))
    _, stax_params = init_fn(jax.random.key(1), (-1, 8, 8, 1))
    model = L.serial(L.Conv2D(4, 3), L.Relu(), L.MaxPool(2), L.Flatten(), L.Dense(16), L.Tanh(), L.Dense(10))
    params, state = porting.from_stax(model, stax_params, (3, 8, 8, 1))
    assert params["conv_0"]["b"].shape == (4,)  # stax's (1, 1, 1, 4) bias, flattened
    _close(model.apply_with_state(params, state, x)[0], apply_fn(stax_params, x))


def test_stax_mismatch_names_the_path():
    init_fn, _ = stax.serial(stax.Dense(16), stax.Relu, stax.Dense(10))
    _, stax_params = init_fn(jax.random.key(1), (-1, 5))
    with pytest.raises(ValueError, match=r"params dense_1/w: expected shape \(16, 3\), got \(16, 10\)"):
        porting.from_stax(L.serial(L.Dense(16), L.Relu(), L.Dense(3)), stax_params, (2, 5))
    with pytest.raises(ValueError, match=r"stax params of a serial need one entry per layer \(2\), got 3 entries"):
        porting.from_stax(L.serial(L.Dense(16), L.Dense(10)), stax_params, (2, 5))


class FlaxCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.LayerNorm()(x)
        x = nn.Dense(10)(x)
        return x


def test_flax_cnn_with_batch_norm_loads_and_agrees(key):
    x = jax.random.normal(key, (3, 8, 8, 1))
    module = FlaxCNN()
    variables = module.init(jax.random.key(1), x)
    # move the running statistics off their initial values, as after training
    _, updates = module.apply(variables, x * 2 + 1, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    model = L.serial(L.Conv2D(4, 3), L.BatchNorm(), L.Relu(), L.AvgPool(2), L.Flatten(), L.LayerNorm(eps=1e-6), L.Dense(10))
    params, state = porting.from_flax(model, variables, (3, 8, 8, 1))
    _close(model.apply_with_state(params, state, x)[0], module.apply(variables, x))
    # and in training mode (batch statistics), with the running statistics updated alike
    ours, new_state = model.apply_with_state(params, state, x, train=True)
    theirs, mutated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    _close(ours, theirs)
    _close(new_state["batch_norm_0"]["mean"], mutated["batch_stats"]["BatchNorm_0"]["mean"])


def test_flax_embedding_and_conv_transpose_load_and_agree(key):
    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(7, 4)(ids)  # (batch, length, 4)
            x = x.reshape(x.shape[0], 2, 2, -1)
            return nn.ConvTranspose(3, (3, 3), strides=(2, 2))(x)

    ids = jnp.array([[1, 5, 2, 0], [6, 6, 3, 1]])
    variables = Decoder().init(jax.random.key(2), ids)
    model = L.serial(L.Embedding(7, 4), L.Reshape((2, 2, -1)), L.ConvTranspose2D(3, 3, strides=2))
    # the check runs on float inputs; the ids' shape is what matters
    params, state = porting.from_flax(model, variables, (2, 4))
    _close(model.apply(params, ids), Decoder().apply(variables, ids))


def test_flax_mismatch_and_lost_modules_are_errors(key):
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(8)(x))  # flax numbers modules as they are built: Dense_0 first
            return nn.Dense(3)(x)

    variables = MLP().init(key, jnp.ones((1, 5)))
    with pytest.raises(ValueError, match=r"no layer of the model takes: \['Dense_1'\]"):
        porting.from_flax(L.serial(L.Dense(8), L.Relu()), variables, (2, 5))
    with pytest.raises(ValueError, match=r"params dense_0/w: expected shape \(5, 4\), got \(5, 8\)"):
        porting.from_flax(L.serial(L.Dense(4), L.Relu(), L.Dense(3)), variables, (2, 5))
    with pytest.raises(ValueError, match="'params' collection"):
        porting.from_flax(L.Dense(3), {"weights": {}}, (2, 5))


def test_defaults_on_the_porting_page_are_flaxs_and_staxs():
    """The porting page's table states these; pin them against the installed libraries."""
    import inspect

    assert nn.LayerNorm().epsilon == 1e-6 and inspect.signature(L.LayerNorm).parameters["eps"].default == 1e-5
    assert nn.BatchNorm().momentum == 0.99 and inspect.signature(L.BatchNorm).parameters["momentum"].default == 0.99
    assert nn.Conv(1, (3, 3)).padding == "SAME"
    assert inspect.signature(nn.max_pool).parameters["strides"].default is None  # flax: stride 1
    assert inspect.signature(nn.avg_pool).parameters["count_include_pad"].default is True
    # stax pools with stride 1 and convolves with VALID padding by default
    x = jnp.ones((1, 4, 4, 1))
    _, stax_pool = stax.MaxPool((2, 2))
    assert stax_pool((), x).shape == (1, 3, 3, 1)
    assert L.MaxPool(2).init(jax.random.key(0), (1, 4, 4, 1))[0] == (1, 2, 2, 1)
    stax_init, _ = stax.Conv(2, (3, 3))
    assert stax_init(jax.random.key(0), (1, 4, 4, 1))[0] == (1, 2, 2, 2)
    # SAME padding at stride 2 on an even size: the extra cell of padding goes at the end, in XLA, flax and jaxnets
    y = L.Conv2D(1, 2, strides=2, w_init=lambda k, s, d: jnp.ones(s, d), b_init=lambda k, s, d: jnp.zeros(s, d))
    _, p = y.init(jax.random.key(0), (1, 3, 3, 1))
    image = jnp.arange(9.0).reshape(1, 3, 3, 1)
    ours = y.apply(p, image)[0, :, :, 0]
    np.testing.assert_allclose(ours, [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8]])  # windows {0, 1}, {2, pad}
    conv = nn.Conv(1, (2, 2), strides=(2, 2), kernel_init=nn.initializers.ones)
    np.testing.assert_allclose(conv.apply(conv.init(jax.random.key(0), image), image)[0, :, :, 0], ours)


# ---------------------------------------------------------------------------
# PyTorch and equinox
# ---------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (not a dependency: its wheels are gigabytes); pip install torch to run these")


def test_torch_cnn_with_batchnorm_transpose_prelu_loads_and_agrees():
    torch = _torch()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, dilation=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2), torch.nn.PReLU(4),
                              torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.LayerNorm(5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    model = L.serial(L.Conv2D(8, 3, padding=1), L.BatchNorm(momentum=0.9), L.Relu(),
                     L.ConvTranspose2D(4, 4, strides=2, padding=1, feature_groups=2), L.PReLU(per_channel=True),
                     L.Conv2D(4, 3, padding=2, dilation=2, feature_groups=4), L.GlobalAvgPool(), L.Dense(5), L.LayerNorm())
    x = np.random.RandomState(0).randn(2, 3, 6, 6).astype(np.float32)
    params, state = porting.from_torch(model, net.state_dict(), (2, 6, 6, 3))
    np.testing.assert_array_equal(state["batch_norm_0"]["var"], net[1].running_var.numpy())
    y, _ = model.apply_with_state(params, state, jnp.asarray(x.transpose(0, 2, 3, 1)))  # NCHW -> NHWC
    _close(y, net(torch.from_numpy(x)).detach().numpy())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_recurrent_layers_load_with_their_gate_order(kind):
    torch = _torch()
    torch.manual_seed(1)
    net = getattr(torch.nn, kind)(3, 5, batch_first=True)
    x = np.random.RandomState(1).randn(2, 7, 3).astype(np.float32)
    ours = {"LSTM": L.LSTM, "GRU": L.GRU, "RNN": L.SimpleRNN}[kind](5)
    params, _ = porting.from_torch(ours, net.state_dict(), (2, 7, 3))
    _close(ours.apply(params, jnp.asarray(x)), net(torch.from_numpy(x))[0].detach().numpy())


def test_torch_embedding_and_errors_name_the_key_and_both_shapes():
    torch = _torch()
    emb = torch.nn.Embedding(10, 4)
    params, _ = porting.from_torch(L.Embedding(10, 4), emb.state_dict(), (3,))
    np.testing.assert_array_equal(params["table"], emb.weight.detach().numpy())
    net = torch.nn.Sequential(torch.nn.Linear(4, 5))
    with pytest.raises(ValueError, match=r"from_torch: '0.weight' \(shape \(5, 4\)\) converts to dense_0/w of shape "
                                         r"\(4, 5\), but Dense\(3\) expects \(4, 3\)"):
        porting.from_torch(L.serial(L.Dense(3)), net.state_dict(), (2, 4))
    with pytest.raises(ValueError, match=r"the model has 2 layers with params, the source 1 modules with params"):
        porting.from_torch(L.serial(L.Dense(5), L.Dense(2)), net.state_dict(), (2, 4))
    bn = torch.nn.BatchNorm1d(4).state_dict()
    del bn["running_var"]
    with pytest.raises(ValueError, match=r"from_torch: 'running_var' is missing \(for a BatchNorm"):
        porting.from_torch(L.BatchNorm(), bn, (2, 4))
    with pytest.raises(ValueError, match=r"only one-layer, one-direction recurrent modules"):
        porting.from_torch(L.LSTM(5), torch.nn.LSTM(3, 5, num_layers=2).state_dict(), (2, 7, 3))
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        porting.from_torch(L.Dense(3), [1, 2], (2, 4))


def test_equinox_modules_load_and_agree():
    eqx = pytest.importorskip("equinox", reason="equinox is a test dependency: pip install -e '.[test]'")
    k = jax.random.split(jax.random.key(0), 6)
    net = eqx.nn.Sequential([
        eqx.nn.Conv2d(3, 8, 3, padding=1, key=k[0]), eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2, key=k[1]),
        eqx.nn.Sequential([eqx.nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4, key=k[2])]),
        eqx.nn.Lambda(lambda x: jnp.mean(x, axis=(1, 2))), eqx.nn.Linear(4, 5, key=k[3]), eqx.nn.LayerNorm(5)])
    model = L.serial(L.Conv2D(8, 3, padding=1), L.Relu(), L.ConvTranspose2D(4, 4, strides=2, padding=1, feature_groups=2),
                     L.serial(L.Conv2D(4, 3, padding=2, dilation=2, feature_groups=4)), L.GlobalAvgPool(), L.Dense(5),
                     L.LayerNorm())
    x = np.random.RandomState(0).randn(2, 3, 6, 6).astype(np.float32)
    params, _ = porting.from_equinox(model, net, (2, 6, 6, 3))
    _close(model.apply(params, jnp.asarray(x.transpose(0, 2, 3, 1))), jax.vmap(net)(jnp.asarray(x)))
    for cell, ours, carry in ((eqx.nn.LSTMCell(3, 5, key=k[4]), L.LSTMCell(5), (jnp.full(5, 0.3), jnp.full(5, -0.2))),
                              (eqx.nn.GRUCell(3, 5, key=k[5]), L.GRUCell(5), jnp.full(5, 0.3))):
        x_t = jnp.asarray(np.random.RandomState(1).randn(3).astype(np.float32))
        shapes = jax.tree_util.tree_map(lambda a: (1,) + a.shape, (carry, x_t))
        params, _ = porting.from_equinox(ours, cell, shapes)
        got, _ = ours.apply(params, jax.tree_util.tree_map(lambda a: a[None], (carry, x_t)))
        jax.tree_util.tree_map(lambda a, b: _close(a[0], b), got, cell(x_t, carry))
    with pytest.raises(ValueError, match=r"from_equinox: 'layers\[0\].weight' \(shape \(5, 4\)\) converts to dense_0/w"):
        porting.from_equinox(L.serial(L.Dense(3)), eqx.nn.Sequential([eqx.nn.Linear(4, 5, key=k[0])]), (2, 4))
    bn = eqx.nn.BatchNorm(4, "batch")
    with pytest.raises(ValueError, match=r"is an equinox BatchNorm, which from_equinox does not map"):
        porting.from_equinox(L.BatchNorm(), bn, (2, 4))


def _donating_step_keeps(originals, convert):
    """Convert, train one step with the donating jitted step, then read every original array: none was deleted."""
    import optax

    from jaxnets import losses, train

    model = L.serial(L.Dense(2))
    kept = [np.array(a) for a in jax.tree_util.tree_leaves(originals)]
    params, state = convert(model)
    opt = optax.sgd(0.1)
    ts = train.TrainState(params, opt.init(params), state, jnp.zeros((), jnp.int32), jax.random.key(0))
    step = train.make_train_step(model, losses.softmax_cross_entropy_with_integer_labels, opt)  # donates ts
    after, _ = step(ts, jnp.ones((4, 3)), jnp.array([0, 1, 0, 1]))
    assert int(after.step) == 1
    for leaf, value in zip(jax.tree_util.tree_leaves(originals), kept):
        np.testing.assert_array_equal(np.asarray(leaf), value)  # readable, and unchanged (no buffer written in place)


@pytest.mark.parametrize("library", ["stax", "flax", "state_dict", "TrainState.create"])
def test_a_donating_step_never_deletes_what_the_converter_was_given(library):
    """``from_stax`` returned the stax arrays themselves (``jnp.asarray`` of a jax.Array is that array), so the
    donating step deleted the user's stax params: ``RuntimeError: Array has been deleted`` far from the cause."""
    w, b = jax.random.normal(jax.random.key(1), (3, 2)), jnp.zeros(2)
    if library == "stax":
        originals = [(w, b)]
        _donating_step_keeps(originals, lambda model: porting.from_stax(model, originals, (4, 3)))
    elif library == "flax":
        originals = {"params": {"Dense_0": {"kernel": w, "bias": b}}}
        _donating_step_keeps(originals, lambda model: porting.from_flax(model, originals, (4, 3)))
    elif library == "state_dict":  # what from_torch reads: NumPy arrays (a tensor's .numpy() shares its memory)
        originals = {"0.weight": np.asarray(w).T.copy(), "0.bias": np.asarray(b).copy()}
        _donating_step_keeps(originals, lambda model: porting.from_torch(model, originals, (4, 3)))
    else:
        import optax

        from jaxnets import train

        originals = {"dense_0": {"w": w, "b": b}}

        def convert(model):
            made = train.TrainState.create(originals, optax.sgd(0.1))
            return made.params, {}

        _donating_step_keeps(originals, convert)
