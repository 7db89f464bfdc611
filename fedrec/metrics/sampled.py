"""Sampled ranking metrics (rank among a few sampled negatives), labelled as such.

Sampled metrics rank each held-out item against ``n_negatives`` (default 99)
items drawn uniformly, without replacement, from the items that are *not* a
known positive of the user (train + valid + test).  They are cheaper and were
common in older papers, but they are **not** estimates of the full-ranking
metrics (they are biased and can even reorder models), so every key carries the
``sampled_`` prefix (``sampled_hr@10``, ``sampled_ndcg@10``, ...) and they should
only be reported next to the full-ranking ones of :mod:`fedrec.metrics.ranking`.

For a user with several targets, the candidate list is the user's targets plus
its negatives (the other targets stay candidates, as in full ranking), so
:func:`~fedrec.metrics.ranking.metrics_from_ranks` applies unchanged.  The tie
rule is the same as for full ranking (pessimistic by default: a negative with
a score equal to the target's counts as above it).

Reproducibility: pass one generator per user (e.g. seeded with
``(seed, user_id)``) and the negatives of a user do not depend on the batching
or on which other users are evaluated, so federated clients evaluating their own
users draw exactly the negatives a centralised evaluation would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fedrec.metrics.ranking import (
    MatrixLike,
    RngLike,
    TargetRanks,
    Ties,
    _as_scores,
    _check_finite,
    _check_ties,
    _coords,
    _rank_rows,
    _resolve_rng,
    _tie_priorities,
)

__all__ = [
    "SAMPLED_PREFIX",
    "sample_negatives",
    "sampled_target_ranks",
    "sampled_metrics",
]

SAMPLED_PREFIX = "sampled_"


def sample_negatives(
    positives: MatrixLike,
    *,
    n_negatives: int = 99,
    rng: RngLike = None,
) -> np.ndarray:
    """Draw negatives per user, uniformly without replacement among non-positives.

    Parameters
    ----------
    positives : scipy.sparse matrix or array
        ``(B, n_items)`` binary: every known positive of each user (train, valid
        and test); none of them is ever drawn.
    n_negatives : int
        Negatives per user.
    rng : np.random.Generator, sequence of Generator, int or None
        One generator for the batch or one per row; ``None`` means seed 0.

    Returns
    -------
    np.ndarray
        ``(B, n_negatives)`` ``int64`` item ids, in the order drawn.  A user with
        fewer than ``n_negatives`` non-positive items gets all of them, padded
        with ``-1``.
    """
    if n_negatives < 0:
        raise ValueError(f"n_negatives must be >= 0; got {n_negatives}")
    if sp.issparse(positives):
        n_rows, n_items = positives.shape
    else:
        n_rows, n_items = np.asarray(positives).shape
    p_rows, p_cols = _coords(positives, (n_rows, n_items), "positives")
    starts = np.searchsorted(p_rows, np.arange(n_rows + 1))
    gen = _resolve_rng(rng, n_rows)
    out = np.full((n_rows, n_negatives), -1, dtype=np.int64)
    if n_negatives == 0 or n_items == 0:
        return out
    for r in range(n_rows):
        g = gen if isinstance(gen, np.random.Generator) else gen[r]
        pos = p_cols[starts[r] : starts[r + 1]]
        # The first m items of a uniform random permutation hold at least
        # n_negatives non-positives; the first n_negatives of those are a
        # uniform sample without replacement of the non-positives.
        m = min(n_items, n_negatives + len(pos))
        draw = g.choice(n_items, size=m, replace=False)
        if len(pos):  # pos is sorted: membership by binary search
            hit = pos[np.minimum(np.searchsorted(pos, draw), len(pos) - 1)] == draw
            draw = draw[~hit]
        draw = draw[:n_negatives]
        out[r, : len(draw)] = draw
    return out


def sampled_target_ranks(
    scores: np.ndarray,
    targets: MatrixLike,
    negatives: np.ndarray,
    *,
    ties: Ties = "pessimistic",
    rng: RngLike = None,
    user_ids: np.ndarray | None = None,
) -> TargetRanks:
    """Rank each target among the user's targets and sampled negatives.

    Parameters
    ----------
    scores : np.ndarray
        ``(B, n_items)`` float scores.
    targets : scipy.sparse matrix or array
        ``(B, n_items)`` binary held-out items.
    negatives : np.ndarray
        ``(B, n)`` item ids (``-1`` = padding), e.g. from
        :func:`sample_negatives`; must not contain a target of the same user.
    ties : {"pessimistic", "random"}
        Tie rule, as in :func:`~fedrec.metrics.ranking.target_ranks`.
    rng : np.random.Generator, sequence of Generator, int or None
        Tie-breaking randomness for ``ties="random"``.
    user_ids : np.ndarray, optional
        Ids of the rows, for error messages.

    Returns
    -------
    TargetRanks
        ``ranks`` are ranks among the candidates (targets + valid negatives);
        ``n_candidates`` = n_targets + number of valid negatives.

    Raises
    ------
    ValueError
        If a negative is a target of the same user, an id is out of range, or a
        candidate score is non-finite.
    """
    _check_ties(ties)
    s = _as_scores(scores)
    n_rows, n_items = s.shape
    negatives = np.asarray(negatives, dtype=np.int64)
    if negatives.ndim != 2 or negatives.shape[0] != n_rows:
        raise ValueError(f"negatives must have shape ({n_rows}, n); got {negatives.shape}")
    if np.any(negatives >= n_items) or np.any(negatives < -1):
        raise ValueError("negatives hold item ids outside [-1, n_items)")
    t_rows, t_cols = _coords(targets, (n_rows, n_items), "targets")
    rows, counts = np.unique(t_rows, return_counts=True)
    per_row = np.zeros(n_rows, dtype=np.int64)
    per_row[rows] = counts
    width = int(per_row.max()) if n_rows else 0
    # Position of each target within its row's target block.
    starts = np.r_[0, np.cumsum(per_row)][t_rows]
    t_pos = np.arange(len(t_rows), dtype=np.int64) - starts

    block = np.full((n_rows, width), -1, dtype=np.int64)
    block[t_rows, t_pos] = t_cols
    if len(t_rows) and negatives.shape[1]:
        clash = (negatives[t_rows] == t_cols[:, None]).any(axis=1)
        if clash.any():
            r = int(t_rows[np.flatnonzero(clash)[0]])
            who = f"user {np.asarray(user_ids)[r]}" if user_ids is not None else f"row {r}"
            raise ValueError(f"negatives of {who} include one of its targets")
    cand = np.concatenate([block, negatives], axis=1)
    valid = cand >= 0
    values = np.where(valid, s[np.arange(n_rows)[:, None], np.maximum(cand, 0)], -np.inf)
    n_invalid = cand.shape[1] - valid.sum(axis=1)
    # Invalid slots are -inf already; any other non-finite value is a bad score.
    _check_finite(values, n_invalid, rows, user_ids)
    prio = None
    if ties == "random":  # per-item priorities, gathered at the candidates
        prio = np.take_along_axis(_tie_priorities(rng, n_rows, n_items), np.maximum(cand, 0), axis=1)
    ranks = _rank_rows(values, t_rows, t_pos, prio)
    return TargetRanks(
        rows=rows.astype(np.int64),
        items=t_cols,
        ranks=ranks,
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        n_candidates=valid.sum(axis=1)[rows].astype(np.int64),
    )


def sampled_metrics(
    scores: np.ndarray,
    targets: MatrixLike,
    positives: MatrixLike,
    *,
    n_negatives: int = 99,
    ks: Sequence[int] = (10, 20),
    ties: Ties = "pessimistic",
    rng: RngLike = None,
    tie_rng: RngLike = None,
    user_ids: np.ndarray | None = None,
) -> tuple[TargetRanks, dict[str, np.ndarray]]:
    """Sample negatives, rank the targets among them and compute the metrics.

    Parameters
    ----------
    scores, targets
        As in :func:`sampled_target_ranks`.
    positives : scipy.sparse matrix or array
        ``(B, n_items)`` all known positives (train + valid + test).
    n_negatives : int
        Negatives per user (default 99).
    ks : sequence of int
        Cut-offs.
    ties : {"pessimistic", "random"}
        Tie rule.
    rng : np.random.Generator, sequence of Generator, int or None
        Randomness of the negative sampling (``None``: seed 0).
    tie_rng : np.random.Generator, sequence of Generator, int or None
        Randomness of tie breaking (``ties="random"`` only).
    user_ids : np.ndarray, optional
        Ids of the rows, for error messages.

    Returns
    -------
    (TargetRanks, dict)
        The ranks, and per-evaluated-user arrays keyed ``sampled_hr@k``,
        ``sampled_recall@k``, ``sampled_precision@k``, ``sampled_ndcg@k``,
        ``sampled_map@k``, ``sampled_mrr``, ``sampled_auc``.
    """
    negatives = sample_negatives(positives, n_negatives=n_negatives, rng=rng)
    tr = sampled_target_ranks(scores, targets, negatives, ties=ties, rng=tie_rng, user_ids=user_ids)
    return tr, tr.metrics(ks=ks, prefix=SAMPLED_PREFIX)
