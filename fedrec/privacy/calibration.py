"""Noise calibration: a run's target epsilons turned into noise multipliers.

A configuration (:class:`fedrec.config.FedConfig`) holds settings only; what its targets
mean in noise is computed here, by Opacus's RDP accountant, for a user who takes part in
every planned round:

>>> from fedrec.config import FedConfig
>>> cfg = resolved(FedConfig(target_epsilon=8.0, num_server_rounds=100))
>>> round(cfg.noise_multiplier, 3) > 0 and cfg.target_epsilon == 0.0
True
"""

from __future__ import annotations

import dataclasses

from fedrec.config import ConfigError, FedConfig, run_key
from fedrec.privacy.accounting import calibrate_noise
from fedrec.privacy.prior import prior_mechanism

__all__ = ["resolved", "planned_steps", "steps_per_round"]


def steps_per_round(cfg: FedConfig) -> int:
    """Interaction-level DP-SGD steps a user takes per round (each one is accounted)."""
    from fedrec.engine.cohort import LocalConfig, steps_per_round as local_steps

    return local_steps(LocalConfig.from_settings(cfg))


def planned_steps(cfg: FedConfig) -> int:
    """Interaction-level DP-SGD steps of a user who takes part in every planned round."""
    return cfg.num_server_rounds * steps_per_round(cfg)


def resolved(cfg: FedConfig) -> FedConfig:
    """``cfg`` with every target epsilon turned into its noise multiplier (Opacus RDP
    accountant, for a user taking part in every planned round, the DP popularity prior
    composed), but distributed DP's, which the server calibrates; with ``als``, the rounds
    are the passes' (``als-passes + 1``), each evaluated.  Returns a new configuration; a
    target that cannot be reached is a :class:`fedrec.errors.ConfigError` naming its key."""
    out = cfg
    prior = prior_mechanism(cfg.prior_noise)
    if cfg.target_epsilon > 0:
        sigma = _calibrated("target_epsilon", cfg.target_epsilon, target_epsilon=cfg.target_epsilon, delta=cfg.delta,
                            sample_rate=cfg.sample_rate, steps=planned_steps(cfg), extra=prior)
        out = dataclasses.replace(out, noise_multiplier=sigma, target_epsilon=0.0)
    if cfg.user_target_epsilon > 0 and cfg.user_dp != "distributed":
        # (distributed DP's accountant needs the model's size and the federation's: the
        # server calibrates it, fedrec.privacy.distributed.DistributedDP.calibrated)
        sigma = _calibrated("user_target_epsilon", cfg.user_target_epsilon, target_epsilon=cfg.user_target_epsilon,
                            delta=cfg.delta, sample_rate=cfg.user_sample_rate, steps=cfg.num_server_rounds,
                            extra=prior)
        out = dataclasses.replace(out, user_noise_multiplier=sigma, user_target_epsilon=0.0)
    if cfg.als:  # the counts, then one round per pass, each pass evaluated (the best on validation kept)
        out = dataclasses.replace(out, num_server_rounds=cfg.als_passes + 1, eval_every=1 if cfg.eval_every else 0,
                                  patience=0)
    if cfg.als_target_epsilon > 0 and cfg.als_unit == "user-level":
        sigma = _calibrated("als_target_epsilon", cfg.als_target_epsilon, target_epsilon=cfg.als_target_epsilon,
                            delta=cfg.delta, sample_rate=1.0, steps=cfg.als_passes + 1)
        out = dataclasses.replace(out, als_noise_multiplier=sigma, als_target_epsilon=0.0)
    elif cfg.als_target_epsilon > 0:
        out = dataclasses.replace(out, als_noise_multiplier=_als_interaction_noise(cfg), als_target_epsilon=0.0)
    return out


def _als_interaction_noise(cfg: FedConfig) -> float:
    """The smallest ALS noise multiplier (to 1e-4 relative) whose interaction-level epsilon
    is at most ``als_target_epsilon`` (bisection over :meth:`PrivateALS.interaction_epsilon`)."""
    from fedrec.privacy.mechanisms import PrivateALS

    def eps(z: float) -> float:
        return PrivateALS(z, cfg.als_cap, cfg.als_pass_cap, cfg.als_clip, cfg.als_passes,
                          cfg.delta).interaction_epsilon()

    lo, hi = 1e-2, 1.0
    while eps(hi) > cfg.als_target_epsilon:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if eps(mid) > cfg.als_target_epsilon else (lo, mid)
    return hi


def _calibrated(key: str, value: float, **kw) -> float:
    """Opacus's noise calibration; its errors name the config key and value."""
    try:
        return calibrate_noise(**kw)
    except (ValueError, ArithmeticError) as e:
        why = str(e).strip() or type(e).__name__
        raise ConfigError(run_key(key), value, f"cannot be reached over {kw.get('steps')} steps at sample "
                          f"rate {kw.get('sample_rate')} and delta {kw.get('delta')}: {why}") from None
