"""Privacy accounting with Opacus's accountants.

The mechanism is described as data (noise multiplier, sampling rate, steps); the
accountant is separate.  Interaction-level DP: each user's DP-SGD steps.
"""

from __future__ import annotations

import functools

import numpy as np

# Opacus is imported where an epsilon is computed: importing it costs about 3 s (its package
# loads the whole privacy engine), which every simulation actor of a run without DP saved

__all__ = ["epsilon", "calibrate_noise", "epsilons_for_steps", "Mechanism", "rdp_orders", "rdp_of", "epsilon_of_rdp"]


Mechanism = tuple[float, float, int]  # (noise multiplier, sampling rate, steps)


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp",
            extra: tuple[Mechanism, ...] = ()) -> float:
    """Epsilon of ``steps`` compositions of the Poisson-subsampled Gaussian mechanism,
    composed with the ``extra`` mechanisms (e.g. a DP popularity prior released once).

    Returns ``inf`` for no noise and 0 for no steps (and no extra mechanism).
    """
    return _epsilon(float(noise_multiplier), float(sample_rate), int(steps), float(delta), accountant,
                    tuple((float(a), float(b), int(c)) for a, b, c in extra))


@functools.lru_cache(maxsize=4096)
def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str,
             extra: tuple = ()) -> float:
    # cached: every node of a federation asks for the same few step counts each round
    history = [m for m in extra if m[2] > 0]
    if steps > 0:
        history.append((noise_multiplier, sample_rate, steps))
    if not history:
        return 0.0
    if any(m[0] <= 0 for m in history):
        return float("inf")
    if accountant == "rdp":
        # Opacus's RDP accountant, with the RDP of one step cached per (noise, rate): Opacus's
        # compute_rdp is that vector times the steps, and computing it (about 0.2 s) would
        # otherwise be paid again for every new step count, on every node, every round
        from opacus.accountants.analysis.rdp import get_privacy_spent

        rdp = sum(_rdp_of_one_step(m[0], m[1]) * m[2] for m in history)
        return float(get_privacy_spent(orders=list(_alphas()), rdp=rdp, delta=delta)[0])
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


@functools.cache
def _alphas() -> tuple:
    """The RDP orders of Opacus's accountant."""
    from opacus.accountants import RDPAccountant

    return tuple(RDPAccountant.DEFAULT_ALPHAS)


def rdp_orders() -> tuple:
    """The RDP orders fedrec accounts at (Opacus's default orders)."""
    return _alphas()


def rdp_of(mechanisms: tuple[Mechanism, ...]) -> np.ndarray:
    """RDP at :func:`rdp_orders` of the Gaussian ``(noise, rate, steps)`` releases, composed
    (zeros for none, ``inf`` where a release has no noise)."""
    out = np.zeros(len(_alphas()))
    for z, q, steps in mechanisms:
        if int(steps) <= 0:
            continue
        if float(z) <= 0:
            return np.full(len(_alphas()), np.inf)
        out = out + _rdp_of_one_step(float(z), float(q)) * int(steps)
    return out


def epsilon_of_rdp(rdp: np.ndarray, delta: float) -> float:
    """Epsilon at ``delta`` of an RDP curve at :func:`rdp_orders` (Opacus's conversion)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    rdp = np.asarray(rdp, dtype=np.float64)
    if not np.isfinite(rdp).any():
        return float("inf")
    return float(get_privacy_spent(orders=list(_alphas()), rdp=rdp, delta=delta)[0])


@functools.lru_cache(maxsize=256)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's RDP of one Poisson-subsampled Gaussian step at its default orders."""
    from opacus.accountants.analysis.rdp import compute_rdp

    out = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(_alphas()))
    out.setflags(write=False)
    return out


def epsilons_for_steps(steps: np.ndarray, *, noise_multiplier: float, sample_rate: float, delta: float,
                       extra: tuple[Mechanism, ...] = ()) -> np.ndarray:
    """Epsilon of each user given its number of steps (computed once per distinct count)."""
    steps = np.asarray(steps, dtype=np.int64)
    out = np.zeros(len(steps))
    for s in np.unique(steps):
        out[steps == s] = epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=int(s), delta=delta,
                                  extra=extra)
    return out


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
                    extra: tuple[Mechanism, ...] = ()) -> float:
    """Smallest noise multiplier whose ``steps`` steps at ``sample_rate`` (composed with
    ``extra``) stay within ``target_epsilon`` at ``delta`` (Opacus
    ``get_noise_multiplier``; with ``extra``, bisection on Opacus's accountant)."""
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be > 0; got {target_epsilon}")
    if extra:
        if epsilon(noise_multiplier=1e6, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant,
                   extra=extra) > target_epsilon:
            raise ValueError(f"target_epsilon={target_epsilon} is spent by the extra mechanisms {extra} alone")
        lo, hi = 1e-2, 1.0
        while epsilon(noise_multiplier=hi, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant,
                      extra=extra) > target_epsilon:
            lo, hi = hi, hi * 2
        while hi - lo > 1e-3 * hi:
            mid = (lo + hi) / 2
            e = epsilon(noise_multiplier=mid, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant,
                        extra=extra)
            lo, hi = (mid, hi) if e > target_epsilon else (lo, mid)
        return hi
    from opacus.accountants.utils import get_noise_multiplier

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
