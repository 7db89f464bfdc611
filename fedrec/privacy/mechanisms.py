"""The privacy mechanisms of a run, as data: what is clipped, what is noised, how
it is accounted, and in which unit.

Every part of fedrec that reports, budgets or calibrates an epsilon asks these
objects (the node and the device for each user's interaction-level epsilon and
budget, the server for the user-level epsilon and the ``privacy`` section of
``metrics.json``); the engine applies the same parameters (``LocalConfig``;
Flower's DP wrappers for user-level noise).  The accountant is Opacus's
(:mod:`fedrec.privacy.accounting`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fedrec.privacy.accounting import epsilons_for_steps
from fedrec.privacy.prior import prior_mechanism

__all__ = ["InteractionLevel", "UserLevel", "PrivateALS", "PopularityPrior", "mechanisms_of"]


@dataclass(frozen=True)
class PopularityPrior:
    """One Gaussian release of every user's unit-norm item vector, before training:
    sensitivity 1 in both units, so it composes into both units' epsilon."""

    noise: float

    @property
    def releases(self) -> tuple:
        return prior_mechanism(self.noise)


@dataclass(frozen=True)
class InteractionLevel:
    """DP-SGD on each user's device: each sample (one interaction with its
    negatives) clipped to ``max_grad_norm`` over every parameter it touches,
    Gaussian noise of std ``noise_multiplier * max_grad_norm`` per coordinate of
    the user's release, the samples Poisson-sampled at ``sample_rate`` per step.
    Accounted per user over its own DP steps (the prior composed)."""

    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    prior_noise: float = 0.0

    unit = "interaction-level"
    protects = "each single interaction (user, item) of a user"

    @classmethod
    def from_config(cls, cfg) -> "InteractionLevel":
        return cls(float(cfg.noise_multiplier), float(cfg.sample_rate), float(cfg.max_grad_norm), float(cfg.delta),
                   float(cfg.prior_noise))

    def releases(self, steps: int) -> tuple:
        """Opacus mechanisms ``(noise, rate, steps)`` of a user after ``steps`` DP-SGD steps,
        the prior first: what :meth:`epsilon` composes."""
        return PopularityPrior(self.prior_noise).releases + ((self.noise_multiplier, self.sample_rate, int(steps)),)

    def epsilons(self, steps) -> np.ndarray:
        """Each user's epsilon after ``steps`` DP-SGD steps (an array of step counts)."""
        return _epsilons(self, steps)

    def epsilon(self, steps: int) -> float:
        return float(_epsilons(self, [steps])[0])

    def to_dict(self) -> dict:
        return {"unit": self.unit, **asdict(self)}


@dataclass(frozen=True)
class UserLevel:
    """DP-FedAvg: each user's whole release clipped to ``clip``, Gaussian noise of std
    ``noise_multiplier * clip`` on the sum (Flower's DP wrappers), users
    Poisson-sampled at ``sample_rate`` per round.  Accounted over rounds (the prior
    composed); every round counts for every user."""

    noise_multiplier: float
    sample_rate: float
    clip: float
    delta: float
    prior_noise: float = 0.0

    unit = "user-level"
    protects = "everything one user contributes (all of its interactions, every round)"

    @classmethod
    def from_config(cls, cfg) -> "UserLevel":
        return cls(float(cfg.user_noise_multiplier), float(cfg.user_sample_rate), float(cfg.user_clip),
                   float(cfg.delta), float(cfg.prior_noise))

    def epsilon(self, rounds: int, earlier: tuple = ()) -> float:
        """User-level epsilon after round ``rounds`` (the prior composed once).  ``earlier``:
        the ``(noise, rate, rounds)`` segments of earlier runs this one continues (a
        stream's previous windows, whose noise may differ); their rounds are the first
        rounds, and the rest run at this mechanism's noise."""
        if not earlier:
            return float(_epsilons(self, [rounds])[0])
        from fedrec.privacy.accounting import epsilon

        before = sum(int(s) for _, _, s in earlier)
        if rounds < before:
            raise ValueError(f"round {rounds} lies inside the earlier segments ({before} rounds)")
        segments = tuple((float(z), float(q), int(s)) for z, q, s in earlier)
        return float(epsilon(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                             steps=rounds - before, delta=self.delta,
                             extra=PopularityPrior(self.prior_noise).releases + segments))

    def releases(self, rounds: int) -> tuple:
        """Opacus mechanisms ``(noise, rate, steps)`` of ``rounds`` rounds, the prior first:
        what :meth:`epsilon` composes (without earlier segments)."""
        return PopularityPrior(self.prior_noise).releases + ((self.noise_multiplier, self.sample_rate, int(rounds)),)

    def segments(self, rounds: int, earlier: tuple = ()) -> list:
        """``earlier`` and this run's own segment up to round ``rounds``: what a run that
        continues this one composes (:meth:`epsilon`'s ``earlier``)."""
        before = sum(int(s) for _, _, s in earlier)
        own = [(self.noise_multiplier, self.sample_rate, rounds - before)] if rounds > before else []
        return [list(x) for x in earlier] + [list(x) for x in own]

    def to_dict(self) -> dict:
        return {"unit": self.unit, **asdict(self)}


@dataclass(frozen=True)
class PrivateALS:
    """Private ALS (:mod:`fedrec.als`): one release of capped item counts
    (sensitivity ``sqrt(cap)``), then per pass one release of the per-item sums of
    clipped user vectors over at most ``pass_cap`` head items per user and their Gram
    matrix (sensitivity ``clip sqrt(pass_cap + 1)``),
    each with Gaussian noise of std ``noise_multiplier`` times its sensitivity, added
    by the server to the sum over every user.  Every user takes part in every
    release (sampling rate 1).  Round 1 is the counts, round ``1 + t`` pass ``t``."""

    noise_multiplier: float
    cap: int
    pass_cap: int
    clip: float
    passes: int
    delta: float
    unit = "user-level"
    protects = "everything one user contributes (all of its interactions, every round)"

    @classmethod
    def from_config(cls, cfg) -> "PrivateALS":
        return cls(float(cfg.als_noise_multiplier), int(cfg.als_cap), int(cfg.als_pass_cap), float(cfg.als_clip),
                   int(cfg.als_passes), float(cfg.delta))

    def releases(self, rounds: int, *, count_noise: float | None = None, pass_noise: float | None = None) -> tuple:
        """Opacus mechanisms ``(noise, rate, steps)`` of the first ``rounds`` rounds (the
        noise multipliers relative to the user-level sensitivities unless given)."""
        from fedrec.als import als_releases

        rounds = min(rounds, self.passes + 1)
        if rounds <= 0:
            return ()
        z = self.noise_multiplier
        return als_releases(z if pass_noise is None else pass_noise, z if count_noise is None else count_noise,
                            rounds - 1)

    def epsilon(self, rounds: int | None = None) -> float:
        """User-level epsilon after ``rounds`` rounds (default: the whole run)."""
        return self._epsilon(self.releases(self.passes + 1 if rounds is None else rounds))

    def interaction_epsilon(self, rounds: int | None = None) -> float:
        """Epsilon for one interaction (added to or removed from a user), computed, not
        assumed equal to the user-level one.  Removing an interaction can swap one item
        of the user's capped set for another (counts move by at most ``sqrt(2)``, against
        ``sqrt(cap)`` for a whole user) and can turn the user's clipped vector anywhere in
        the clip ball while its capped head set swaps at most one item (a pass moves by
        at most ``2 clip sqrt(pass_cap + 1)``, twice a whole user's contribution).  So the same
        noise is multiplier ``z sqrt(cap / 2)`` for the
        counts and ``z / 2`` for each pass (:meth:`interaction_releases`)."""
        return self._epsilon(self.interaction_releases(self.passes + 1 if rounds is None else rounds))

    def interaction_releases(self, rounds: int) -> tuple:
        """:meth:`releases` against one interaction's sensitivities (see :meth:`interaction_epsilon`)."""
        z = self.noise_multiplier
        return self.releases(rounds, count_noise=z * (self.cap / 2) ** 0.5, pass_noise=z / 2)

    def _epsilon(self, history: tuple) -> float:
        from fedrec.privacy.accounting import epsilon

        return epsilon(noise_multiplier=0.0, sample_rate=1.0, steps=0, delta=self.delta, extra=history) \
            if history else 0.0

    def to_dict(self) -> dict:
        return {"unit": self.unit, **asdict(self)}


def _epsilons(mech, counts) -> np.ndarray:
    """Epsilon after each count of compositions of ``mech``'s subsampled Gaussian
    release, its DP popularity prior composed (Opacus RDP)."""
    return epsilons_for_steps(np.atleast_1d(np.asarray(counts)), noise_multiplier=mech.noise_multiplier,
                              sample_rate=mech.sample_rate, delta=mech.delta,
                              extra=PopularityPrior(mech.prior_noise).releases)


def mechanisms_of(cfg) -> list:
    """The mechanisms a (resolved) config runs, in the order reports list them."""
    out = []
    if cfg.user_dp == "distributed":
        raise ValueError("user-dp='distributed': its mechanism depends on the federation and the model "
                         "(fedrec.privacy.distributed.distributed_mechanism)")
    if cfg.dp:
        out.append(InteractionLevel.from_config(cfg))
    if cfg.user_level:
        out.append(UserLevel.from_config(cfg))
    if cfg.als_private:
        out.append(PrivateALS.from_config(cfg))
    return out
