"""Exposure of chosen items: how often they reach users' full-ranking top-K.

The exposure ratio ER@K of a target item (FedRecAttack, Rong et al. 2022) is the
fraction of the users who have not interacted with it whose top-K list, over
all items with their history masked, contains it.  A tie with the K-th item
does not count as in the list (pessimistic, as every ranking metric here).
Nodes report sums (:func:`exposure_counts`); the server divides them
(:func:`exposure_ratios`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["exposure_counts", "exposure_ratios"]


def exposure_counts(score_fn: Callable[[np.ndarray], np.ndarray], users: np.ndarray, seen: sp.csr_matrix,
                    targets: Sequence[int], *, ks: Sequence[int] = (5, 10), batch_size: int = 256) -> dict[str, list]:
    """Per target: how many of ``users`` have it in their top-K (``hits@K``) and how many
    are eligible (``eligible``: the target is not in the user's row of ``seen``).

    Parameters
    ----------
    score_fn
        ``users -> (len(users), n_items)`` scores.
    users
        Users whose rankings count.
    seen
        ``(n_users, n_items)`` items masked from each user's ranking (its history).
    targets
        Item ids.
    """
    targets = np.asarray(targets, dtype=np.int64)
    users = np.asarray(users, dtype=np.int64)
    out: dict[str, list] = {f"hits@{k}": [0] * len(targets) for k in ks}
    out["eligible"] = [0] * len(targets)
    for lo in range(0, len(users), batch_size):
        batch = users[lo:lo + batch_size]
        s = np.asarray(score_fn(batch), dtype=np.float64).copy()
        rows = seen[batch]
        s[np.repeat(np.arange(len(batch)), np.diff(rows.indptr)), rows.indices] = -np.inf
        for j, t in enumerate(targets.tolist()):
            st = s[:, t]
            ok = np.isfinite(st)
            # pessimistic rank: every other item scored at least as high comes first
            rank = (s >= st[:, None]).sum(1) - 1
            out["eligible"][j] += int(ok.sum())
            for k in ks:
                out[f"hits@{k}"][j] += int((ok & (rank < k)).sum())
    return out


def exposure_ratios(counts: dict[str, Sequence[float]]) -> dict[str, float]:
    """``er@K``: the mean over targets of hits / eligible (targets no user is eligible for left out)."""
    elig = np.asarray(counts["eligible"], dtype=np.float64)
    out = {}
    for key, hits in counts.items():
        if key.startswith("hits@"):
            h = np.asarray(hits, dtype=np.float64)
            ok = elig > 0
            out[f"er@{key.split('@')[1]}"] = float((h[ok] / elig[ok]).mean()) if ok.any() else float("nan")
    return out
