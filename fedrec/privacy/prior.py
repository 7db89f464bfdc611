"""A differentially private popularity prior, released once before training
(federated analytics: each user contributes one vector, the server sees the
noisy sum).

User ``u`` contributes ``x_u = 1[items of u] / sqrt(n_u)`` (L2 norm 1).  The
sum over users plus Gaussian noise of std ``noise`` is the release: adding or
removing a user changes the sum by at most 1 in L2 (user-level sensitivity 1),
and adding or removing one interaction changes a user's vector by at most 1
too (interaction-level sensitivity 1).  So the release is one Gaussian
mechanism with noise multiplier ``noise`` in either unit, composed by the
accountant with the training steps: ``(noise, 1.0, 1)``.

Each node sends the sum of its users' ``x_u`` (:func:`popularity_sum`, in a
Flower query before training) and the server adds the noise to the sum over
nodes (:func:`add_popularity_noise`), in simulation as in a deployment.  The item biases start from the log
of the noisy scores, so the personal model starts from (private) popularity.

The same release also picks the items a DP-FEST run trains (:func:`prior_head`,
config ``train-head``; Ghazi et al., NeurIPS 2023: noise only on rows selected
privately as frequent): post-processing of a release already composed, so the
selection costs no epsilon.  The other items' rows stay frozen at zero and the
prior alone ranks them.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fedrec.privacy.randomness import DPRandomness

__all__ = ["popularity_prior", "prior_mechanism", "noisy_popularity", "popularity_sum", "add_popularity_noise",
           "prior_head", "prior_from_release", "head_from_release"]


def prior_mechanism(noise: float) -> tuple[tuple[float, float, int], ...]:
    """The prior's release for the accountant: ``((noise, 1.0, 1),)``, or ``()`` if none."""
    return ((float(noise), 1.0, 1),) if noise > 0 else ()


def noisy_popularity(train: sp.csr_matrix, *, noise: float, randomness: DPRandomness | None = None) -> np.ndarray:
    """The release: the sum over users of ``1[items of u] / sqrt(n_u)`` plus Gaussian noise
    of std ``noise`` per item (sensitivity 1 in either unit; see the module docstring),
    drawn from ``randomness`` (``None``: fresh secret randomness).  The prior, DP-FEST's
    head and private MostPop are post-processing of one release: compute it once and
    derive them (:func:`prior_from_release`, :func:`head_from_release`); every call is a
    new release."""
    return add_popularity_noise(popularity_sum(train), noise=noise, randomness=randomness)


def popularity_sum(train: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
    """The sum over ``users`` (default: every row) of their unit-norm item vectors
    ``1[items of u] / sqrt(n_u)``: what a node contributes to the prior's release for
    its own users (the server adds the noise to the sum over nodes)."""
    t = sp.csr_matrix(train if users is None else train[np.asarray(users, dtype=np.int64)], dtype=np.float64)
    t.data[:] = 1.0
    n = np.asarray(t.sum(axis=1)).ravel()
    scale = np.where(n > 0, 1.0 / np.sqrt(np.maximum(n, 1)), 0.0)
    return np.asarray((sp.diags(scale) @ t).sum(axis=0)).ravel()


def add_popularity_noise(total: np.ndarray, *, noise: float, randomness: DPRandomness | None = None) -> np.ndarray:
    """``total`` (a sum of unit-norm vectors) plus Gaussian noise of std ``noise`` per item,
    drawn from ``randomness`` (``None``: fresh secret randomness): the prior's release."""
    if noise <= 0:
        raise ValueError(f"noise must be > 0 for a private release; got {noise}")
    rng = (randomness or DPRandomness.secret()).numpy()
    return np.asarray(total, dtype=np.float64) + rng.normal(0.0, noise, size=np.shape(total))


def prior_from_release(noisy: np.ndarray) -> np.ndarray:
    """Initial item biases (zero mean) from the release :func:`noisy_popularity`: the log of
    the noisy scores (post-processing)."""
    bias = np.log1p(np.maximum(noisy, 0.0))
    return (bias - bias.mean()).astype(np.float32)


def head_from_release(noisy: np.ndarray, fraction: float, exclude: np.ndarray | None = None) -> np.ndarray:
    """Mask of the ``ceil(fraction * n_items)`` items with the largest scores in the release
    :func:`noisy_popularity`, never an item of ``exclude`` (held-out items)."""
    from fedrec.als import head_items

    return head_items(noisy, fraction, exclude=exclude)


def popularity_prior(train: sp.csr_matrix, *, noise: float, randomness: DPRandomness | None = None) -> np.ndarray:
    """Initial item biases from the noisy normalised popularity (zero mean).

    Parameters
    ----------
    train
        Users x items training matrix (only training interactions).
    noise
        Std of the Gaussian noise on the sum of the users' unit-norm vectors (> 0).
    """
    return prior_from_release(noisy_popularity(train, noise=noise, randomness=randomness))


def prior_head(train: sp.csr_matrix, *, noise: float, fraction: float, randomness: DPRandomness | None = None,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """:func:`head_from_release` of a new release (a run that also starts from the prior
    derives both from one release instead)."""
    return head_from_release(noisy_popularity(train, noise=noise, randomness=randomness), fraction, exclude)
