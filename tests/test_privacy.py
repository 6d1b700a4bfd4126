"""jaxnets.privacy against dp-accounting used directly, the Gaussian mechanism's exact privacy curve, and monotonicity."""

from __future__ import annotations

import math
import sys

import pytest
from scipy import optimize, stats

from jaxnets import privacy

dp_accounting = pytest.importorskip("dp_accounting", reason="needs the privacy extra: pip install -e '.[test]'")
from dp_accounting import pld, rdp  # noqa: E402

# the stax DP-SGD example's settings on digits (experiments/dp_sgd.py): batch 64 of 1437, 30 epochs of 22 steps
Q, SIGMA, STEPS, DELTA = 64 / 1437, 1.1, 30 * (1437 // 64), 1e-5


def test_rdp_equals_dp_accountings_rdp_accountant_composed_by_hand():
    accountant = rdp.RdpAccountant()
    for _ in range(3):  # three compositions of 220 steps each: composition is additive
        accountant.compose(dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), STEPS // 3)
    assert privacy.epsilon(SIGMA, Q, STEPS, DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)
    event = privacy.dp_sgd_event(SIGMA, Q, STEPS)
    by_event = rdp.RdpAccountant()
    by_event.compose(event)
    assert by_event.get_epsilon(DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)


def test_pld_equals_dp_accountings_pld_accountant():
    accountant = pld.PLDAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.5)), 40)
    assert privacy.epsilon(1.5, 0.1, 40, DELTA, accountant="pld") == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon of a Gaussian mechanism of sensitivity 1 over noise std 1/mu (Balle and Wang 2018, Thm. 8):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    curve = lambda eps: stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta  # noqa: E731
    return optimize.brentq(curve, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("sigma, steps", [(1.0, 1), (2.0, 10), (4.0, 50)])
def test_without_sampling_both_bound_the_exact_gaussian_curve_and_pld_is_tight(sigma, steps):
    """With q = 1, T steps of noise sigma are one Gaussian mechanism with mu = sqrt(T) / sigma, whose curve is exact."""
    exact = gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    by_pld = privacy.epsilon(sigma, 1.0, steps, DELTA, accountant="pld")
    by_rdp = privacy.epsilon(sigma, 1.0, steps, DELTA)
    assert exact <= by_pld <= exact * (1 + 2e-3)  # PLD: an upper bound up to its 1e-4 discretisation of the loss
    assert by_pld < by_rdp < exact * 1.5  # RDP: looser; here by 10-30%


def test_epsilon_grows_with_steps_and_sample_rate_and_falls_with_noise_and_delta():
    steps = [0, 1, 10, 100, 1000]
    by_steps = [privacy.epsilon(SIGMA, Q, t, DELTA) for t in steps]
    assert by_steps[0] == 0.0 and all(a < b for a, b in zip(by_steps, by_steps[1:]))
    by_noise = [privacy.epsilon(s, Q, 100, DELTA) for s in (0.6, 0.8, 1.1, 2.0, 4.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:]))
    by_rate = [privacy.epsilon(SIGMA, q, 100, DELTA) for q in (0.001, 0.01, 0.1, 1.0)]
    assert all(a < b for a, b in zip(by_rate, by_rate[1:]))
    by_delta = [privacy.epsilon(SIGMA, Q, 100, d) for d in (1e-7, 1e-5, 1e-3)]
    assert all(a > b for a, b in zip(by_delta, by_delta[1:]))


def test_the_dp_sgd_experiments_settings():
    """The figures experiments/dp_sgd.py reports: RDP 7.03 and PLD 6.40 at (64/1437, 1.1, 660 steps, 1e-5)."""
    by_rdp, by_pld = privacy.epsilon(SIGMA, Q, STEPS, DELTA), privacy.epsilon(SIGMA, Q, STEPS, DELTA, accountant="pld")
    assert round(by_rdp, 2) == 7.03 and round(by_pld, 2) == 6.40


def test_noise_for_epsilon_inverts_epsilon():
    sigma = privacy.noise_for_epsilon(4.0, Q, 200, DELTA, tol=1e-2)
    assert privacy.epsilon(sigma, Q, 200, DELTA) <= 4.0 < privacy.epsilon(sigma - 2e-2, Q, 200, DELTA)  # no less noise would do


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(noise_multiplier=0.0), ValueError, "noise_multiplier must be > 0"),
    (dict(noise_multiplier="1"), TypeError, "noise_multiplier must be a real number"),
    (dict(sample_rate=0.0), ValueError, r"sample_rate .* must be in \(0, 1\], got 0.0"),
    (dict(sample_rate=1.5), ValueError, r"sample_rate .* must be in \(0, 1\]"),
    (dict(steps=-1), ValueError, "steps must be an int >= 0, got -1"),
    (dict(steps=2.5), ValueError, "steps must be an int >= 0"),
    (dict(delta=0.0), ValueError, r"delta must be in \(0, 1\), got 0.0"),
    (dict(accountant="moments"), ValueError, r"accountant must be one of \('rdp', 'pld'\), got 'moments'"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(noise_multiplier=SIGMA, sample_rate=Q, steps=10, delta=DELTA) | kwargs
    accountant = args.pop("accountant", "rdp")
    with pytest.raises(error, match=match):
        privacy.epsilon(**args, accountant=accountant)
    with pytest.raises(ValueError, match="target_epsilon must be > 0"):
        privacy.noise_for_epsilon(0.0, Q, 10, DELTA)


def test_without_dp_accounting_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import dp_accounting raises ImportError
    with pytest.raises(ImportError, match=r"needs dp-accounting: pip install 'jaxnets\[privacy\]'"):
        privacy.epsilon(SIGMA, Q, 10, DELTA)
