"""The privacy a DP-SGD run spends, from Google's dp-accounting (the ``privacy`` extra).

A DP-SGD step (:func:`jaxnets.per_example.dp_gradient`) clips each example's
gradient to norm ``C`` and adds ``N(0, sigma^2 C^2)`` noise to their sum,
with ``sigma`` the noise multiplier; each example is in a step's batch with
probability ``q``, the sample rate (``batch_size / num_examples``). One step
is the *Poisson-sampled Gaussian mechanism*; a run is ``steps`` of them
composed. This module states that run as a ``dp_accounting`` event and asks
one of its accountants for the ``(epsilon, delta)`` guarantee:

* ``"rdp"``: Rényi DP (Mironov 2017; the sampled Gaussian mechanism's RDP of
  Mironov, Talwar and Zhang 2019), composed additively over the steps and
  converted to ``(epsilon, delta)`` with the tighter conversion of Balle et
  al. 2020 and Canonne, Kamath and Steinke 2020, minimised over
  dp-accounting's default orders. Fast (milliseconds).
* ``"pld"``: privacy loss distributions (Koskela et al. 2020; Doroshenko et
  al. 2022), composed numerically: a tighter epsilon, seconds for thousands
  of steps.

Both are upper bounds for the mechanism as stated. Caveat, as in every
DP-SGD accounting: they assume Poisson sampling, while ``fit`` takes
shuffled batches of a fixed size without replacement; the figure is the
customary approximation.

Needs ``pip install 'jaxnets[privacy]'`` (dp-accounting); this module
imports without it and raises an ``ImportError`` naming the extra when a
function is called.

Example::

    >>> from jaxnets import privacy
    >>> privacy.epsilon(1.1, 64 / 1437, 660, 1e-5)                   # RDP
    7.03...
    >>> privacy.epsilon(1.1, 64 / 1437, 660, 1e-5, accountant="pld")
    6.40...
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["ACCOUNTANTS", "dp_sgd_event", "epsilon", "noise_for_epsilon"]

#: The accountants :func:`epsilon` takes.
ACCOUNTANTS = ("rdp", "pld")

_EXTRA_MSG = "{what} needs dp-accounting: pip install 'jaxnets[privacy]' ({error})"


def _dp_accounting(what: str):
    try:
        import dp_accounting
        from dp_accounting import pld, rdp  # noqa: F401  (the accountants' submodules)
    except ImportError as error:
        raise ImportError(_EXTRA_MSG.format(what=what, error=error)) from error
    return dp_accounting


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check(noise_multiplier: Any, sample_rate: Any, steps: Any, delta: Any | None, accountant: str) -> tuple[Any, ...]:
    sigma = _real(noise_multiplier, "noise_multiplier")
    if not 0 < sigma < math.inf:
        raise ValueError(f"noise_multiplier must be > 0 (without noise epsilon is infinite), got {noise_multiplier}")
    q = _real(sample_rate, "sample_rate")
    if not 0 < q <= 1:
        raise ValueError(f"sample_rate (each example's probability of being in a batch: batch_size / num_examples) "
                         f"must be in (0, 1], got {sample_rate}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if delta is not None:
        d = _real(delta, "delta")
        if not 0 < d < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    return sigma, q, int(steps)


def dp_sgd_event(noise_multiplier: float, sample_rate: float, steps: int) -> Any:  # a dp_accounting.DpEvent (optional extra)
    """The ``dp_accounting.DpEvent`` of a DP-SGD run: ``steps`` Poisson-sampled Gaussian mechanisms.

    For one's own accountant, or to compose a run with other events.

    Raises:
      ImportError: without dp-accounting (the ``privacy`` extra).
      ValueError: for a noise multiplier <= 0, a sample rate outside (0, 1] or negative steps.
    """
    sigma, q, steps = _check(noise_multiplier, sample_rate, steps, None, "rdp")
    dp = _dp_accounting("dp_sgd_event")
    return dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps)


def _accountant(dp, accountant: str):
    return dp.rdp.RdpAccountant() if accountant == "rdp" else dp.pld.PLDAccountant()


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, *, accountant: str = "rdp") -> float:
    """Epsilon of DP-SGD at ``delta`` after ``steps`` steps (dp-accounting's ``rdp`` or ``pld`` accountant).

    Args:
      noise_multiplier: ``sigma``: the noise's standard deviation over the clip norm
        (``dp_gradient``'s ``noise_multiplier``).
      sample_rate: ``q``, each example's probability of being in a step's batch
        (``batch_size / num_examples``).
      steps: the number of steps taken (``epochs * num_examples // batch_size``).
      delta: the ``delta`` of ``(epsilon, delta)``-DP; customarily below ``1 / num_examples``.
      accountant: ``"rdp"`` (Rényi DP, fast) or ``"pld"`` (privacy loss distributions, tighter, slower).

    Returns:
      epsilon (``0.0`` after no step). It grows with ``steps`` and ``sample_rate``
      and falls with ``noise_multiplier`` and ``delta``.

    Raises:
      ImportError: without dp-accounting (the ``privacy`` extra).
      TypeError: for an argument that is not a number.
      ValueError: for a noise multiplier <= 0, a sample rate outside (0, 1], negative steps, a delta outside
        (0, 1) or an unknown accountant.
    """
    sigma, q, steps = _check(noise_multiplier, sample_rate, steps, delta, accountant)
    dp = _dp_accounting("jaxnets.privacy.epsilon")
    if steps == 0:
        return 0.0
    acc = _accountant(dp, accountant)
    acc.compose(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps)
    return float(acc.get_epsilon(float(delta)))


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float, *,
                      accountant: str = "rdp", tol: float = 1e-4) -> float:
    """The smallest noise multiplier (within ``tol``) whose DP-SGD run spends at most ``target_epsilon``.

    dp-accounting's ``calibrate_dp_mechanism`` (Brent's method over the noise
    multiplier, each trial a fresh accountant); ``epsilon(result, ...)`` is at
    most ``target_epsilon``. With ``"pld"`` each trial takes seconds.

    Args:
      target_epsilon: the privacy budget, > 0.
      sample_rate, steps, delta, accountant: as for :func:`epsilon`.
      tol: the tolerance on the noise multiplier.

    Raises:
      ImportError: without dp-accounting (the ``privacy`` extra).
      ValueError: for a target epsilon <= 0 or ``tol`` <= 0, and as :func:`epsilon`.
    """
    eps = _real(target_epsilon, "target_epsilon")
    if not 0 < eps < math.inf:
        raise ValueError(f"target_epsilon must be > 0 and finite, got {target_epsilon}")
    if not 0 < _real(tol, "tol"):
        raise ValueError(f"tol must be > 0, got {tol}")
    _, q, steps = _check(1.0, sample_rate, steps, delta, accountant)
    if steps == 0:
        raise ValueError("steps must be >= 1 to calibrate noise: no step spends no privacy at any noise")
    dp = _dp_accounting("jaxnets.privacy.noise_for_epsilon")
    return float(dp.calibrate_dp_mechanism(
        lambda: _accountant(dp, accountant),
        lambda sigma: dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps),
        eps, float(delta), tol=float(tol)))
