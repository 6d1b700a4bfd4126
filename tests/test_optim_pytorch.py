"""The conventions table in docs/optimizers/05_conventions.md, checked against PyTorch itself.

PyTorch is not a dependency: these tests run where it is installed
(``pip install torch``) and are skipped elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnets import optim

torch = pytest.importorskip("torch", reason="PyTorch is not installed; these tests check the PyTorch conventions table")

STANDARD_PROMOTION_REASON = "x64 runs of optax-style updates mix int32 counts and floats"


def trajectory_torch(cls, p0, grads, **kwargs):
    p = torch.tensor(p0.copy(), dtype=torch.float64, requires_grad=True)
    opt = cls([p], **kwargs)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


def trajectory_jaxnets(opt, p0, grads):
    with jax.enable_x64(True):
        p = jnp.asarray(p0, jnp.float64)
        state = opt.init(p)
        out = []
        for g in grads:
            u, state = opt.update(jnp.asarray(g, jnp.float64), state, p)
            p = optax.apply_updates(p, u)
            out.append(np.asarray(p))
    return np.array(out)


def relative_deviation(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


SAME = [
    ("SGD momentum", lambda: torch.optim.SGD, dict(lr=0.01, momentum=0.9), lambda: optim.sgd(0.01, momentum=0.9), 1e-12),
    ("SGD nesterov", lambda: torch.optim.SGD, dict(lr=0.01, momentum=0.9, nesterov=True), lambda: optim.sgd(0.01, momentum=0.9, nesterov=True), 1e-12),
    ("Adagrad", lambda: torch.optim.Adagrad, dict(lr=0.1), lambda: optim.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0), 1e-9),
    ("RMSprop", lambda: torch.optim.RMSprop, dict(lr=0.01), lambda: optim.rmsprop(0.01, decay=0.99, eps_in_sqrt=False), 1e-12),
    ("RMSprop centred momentum", lambda: torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True),
     lambda: optim.rmsprop(0.01, decay=0.99, eps_in_sqrt=False, momentum=0.9, centered=True), 1e-12),
    ("Adam", lambda: torch.optim.Adam, dict(lr=0.01), lambda: optim.adam(0.01), 1e-12),
    ("AdamW", lambda: torch.optim.AdamW, dict(lr=0.01, weight_decay=1e-2), lambda: optim.adamw(0.01, weight_decay=1e-2), 1e-12),
    ("Adamax", lambda: torch.optim.Adamax, dict(lr=0.01), lambda: optim.adamax(0.01), 1e-12),
]

DIFFERENT = [
    ("Adagrad defaults", lambda: torch.optim.Adagrad, dict(lr=0.1), lambda: optim.adagrad(0.1)),
    ("RMSprop defaults", lambda: torch.optim.RMSprop, dict(lr=0.01), lambda: optim.rmsprop(0.01)),
    ("AMSGrad", lambda: torch.optim.Adam, dict(lr=0.01, amsgrad=True), lambda: optim.amsgrad(0.01)),
    ("AMSGrad uncorrected", lambda: torch.optim.Adam, dict(lr=0.01, amsgrad=True), lambda: optim.amsgrad(0.01, bias_correction_nu=False)),
    ("NAdam", lambda: torch.optim.NAdam, dict(lr=0.01, momentum_decay=0.0), lambda: optim.nadam(0.01)),
]


@pytest.fixture
def stream():
    rng = np.random.default_rng(0)
    return rng.normal(size=5), rng.normal(size=(100, 5))


@pytest.mark.parametrize("name,torch_cls,torch_kwargs,ours,tol", SAME, ids=[s[0] for s in SAME])
def test_equivalent_settings(name, torch_cls, torch_kwargs, ours, tol, stream):
    p0, grads = stream
    assert relative_deviation(trajectory_jaxnets(ours(), p0, grads), trajectory_torch(torch_cls(), p0, grads, **torch_kwargs)) <= tol


@pytest.mark.parametrize("name,torch_cls,torch_kwargs,ours", DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_documented_differences_are_real(name, torch_cls, torch_kwargs, ours, stream):
    p0, grads = stream
    assert relative_deviation(trajectory_jaxnets(ours(), p0, grads), trajectory_torch(torch_cls(), p0, grads, **torch_kwargs)) > 1e-3
