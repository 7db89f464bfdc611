"""Private selection: the best of a random number of private trials, accounted.

Choosing hyper-parameters on validation data is a use of that data.  Papernot and
Steinke (*Hyperparameter Tuning with Renyi Differential Privacy*, ICLR 2022) bound it:
run a private trial ``Q`` (training plus a noisy validation score) a random number
``K`` of times, each with hyper-parameters drawn at random, and release only the best
trial; if ``K`` follows a truncated negative binomial (including the logarithmic and
geometric distributions) or a Poisson distribution, the whole selection is RDP with a
small overhead over one trial.  The accountant is Google's ``dp_accounting`` (its
``RepeatAndSelectDpEvent``); one trial's own accounting agrees with Opacus's
(a test pins both).

The guarantee needs three things of the caller, which :mod:`fedrec_app` keeps:

- ``K`` is drawn from secret randomness and not released (nor the other trials'
  scores): only the selected trial's output is;
- every trial has the same mechanism (the same noise, sampling and steps), so the bound
  of one trial holds for each; the hyper-parameters searched must not change it (clipping
  norms and learning rates may vary, sampling rates and rounds may not);
- the hyper-parameters are drawn independently of earlier trials (random search, not an
  adaptive sampler).

>>> trials = Trials(mean=10, shape=1.0)  # geometric
>>> round(trials.gamma, 4)
0.1
>>> eps = selection_epsilon([(1.0, 1.0, 10)], trials, delta=1e-5)
>>> eps > single_epsilon([(1.0, 1.0, 10)], delta=1e-5)
True
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Trials", "selection_epsilon", "single_epsilon", "trial_releases", "SCORE_SENSITIVITY"]

#: Sensitivity of the sum over users of a per-user metric in [0, 1] (NDCG@k, HR@k): one user
#: (or one interaction, which touches one user's term) moves it by at most 1.
SCORE_SENSITIVITY = 1.0

Release = tuple[float, float, int]  # (noise multiplier, sampling rate, steps), as fedrec.privacy.accounting


@dataclass(frozen=True)
class Trials:
    """The distribution of the number of trials ``K``.

    Parameters
    ----------
    mean : float
        Expected number of trials (>= 1).
    shape : float
        ``0`` (default): logarithmic, the smallest overhead of the family (at mean 10, an
        epsilon-8 DP-SGD trial selects at 11.75, against 13.41 for geometric and 18.28 for
        Poisson), with the longest tail (``P[K > 60] = 0.022``); ``1``: geometric; in
        between or above: truncated negative binomial with this ``eta`` (Papernot &
        Steinke, Definition 1); ``math.inf``: Poisson (``K`` may be 0: nothing selected).
    """

    mean: float
    shape: float = 0.0

    def __post_init__(self):
        if not (self.mean >= 1 and math.isfinite(self.mean)):
            raise ValueError(f"mean number of trials {self.mean}: must be a finite number >= 1")
        if not self.shape >= 0:
            raise ValueError(f"shape {self.shape}: must be >= 0 (inf: Poisson)")

    @property
    def poisson(self) -> bool:
        return math.isinf(self.shape)

    @functools.cached_property
    def gamma(self) -> float:
        """The truncated negative binomial's halting probability for :attr:`mean`."""
        if self.poisson:
            raise ValueError("a Poisson number of trials has no gamma")
        if self.shape == 1:
            return 1.0 / self.mean
        lo, hi = 0.0, 1.0
        while hi - lo > 1e-12 * hi:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _tnb_mean(mid, self.shape) > self.mean else (lo, mid)
        return lo  # the conservative side: a mean at least the one asked

    def pmf(self, k: int) -> float:
        """``P[K = k]``."""
        if self.poisson:
            return math.exp(k * math.log(self.mean) - self.mean - math.lgamma(k + 1)) if k >= 0 else 0.0
        if k < 1:
            return 0.0
        g, eta = self.gamma, self.shape
        if eta == 0:
            return (1 - g) ** k / (k * math.log(1 / g))
        log_coef = math.lgamma(k + eta) - math.lgamma(eta) - math.lgamma(k + 1)  # prod (l + eta)/(l + 1), l < k
        return math.exp(k * math.log1p(-g) + log_coef) / (g ** -eta - 1)

    def draw(self, rng: np.random.Generator, *, most: int = 10**6) -> int:
        """One draw of ``K`` (inverse CDF); ``rng`` must be secret for the guarantee."""
        if self.poisson:
            return int(rng.poisson(self.mean))
        u, total = float(rng.random()), 0.0
        for k in range(1, most + 1):
            total += self.pmf(k)
            if total >= u:
                return k
        return most


def _tnb_mean(gamma: float, eta: float) -> float:
    if gamma >= 1:
        return 1.0
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma ** eta))


def _trial_event(releases: Sequence[Release], score_noise: float | None):
    from dp_accounting import dp_event

    events = []
    for noise, rate, steps in releases:
        if steps <= 0:
            continue
        one = dp_event.GaussianDpEvent(noise)
        if rate < 1:
            one = dp_event.PoissonSampledDpEvent(rate, one)
        events.append(dp_event.SelfComposedDpEvent(one, int(steps)))
    if score_noise is not None:
        events.append(dp_event.GaussianDpEvent(score_noise))
    return dp_event.ComposedDpEvent(events)


def _epsilon(event, delta: float) -> float:
    from absl import logging as absl_logging
    from dp_accounting.rdp import RdpAccountant

    # dp_accounting logs a warning for each low order whose series does not converge at a
    # high sampling rate (the order is left out, as it should be): quiet, then as it was
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        acc = RdpAccountant(orders=_ORDERS)
        acc.compose(event)
        return float(acc.get_epsilon(delta))
    finally:
        absl_logging.set_verbosity(level)


#: RDP orders: Opacus's default orders (1.1 ... 63) and dp_accounting's larger ones.
_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 256, 512, 1024])


def single_epsilon(releases: Sequence[Release], *, delta: float, score_noise: float | None = None) -> float:
    """Epsilon of ONE trial: the composition of ``releases`` (and of a validation score
    with Gaussian noise multiplier ``score_noise``), by ``dp_accounting``'s RDP accountant."""
    return _epsilon(_trial_event(releases, score_noise), delta)


def selection_epsilon(releases: Sequence[Release], trials: Trials, *, delta: float,
                      score_noise: float | None = None) -> float:
    """Epsilon of selecting the best of ``K ~ trials`` trials, each of which composes
    ``releases`` and a validation score with Gaussian noise multiplier ``score_noise``
    (sensitivity :data:`SCORE_SENSITIVITY`), by ``dp_accounting``'s RDP accountant
    (``RepeatAndSelectDpEvent``: Papernot & Steinke, Theorems 2 and 6)."""
    from dp_accounting import dp_event

    if any(noise <= 0 for noise, _, steps in releases if steps > 0) or (score_noise is not None and score_noise <= 0):
        return math.inf
    event = dp_event.RepeatAndSelectDpEvent(_trial_event(releases, score_noise), float(trials.mean),
                                                 float(trials.shape))
    return _epsilon(event, delta)


def trial_releases(cfg) -> tuple[Release, ...]:
    """The releases one private run of the resolved ``cfg`` makes of a user's data, each
    ``(noise multiplier, sampling rate, steps)`` for a user in every planned round, as its
    mechanism (:func:`fedrec.privacy.mechanisms.mechanisms_of`) composes them: the DP
    popularity prior, then the training's (interaction-level DP-SGD, user-level DP-FedAvg
    or private ALS in its unit).  ``()`` for a non-private run."""
    from fedrec.privacy.calibration import planned_steps
    from fedrec.privacy.mechanisms import InteractionLevel, PrivateALS, mechanisms_of

    mechanisms = mechanisms_of(cfg)
    if len(mechanisms) > 1:
        raise ValueError("a run with more than one mechanism has an epsilon per unit: select over one")
    if not mechanisms:
        return ()
    (m,) = mechanisms
    if isinstance(m, PrivateALS):
        rounds = m.passes + 1
        out = m.interaction_releases(rounds) if cfg.als_unit == "interaction-level" else m.releases(rounds)
    elif isinstance(m, InteractionLevel):
        out = m.releases(planned_steps(cfg))
    else:
        out = m.releases(cfg.num_server_rounds)
    return tuple((float(a), float(b), int(c)) for a, b, c in out)
