"""Beyond-accuracy metrics of top-K recommendation lists.

A top-K list is a row of an ``(n_users, K)`` ``int64`` array of item ids, best
first, with ``-1`` padding where a user has fewer than ``K`` candidate items
(:func:`top_k` builds it).  Padding is ignored everywhere.

* :func:`coverage` -- catalogue coverage: distinct recommended items / n_items.
* :func:`intra_list_diversity` -- mean pairwise ``1 - cosine`` of item features
  (e.g. genre vectors) within a list, averaged over users.
* :func:`novelty` -- mean self-information ``-log2(pop_i / n_users)``.
* :func:`average_popularity` -- ARP, the mean popularity of recommended items.

Each list-level metric has a ``per_user_*`` twin returning one value per list,
used for per-group reports and for aggregating over federated clients.
Popularity should be counted on the training data (e.g.
``np.asarray(split.train.sum(0)).ravel()``), never on held-out data.
"""

from __future__ import annotations

import numpy as np

from fedrec.metrics.ranking import MatrixLike, _as_scores, _coords

__all__ = [
    "top_k",
    "coverage",
    "per_user_diversity",
    "intra_list_diversity",
    "per_user_novelty",
    "novelty",
    "per_user_popularity",
    "average_popularity",
    "list_novelty_and_popularity",
]


def top_k(scores: np.ndarray, exclude: MatrixLike | None = None, k: int = 10) -> np.ndarray:
    """The ``k`` best candidate items of every row of ``scores``.

    Parameters
    ----------
    scores : np.ndarray
        ``(B, n_items)`` float scores.
    exclude : scipy.sparse matrix or array, optional
        ``(B, n_items)`` binary: items never recommended (e.g. training items).
    k : int
        List length.

    Returns
    -------
    np.ndarray
        ``(B, k)`` ``int64`` item ids ordered by score descending, then item id
        ascending (deterministic); ``-1`` pads rows with fewer than ``k``
        candidates.

    Raises
    ------
    ValueError
        If a non-excluded item has a non-finite score, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    values = _as_scores(scores).copy()
    n_rows, n_items = values.shape
    e_rows, e_cols = _coords(exclude, (n_rows, n_items), "exclude")
    values[e_rows, e_cols] = -np.inf
    n_bad = n_items - np.count_nonzero(np.isfinite(values), axis=1) - np.bincount(e_rows, minlength=n_rows)
    if np.any(n_bad > 0):
        r = int(np.flatnonzero(n_bad > 0)[0])
        raise ValueError(f"non-finite scores in row {r} of top_k input")
    out = np.full((n_rows, k), -1, dtype=np.int64)
    kk = min(k, n_items)
    if n_rows == 0 or kk == 0:
        return out
    # k-th largest value per row; take everything above it, then the
    # lowest-id items tied with it until the list is full.
    kth = np.partition(values, n_items - kk, axis=1)[:, n_items - kk]
    above = values > kth[:, None]
    tied = values == kth[:, None]
    need = kk - np.count_nonzero(above, axis=1)
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= need[:, None]))
    cols = np.nonzero(chosen)[1].reshape(n_rows, kk)  # ascending id per row
    vals = np.take_along_axis(values, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: id ascending on ties
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    cols[~np.isfinite(vals)] = -1  # excluded items used as filler
    out[:, :kk] = cols
    return out


def coverage(topk: np.ndarray, n_items: int) -> float:
    """Catalogue coverage: distinct recommended items / ``n_items``.

    Parameters
    ----------
    topk : np.ndarray
        ``(n_users, K)`` item ids, ``-1`` padding.
    n_items : int
        Catalogue size.
    """
    ids = np.asarray(topk).ravel()
    ids = ids[ids >= 0]
    return float(len(np.unique(ids)) / n_items) if n_items > 0 else 0.0


def per_user_diversity(topk: np.ndarray, item_features: np.ndarray) -> np.ndarray:
    """Intra-list diversity of each list.

    The mean over the pairs ``i < j`` of a list of ``1 - cos(f_i, f_j)``, with
    ``f`` the rows of ``item_features``.  An item with an all-zero feature vector
    is at distance 1 from every other item.  A list with fewer than two items
    has diversity 0.

    Parameters
    ----------
    topk : np.ndarray
        ``(n_users, K)`` item ids, ``-1`` padding.
    item_features : np.ndarray
        ``(n_items, F)`` features, e.g. the multi-hot genres of a dataset.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` float64.
    """
    topk = np.asarray(topk, dtype=np.int64)
    feats = np.asarray(item_features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"item_features must be 2-D; got shape {feats.shape}")
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    unit = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)
    n_users, k = topk.shape
    valid = topk >= 0
    v = unit[np.maximum(topk, 0)] * valid[:, :, None]  # (U, K, F)
    sim = np.einsum("ukf,ulf->ukl", v, v)
    dist = np.clip(1.0 - sim, 0.0, 2.0)
    upper = np.triu(np.ones((k, k), dtype=bool), 1)
    pairs = valid[:, :, None] & valid[:, None, :] & upper
    n_pairs = pairs.sum(axis=(1, 2))
    total = np.where(pairs, dist, 0.0).sum(axis=(1, 2))
    return np.where(n_pairs > 0, total / np.maximum(n_pairs, 1), 0.0)


def intra_list_diversity(topk: np.ndarray, item_features: np.ndarray) -> float:
    """Mean over users of :func:`per_user_diversity`."""
    d = per_user_diversity(topk, item_features)
    return float(d.mean()) if len(d) else float("nan")


def _per_item_mean(topk: np.ndarray, value: np.ndarray) -> np.ndarray:
    topk = np.asarray(topk, dtype=np.int64)
    valid = topk >= 0
    vals = np.where(valid, value[np.maximum(topk, 0)], 0.0)
    n = valid.sum(axis=1)
    return np.where(n > 0, vals.sum(axis=1) / np.maximum(n, 1), 0.0)


def per_user_novelty(topk: np.ndarray, item_popularity: np.ndarray, n_users: int) -> np.ndarray:
    """Mean self-information ``-log2(pop_i / n_users)`` of each list.

    Parameters
    ----------
    topk : np.ndarray
        ``(U, K)`` item ids, ``-1`` padding.
    item_popularity : np.ndarray
        ``(n_items,)`` interaction counts (training data); clipped to >= 1.
    n_users : int
        Number of users the popularity was counted over.
    """
    pop = np.maximum(np.asarray(item_popularity, dtype=np.float64), 1.0)
    return _per_item_mean(topk, -np.log2(pop / n_users))


def novelty(topk: np.ndarray, item_popularity: np.ndarray, n_users: int) -> float:
    """Mean over users of :func:`per_user_novelty`."""
    v = per_user_novelty(topk, item_popularity, n_users)
    return float(v.mean()) if len(v) else float("nan")


def list_novelty_and_popularity(topk_counts: np.ndarray, item_popularity: np.ndarray,
                                n_users: int) -> tuple[float, float]:
    """Novelty and ARP over every recommended slot, from how many lists each item is in
    (``topk_counts``, ``(n_items,)``): the mean over users of :func:`per_user_novelty` and
    :func:`per_user_popularity` when every list is full, which is all a server needs
    (the lists stay on the nodes)."""
    w = np.asarray(topk_counts, dtype=np.float64)
    pop = np.asarray(item_popularity, dtype=np.float64)
    info = -np.log2(np.maximum(pop, 1.0) / n_users)
    return float((w * info).sum() / w.sum()), float((w * pop).sum() / w.sum())


def per_user_popularity(topk: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Mean popularity of the items of each list."""
    return _per_item_mean(topk, np.asarray(item_popularity, dtype=np.float64))


def average_popularity(topk: np.ndarray, item_popularity: np.ndarray) -> float:
    """ARP: mean over users of the mean popularity of their recommended items."""
    v = per_user_popularity(topk, item_popularity)
    return float(v.mean()) if len(v) else float("nan")
