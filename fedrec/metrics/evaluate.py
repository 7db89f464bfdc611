"""The evaluation protocol: one entry point for baselines and federated code.

Protocol (exactly):

* ``stage="valid"``: rank each user's **validation** items; the user's
  **train** items are masked (not candidates).
* ``stage="test"``: rank each user's **test** items; the user's **train and
  validation** items are masked.

A held-out item of the stage being evaluated is never masked.  Only users with
at least one held-out item in that stage are evaluated.  Ranking is over the
full catalogue (see :mod:`fedrec.metrics.ranking` for the tie rule,
pessimistic by default); optional sampled metrics (:mod:`fedrec.metrics.sampled`)
draw their negatives from the items that are in none of train/valid/test of the
user.  Top-K lists for the beyond-accuracy metrics use the same mask.

Users are scored in batches of ``batch_size`` so memory stays
``O(batch_size * n_items)`` whatever the number of users.  All randomness
(negatives, random tie breaking) comes from one generator per user seeded with
``(seed, stream, user_id)``, so a user's result does not depend on the batching
or on which other users are evaluated: federated clients can each call
:func:`evaluate` with ``users=`` their own users, report
:meth:`EvalResult.sums`, and the server's
:func:`~fedrec.metrics.aggregate.aggregate_metric_sums` equals the centralised
means.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from fedrec.data.splits import Split
from fedrec.metrics.aggregate import aggregate_metric_sums, coverage_from_counts, metric_sums
from fedrec.metrics.beyond import per_user_diversity, per_user_novelty, per_user_popularity, top_k
from fedrec.metrics.groups import group_means
from fedrec.metrics.ranking import TargetRanks, Ties, _as_scores, _check_ties, target_ranks
from fedrec.metrics.sampled import SAMPLED_PREFIX, sample_negatives, sampled_target_ranks

__all__ = [
    "Stage",
    "ScoreFn",
    "EvalResult",
    "stage_matrices",
    "SCORES_PER_BATCH",
    "users_to_evaluate",
    "evaluate",
    # re-exported from fedrec.metrics.aggregate for federated callers
    "metric_sums",
    "aggregate_metric_sums",
    "coverage_from_counts",
]

Stage = Literal["valid", "test"]
ScoreFn = Callable[[np.ndarray], np.ndarray]

# Independent random streams per user.
_STREAM_NEGATIVES = 1
_STREAM_TIES = 2
_STREAM_SAMPLED_TIES = 3


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes
    ----------
    metrics : dict of str to float
        Means over the evaluated users (``hr@10``, ``ndcg@10``, ``recall@20``,
        ``mrr``, ``auc``, ``sampled_hr@10``, ...), plus ``coverage@K`` (a set
        metric) and, when features / popularity were given, ``diversity@K``,
        ``novelty@K``, ``arp@K``.  NaN when no user was evaluated.
    per_user : dict of str to np.ndarray
        Per-user values aligned with ``users`` (every key of ``metrics`` except
        ``coverage@K``).
    users : np.ndarray
        ``int64`` ids of the evaluated users, ascending.
    groups : dict
        ``{grouping name: group_means(per_user, labels)}`` for each grouping
        passed in ``user_groups``.
    n_users : int
        Number of evaluated users.
    stage : str
        ``"valid"`` or ``"test"``.
    topk_item_counts : np.ndarray
        ``(n_items,)`` how many top-K lists each item is in (for coverage
        across clients: sum them and use ``coverage_from_counts``).
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    groups: dict
    n_users: int
    stage: str = "valid"
    topk_item_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def sums(self) -> tuple[dict[str, float], int]:
        """``(per-metric sums over users, n_users)`` for exact aggregation."""
        return metric_sums(self.per_user)


#: Scores computed per batch of users by default (256 users up to 16,384 items).
SCORES_PER_BATCH = 1 << 22


def stage_matrices(split: Split, stage: Stage) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The ``(targets, exclude)`` matrices of a stage.

    ``"valid"``: ``(split.valid, split.train)``; ``"test"``:
    ``(split.test, split.train + split.valid)``.
    """
    targets, masked = _stage_parts(split, stage)
    return targets, sp.csr_matrix(sum(masked[1:], masked[0]))


def _stage_parts(split: Split, stage: Stage) -> tuple[sp.csr_matrix, list[sp.csr_matrix]]:
    """The targets of a stage and the matrices whose items it masks (their sum is
    :func:`stage_matrices`' ``exclude``), without building that sum: :func:`evaluate`
    takes the rows of each batch only (a whole-matrix sum is a full copy of every
    user's interactions, hundreds of MiB at scale)."""
    if stage == "valid":
        return sp.csr_matrix(split.valid), [sp.csr_matrix(split.train)]
    if stage == "test":
        return sp.csr_matrix(split.test), [sp.csr_matrix(split.train), sp.csr_matrix(split.valid)]
    raise ValueError(f"stage must be 'valid' or 'test'; got {stage!r}")


def _rows_sum(parts: list[sp.csr_matrix], rows: np.ndarray) -> sp.csr_matrix:
    """``sum(parts)[rows]``, from the rows only."""
    out = parts[0][rows]
    for m in parts[1:]:
        out = out + m[rows]
    return sp.csr_matrix(out)


def _row_nnz(m: sp.csr_matrix) -> np.ndarray:
    """Non-zeros per row, ignoring stored zeros."""
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return np.bincount(rows[m.data != 0], minlength=m.shape[0])


def users_to_evaluate(split: Split, stage: Stage, users: np.ndarray | None = None) -> np.ndarray:
    """Ids (ascending) of the users with at least one target in ``stage``.

    Parameters
    ----------
    split : Split
        The split.
    stage : {"valid", "test"}
        Stage.
    users : np.ndarray, optional
        Restrict to these users (e.g. a client's own users).
    """
    targets, _ = _stage_parts(split, stage)
    has = _row_nnz(targets) > 0
    if users is None:
        return np.flatnonzero(has).astype(np.int64)
    users = np.unique(np.asarray(users, dtype=np.int64).ravel())
    if len(users) and (users[0] < 0 or users[-1] >= split.n_users):
        raise ValueError(f"user ids must be in [0, {split.n_users})")
    return users[has[users]]


def _user_rngs(seed: int, stream: int, users: np.ndarray) -> list[np.random.Generator]:
    return [np.random.default_rng([int(seed), stream, int(u)]) for u in users.tolist()]


def _call_score_fn(score_fn: ScoreFn, batch: np.ndarray, n_items: int) -> np.ndarray:
    s = _as_scores(score_fn(batch))
    if s.shape != (len(batch), n_items):
        raise ValueError(f"score_fn returned shape {s.shape}; expected {(len(batch), n_items)}")
    return s


def evaluate(
    score_fn: ScoreFn,
    split: Split,
    *,
    stage: Stage = "valid",
    ks: Sequence[int] = (10, 20),
    ties: Ties = "pessimistic",
    users: np.ndarray | None = None,
    batch_size: int | None = None,
    sampled_negatives: int = 99,
    seed: int = 0,
    item_features: np.ndarray | None = None,
    item_popularity: np.ndarray | None = None,
    user_groups: Mapping[str, np.ndarray] | None = None,
    beyond_k: int = 10,
    mask_consumed: bool = True,
) -> EvalResult:
    """Evaluate a scoring function on the validation or test stage of a split.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(user_ids) -> (len(user_ids), n_items)`` float scores (numpy
        array, or anything ``np.asarray`` accepts; torch tensors are detached).
        Scores of masked items are ignored; all others must be finite.
    split : Split
        Train / valid / test matrices.
    stage : {"valid", "test"}
        ``"valid"``: rank validation items, train masked.  ``"test"``: rank test
        items, train and validation masked.
    ks : sequence of int
        Cut-offs of the ranking metrics.
    ties : {"pessimistic", "random"}
        Tie rule (see :mod:`fedrec.metrics.ranking`).
    users : np.ndarray, optional
        Evaluate only these users (those without targets are still skipped).
    batch_size : int, optional
        Users scored per call of ``score_fn``; default: 256, fewer for catalogues
        above 16,384 items (:data:`SCORES_PER_BATCH` scores per batch), so the
        working set stays about 16 MiB of scores whatever the catalogue.
    sampled_negatives : int
        Negatives per user for the ``sampled_*`` metrics; 0 disables them.
    seed : int
        Seed of the per-user random streams (negatives, random ties).
    item_features : np.ndarray, optional
        ``(n_items, F)`` features (e.g. ``Dataset.item_genres``) for
        ``diversity@K``.
    item_popularity : np.ndarray, optional
        ``(n_items,)`` training popularity for ``novelty@K`` and ``arp@K``.
    user_groups : mapping of str to np.ndarray, optional
        ``{grouping: (n_users,) labels over all users of the split}``, e.g.
        ``{"activity": activity_groups(split.train), "gender": ...}``.
    beyond_k : int
        Length ``K`` of the top-K lists for the beyond-accuracy metrics.
    mask_consumed : bool
        ``True`` (the protocol's default): the user's earlier items (train;
        and valid at the test stage) are masked, so only unseen items compete
        with the target.  ``False``: every item is ranked, consumed ones too
        (domains where repeat consumption is legitimate); say so when reporting.

    Returns
    -------
    EvalResult
    """
    _check_ties(ties)
    if batch_size is None:
        batch_size = max(1, min(256, SCORES_PER_BATCH // max(1, split.n_items)))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if sampled_negatives < 0:
        raise ValueError(f"sampled_negatives must be >= 0; got {sampled_negatives}")
    ks = tuple(int(k) for k in ks)
    n_items = split.n_items
    targets, masked = _stage_parts(split, stage)
    if not mask_consumed:
        masked = [sp.csr_matrix(targets.shape, dtype=np.float32)]
    every = [sp.csr_matrix(m) for m in (split.train, split.valid, split.test)]  # positives of the sampled negatives
    eval_users = users_to_evaluate(split, stage, users)
    if item_features is not None and len(item_features) != n_items:
        raise ValueError(f"item_features has {len(item_features)} rows for {n_items} items")
    if item_popularity is not None and len(item_popularity) != n_items:
        raise ValueError(f"item_popularity has {len(item_popularity)} entries for {n_items} items")
    groups_in = dict(user_groups or {})
    for name, lab in groups_in.items():
        if len(lab) != split.n_users:
            raise ValueError(f"user_groups[{name!r}] has {len(lab)} labels for {split.n_users} users")

    chunks: dict[str, list[np.ndarray]] = {}
    full_parts: list[TargetRanks] = []
    sampled_parts: list[TargetRanks] = []
    item_counts = np.zeros(n_items, dtype=np.int64)
    K = int(beyond_k)

    def add(name: str, values: np.ndarray) -> None:
        chunks.setdefault(name, []).append(np.asarray(values, dtype=np.float64))

    for start in range(0, len(eval_users), batch_size):
        batch = eval_users[start : start + batch_size]
        scores = _call_score_fn(score_fn, batch, n_items)
        t_b, e_b = targets[batch], _rows_sum(masked, batch)

        tie_rng = _user_rngs(seed, _STREAM_TIES, batch) if ties == "random" else None
        tr = target_ranks(scores, t_b, e_b, ties=ties, rng=tie_rng, user_ids=batch)
        if len(tr.rows) != len(batch):  # cannot happen: every batch user has a target
            raise RuntimeError("a user without targets reached the ranking step")
        full_parts.append(tr)

        if sampled_negatives:
            negs = sample_negatives(
                _rows_sum(every, batch),
                n_negatives=sampled_negatives,
                rng=_user_rngs(seed, _STREAM_NEGATIVES, batch),
            )
            s_rng = _user_rngs(seed, _STREAM_SAMPLED_TIES, batch) if ties == "random" else None
            sampled_parts.append(
                sampled_target_ranks(scores, t_b, negs, ties=ties, rng=s_rng, user_ids=batch)
            )

        top = top_k(scores, e_b, K)
        item_counts += np.bincount(top[top >= 0], minlength=n_items)
        if item_features is not None:
            add(f"diversity@{K}", per_user_diversity(top, item_features))
        if item_popularity is not None:
            add(f"novelty@{K}", per_user_novelty(top, item_popularity, split.n_users))
            add(f"arp@{K}", per_user_popularity(top, item_popularity))

    # Ranking metrics once over all users (cheaper than per batch).
    per_user = _concat_ranks(full_parts).metrics(ks=ks)
    if sampled_negatives:
        per_user.update(_concat_ranks(sampled_parts).metrics(ks=ks, prefix=SAMPLED_PREFIX))
    for name in _beyond_keys(K, item_features, item_popularity):
        per_user[name] = np.concatenate(chunks.get(name, [np.zeros(0)]))
    n = len(eval_users)
    metrics = {k: (float(v.mean()) if n else float("nan")) for k, v in per_user.items()}
    metrics[f"coverage@{K}"] = coverage_from_counts(item_counts) if n and n_items else float("nan")
    groups = {
        name: group_means(per_user, np.asarray(lab, dtype=object)[eval_users])
        for name, lab in groups_in.items()
    }
    return EvalResult(
        metrics=metrics,
        per_user=per_user,
        users=eval_users,
        groups=groups,
        n_users=n,
        stage=stage,
        topk_item_counts=item_counts,
    )


def _concat_ranks(parts: list[TargetRanks]) -> TargetRanks:
    """Stack the :class:`TargetRanks` of consecutive batches (rows renumbered)."""
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return TargetRanks(rows=z, items=z, ranks=z, offsets=np.zeros(1, np.int64), n_candidates=z)
    sizes = np.cumsum([0] + [len(p.rows) for p in parts[:-1]])
    lens = np.cumsum([0] + [len(p.ranks) for p in parts[:-1]])
    return TargetRanks(
        rows=np.concatenate([p.rows + o for p, o in zip(parts, sizes)]),
        items=np.concatenate([p.items for p in parts]),
        ranks=np.concatenate([p.ranks for p in parts]),
        offsets=np.concatenate([[0]] + [p.offsets[1:] + o for p, o in zip(parts, lens)]).astype(np.int64),
        n_candidates=np.concatenate([p.n_candidates for p in parts]),
    )


def _beyond_keys(K: int, item_features: np.ndarray | None, item_popularity: np.ndarray | None) -> list[str]:
    """Per-user beyond-accuracy keys that :func:`evaluate` produces."""
    names = []
    if item_features is not None:
        names.append(f"diversity@{K}")
    if item_popularity is not None:
        names += [f"novelty@{K}", f"arp@{K}"]
    return names
