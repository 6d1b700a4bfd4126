"""jaxnets: functional neural networks on JAX.

Networks are pairs of pure functions over parameter pytrees (:mod:`jaxnets.layers`);
``jax.grad`` is backpropagation; :mod:`jaxnets.train` compiles whole epochs.

Modules, from the bottom up:

* :mod:`jaxnets.activations`, :mod:`jaxnets.initializers`
* :mod:`jaxnets.layers`, :mod:`jaxnets.losses`
* :mod:`jaxnets.train`
* :mod:`jaxnets.data`
"""

from jaxnets import activations, data, initializers, layers, losses, train
from jaxnets.layers import Layer, count_params, parallel, residual, serial
from jaxnets.train import TrainState, evaluate, fit, init_train_state, make_train_step, predict

__version__ = "0.1.0"

__all__ = [
    "activations",
    "data",
    "initializers",
    "layers",
    "losses",
    "train",
    "Layer",
    "serial",
    "parallel",
    "residual",
    "count_params",
    "TrainState",
    "init_train_state",
    "make_train_step",
    "fit",
    "evaluate",
    "predict",
]
