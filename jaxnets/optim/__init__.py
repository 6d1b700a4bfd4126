"""Hand-written optimizers, each a drop-in twin of the optax optimizer of the same name.

Every optimizer here is written from its update equations (see its
docstring), takes the same arguments with the same names and defaults as
``optax.<name>``, and returns an ``optax.GradientTransformation``: use it in
``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``, under
``jit``, ``vmap`` and ``lax.scan``. :func:`compare` runs one beside its optax
twin (or any reference) and reports how far apart their parameters are.
"""

from jaxnets.optim.adagrad import AdagradState, adagrad
from jaxnets.optim.adam import AdamaxState, AdamState, AmsgradState, adam, adamax, adamw, amsgrad, nadam
from jaxnets.optim.compare import Comparison, Problem, compare, quadratic_problem, rosenbrock_problem
from jaxnets.optim.lion import LionState, lion
from jaxnets.optim.rmsprop import RmspropState, rmsprop
from jaxnets.optim.sgd import SgdState, sgd

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam", "amsgrad", "lion")

__all__ = [
    "sgd", "adagrad", "rmsprop", "adam", "adamw", "adamax", "nadam", "amsgrad", "lion",  # OPTIMIZERS, spelled out for type checkers
    "SgdState",
    "AdagradState",
    "RmspropState",
    "AdamState",
    "AdamaxState",
    "AmsgradState",
    "LionState",
    "compare",
    "Comparison",
    "Problem",
    "quadratic_problem",
    "rosenbrock_problem",
    "OPTIMIZERS",
]
