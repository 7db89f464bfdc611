"""The randomness a differential-privacy guarantee relies on, held by the party that draws it.

A DP guarantee holds against a party only if that party cannot regenerate the
mechanism's random draws: the Gaussian noise, the Poisson inclusion of samples and
of users, and anything else whose secrecy the accountant assumes.  fedrec draws
them from :class:`DPRandomness`:

- **secret** (the default): 128 bits of operating-system entropy (:mod:`secrets`),
  drawn by the party that adds the noise (the device or node for interaction-level
  DP, the server for central user-level DP, private ALS and the prior), never written
  to a config, message, log, checkpoint or result file.  Two runs of one configuration
  draw different noise.
- **reproducible** (``reproducible-noise``, simulations only): derived from the run's
  public ``seed`` and a counter naming the draw, so that a rerun is bit-exact.  Such a
  run gives no guarantee against whoever knows the seed (it is in ``config.json``); its
  ``metrics.json`` and report say so, and ``fedrec deploy`` and the device refuse it.

Everything else (initialisation, splits, negatives, non-private sampling, evaluation)
stays keyed by the public seed (:mod:`fedrec.rng`), so cohorts, chunks and resumes
reproduce exactly.

Within one draw, per-sample and per-user draws are keyed by :attr:`DPRandomness.key`
through the counter-based hash of :mod:`fedrec.rng` (a user's draws do not depend on
which other users share its node), and the Gaussian noise comes from
:meth:`DPRandomness.torch_generator` or :meth:`DPRandomness.numpy`.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

__all__ = ["DPRandomness", "NOISE_SECRET", "NOISE_REPRODUCIBLE", "noise_statement"]

NOISE_SECRET = "secret"
NOISE_REPRODUCIBLE = "reproducible"

#: The stream that keeps the seed-derived DP draws apart from every other use of the seed.
_DP_STREAM = 0x5EC2E7


class DPRandomness:
    """One party's randomness for one release (a round of one node, one server step).

    Parameters
    ----------
    entropy
        The 128-bit root of every draw.  Use :meth:`secret` or :meth:`from_seed`
        rather than passing it yourself.
    reproducible
        Whether ``entropy`` derives from a public seed (then nothing is secret).
    """

    __slots__ = ("_entropy", "reproducible")

    def __init__(self, entropy: int, *, reproducible: bool):
        self._entropy = int(entropy)
        self.reproducible = bool(reproducible)

    def __repr__(self) -> str:  # never the entropy: a repr can end up in a log
        return f"DPRandomness({NOISE_REPRODUCIBLE if self.reproducible else NOISE_SECRET})"

    def __reduce__(self):  # secret randomness is not pickled into messages or checkpoints
        if not self.reproducible:
            raise TypeError("secret DP randomness cannot be pickled: it never leaves the party that drew it")
        return (_reproducible, (self._entropy,))

    @classmethod
    def secret(cls) -> "DPRandomness":
        """Fresh randomness from the operating system's entropy (:func:`secrets.randbits`)."""
        return cls(secrets.randbits(128), reproducible=False)

    @classmethod
    def from_seed(cls, seed: int, *counter: int) -> "DPRandomness":
        """Randomness derived from the public ``seed`` and ``counter`` (reproducible,
        hence no guarantee against whoever knows the seed)."""
        return cls(_entropy_of([_DP_STREAM, int(seed), *counter]), reproducible=True)

    @classmethod
    def of(cls, reproducible: bool, seed: int, *counter: int) -> "DPRandomness":
        """:meth:`from_seed` when ``reproducible`` (the run's ``reproducible-noise``), else :meth:`secret`."""
        return cls.from_seed(seed, *counter) if reproducible else cls.secret()

    @property
    def key(self) -> int:
        """A 63-bit key for the counter-based hash of :mod:`fedrec.rng` (Poisson inclusion of
        samples and users)."""
        return self._entropy & ((1 << 63) - 1)

    def torch_generator(self) -> torch.Generator:
        """A CPU generator for Gaussian noise (seeded from 63 bits of the entropy, not the key)."""
        return torch.Generator().manual_seed((self._entropy >> 64) & ((1 << 63) - 1))

    def numpy(self) -> np.random.Generator:
        """A numpy generator (PCG64 seeded from all 128 bits)."""
        return np.random.default_rng(np.random.SeedSequence(self._entropy))

    def legacy_seed(self) -> np.ndarray:
        """256 bits for ``np.random.seed``: the state of numpy's global generator, which
        Flower's DP wrappers draw their noise from."""
        return self.numpy().integers(0, 2**32, size=8, dtype=np.uint64).astype(np.uint32)


def _entropy_of(words: list) -> int:
    """128 bits derived from a list of integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(4, np.uint32)
    return int(sum(int(w) << (32 * i) for i, w in enumerate(state.tolist())))


def _reproducible(entropy: int) -> DPRandomness:
    return DPRandomness(entropy, reproducible=True)


def noise_statement(reproducible: bool) -> dict:
    """What a run's records say of its DP randomness (``metrics.json``, the report)."""
    if reproducible:
        return {"noise": NOISE_REPRODUCIBLE,
                "holds_against": "no one who knows the run's seed (config.json): the noise, Poisson sampling and "
                                 "user sampling are derived from it so that the run reproduces bit-exactly"}
    return {"noise": NOISE_SECRET,
            "holds_against": "every party that does not add the noise: the noise, Poisson sampling and user "
                             "sampling come from operating-system entropy at the party that adds them"}
