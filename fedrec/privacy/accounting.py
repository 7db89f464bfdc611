"""Privacy accounting with Opacus's accountants.

The mechanism is described as data (noise multiplier, sampling rate, steps); the
accountant is separate.  Interaction-level DP: each user's DP-SGD steps.
"""

from __future__ import annotations

import functools

import numpy as np
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = ["epsilon", "calibrate_noise", "epsilons_for_steps"]


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    Returns ``inf`` for no noise and 0 for no steps.
    """
    return _epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    # cached: every node of a federation asks for the same few step counts each round
    if steps <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=delta))


def epsilons_for_steps(steps: np.ndarray, *, noise_multiplier: float, sample_rate: float, delta: float) -> np.ndarray:
    """Epsilon of each user given its number of steps (computed once per distinct count)."""
    steps = np.asarray(steps, dtype=np.int64)
    out = np.zeros(len(steps))
    for s in np.unique(steps):
        out[steps == s] = epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=int(s), delta=delta)
    return out


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """Smallest noise multiplier whose ``steps`` steps at ``sample_rate`` stay within
    ``target_epsilon`` at ``delta`` (Opacus ``get_noise_multiplier``)."""
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be > 0; got {target_epsilon}")
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )
