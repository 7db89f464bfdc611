"""Private alternating least squares (user-level DP), as pure functions.

After Chien et al., "Private Alternating Least Squares" (ICML 2021) and its authors'
code (google-research ``dp_alternating_minimization``); the design and the
sensitivity argument are in ``docs/design/private-als.md``.

The objective is implicit ALS with a uniform weight ``alpha`` on every (user, item)
pair toward 0 (the "gravity" term) and weight 1 toward 1 on the positives::

    sum_{(u,i) positive} (1 - p_u . v_i)^2 + alpha sum_{all u,i} (p_u . v_i)^2
        + reg_user |p_u|^2 + reg |v_i|^2

* **User step, on the device, never released.**  Each user solves its own vector
  exactly from all of its training items and the public item table ``V``:
  ``p_u = (V_u^T V_u + alpha V^T V + reg_user I)^-1 V_u^T 1``.
* **Item step, released with noise.**  Each user contributes its vector, clipped
  to ``clip`` (Gamma), to the rows of at most ``pass_cap`` (k) of its training items
  **among the trained (head) items** (a random subset, fixed per run from (seed,
  user) alone; the head is public, chosen from the released counts) and its outer
  product to one global Gram matrix ``K``.  One user changes ``b = sum p_u`` (per
  item row) by at most ``sqrt(k) Gamma`` and ``K / Gamma`` by at most ``Gamma``, so
  the pair ``(b, K / Gamma)`` has L2 sensitivity ``Gamma sqrt(k + 1)``: one
  Gaussian mechanism of noise multiplier ``z`` per pass.  Rows outside the head
  are never trained, so restricting the contributions to the head loses no signal
  and lets a smaller ``k`` cover most users' head items: less noise per pass.  The per-item Gram
  ``sum_{u in i} p_u p_u^T`` is never released: it is estimated as
  ``(count_i / n_users) K`` from the released values.
* **Counts, released once.**  Each user adds 1 to the count of each of its (at
  most ``cap``) capped items: sensitivity ``sqrt(k)``.  The noisy counts pick the
  items that are trained (the ``head`` fraction with the largest noisy counts) and
  rank the others below them by noisy count.

Every statistic is a sum over users, so nodes sum their users' and the server
sums the nodes'.  ``n_users`` (the federation's size) is treated as public, as
the fixed denominator of DP-FedAvg is.  One interaction added or removed can turn a
user's whole clipped vector, so the interaction-level epsilon is computed with twice
a pass's sensitivity (:meth:`fedrec.privacy.mechanisms.PrivateALS.interaction_epsilon`),
not assumed equal to the user-level one.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from fedrec.rng import hash_uniform

__all__ = [
    "capped_items", "user_vectors", "clip_rows", "count_statistics", "pass_statistics", "noisy_counts",
    "noisy_pass", "head_items", "head_of", "item_vectors", "tail_bias", "pass_sensitivity", "count_sensitivity",
    "als_releases", "TAIL_OFFSET", "HEAD_BIAS_SCALE",
]

TAIL_OFFSET = -1.0e3  # item_bias of the untrained items: below every trained item's score
#: Largest item bias of a trained (head) item: the head in the order of the noisy counts, far
#: below the resolution (float32) of any score a user vector gives, so it orders the items only
#: for a user with no history (a zero vector), whose ranking is then by popularity.
HEAD_BIAS_SCALE = 1.0e-9


def capped_items(items: np.ndarray, user: int, cap: int, seed: int) -> np.ndarray:
    """The at most ``cap`` items of ``items`` (one user's training items) that the user
    contributes to the released statistics: those with the smallest hash of (seed,
    user, item), i.e. a uniform subset that depends on nothing but the user's own key."""
    items = np.asarray(items, dtype=np.int64)
    if cap <= 0 or len(items) <= cap:
        return np.sort(items)
    h = hash_uniform(seed, user, items, 19)
    return np.sort(items[np.argsort(h, kind="stable")[:cap]])


def _rows(train: sp.csr_matrix, users: np.ndarray, cap: int, seed: int,
          head: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(position of the user in ``users``, item) of every capped pair of ``users``
    (only items of the boolean mask ``head`` are candidates, if given)."""
    pos, items = [], []
    for j, u in enumerate(np.asarray(users).tolist()):
        own = train.indices[train.indptr[u]:train.indptr[u + 1]]
        if head is not None:
            own = own[head[own]]
        s = capped_items(own, u, cap, seed)
        pos.append(np.full(len(s), j, dtype=np.int64))
        items.append(s)
    if not pos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pos), np.concatenate(items)


def user_vectors(V: np.ndarray, train: sp.csr_matrix, users: np.ndarray, *, alpha: float,
                 reg_user: float) -> np.ndarray:
    """Each user's exact ALS solve (float64, ``(len(users), d)``) from all of its
    training items and the item table ``V``.  Nothing here is released."""
    V = np.asarray(V, dtype=np.float64)
    d = V.shape[1]
    users = np.asarray(users, dtype=np.int64)
    base = alpha * (V.T @ V) + reg_user * np.eye(d)
    A = np.broadcast_to(base, (len(users), d, d)).copy()
    rhs = np.zeros((len(users), d))
    sub = train[users]
    if sub.nnz:
        rows = np.repeat(np.arange(len(users)), np.diff(sub.indptr))
        Vi = V[sub.indices]
        np.add.at(rhs, rows, Vi)
        outer = Vi[:, :, None] * Vi[:, None, :]
        starts = sub.indptr[:-1][np.diff(sub.indptr) > 0]
        A[np.diff(sub.indptr) > 0] += np.add.reduceat(outer, starts, axis=0)
    return np.linalg.solve(A, rhs[:, :, None])[:, :, 0]


def clip_rows(U: np.ndarray, clip: float) -> np.ndarray:
    """Each row scaled to L2 norm at most ``clip`` (``clip <= 0``: unchanged)."""
    if clip <= 0:
        return U
    norms = np.linalg.norm(U, axis=1, keepdims=True)
    return U * np.minimum(1.0, clip / np.maximum(norms, 1e-300))


def count_statistics(train: sp.csr_matrix, users: np.ndarray, *, cap: int, seed: int) -> np.ndarray:
    """Sum over ``users`` of the indicator of their capped items: ``(n_items,)``."""
    _, items = _rows(train, users, cap, seed)
    return np.bincount(items, minlength=train.shape[1]).astype(np.float64)


def pass_statistics(U: np.ndarray, train: sp.csr_matrix, users: np.ndarray, *, cap: int,
                    seed: int, head: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``b`` (``(n_items, d)``: the sum of the (clipped) vectors ``U`` of the users who
    have the item among their capped items) and ``K = U^T U`` (``(d, d)``).  With a
    boolean ``head`` mask a user's capped items are drawn from its head items only
    (rows outside the head stay zero)."""
    U = np.asarray(U, dtype=np.float64)
    pos, items = _rows(train, users, cap, seed, None if head is None else np.asarray(head, dtype=bool))
    b = np.zeros((train.shape[1], U.shape[1]))
    np.add.at(b, items, U[pos])
    return b, U.T @ U


def pass_sensitivity(cap: int, clip: float) -> float:
    """L2 sensitivity of ``(b, K / clip)`` to one user: ``clip * sqrt(cap + 1)``."""
    return clip * math.sqrt(cap + 1)


def count_sensitivity(cap: int) -> float:
    """L2 sensitivity of the capped counts to one user: ``sqrt(cap)``."""
    return math.sqrt(cap)


def noisy_counts(counts: np.ndarray, *, noise_multiplier: float, cap: int, rng: np.random.Generator) -> np.ndarray:
    """The counts plus Gaussian noise of std ``noise_multiplier * sqrt(cap)``."""
    return counts + rng.normal(0.0, noise_multiplier * count_sensitivity(cap), size=counts.shape)


def _psd(M: np.ndarray) -> np.ndarray:
    """The symmetric part of ``M`` with its negative eigenvalues set to 0."""
    M = (M + M.T) / 2
    w, Q = np.linalg.eigh(M)
    return (Q * np.maximum(w, 0.0)) @ Q.T


def noisy_pass(b: np.ndarray, K: np.ndarray, *, noise_multiplier: float, cap: int, clip: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(b, K)`` released: Gaussian noise of std ``z * clip * sqrt(cap + 1)`` on every
    entry of ``b`` and of ``K / clip`` (so ``z * clip^2 * sqrt(cap + 1)`` on ``K``),
    then ``K`` symmetrised and projected on the PSD cone (post-processing)."""
    std = noise_multiplier * pass_sensitivity(cap, clip)
    b = b + rng.normal(0.0, std, size=b.shape)
    K = K + clip * rng.normal(0.0, std, size=K.shape)
    return b, _psd(K)


def head_items(counts: np.ndarray, fraction: float, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Mask of the ``ceil(fraction * n)`` items with the largest (noisy) counts, never
    an item of ``exclude`` (held-out items, which no release may train)."""
    c = np.asarray(counts, dtype=np.float64).copy()
    if exclude is not None and len(exclude):
        c[np.asarray(exclude)] = -np.inf
    n = min(int(math.ceil(fraction * len(c))), int(np.isfinite(c).sum()))
    mask = np.zeros(len(c), dtype=bool)
    mask[np.argsort(-c, kind="stable")[:n]] = True
    return mask


def item_vectors(b: np.ndarray, K: np.ndarray, counts: np.ndarray, head: np.ndarray, *, n_users: int,
                 alpha: float, reg: float) -> np.ndarray:
    """The item step from released values: ``v_i = ((c_i / N + alpha) K + reg I)^-1 b_i``
    for the ``head`` items (``c_i`` the noisy count, floored at 0), zero elsewhere."""
    w, Q = np.linalg.eigh(K)
    w = np.maximum(w, 0.0)
    frac = np.maximum(np.asarray(counts, dtype=np.float64), 0.0) / max(1, n_users) + alpha
    bq = b @ Q  # (n, d) in K's eigenbasis
    V = (bq / (frac[:, None] * w[None, :] + reg)) @ Q.T
    V[~head] = 0.0
    return V


def head_of(item_bias: np.ndarray) -> np.ndarray:
    """The trained-items mask a node reads from the item biases it received
    (:func:`tail_bias`: at least 0 on the head, below ``TAIL_OFFSET / 2`` elsewhere)."""
    return np.asarray(item_bias) > TAIL_OFFSET / 2


def tail_bias(counts: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Item biases from the released (noisy) counts: the untrained items at ``TAIL_OFFSET +
    rank / n``, below every trained one; the trained items (the head) at ``HEAD_BIAS_SCALE *
    rank / n``, where ``rank`` orders all items by count.  A user with history ranks the head by
    its vector (the head's biases are below a float32 score's resolution); a user with no
    history (a zero vector, the cold-start curve's k = 0) ranks it by popularity.  Both are
    post-processing of the counts' release: no privacy cost."""
    n = len(counts)
    rank = np.empty(n)
    rank[np.argsort(np.asarray(counts), kind="stable")] = np.arange(n)
    return np.where(head, HEAD_BIAS_SCALE * rank / max(1, n), TAIL_OFFSET + rank / max(1, n)).astype(np.float32)


def als_releases(noise_multiplier: float, count_noise_multiplier: float, passes: int) -> tuple:
    """The run's releases as Opacus mechanisms ``(noise, sample rate, steps)``: the
    counts once, then one pass of ``(b, K / clip)`` per pass; every user every time."""
    return ((count_noise_multiplier, 1.0, 1), (noise_multiplier, 1.0, passes))
