"""Counter-based random numbers keyed by (seed, round, user, ...).

A user's random draws (negatives, Poisson sampling) depend only on its own key,
never on which other users share its node, so a run with many users per node
reproduces the one-user-per-node run exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["hash_uniform", "hash_ints"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (vectorised, wraps modulo 2^64)."""
    with np.errstate(over="ignore"):
        z = x + _G
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
    h = np.uint64(0x1234567)
    with np.errstate(over="ignore"):
        for k in keys:
            h = _mix(np.asarray(h, dtype=np.uint64) ^ np.asarray(k).astype(np.uint64))
    return np.asarray(h, dtype=np.uint64)


def hash_uniform(*keys) -> np.ndarray:
    """Uniform floats in [0, 1), one per broadcast element of the integer ``keys``."""
    return (_hash(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def hash_ints(n: int, *keys) -> np.ndarray:
    """Integers uniform in ``[0, n)`` (up to a 2^-53 bias), keyed like :func:`hash_uniform`."""
    return np.minimum((hash_uniform(*keys) * n).astype(np.int64), n - 1)
