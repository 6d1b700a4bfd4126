"""The gradient checker: it passes right rules, fails wrong ones naming the leaf, and reports bad input."""

import jax
import jax.numpy as jnp
import pytest

from jaxnets import gradcheck


def loss(params, x):
    """A smooth loss over a dict with a matrix (large leaf) and a vector (small leaf)."""
    h = jnp.tanh(x @ params["w"] + params["b"])
    return jnp.sum(h**2) + 0.1 * jnp.sum(params["w"] ** 2)


def right_grad(params, x):
    """Hand-derived: with z = x W + b, h = tanh z: dL/dz = 2 h (1 - h^2)."""
    z = x @ params["w"] + params["b"]
    h = jnp.tanh(z)
    dz = 2 * h * (1 - h * h)
    return {"w": x.T @ dz + 0.2 * params["w"], "b": jnp.sum(dz, axis=0)}


@pytest.fixture
def point():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(k1, (12, 10)) * 0.3, "b": jax.random.normal(k2, (10,)) * 0.1}
    return params, jax.random.normal(k3, (7, 12))


def test_right_rule_passes_in_every_column(point):
    params, x = point
    report = gradcheck.check_grads(right_grad, loss, params, x)
    assert report.passed, str(report)
    assert {leaf.path for leaf in report.leaves} == {"w", "b"}
    assert report.max_relative_error("float64 vs jax.grad") <= 1e-12
    assert report.max_relative_error("float64 vs finite diff.") <= 1e-6
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert by_path["b"].fd_method == "full" and by_path["w"].fd_method == "8 directions"
    assert "all leaves passed" in str(report)


def test_planted_wrong_rule_fails_and_names_the_leaf(point):
    params, x = point

    def wrong_grad(p, x):
        g = right_grad(p, x)
        return {"w": g["w"] - 0.2 * p["w"], "b": g["b"]}  # forgot the L2 term's gradient in w

    report = gradcheck.check_grads(wrong_grad, loss, params, x)
    assert not report.passed
    failed = {leaf.path for leaf in report.leaves if not leaf.passed}
    assert failed == {"w"}
    with pytest.raises(AssertionError, match=r"gradients differ in 1 of 2 leaves \(worst first\):\n.*\n.*\nw +\(12, 10\)"):
        gradcheck.assert_grads_close(wrong_grad, loss, params, x)


def test_finite_differences_catch_a_rule_that_fools_autodiff(point):
    """A custom_vjp with a wrong backward fools jax.grad; only finite differences see it."""
    params, x = point

    @jax.custom_vjp
    def tanh(z):
        return jnp.tanh(z)

    tanh.defvjp(lambda z: (jnp.tanh(z), z), lambda z, g: (g * 1.1 * (1 - jnp.tanh(z) ** 2),))

    def fooled_loss(p, x):
        h = tanh(x @ p["w"] + p["b"])
        return jnp.sum(h**2) + 0.1 * jnp.sum(p["w"] ** 2)

    report = gradcheck.check_grads(jax.grad(fooled_loss), fooled_loss, params, x)
    by_path = {leaf.path: leaf for leaf in report.leaves}
    assert by_path["b"].errors["float64 vs jax.grad"][1] == 0.0  # agrees with (wrong) autodiff
    assert by_path["b"].errors["float64 vs finite diff."][1] > 1e-2
    assert not report.passed


def test_tolerances_do_not_scale_with_size():
    """The same relative error fails the same way on a leaf of 10 or 100,000 entries."""
    for n in (10, 100_000):
        params = {"v": jnp.linspace(1.0, 2.0, n)}

        def loss_n(p):
            return 0.5 * jnp.sum(p["v"] ** 2)

        report = gradcheck.check_grads(lambda p: {"v": p["v"] * (1 + 2e-5)}, loss_n, params, finite_differences=False)
        assert report.leaves[0].errors["float32 vs jax.grad"][1] == pytest.approx(2e-5, rel=0.05)
        assert not report.passed


def test_wrong_structure_and_shapes_are_reported_not_raised(point):
    params, x = point
    report = gradcheck.check_grads(lambda p, x: {"w": right_grad(p, x)["w"]}, loss, params, x, finite_differences=False)
    problems = {leaf.path: leaf.problem for leaf in report.leaves}
    assert problems == {"w": "", "b": "missing from grads"}
    report = gradcheck.check_grads(lambda p, x: {"w": right_grad(p, x)["w"].T, "b": right_grad(p, x)["b"], "extra": jnp.ones(2)},
                                   loss, params, x, finite_differences=False)
    problems = {leaf.path: leaf.problem for leaf in report.leaves}
    assert problems["w"] == "grads has shape (10, 12), params (12, 10)"
    assert problems["extra"] == "in grads but not in params"
    assert "NO grads has shape (10, 12), params (12, 10)" in str(report)


def test_non_scalar_loss_is_a_clear_error(point):
    params, x = point
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar, got shape \(7, 10\)"):
        gradcheck.check_grads(right_grad, lambda p, x: jnp.tanh(x @ p["w"]), params, x)


def test_x64_and_matmul_precision_are_restored(point):
    params, x = point
    before = (jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision)
    gradcheck.check_grads(right_grad, loss, params, x)
    assert (jax.config.jax_enable_x64, jax.config.jax_default_matmul_precision) == before
    assert jnp.zeros(()).dtype == jnp.float32


def test_zero_gradient_leaf_passes_on_atol():
    params = {"a": jnp.ones(3), "unused": jnp.ones(2)}

    def f(p):
        return jnp.sum(p["a"] ** 2) + 0.0 * jnp.sum(p["unused"])

    report = gradcheck.check_grads(lambda p: {"a": 2 * p["a"], "unused": jnp.full(2, 1e-17)}, f, params)
    assert report.passed


def test_truncated_recurrent_layer_says_why_finite_differences_disagree():
    """LSTM(truncate=k): the rule and jax.grad cut the gradient, finite differences see all of it. The report
    counts only the jax.grad columns, names the layer in a note, and still shows the finite-difference errors."""
    from jaxnets import layers as L

    report = gradcheck.check_layer(L.serial(L.Dense(4), L.LSTM(3, truncate=2)), (2, 5, 4), dtypes=("float32",))
    assert report.passed, str(report)
    assert any(": LSTM(3, truncate=2)" in note and "truncates the gradient by design" in note for note in report.notes)
    assert "note: the rule truncates the gradient by design" in str(report)
    assert report.max_relative_error("float64 vs finite diff.") > 1e-2  # the untruncated derivative, shown
    # marked untruncated by the caller: the finite differences count, and the verdict is FAILED
    strict = gradcheck.check_layer(L.LSTM(3, truncate=2), (2, 5, 4), dtypes=("float32",), truncated=False)
    assert not strict.passed and not strict.notes
    # the same layer without truncation passes every column, finite differences included
    assert gradcheck.check_layer(L.LSTM(3), (2, 5, 4), dtypes=("float32",)).passed
