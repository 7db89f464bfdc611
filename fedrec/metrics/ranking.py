"""Full-ranking evaluation: the rank of every held-out item among all candidates.

For a user, the *candidates* are all items except the excluded ones (typically
the items already seen in training).  The user's other held-out items stay
candidates, so a target can be out-ranked by another target of the same user.
Excluding never applies to a target itself: a held-out item is always ranked.

The rank of a target is 0-based: ``0`` means no candidate is above it.  From the
ranks, :func:`metrics_from_ranks` derives per-user HR, recall, precision, NDCG,
MAP (all at cut-offs ``k``), MRR and AUC.

Tie rule
--------
The default, ``ties="pessimistic"``, counts every candidate whose score *equals*
the target's as ranked above it, so ties are never resolved in the model's
favour.  Reasons:

* A model that gives everything the same score (a constant, a collapsed
  embedding, an all-zero output after a bug) gets the *worst* possible rank,
  not the best, and cannot look good by accident.
* Coarse scores (popularity counts, quantised or low-precision outputs) cannot
  gain from ties; the usual ``argsort`` ranking would instead break ties by item
  id, which silently rewards whatever the id order correlates with.
* It is deterministic and needs no random numbers.

``ties="random"`` breaks ties uniformly at random instead (the expected-value
view): ``rank = higher + Uniform{0..n_tied}``.  It is implemented as one random
order of the items per user (a permutation indexed by item id), shared by all
the user's targets, so several targets of a user get distinct ranks and the
metrics stay within [0, 1]; with one generator per user the draw does not
depend on the batching.  AUC follows the same rule: under the pessimistic rule a
tied (target, non-target) pair counts as a loss.

Shapes
------
``scores`` is a dense ``(B, n_items)`` float array for ``B`` users; ``targets``
and ``exclude`` are binary ``(B, n_items)`` matrices (scipy sparse preferred,
dense accepted).  Stored zeros are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

__all__ = [
    "Ties",
    "RngLike",
    "MatrixLike",
    "TargetRanks",
    "target_ranks",
    "metrics_from_ranks",
    "ranking_metric_names",
]

Ties = Literal["pessimistic", "random"]
#: A generator for the whole batch, one generator per row of ``scores``, an int
#: seed, or ``None`` (seed 0).
RngLike = np.random.Generator | Sequence[np.random.Generator] | int | None
#: A binary ``(users, items)`` matrix: scipy sparse (CSR preferred) or dense.
MatrixLike = sp.spmatrix | sp.sparray | np.ndarray

# Largest number of float64 elements a temporary comparison array may hold in
# the several-targets-per-user path (about 32 MB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TargetRanks:
    """Ranks of the held-out items of the evaluated users of one batch.

    Attributes
    ----------
    rows : np.ndarray
        ``int64`` positions (rows of ``scores``) of the evaluated users, i.e. the
        users with at least one target, ascending.  Users without targets are
        skipped.
    items : np.ndarray
        Flat ``int64`` target item ids; user ``rows[j]``'s targets are
        ``items[offsets[j]:offsets[j + 1]]``, ascending item id.
    ranks : np.ndarray
        Flat ``int64`` 0-based ranks, aligned with ``items``.
    offsets : np.ndarray
        ``int64`` array of length ``len(rows) + 1``.
    n_candidates : np.ndarray
        ``int64`` number of candidate items per evaluated user (targets
        included).
    """

    rows: np.ndarray
    items: np.ndarray
    ranks: np.ndarray
    offsets: np.ndarray
    n_candidates: np.ndarray

    @property
    def n_targets(self) -> np.ndarray:
        """Number of targets per evaluated user."""
        return np.diff(self.offsets)

    @property
    def user_index(self) -> np.ndarray:
        """For each flat rank, the position ``j`` of its user in ``rows``."""
        return np.repeat(np.arange(len(self.rows), dtype=np.int64), self.n_targets)

    @property
    def ranks_per_user(self) -> list[np.ndarray]:
        """The ranks as one array per evaluated user."""
        return np.split(self.ranks, self.offsets[1:-1])

    def metrics(self, *, ks: Sequence[int] = (10, 20), prefix: str = "") -> dict[str, np.ndarray]:
        """Per-user metrics of these ranks (see :func:`metrics_from_ranks`)."""
        return _metrics_flat(
            self.ranks, self.user_index, self.n_targets, self.n_candidates, ks=ks, prefix=prefix
        )


# --------------------------------------------------------------------------- helpers


def _as_scores(scores: np.ndarray) -> np.ndarray:
    """``scores`` as a dense 2-D float array (float32 / float64 kept, others -> float64)."""
    if hasattr(scores, "detach"):  # a torch tensor, without importing torch
        scores = scores.detach().cpu().numpy()
    a = np.asarray(scores)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"scores must be a 2-D (users, items) array; got shape {a.shape}")
    return a


def _coords(m: MatrixLike | None, shape: tuple[int, int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Unique ``(row, col)`` coordinates of the non-zeros of ``m``, row-major order."""
    empty = np.zeros(0, dtype=np.int64)
    if m is None:
        return empty, empty
    if sp.issparse(m):
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {m.shape}; expected {shape}")
        if not (m.format == "csr" and m.has_canonical_format):
            # sorted and without duplicates, in scipy's C code (a hash of every coordinate took
            # 9 of 11 s of an evaluation masking millions of entries); |m| keeps a coordinate
            # whenever any of its duplicate entries is non-zero, as the coordinate set does
            m = abs(m).tocsr()
            m.sum_duplicates()
        if m.format == "csr" and m.has_canonical_format:  # sorted, no duplicates
            r = np.repeat(np.arange(shape[0], dtype=np.int64), np.diff(m.indptr))
            keep = m.data != 0
            return r[keep], m.indices[keep].astype(np.int64)
        coo = m.tocoo()
        keep = coo.data != 0
        r = coo.row[keep].astype(np.int64)
        c = coo.col[keep].astype(np.int64)
    else:
        a = np.asarray(m)
        if a.shape != tuple(shape):
            raise ValueError(f"{name} has shape {a.shape}; expected {shape}")
        r, c = (x.astype(np.int64) for x in np.nonzero(a))
    if len(r) == 0:
        return empty, empty
    key = np.unique(r * shape[1] + c)
    return key // shape[1], key % shape[1]


def _check_ties(ties: str) -> None:
    if ties not in ("pessimistic", "random"):
        raise ValueError(f"ties must be 'pessimistic' or 'random'; got {ties!r}")


def _resolve_rng(rng: RngLike, n_rows: int) -> np.random.Generator | list[np.random.Generator]:
    """One generator, or a list with one generator per row."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return rng
    gens = list(rng)
    if len(gens) != n_rows or not all(isinstance(g, np.random.Generator) for g in gens):
        raise ValueError(f"rng: expected one np.random.Generator per row ({n_rows})")
    return gens


def _user_name(row: int, user_ids: np.ndarray | None) -> str:
    if user_ids is None:
        return f"row {row}"
    return f"user {np.asarray(user_ids)[row]}"


def _check_finite(
    values: np.ndarray,
    n_masked: np.ndarray,
    rows: np.ndarray,
    user_ids: np.ndarray | None,
) -> None:
    """Raise if a candidate of an evaluated row has a non-finite score.

    ``values`` holds ``-inf`` at the ``n_masked[r]`` masked entries of row ``r``;
    any other non-finite entry is a candidate's score.
    """
    n_bad = values.shape[1] - np.count_nonzero(np.isfinite(values), axis=1) - n_masked
    bad_rows = rows[n_bad[rows] > 0]
    if len(bad_rows):
        r = int(bad_rows[0])
        raise ValueError(
            f"non-finite scores for {_user_name(r, user_ids)} "
            f"({int(n_bad[r])} candidate item(s)); scores must be finite"
        )


def _tie_priorities(rng: RngLike, n_rows: int, n_items: int) -> np.ndarray:
    """A uniformly random permutation of the item ids per row (``(B, n_items)``).

    ``prio[r, i]`` is item ``i``'s random priority in row ``r``: among tied
    candidates, a higher priority ranks higher.  Indexed by item id (not by
    column position), so a row's draw depends only on its own generator and
    ``n_items``, never on the batch it is in.
    """
    gen = _resolve_rng(rng, n_rows)
    if isinstance(gen, np.random.Generator):
        base = np.broadcast_to(np.arange(n_items, dtype=np.int64), (n_rows, n_items))
        return gen.permuted(base, axis=1)
    if n_rows == 0:
        return np.zeros((0, n_items), dtype=np.int64)
    return np.stack([g.permutation(n_items) for g in gen]).astype(np.int64)


def _rank_rows(
    values: np.ndarray,
    t_rows: np.ndarray,
    t_pos: np.ndarray,
    prio: np.ndarray | None,
) -> np.ndarray:
    """0-based rank of each target ``values[t_rows[i], t_pos[i]]`` within its row.

    ``values`` is ``(B, L)`` float with ``-inf`` at non-candidates; target
    scores are finite.  Targets are candidates of each other.  ``prio`` is
    ``None`` for pessimistic ties, else ``(B, L)`` distinct random priorities
    per row: a tied candidate is above the target iff its priority is higher
    (one random order per row shared by all of its targets).
    """
    n_rows, n_cols = values.shape
    n_t = len(t_rows)
    if n_t == 0:
        return np.zeros(0, dtype=np.int64)
    t_scores = values[t_rows, t_pos]
    per_row = np.bincount(t_rows, minlength=n_rows)

    if per_row.max() <= 1:
        # One target per user: a few vectorised passes over (B, L).
        ref = np.full(n_rows, np.nan, dtype=values.dtype)
        ref[t_rows] = t_scores
        higher = np.count_nonzero(values > ref[:, None], axis=1)[t_rows]
        eq = values == ref[:, None]
        if prio is None:
            return (higher + np.count_nonzero(eq, axis=1)[t_rows] - 1).astype(np.int64)
        pref = np.zeros(n_rows, dtype=prio.dtype)
        pref[t_rows] = prio[t_rows, t_pos]
        above = np.count_nonzero(eq & (prio > pref[:, None]), axis=1)[t_rows]
        return (higher + above).astype(np.int64)

    # Several targets per user: compare in chunks of targets to bound memory.
    ranks = np.empty(n_t, dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_cols))
    for s in range(0, n_t, chunk):
        rows = t_rows[s : s + chunk]
        ts = t_scores[s : s + chunk, None]
        v = values[rows]
        higher = np.count_nonzero(v > ts, axis=1)
        eq = v == ts
        if prio is None:
            ranks[s : s + chunk] = higher + np.count_nonzero(eq, axis=1) - 1
        else:
            p = prio[rows]
            pt = p[np.arange(len(rows)), t_pos[s : s + chunk]]
            ranks[s : s + chunk] = higher + np.count_nonzero(eq & (p > pt[:, None]), axis=1)
    return ranks


# --------------------------------------------------------------------------- public


def target_ranks(
    scores: np.ndarray,
    targets: MatrixLike,
    exclude: MatrixLike | None = None,
    *,
    ties: Ties = "pessimistic",
    rng: RngLike = None,
    user_ids: np.ndarray | None = None,
) -> TargetRanks:
    """Rank every target item of every user among the user's candidate items.

    Parameters
    ----------
    scores : np.ndarray
        ``(B, n_items)`` float scores, higher is better.
    targets : scipy.sparse matrix or array
        ``(B, n_items)`` binary: the held-out items to rank.
    exclude : scipy.sparse matrix or array, optional
        ``(B, n_items)`` binary: items that are not candidates (e.g. training
        items).  A target is never excluded, even if also listed here.
    ties : {"pessimistic", "random"}
        Tie rule (see the module docstring).  ``"pessimistic"``: a candidate
        with a score equal to the target's counts as ranked above it.
        ``"random"``: ties broken uniformly at random.
    rng : np.random.Generator, sequence of Generator, int or None
        Randomness for ``ties="random"``: one generator for the batch, or one
        per row of ``scores`` (reproducible per user whatever the batching).
        ``None`` means ``np.random.default_rng(0)``.  Unused when pessimistic.
    user_ids : np.ndarray, optional
        Ids of the rows, only used to name the user in error messages.

    Returns
    -------
    TargetRanks
        ``rank = #candidates scored strictly higher (+ ties per the rule)``, the
        evaluated rows (those with >= 1 target) and ``n_candidates`` per user
        (``n_items`` minus the excluded non-target items).

    Raises
    ------
    ValueError
        On shape mismatches, an unknown ``ties``, or a non-finite score of a
        candidate of an evaluated user (the message names the user).  Scores of
        excluded items may be anything (e.g. ``-inf`` from the model's own mask).
    """
    values = _as_scores(scores).copy()
    n_rows, n_items = values.shape
    _check_ties(ties)
    t_rows, t_cols = _coords(targets, (n_rows, n_items), "targets")
    e_rows, e_cols = _coords(exclude, (n_rows, n_items), "exclude")
    if len(e_rows) and len(t_rows):
        keep = ~np.isin(e_rows * n_items + e_cols, t_rows * n_items + t_cols, assume_unique=True)
        e_rows, e_cols = e_rows[keep], e_cols[keep]
    values[e_rows, e_cols] = -np.inf
    n_excluded = np.bincount(e_rows, minlength=n_rows)
    rows, counts = np.unique(t_rows, return_counts=True)
    _check_finite(values, n_excluded, rows, user_ids)
    prio = _tie_priorities(rng, n_rows, n_items) if ties == "random" else None
    ranks = _rank_rows(values, t_rows, t_cols, prio)
    return TargetRanks(
        rows=rows.astype(np.int64),
        items=t_cols,
        ranks=ranks,
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        n_candidates=(n_items - n_excluded[rows]).astype(np.int64),
    )


def ranking_metric_names(ks: Sequence[int] = (10, 20), *, prefix: str = "") -> list[str]:
    """Keys produced by :func:`metrics_from_ranks`, in order."""
    names = []
    for k in ks:
        names += [f"{prefix}{m}@{k}" for m in ("hr", "recall", "precision", "ndcg", "map")]
    return names + [f"{prefix}mrr", f"{prefix}auc"]


def metrics_from_ranks(
    ranks_per_user: Sequence[np.ndarray] | np.ndarray,
    n_targets: np.ndarray,
    n_candidates: np.ndarray,
    *,
    ks: Sequence[int] = (10, 20),
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """Per-user ranking metrics from 0-based target ranks.

    Parameters
    ----------
    ranks_per_user : sequence of 1-D int arrays, or 2-D int array
        The ranks of each user's targets (a 2-D array means the same number of
        targets per user, one row per user).
    n_targets : array of int
        Number of held-out items per user (>= 1, >= the number of ranks given;
        targets without a rank count as misses).
    n_candidates : array of int
        Number of candidate items per user (targets included).
    ks : sequence of int
        Cut-offs.
    prefix : str
        Prepended to every key (``"sampled_"`` for sampled metrics).

    Returns
    -------
    dict of str to np.ndarray
        float64 per-user arrays, keys (lowercase) for each ``k`` in ``ks``:

        * ``hr@k``: 1 if any target has ``rank < k``;
        * ``recall@k``: hits / n_targets;
        * ``precision@k``: hits / k;
        * ``ndcg@k``: ``sum_{rank<k} 1/log2(rank+2)`` divided by the ideal DCG of
          ``min(k, n_targets)`` targets at ranks ``0, 1, ...``;
        * ``map@k``: ``sum_{rank<k} P(rank) / min(k, n_targets)`` with
          ``P(r) = #targets with rank <= r / (r + 1)``;

        and ``mrr`` = ``1 / (best rank + 1)`` (no cut-off) and ``auc`` = the
        fraction of (target, non-target candidate) pairs with the target ranked
        above (pairs tied under the pessimistic rule are losses; 0.5 for a user
        with no pairs).
    """
    if isinstance(ranks_per_user, np.ndarray) and ranks_per_user.ndim == 2:
        arrays = list(ranks_per_user)
    else:
        arrays = [np.asarray(r).ravel() for r in ranks_per_user]
    n_users = len(arrays)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays).astype(np.int64) if n_users else np.zeros(0, np.int64)
    uidx = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    n_targets = np.asarray(n_targets, dtype=np.int64).ravel()
    n_candidates = np.asarray(n_candidates, dtype=np.int64).ravel()
    if len(n_targets) != n_users or len(n_candidates) != n_users:
        raise ValueError(
            f"{n_users} users of ranks but {len(n_targets)} n_targets and "
            f"{len(n_candidates)} n_candidates"
        )
    if np.any(lengths > n_targets):
        raise ValueError("a user has more ranks than n_targets")
    return _metrics_flat(flat, uidx, n_targets, n_candidates, ks=ks, prefix=prefix, lengths=lengths)


def _metrics_flat(
    ranks: np.ndarray,
    uidx: np.ndarray,
    n_targets: np.ndarray,
    n_candidates: np.ndarray,
    *,
    ks: Sequence[int],
    prefix: str = "",
    lengths: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """:func:`metrics_from_ranks` on flat ranks with the user index of each rank."""
    n_users = len(n_targets)
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"cut-offs must be >= 1; got {ks}")
    if np.any(n_targets < 1):
        raise ValueError("every user needs n_targets >= 1")
    if np.any(ranks < 0):
        raise ValueError("ranks must be >= 0")
    if lengths is None:
        lengths = np.bincount(uidx, minlength=n_users)
    nt = n_targets.astype(np.float64)
    rk = ranks.astype(np.float64)

    # count_le[i]: targets of the same user with rank <= ranks[i] (itself included).
    count_le = np.zeros(len(ranks), dtype=np.int64)
    if len(ranks):
        base = int(ranks.max()) + 1
        key = uidx * base + ranks
        order = np.argsort(key, kind="stable")
        skey = key[order]
        start = np.searchsorted(skey, uidx[order] * base, side="left")
        count_le[order] = np.searchsorted(skey, skey, side="right") - start

    def per_user(weights: np.ndarray) -> np.ndarray:
        return np.bincount(uidx, weights=weights, minlength=n_users)[:n_users]

    out: dict[str, np.ndarray] = {}
    gain = 1.0 / np.log2(rk + 2.0)
    for k in ks:
        hit = ranks < k
        hits = per_user(hit.astype(np.float64))
        disc = np.cumsum(1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0))
        idcg = disc[np.minimum(k, n_targets) - 1]
        ap = per_user(np.where(hit, count_le / (rk + 1.0), 0.0))
        out[f"{prefix}hr@{k}"] = (hits > 0).astype(np.float64)
        out[f"{prefix}recall@{k}"] = hits / nt
        out[f"{prefix}precision@{k}"] = hits / k
        out[f"{prefix}ndcg@{k}"] = per_user(np.where(hit, gain, 0.0)) / idcg
        out[f"{prefix}map@{k}"] = ap / np.minimum(k, n_targets)
    best = np.full(n_users, np.inf)
    np.minimum.at(best, uidx, rk)
    out[f"{prefix}mrr"] = np.where(np.isfinite(best), 1.0 / (best + 1.0), 0.0)
    # Non-targets above a target = its rank minus the other targets above it.
    neg_above = np.maximum(ranks - (count_le - 1), 0).astype(np.float64)
    n_neg = n_candidates - lengths
    pairs = (lengths * n_neg).astype(np.float64)
    lost = per_user(neg_above)
    with np.errstate(divide="ignore", invalid="ignore"):
        out[f"{prefix}auc"] = np.where(pairs > 0, 1.0 - lost / pairs, 0.5)
    return out
