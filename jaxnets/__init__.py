"""jaxnets: functional neural networks on JAX.

Networks are pairs of pure functions over parameter pytrees (:mod:`jaxnets.layers`);
``jax.grad`` is backpropagation; :mod:`jaxnets.train` compiles whole epochs.

Modules, from the bottom up:

* :mod:`jaxnets.activations`, :mod:`jaxnets.initializers`: functions and their hand-derived derivatives
* :mod:`jaxnets.layers`, :mod:`jaxnets.losses`: layers and losses, each with its backward rule
* :mod:`jaxnets.backprop`, :mod:`jaxnets.gradcheck`: whole-model hand gradients; checking them
* :mod:`jaxnets.optim`: hand-written optimizers, twins of optax's
* :mod:`jaxnets.train`: train state, the general step, sources, the general loop with callbacks, ``fit`` on it
* :mod:`jaxnets.evaluation`: ``predict`` and ``evaluate`` (pytree outputs, random evaluation)
* :mod:`jaxnets.generate`: autoregressive sampling (temperature, top-k, top-p) and greedy decoding, with a key/value cache
* :mod:`jaxnets.checkpoint`: orbax checkpoints of whole runs; params in safetensors (the ``checkpoint`` extra)
* :mod:`jaxnets.population`: many models (seeds, hyperparameters) trained at once under ``vmap``
* :mod:`jaxnets.distributed`: meshes, shardings, processes (data parallel ``fit``, FSDP, ``jax.distributed``)
* :mod:`jaxnets.per_example`: per-example gradients and clipping
* :mod:`jaxnets.data`: the embedded digits, synthetic sets, local files
* :mod:`jaxnets.streaming`: training from host arrays, memory-mapped files or grain sources, in prefetched chunks
* :mod:`jaxnets.porting`: params trained with stax or flax.linen, loaded into jaxnets models
"""

from jaxnets import (activations, backprop, data, distributed, evaluation, generate, gradcheck, initializers, layers, losses,
                     optim, per_example, population, porting, streaming, train)
from jaxnets.layers import Layer, count_params, define_layer, parallel, residual, serial
from jaxnets.population import fit_population
from jaxnets.train import (ArraySource, Callback, EarlyStopping, Evaluate, History, HistoryFile, NonFiniteError, Progress,
                           ProgressBar, Sampler, Source, TensorBoard, TrainState, early_stopping, evaluate, fit,
                           init_train_state, loop, make_epoch, make_step, make_train_step, predict, scan_epoch, with_ema)

__version__ = "0.1.0"

__all__ = [
    "activations",
    "backprop",
    "data",
    "distributed",
    "gradcheck",
    "initializers",
    "layers",
    "losses",
    "optim",
    "train",
    "evaluation",
    "generate",
    "population",
    "per_example",
    "porting",
    "streaming",
    "Layer",
    "define_layer",
    "serial",
    "parallel",
    "residual",
    "count_params",
    "TrainState",
    "init_train_state",
    "make_train_step",
    "make_epoch",
    "make_step",
    "scan_epoch",
    "early_stopping",
    "Progress",
    "NonFiniteError",
    "fit_population",
    "fit",
    "loop",
    "Source",
    "ArraySource",
    "Sampler",
    "Callback",
    "Evaluate",
    "EarlyStopping",
    "HistoryFile",
    "TensorBoard",
    "ProgressBar",
    "History",
    "with_ema",
    "evaluate",
    "predict",
]
