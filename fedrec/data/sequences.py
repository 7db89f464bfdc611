"""Per-user chronological histories and the (prefix, next item) samples of sequential models.

A sequential recommender's user state is the ordered history itself: it never
leaves the device and there is no user vector.  This module derives, from a
dataset and its split:

* :func:`stage_histories`: each user's history *before* a stage, in time order:
  the training items before validation, training and validation items before
  test (a held-out item of the stage is never in its own history);
* :func:`training_windows`: the training samples of a cohort: every training item
  but the first is the target of one position, whose input is the items before
  it (within a window of ``length`` positions cut from the end of the history,
  SASRec-style: a window's inputs are the items just before its targets, and a
  causal model reads, for each target, the inputs up to its own position);
* :func:`last_items`: the model input at evaluation (the last ``length`` items).

Padding is ``-1`` (left-padded: the most recent item is in the last column).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.dataset import Dataset
from fedrec.data.negatives import is_positive
from fedrec.data.splits import Split, chronological_order

__all__ = ["Histories", "stage_histories", "training_windows", "last_items", "max_uses_per_interaction", "PAD"]

PAD = -1


@dataclass(frozen=True)
class Histories:
    """Ragged per-user item sequences in time order: user ``u``'s are
    ``items[indptr[u]:indptr[u + 1]]``."""

    indptr: np.ndarray
    items: np.ndarray

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    def lengths(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        return self.indptr[users + 1] - self.indptr[users]


def _ragged(users_sorted: np.ndarray, items: np.ndarray, n_users: int) -> Histories:
    counts = np.bincount(users_sorted, minlength=n_users)
    return Histories(indptr=np.r_[0, np.cumsum(counts)].astype(np.int64), items=items.astype(np.int64))


def stage_histories(ds: Dataset, split: Split, stage: str = "train") -> Histories:
    """Each user's interactions that precede ``stage``, in time order.

    ``stage="train"`` or ``"valid"``: the user's training interactions (the input
    for training and for ranking the validation items); ``"test"``: training and
    validation interactions (the input for ranking the test items).  Ties in time
    are ordered as the split orders them (``split.tie_seed``), never by the file."""
    if stage not in ("train", "valid", "test"):
        raise ValueError(f"unknown stage {stage!r}; choose 'train', 'valid' or 'test'")
    order = chronological_order(ds, tie_seed=split.tie_seed)
    u, i = ds.user[order].astype(np.int64), ds.item[order].astype(np.int64)
    keep = is_positive(split.train, u, i)
    if stage == "test":
        keep |= is_positive(split.valid, u, i)
    return _ragged(u[keep], i[keep], split.n_users)


def training_windows(hist: Histories, users: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
    """The training samples of ``users``, grouped in windows of ``length`` positions.

    For a history ``s`` of ``n >= 2`` items, position ``t`` (``1 <= t < n``) has the
    target ``s[t]`` and the inputs ``s[:t]``; positions are cut from the end into
    windows of ``length``; the input in a target's column is ``s[t - 1]``, so a
    causal model reads, for the target in column ``c``, the window's inputs in
    columns ``<= c``: between 1 and ``length`` items before it, never the target
    or anything after it.  Users with fewer than 2 items have no sample.

    Returns
    -------
    owner : (w,) int64
        Index into ``users`` of each window's user.
    inputs, targets : (w, length) int64
        Item ids, :data:`PAD` where a position is empty (left padding).
    position : (w, length) int64
        ``t`` of each target within its user's history (keys its negatives), -1 if empty.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1; got {length}")
    users = np.asarray(users, dtype=np.int64)
    n = hist.lengths(users)
    n_pos = np.maximum(n - 1, 0)
    n_win = -(-n_pos // length)  # ceil
    w_start = np.r_[0, np.cumsum(n_win)]
    total = int(w_start[-1])
    inputs = np.full((total, length), PAD, dtype=np.int64)
    targets = np.full((total, length), PAD, dtype=np.int64)
    position = np.full((total, length), -1, dtype=np.int64)
    owner = np.repeat(np.arange(len(users), dtype=np.int64), n_win)
    # every position t = 1..n-1 of every user, flat
    pu = np.repeat(np.arange(len(users)), n_pos)
    t = np.arange(int(n_pos.sum())) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos) + 1
    base = hist.indptr[users][pu]
    r = n[pu] - 1 - t  # positions after t in the history (0 for the last)
    row = w_start[pu] + (n_win[pu] - 1 - r // length)
    col = length - 1 - r % length
    targets[row, col] = hist.items[base + t]
    position[row, col] = t
    inputs[row, col] = hist.items[base + t - 1]
    return owner, inputs, targets, position


def max_uses_per_interaction(length: int) -> int:
    """Samples (positions) whose loss one interaction can enter in one epoch over the
    windows: once as a target, and as an input of at most ``length`` positions (its own
    column and the later ones of its window; inputs never cross a window boundary)."""
    return length + 1


def last_items(hist: Histories, users: np.ndarray, length: int) -> np.ndarray:
    """``(len(users), length)``: each user's last ``length`` items, left-padded with :data:`PAD`."""
    users = np.asarray(users, dtype=np.int64)
    out = np.full((len(users), length), PAD, dtype=np.int64)
    n = hist.lengths(users)
    take = np.minimum(n, length)
    pu = np.repeat(np.arange(len(users)), take)
    j = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)  # 0..take-1
    src = hist.indptr[users][pu] + n[pu] - take[pu] + j
    out[pu, length - take[pu] + j] = hist.items[src]
    return out
