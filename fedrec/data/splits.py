"""Train / validation / test splits.

Every split returns a :class:`Split` of three binary user x item CSR matrices
(``train``, ``valid``, ``test``) over the same id space, plus what cold-start
experiments need (users and items held out of training).  Splits are
chronological: the later interactions of a user are held out, never earlier ones.

Ties in time.  Interactions of one user that share a timestamp are unordered: the
order inside each tie is drawn from ``tie_seed`` and the interaction itself (a hash of
the seed, the user and the item), never from the file's row order, for choosing the
validation and test targets and for the histories sequential models read.  A split
is therefore the same whatever order the file's rows are in, and a study that runs
each seed with its own ``tie_seed`` reports a spread that includes the tie order.
``leave-last-group-out`` treats a tie as a unit instead: the user's whole last group
of same-timestamp interactions is the test set (every item in it a target), the
group before it the validation set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from fedrec.data.dataset import Dataset, tie_counts
from fedrec.rng import hash_uniform

__all__ = [
    "Split",
    "leave_last_out",
    "leave_last_group_out",
    "tie_groups",
    "temporal_ratio",
    "time_window",
    "parse_window",
    "hold_out_users",
    "hold_out_items",
    "chronological_order",
]


@dataclass(frozen=True)
class Split:
    """A split of a :class:`Dataset`.

    Attributes
    ----------
    train, valid, test : scipy.sparse.csr_matrix
        Binary ``(n_users, n_items)`` matrices; disjoint.
    kind : str
        How the split was made (``"leave-last-out"``, ``"temporal-ratio"``).
    cold_users : np.ndarray
        Users held out of training entirely (their rows are empty in all three
        matrices); their chronological interactions are in ``cold_user_items``.
    cold_user_items : dict
        ``user -> items in chronological order`` for held-out users.
    cold_items : np.ndarray
        Items held out of training; their interactions appear only in ``test``
        (see :func:`hold_out_items`).
    """

    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    kind: str
    cold_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    cold_user_items: dict = field(default_factory=dict)
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tie_seed: int = 0  # the draw of the order inside ties in time (see the module's docstring)

    @property
    def n_users(self) -> int:
        return self.train.shape[0]

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def train_items(self, user: int) -> np.ndarray:
        return self.train.indices[self.train.indptr[user] : self.train.indptr[user + 1]]

    def summary(self) -> dict:
        return {
            "kind": self.kind,
            "tie_seed": self.tie_seed,
            "train": int(self.train.nnz),
            "valid": int(self.valid.nnz),
            "test": int(self.test.nnz),
            "cold_users": int(len(self.cold_users)),
            "cold_items": int(len(self.cold_items)),
        }


def _rows(m: sp.spmatrix, keep: np.ndarray) -> sp.csr_matrix:
    """Multiply by a 0/1 diagonal on the left and drop the stored zeros."""
    out = (sp.diags(keep) @ m).tocsr()
    out.eliminate_zeros()
    return out


def _cols(m: sp.spmatrix, keep: np.ndarray) -> sp.csr_matrix:
    out = (m @ sp.diags(keep)).tocsr()
    out.eliminate_zeros()
    return out


TIE_STREAM = 0x7135  # the hash stream of the order inside ties


def chronological_order(ds: Dataset, *, tie_seed: int = 0) -> np.ndarray:
    """Indices of the interactions sorted by user, then time; inside a tie (one user,
    one timestamp) in an order drawn from ``(tie_seed, user, item)``, which the file's
    row order does not change (a user's items are distinct; ids are the sorted raw ids)."""
    tie = hash_uniform(np.uint64(tie_seed), np.uint64(TIE_STREAM), ds.user, ds.item)
    return np.lexsort((ds.item, tie, ds.timestamp, ds.user))


def tie_groups(ds: Dataset) -> dict:
    """How common ties in time are in ``ds`` (:func:`fedrec.data.dataset.tie_counts`)."""
    return tie_counts(ds.user, ds.timestamp)


def _csr(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)), shape=shape
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _position_in_user(users_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For interactions sorted by user: position within the user and the user's count."""
    n = len(users_sorted)
    starts = np.r_[0, np.flatnonzero(np.diff(users_sorted)) + 1]
    counts = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, counts)
    return pos, np.repeat(counts, counts)


def leave_last_out(ds: Dataset, *, min_train: int = 1, tie_seed: int = 0) -> Split:
    """Chronological leave-last-out split.

    Per user: test = last interaction, validation = second to last, train = the
    rest.  Users with fewer than ``min_train + 2`` interactions keep everything in
    train (they have no held-out items and are not evaluated).  Ties in time are
    ordered by ``tie_seed`` (see the module's docstring).
    """
    order = chronological_order(ds, tie_seed=tie_seed)
    u, i = ds.user[order], ds.item[order]
    pos, cnt = _position_in_user(u)
    return _last_two_held_out(ds, u, i, pos, cnt, min_train + 2, "leave-last-out", tie_seed)


def _last_two_held_out(ds: Dataset, u: np.ndarray, i: np.ndarray, pos: np.ndarray, cnt: np.ndarray, least: int,
                       kind: str, tie_seed: int) -> Split:
    """Test = the last position of each user, validation = the one before, train = the rest,
    for users with at least ``least`` positions (``pos``: an interaction's position, ``cnt``:
    its user's number of positions; a position is one interaction or one tie group)."""
    heldout = cnt >= least
    is_test = heldout & (pos == cnt - 1)
    is_valid = heldout & (pos == cnt - 2)
    is_train = ~(is_test | is_valid)
    shape = (ds.n_users, ds.n_items)
    return Split(
        train=_csr(u[is_train], i[is_train], shape),
        valid=_csr(u[is_valid], i[is_valid], shape),
        test=_csr(u[is_test], i[is_test], shape),
        kind=kind,
        tie_seed=tie_seed,
    )


def leave_last_group_out(ds: Dataset, *, tie_seed: int = 0) -> Split:
    """Leave-last-out by tie group: per user, test = every interaction at the user's last
    timestamp, validation = every interaction at the timestamp before it, train = the
    rest.  Users with fewer than three distinct timestamps keep everything in train (not
    evaluated).  No order inside a tie is assumed for the targets; ``tie_seed`` orders
    only the training histories that sequential models read."""
    order = chronological_order(ds, tie_seed=tie_seed)
    u, i, t = ds.user[order], ds.item[order], ds.timestamp[order]
    new_group = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])] if len(u) else np.zeros(0, bool)
    gid = np.cumsum(new_group) - 1  # tie group, numbered over all users
    user_start = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    first_gid = np.maximum.accumulate(np.where(user_start, gid, 0))  # the user's first group
    pos = gid - first_gid  # the group's position within the user
    n_groups = np.zeros(ds.n_users, dtype=np.int64)
    np.maximum.at(n_groups, u, pos + 1)
    return _last_two_held_out(ds, u, i, pos, n_groups[u], 3, "leave-last-group-out", tie_seed)


def temporal_ratio(ds: Dataset, *, valid: float = 0.1, test: float = 0.1, tie_seed: int = 0) -> Split:
    """Per-user chronological ratio split: the last ``test`` fraction of each user's
    interactions is test, the ``valid`` fraction before it is validation.

    Each user with at least 3 interactions gets at least one validation and one
    test item.
    """
    if not (0 < valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"need 0 < valid, test and valid + test < 1; got valid={valid}, test={test}")
    order = chronological_order(ds, tie_seed=tie_seed)
    u, i = ds.user[order], ds.item[order]
    pos, cnt = _position_in_user(u)
    n_test = np.where(cnt >= 3, np.maximum(1, np.floor(cnt * test)), 0)
    n_valid = np.where(cnt >= 3, np.maximum(1, np.floor(cnt * valid)), 0)
    is_test = pos >= cnt - n_test
    is_valid = ~is_test & (pos >= cnt - n_test - n_valid)
    is_train = ~(is_test | is_valid)
    shape = (ds.n_users, ds.n_items)
    return Split(
        train=_csr(u[is_train], i[is_train], shape),
        valid=_csr(u[is_valid], i[is_valid], shape),
        test=_csr(u[is_test], i[is_test], shape),
        kind=f"temporal-ratio(valid={valid},test={test})",
        tie_seed=tie_seed,
    )


def time_window(ds: Dataset, start: int, end: int, *, tie_seed: int = 0) -> Split:
    """The split of one step of a stream (prequential evaluation): train = every
    interaction before ``start`` (what the devices know at that time), test = those
    in ``[start, end)`` of the users who have a training interaction (the next
    interactions each device ranks before it learns them), validation empty.

    Users whose first interaction is at or after ``start`` have no row in this split
    yet: they enter the first window that starts after their first interaction.
    Items are in the catalogue throughout; an item's first training interaction is
    its first one before ``start``.  Repeated (user, item) pairs within the test
    window count once; a pair already in training is not a test target.
    """
    if not start < end:
        raise ValueError(f"a time window needs start < end; got start={start}, end={end}")
    shape = (ds.n_users, ds.n_items)
    ts = np.asarray(ds.timestamp)
    before = ts < start
    train = _csr(ds.user[before], ds.item[before], shape)
    known = np.diff(train.indptr) > 0
    inside = (ts >= start) & (ts < end) & known[ds.user]
    test = _csr(ds.user[inside], ds.item[inside], shape)
    test = (test - test.multiply(train)).tocsr()  # a pair the user already has is no target
    test.eliminate_zeros()
    test.sort_indices()
    return Split(train=train, valid=_csr(ds.user[:0], ds.item[:0], shape), test=test,
                 kind=f"window:{int(start)}:{int(end)}", tie_seed=tie_seed)


def parse_window(kind: str) -> tuple[int, int] | None:
    """``(start, end)`` of a ``window:START:END`` split name (unix seconds), ``None`` for
    another split; ``ValueError`` if malformed or ``start >= end``."""
    if not kind.startswith("window:"):
        return None
    parts = kind.split(":")
    try:
        start, end = int(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"split {kind!r}: expected window:START:END (integer timestamps)") from None
    if not start < end:
        raise ValueError(f"split {kind!r}: START must be before END")
    return start, end


def subsample_users(split: Split, n_users: int, *, seed: int) -> Split:
    """Keep ``n_users`` of the users with training data, drawn with ``seed``; the others'
    rows are emptied in train/valid/test (the item catalogue is unchanged).  Populations
    are nested: the users kept for ``n`` are the first ``n`` of one fixed permutation, so
    a smaller population is a subset of a larger one."""
    have = np.flatnonzero(np.diff(split.train.indptr) > 0)
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1; got {n_users}")
    if n_users >= len(have):
        return split
    kept = np.random.default_rng(seed).permutation(have)[:n_users]
    keep = np.zeros(split.train.shape[0], dtype=np.float32)
    keep[kept] = 1.0
    return Split(train=_rows(split.train, keep), valid=_rows(split.valid, keep), test=_rows(split.test, keep),
                 kind=split.kind + f"+users({n_users})", cold_users=split.cold_users,
                 cold_user_items=split.cold_user_items, cold_items=split.cold_items, tie_seed=split.tie_seed)


def hold_out_users(split: Split, ds: Dataset, *, fraction: float, seed: int) -> Split:
    """Hold a random ``fraction`` of users out of training (user cold-start).

    Their rows are emptied in train/valid/test; their interactions, in
    chronological order, go to ``cold_user_items`` for fold-in evaluation.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    n_cold = max(1, int(round(fraction * ds.n_users)))
    cold = np.sort(rng.choice(ds.n_users, size=n_cold, replace=False))
    order = chronological_order(ds, tie_seed=split.tie_seed)
    u, i = ds.user[order], ds.item[order]
    in_cold = np.isin(u, cold)
    seqs: dict[int, np.ndarray] = {}
    cu, ci = u[in_cold], i[in_cold]
    for user in cold.tolist():
        seqs[user] = ci[cu == user]
    keep = np.ones(ds.n_users, dtype=np.float32)
    keep[cold] = 0.0
    return Split(
        train=_rows(split.train, keep),
        valid=_rows(split.valid, keep),
        test=_rows(split.test, keep),
        kind=split.kind + f"+cold-users({fraction})",
        cold_users=cold,
        cold_user_items=seqs,
        cold_items=split.cold_items,
        tie_seed=split.tie_seed,
    )


def hold_out_items(split: Split, ds: Dataset, *, fraction: float, seed: int) -> Split:
    """Hold a random ``fraction`` of items out of training (item cold-start).

    Every interaction with a cold item is removed from train and validation and
    placed in ``test``; a cold item is never seen in training.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1); got {fraction}")
    rng = np.random.default_rng(seed)
    n_cold = max(1, int(round(fraction * ds.n_items)))
    cold = np.sort(rng.choice(ds.n_items, size=n_cold, replace=False))
    mask = np.zeros(ds.n_items, dtype=np.float32)
    mask[cold] = 1.0
    cold_all = _cols(split.train + split.valid + split.test, mask)
    test = (_cols(split.test, 1.0 - mask) + cold_all).tocsr()
    test.data[:] = 1.0
    return Split(
        train=_cols(split.train, 1.0 - mask),
        valid=_cols(split.valid, 1.0 - mask),
        test=test,
        kind=split.kind + f"+cold-items({fraction})",
        cold_users=split.cold_users,
        cold_user_items=split.cold_user_items,
        cold_items=cold,
        tie_seed=split.tie_seed,
    )
