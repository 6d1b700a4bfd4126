"""The non-finite locator names the layer where a NaN or an Inf first appears, forward or backward."""

import jax
import jax.numpy as jnp
import pytest

import jaxnets.layers as L
from jaxnets import debug, losses

CE = losses.softmax_cross_entropy_with_integer_labels


def _model(middle):
    return L.serial(L.Dense(8), L.Relu(), L.residual(L.Dense(8), middle), L.Dense(3))


def _run(model, x=None, **kwargs):
    _, params = model.init(jax.random.key(0), (-1, 4))
    x = jax.random.normal(jax.random.key(1), (5, 4)) if x is None else x
    return params, debug.locate_nonfinite(model, params, x, jnp.array([0, 1, 2, 0, 1]), loss=CE, **kwargs)


def test_a_finite_model_passes():
    _, report = _run(_model(L.Tanh()))
    assert report.finite and report.first is None
    assert "everything is finite" in str(report)
    whats = {c.what for c in report.checks}
    assert {"params", "input", "output", "loss", "output cotangent", "input cotangent", "params gradient"} <= whats


def test_the_first_layer_whose_output_is_not_finite_is_named():
    log = L.Elementwise(jnp.log, "log", vjp=lambda x, y_bar: y_bar / x)  # log of negative pre-activations: NaN
    _, report = _run(_model(log))
    assert (report.first.path, report.first.what) == ("residual_0/log_0", "output")
    assert "first non-finite: output of residual_0/log_0" in str(report)


def test_a_rule_that_overflows_backward_is_named():
    # sqrt(relu(z)) is finite forward; its derivative 1 / (2 sqrt(0)) is Inf where z <= 0
    sqrt = L.Elementwise(jnp.sqrt, "sqrt", vjp=lambda x, y_bar: y_bar / (2 * jnp.sqrt(x)))
    model = L.serial(L.Dense(8), L.Relu(), sqrt, L.Dense(3))
    _, report = _run(model)
    assert (report.first.path, report.first.what) == ("sqrt_0", "input cotangent")
    forward = [c for c in report.checks if c.what == "output"]
    assert all(c.finite for c in forward)


def test_non_finite_params_and_inputs_come_first():
    model = _model(L.Tanh())
    _, params = model.init(jax.random.key(0), (-1, 4))
    params["dense_1"]["w"] = params["dense_1"]["w"].at[0, 0].set(jnp.inf)
    report = debug.locate_nonfinite(model, params, jnp.ones((2, 4)))
    assert (report.first.path, report.first.what) == ("dense_1/w", "params")
    _, report = _run(model, x=jnp.ones((5, 4)).at[2, 1].set(jnp.nan))
    assert (report.first.path, report.first.what, report.first.bad) == ("input", "input", 1)


def test_a_model_without_hand_rules_is_checked_forward_and_by_autodiff():
    log = L.Lambda(jnp.log, name="log")
    no_rule = L.define_layer("plain", lambda key, shape: {}, lambda p, x: x)
    _, report = _run(L.serial(L.Dense(8), no_rule, log, L.Dense(3)))
    assert (report.first.path, report.first.what) == ("log_0", "output")
    assert any(c.what == "params gradient" and c.path == "dense_0/w" for c in report.checks)


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a jaxnets Layer"):
        debug.locate_nonfinite(lambda x: x, {}, jnp.ones(2))
    with pytest.raises(ValueError, match=r"loss needs the targets: pass y="):
        debug.locate_nonfinite(L.Dense(2), {}, jnp.ones((1, 2)), loss=CE)


def test_fit_divergence_then_the_locator_names_the_layer():
    """fit stops at the first non-finite epoch and keeps the last finite state; the locator, run on that
    state as the error advises, names the layer that makes the NaN."""
    import optax

    import jaxnets
    from jaxnets import data

    digits = data.load_digits()
    # log of a ReLU's output: -inf wherever a unit is off, NaN in the gradients from the first step
    model = L.serial(L.Dense(16), L.Relu(), L.Lambda(jnp.log, name="log"), L.Dense(10))
    with pytest.raises(jaxnets.NonFiniteError, match="locate_nonfinite") as info:
        jaxnets.fit(model, CE, optax.sgd(0.1), digits, epochs=3, batch_size=64, seed=0, progress=False, verbose=False)
    state = info.value.state
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(state.params))
    x, y = jnp.asarray(digits.x_train[:64]), jnp.asarray(digits.y_train[:64])
    report = debug.locate_nonfinite(model, state.params, x, y, loss=CE, state=state.model_state)
    assert (report.first.path, report.first.what) == ("log_0", "output")
