"""Private selection (fedrec.privacy.selection): one trial's epsilon against Opacus, the
repeat-and-select bound against the paper's formula computed by hand, the number of
trials against its distribution, and the releases of a run against its own accounting."""

import math
from dataclasses import replace

import numpy as np
import pytest

from fedrec.config import FedConfig
from fedrec.privacy.accounting import epsilon
from fedrec.privacy.calibration import planned_steps, resolved
from fedrec.privacy.mechanisms import InteractionLevel, PrivateALS, UserLevel
from fedrec.privacy.selection import _ORDERS, Trials, selection_epsilon, single_epsilon, trial_releases


@pytest.mark.parametrize("releases", [
    [(2.86, 0.3, 200)],  # the DP-SGD preset's epsilon 8
    [(17.3, 0.3, 200)],  # ... and epsilon 1
    [(5.0, 1.0, 1), (1.2, 0.1, 500)],  # a prior released once, then subsampled steps
    [(1.3, 1.0, 4)],
])
def test_one_trial_is_accounted_as_opacus_accounts_it(releases):
    *extra, (z, q, s) = releases
    ours = single_epsilon(releases, delta=1e-5)
    opacus = epsilon(noise_multiplier=z, sample_rate=q, steps=s, delta=1e-5, extra=tuple(extra))
    assert ours == pytest.approx(opacus, rel=0.01)


def _conversion(rdp: np.ndarray, orders: np.ndarray, delta: float) -> float:
    """RDP -> (epsilon, delta) (Balle et al. 2020, Proposition 12, as Opacus and dp_accounting use it)."""
    eps = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    return float(np.min(eps))


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 3.0])
def test_repeat_and_select_is_the_papers_theorem_2_computed_by_hand(shape):
    """A Gaussian mechanism (noise z, sensitivity 1, q = 1) run `steps` times has RDP
    steps * a / (2 z^2) at order a.  Papernot & Steinke, Theorem 2: the best of K ~ TNB(eta,
    gamma) trials has RDP eps(a) + (1 + eta) min_b [(1 - 1/b) eps(b) + log(1/gamma)/b]
    + log(E[K]) / (a - 1), then monotone in the order."""
    z, steps, mean, delta = 3.0, 5, 10.0, 1e-5
    orders = np.asarray(_ORDERS, dtype=float)
    rdp = steps * orders / (2 * z * z)
    trials = Trials(mean, shape)
    g = trials.gamma
    c = (1 + shape) * np.min((1 - 1 / orders) * rdp + math.log(1 / g) / orders)
    out = rdp + c + math.log(mean) / (orders - 1)
    out = np.array([out[orders >= a].min() for a in orders])
    assert selection_epsilon([(z, 1.0, steps)], trials, delta=delta) == pytest.approx(
        _conversion(out, orders, delta), rel=1e-6)


def test_selection_costs_more_than_one_trial_and_grows_with_the_trials():
    r = [(2.86, 0.3, 200)]
    one = single_epsilon(r, delta=1e-5)
    few, many = (selection_epsilon(r, Trials(m), delta=1e-5) for m in (3, 30))
    assert one < few < many
    assert selection_epsilon(r, Trials(10, math.inf), delta=1e-5) > one  # Poisson
    scored = selection_epsilon(r, Trials(10), delta=1e-5, score_noise=2.0)
    assert scored > selection_epsilon(r, Trials(10), delta=1e-5)  # the noisy score is accounted
    assert math.isinf(selection_epsilon([(0.0, 1.0, 3)], Trials(3), delta=1e-5))


@pytest.mark.parametrize("shape", [0.0, 0.5, 1.0, 3.0])
def test_the_number_of_trials_follows_its_distribution(shape):
    from dp_accounting.rdp.rdp_privacy_accountant import _gamma_truncated_negative_binomial

    trials = Trials(8.0, shape)
    assert trials.gamma == pytest.approx(_gamma_truncated_negative_binomial(shape, 8.0), rel=1e-6)
    k = np.arange(1, 5000)
    p = np.array([trials.pmf(int(x)) for x in k])
    assert p.sum() == pytest.approx(1.0, abs=1e-9) and (k * p).sum() == pytest.approx(8.0, rel=1e-6)
    rng = np.random.default_rng(0)
    draws = np.array([trials.draw(rng) for _ in range(20000)])
    sd = math.sqrt(((k - 8.0) ** 2 * p).sum())
    assert abs(draws.mean() - 8.0) < 4 * sd / math.sqrt(len(draws))
    for v in (1, 2, 5):
        f = (draws == v).mean()
        assert abs(f - trials.pmf(v)) < 4 * math.sqrt(trials.pmf(v) * (1 - trials.pmf(v)) / len(draws))


def test_bad_distributions_are_refused():
    with pytest.raises(ValueError, match="mean"):
        Trials(0.5)
    with pytest.raises(ValueError, match="shape"):
        Trials(4, -1)
    assert Trials(4, math.inf).pmf(0) == pytest.approx(math.exp(-4))


def test_a_runs_releases_are_what_its_own_accounting_composes():
    base = FedConfig(data="synthetic:20x30:0", num_server_rounds=50)
    sgd = resolved(replace(base, target_epsilon=4.0, sample_rate=0.3, prior_noise=5.0))
    assert single_epsilon(trial_releases(sgd), delta=sgd.delta) == pytest.approx(
        InteractionLevel.from_config(sgd).epsilon(planned_steps(sgd)), rel=0.01)
    user = resolved(replace(base, user_dp="client", user_target_epsilon=2.0, user_sample_rate=0.5))
    assert single_epsilon(trial_releases(user), delta=user.delta) == pytest.approx(
        UserLevel.from_config(user).epsilon(50), rel=0.01)
    als = resolved(replace(base, als=True, als_target_epsilon=8.0))
    assert single_epsilon(trial_releases(als), delta=als.delta) == pytest.approx(
        PrivateALS.from_config(als).epsilon(), rel=0.01)
    assert trial_releases(base) == ()
