"""Gradient accumulation inside the step (train.accumulate_gradients): the update of optax.MultiSteps in one step,
counted by the loop as one step; BatchNorm's state and the keys threaded through the micro-batches in order; loss
scaling composed; bad arguments named."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnets.layers as L
from jaxnets import losses, per_example, precision, train

CE = losses.softmax_cross_entropy_with_integer_labels
N, K, B = 3, 4, 5  # updates, micro-batches per update, examples per micro-batch


def _data(seed=0, n=N):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, K, B, 4)), jax.random.randint(ky, (n, K, B), 0, 3)


def _float64_state(model, opt):
    state = train.init_train_state(model, opt, (-1, 4), seed=0)
    params, model_state = (jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), t) for t in (state.params, state.model_state))
    return state._replace(params=params, opt_state=opt.init(params), model_state=model_state)


def _close(a, b, rtol):
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol), a, b)


@pytest.mark.standard_promotion("optax.MultiSteps divides by its int32 micro-step count")
def test_n_accumulated_updates_equal_multisteps_over_the_same_micro_batches_in_order():
    """N steps of accumulate_gradients(K) on (K, B) batches = MultiSteps(every_k_schedule=K) over the N K micro-batches
    in order: the same params and BatchNorm state (float64), one step per update against K; the params moved."""
    model = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dense(3))
    opt = optax.sgd(0.1, momentum=0.9)  # not scale-invariant: a sum of the micro-gradients for their mean fails
    objective = train.objective_from_loss(model, CE)
    with jax.enable_x64(True):
        x, y = (a.astype(jnp.float64) if a.dtype == jnp.float32 else a for a in _data())
        accumulated = train.make_step(objective, opt, gradient=train.accumulate_gradients(K))
        # optax 0.2.8 accumulates in float32 unless told (accumulator_dtype); 0.2.7 (the floor) in the params' dtype
        wide = {"accumulator_dtype": jnp.float64} if "accumulator_dtype" in inspect.signature(optax.MultiSteps).parameters else {}
        multi = optax.MultiSteps(opt, every_k_schedule=K, **wide)
        micro = train.make_step(objective, multi)
        a, m = _float64_state(model, opt), _float64_state(model, multi)
        start = jax.tree_util.tree_map(jnp.copy, a.params)  # the step donates a
        for t in range(N):
            a, _ = accumulated(a, (x[t], y[t]))
        for t in range(N * K):
            m, _ = micro(m, (x[t // K, t % K], y[t // K, t % K]))
        assert int(a.step) == N and int(m.step) == N * K
        _close(a.params, m.params, 1e-12)
        _close(a.model_state, m.model_state, 1e-12)
        assert all(float(jnp.abs(a.params[n]["w"] - start[n]["w"]).max()) > 1e-3 for n in ("dense_0", "dense_1"))


def test_batchnorm_state_and_keys_thread_through_the_micro_batches_as_by_hand():
    """Micro-batch i gets fold_in(key, i) (Dropout) and the BatchNorm state micro-batch i - 1 left: loss and grads
    are the means of the by-hand ones, floating scalars averaged, the state and other entries the last one's."""
    model = L.serial(L.Dense(8), L.BatchNorm(), L.Relu(), L.Dropout(0.5), L.Dense(3))

    def objective(params, batch, key, model_state):
        x, y = batch
        out, new = model.apply_with_state(params, model_state, x, key=key, train=True)
        return CE(out, y), {"model_state": new, "accuracy": jnp.mean(jnp.argmax(out, -1) == y), "outputs": out}

    with jax.enable_x64(True):
        state = _float64_state(model, optax.sgd(0.1))
        x, y = _data(1, n=1)
        x, y, key = x[0].astype(jnp.float64), y[0], jax.random.key(7)
        (loss, aux), grads = jax.jit(train.accumulate_gradients(K), static_argnums=0)(objective, state.params, (x, y),
                                                                                       key, state.model_state)
        s, values, accuracies, gs = state.model_state, [], [], []
        by_hand = jax.jit(jax.value_and_grad(objective, has_aux=True))
        for i in range(K):
            (v, a), g = by_hand(state.params, (x[i], y[i]), jax.random.fold_in(key, i), s)
            s = a["model_state"]
            values, accuracies, gs = values + [v], accuracies + [a["accuracy"]], gs + [g]
        np.testing.assert_allclose(loss, np.mean(values), rtol=1e-12)
        np.testing.assert_allclose(aux["accuracy"], np.mean(accuracies), rtol=1e-12)
        _close(grads, jax.tree_util.tree_map(lambda *g: sum(g) / K, *gs), 1e-12)
        _close(aux["model_state"], s, 1e-12)
        _close(aux["outputs"], a["outputs"], 1e-12)
        assert sorted(aux) == ["accuracy", "model_state", "outputs"]
        assert not np.allclose(gs[0]["dense_0"]["w"], gs[1]["dense_0"]["w"])  # the micro-batches differ


def test_the_loop_counts_updates_steps_every_and_log_every():
    """On the loop, steps=N, every= and log_every= count updates (state.step N, rows at 2 and 4), the Sampler's step t
    draws update t's (K, B) batch, and the run equals a hand loop of the accumulated step."""
    model, opt = L.serial(L.Dense(8), L.Relu(), L.Dense(3)), optax.sgd(0.1)
    step = train.make_step(train.objective_from_loss(model, CE), opt, gradient=train.accumulate_gradients(K), jit=False)
    x, y = _data(2, n=4)
    source = train.Sampler(lambda key, t, d: jax.tree_util.tree_map(lambda a: a[t], d), data=(x, y))
    seen = []
    state, history = train.loop(step, train.init_train_state(model, opt, (-1, 4), seed=0), source, steps=4, log_every=2,
                                callbacks=[train.Hook(lambda p: seen.append(p.step), every=2)])
    assert int(state.step) == 4 and history["step"] == [2, 4] and seen == [2, 4]
    by_hand, losses_ = train.init_train_state(model, opt, (-1, 4), seed=0), []
    for t in range(4):
        by_hand, metrics = jax.jit(step)(by_hand, (x[t], y[t]))
        losses_.append(float(metrics["loss"]))
    _close(state.params, by_hand.params, 1e-5)
    np.testing.assert_allclose(history["train_loss"], [np.mean(losses_[:2]), np.mean(losses_[2:])], rtol=1e-5)


@pytest.mark.standard_promotion("loss_scaling's dynamic scale mixes its int32 counters with floats")
def test_loss_scaling_composes_and_a_gradient_not_linear_in_the_loss_stays_refused():
    """Behind a loss scale of 2**10 the accumulated step takes the unscaled step's update; dp_gradient accumulated is
    still not linear in the loss, so make_step with loss scaling refuses it."""
    model, opt = L.serial(L.Dense(8), L.Relu(), L.Dense(3)), optax.sgd(0.1)
    objective, gradient = train.objective_from_loss(model, CE), train.accumulate_gradients(K)
    x, y = _data(3, n=1)
    plain, _ = train.make_step(objective, opt, gradient=gradient)(train.init_train_state(model, opt, (-1, 4), seed=0),
                                                                  (x[0], y[0]))
    scaled_opt = precision.loss_scaling(opt, 2.0 ** 10)
    scaled, metrics = train.make_step(objective, scaled_opt, gradient=gradient)(
        train.init_train_state(model, scaled_opt, (-1, 4), seed=0), (x[0], y[0]))
    _close(scaled.params, plain.params, 1e-6)
    assert float(metrics["loss_scale"]) == 2.0 ** 10 and float(metrics["skipped_steps"]) == 0
    dp = train.accumulate_gradients(K, per_example.dp_gradient(1.0, 0.5))
    assert gradient.linear_in_loss and not dp.linear_in_loss
    with pytest.raises(TypeError, match=r"gradient accumulate_gradients\(4, dp_gradient.*is not linear in the loss"):
        train.make_step(objective, scaled_opt, gradient=dp)(train.init_train_state(model, scaled_opt, (-1, 4), seed=0),
                                                           (x[0], y[0]))


def test_bad_arguments_and_batches_are_named():
    """micro_batches, gradient, the batch's leading axis (at trace time) and a model state of another structure."""
    for bad, error, match in ((0, ValueError, r"micro_batches must be a positive integer, got 0"),
                              (2.0, TypeError, r"micro_batches must be a positive integer, got 2.0 of type float"),
                              (True, TypeError, r"micro_batches must be a positive integer, got True")):
        with pytest.raises(error, match=match):
            train.accumulate_gradients(bad)
    with pytest.raises(TypeError, match=r"gradient must be callable as gradient\(objective, params, batch, key"):
        train.accumulate_gradients(2, "dp")
    with pytest.raises(TypeError, match=r"gradient stacked_gradient returns per-example gradients \(per_example = True\)"):
        train.accumulate_gradients(2, per_example.stacked_gradient)
    assert train.accumulate_gradients(2) is train.accumulate_gradients(2)  # the same function: programs are reused
    model, opt = L.serial(L.Dense(3)), optax.sgd(0.1)
    state, step = train.init_train_state(model, opt, (-1, 4), seed=0), train.make_step(
        train.objective_from_loss(model, CE), opt, gradient=train.accumulate_gradients(K))
    x, y = _data(4, n=1)
    with pytest.raises(ValueError, match=r"accumulate_gradients\(4\) needs every batch leaf to have a leading axis of "
                                         r"micro_batches=4.*got batch\[1\] of shape \(3, 5\)"):
        step(state, (x[0], y[0, :3]))

    def objective(params, batch, key, model_state):
        return jnp.sum(params["dense_0"]["w"]) * 0.0, {"model_state": {"extra": jnp.zeros(())}}

    with pytest.raises(ValueError, match=r"objective returned aux\['model_state'\] of structure .* for a model_state"):
        train.accumulate_gradients(K)(objective, state.params, x[0], state.key, state.model_state)
