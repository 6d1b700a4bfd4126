"""Training: the train state, the general step, sources, one program builder, the general loop, callbacks, and ``fit``.

One concept per module:

* :mod:`~jaxnets.train.state`: :class:`TrainState`, :func:`init_train_state`, the keys derived from its counter;
* :mod:`~jaxnets.train.step`: :func:`make_step` (any objective), :func:`make_train_step` (a model and a loss);
* :mod:`~jaxnets.train.accumulate`: :func:`accumulate_gradients`, micro-batches averaged inside one step (one update);
* :mod:`~jaxnets.train.epoch`: the shuffled order, :func:`epoch_indices`, :func:`scan_epoch`, :func:`make_epoch`;
* :mod:`~jaxnets.train.sources`: the :class:`Source` protocol, :class:`ArraySource`, :class:`Sampler`;
* :mod:`~jaxnets.train.program`: the one program builder (segments of a step over any source, fused);
* :mod:`~jaxnets.train.loop`: :func:`loop`, any step over any state for steps or epochs;
* :mod:`~jaxnets.train.callbacks` and one module per callback: :class:`Evaluate` (:mod:`~jaxnets.train.scoring`),
  :class:`EarlyStopping`, :class:`HistoryFile`, :class:`TensorBoard`, :class:`ProgressBar`
  (and :class:`jaxnets.checkpoint.Checkpoint`, outside this package);
* :mod:`~jaxnets.train.ema`: :func:`with_ema`, a moving average of params inside the step;
* :mod:`~jaxnets.train.fit`: :func:`fit`, the supervised preset (:mod:`~jaxnets.train.setup` checks and
  builds its parts; :mod:`~jaxnets.train.retired` maps 0.1's keywords).
"""

from jaxnets.evaluation import evaluate, predict
from jaxnets.train.accumulate import accumulate_gradients
from jaxnets.train.callbacks import Callback, Hook, Progress, Resume
from jaxnets.train.early_stopping import EarlyStopping, early_stopping
from jaxnets.train.ema import EmaState, ema_state, with_ema
from jaxnets.train.epoch import (SCALE_METRICS, epoch_indices, first_nonfinite, make_epoch, permutation, scan_epoch,
                                 steps_per_epoch)
from jaxnets.train.scoring import Evaluate, evaluator
from jaxnets.train.fit import fit
from jaxnets.train.history import History, NonFiniteError
from jaxnets.train.history_file import HistoryFile
from jaxnets.train.loop import Run, loop
from jaxnets.train.program import hyperparams
from jaxnets.train.progress_bar import ProgressBar
from jaxnets.train.sources import ArraySource, Sampler, Source, fingerprint
from jaxnets.train.state import TrainState, eval_key, init_train_state, model_key, shuffle_key
from jaxnets.train.step import default_gradient, donating_jit, make_step, make_train_step, objective_from_loss
from jaxnets.train.tensorboard import TensorBoard

__all__ = [
    "TrainState", "init_train_state", "model_key", "shuffle_key", "eval_key",
    "objective_from_loss", "default_gradient", "make_step", "make_train_step", "donating_jit", "accumulate_gradients",
    "permutation", "epoch_indices", "steps_per_epoch", "scan_epoch", "make_epoch", "first_nonfinite", "SCALE_METRICS",
    "Source", "ArraySource", "Sampler", "fingerprint",
    "loop", "Run", "History", "NonFiniteError", "hyperparams",
    "Callback", "Hook", "Progress", "Resume", "Evaluate", "evaluator", "EarlyStopping", "early_stopping",
    "HistoryFile", "TensorBoard", "ProgressBar",
    "EmaState", "ema_state", "with_ema",
    "fit", "evaluate", "predict",
]
