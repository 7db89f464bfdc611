"""Per-group metrics: who does the recommender serve well, and how large is the gap.

Groupings give one string label per user:

* :func:`activity_groups` -- ``"light"`` / ``"medium"`` / ``"heavy"`` by terciles
  of the number of training interactions;
* :func:`gender_groups` -- the dataset's gender labels, missing ones as
  ``"unknown"``;
* :func:`age_groups` -- ``"<25"``, ``"25-34"``, ``"35-44"``, ``"45+"`` (edges
  configurable), missing or negative ages as ``"unknown"``.

:func:`group_means` turns per-user metric arrays and labels into per-group means,
the gap (largest minus smallest group mean) of every metric and group sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = [
    "UNKNOWN",
    "activity_groups",
    "gender_groups",
    "age_groups",
    "group_means",
]

UNKNOWN = "unknown"
_RESERVED = ("gap", "sizes")


def activity_groups(train_counts: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """Label users ``"light"``, ``"medium"`` or ``"heavy"`` by training activity.

    Thresholds are the 1/3 and 2/3 quantiles ``q1 <= q2`` (linear
    interpolation) of the counts: ``light`` if ``count <= q1``, ``heavy`` if
    ``count > q2``, else ``medium``.  Users with equal counts always share a
    label, so groups can be unequal when many counts tie.

    Parameters
    ----------
    train_counts : array of int, or scipy.sparse matrix
        Training interactions per user (a user x item matrix is reduced to its
        row counts of non-zeros).

    Returns
    -------
    np.ndarray
        ``(n_users,)`` object array of labels.
    """
    if sp.issparse(train_counts):
        m = sp.csr_matrix(train_counts)
        counts = np.diff(m.indptr).astype(np.float64)
    else:
        counts = np.asarray(train_counts, dtype=np.float64).ravel()
    labels = np.full(len(counts), "medium", dtype=object)
    if len(counts) == 0:
        return labels
    q1, q2 = np.quantile(counts, [1.0 / 3.0, 2.0 / 3.0])
    labels[counts <= q1] = "light"
    labels[counts > q2] = "heavy"
    return labels


def gender_groups(user_gender: Sequence | np.ndarray | None, n_users: int | None = None) -> np.ndarray:
    """Gender labels as strings; ``None``, NaN or empty become ``"unknown"``.

    Parameters
    ----------
    user_gender : array or None
        ``Dataset.user_gender``; ``None`` (no side information) needs ``n_users``
        and labels everyone ``"unknown"``.
    n_users : int, optional
        Only used when ``user_gender`` is None.
    """
    if user_gender is None:
        if n_users is None:
            raise ValueError("user_gender is None: pass n_users")
        return np.full(n_users, UNKNOWN, dtype=object)
    out = np.empty(len(user_gender), dtype=object)
    for i, g in enumerate(user_gender):
        missing = g is None or (isinstance(g, float) and np.isnan(g)) or str(g).strip() == ""
        out[i] = UNKNOWN if missing else str(g).strip()
    return out


def age_groups(
    user_age: Sequence | np.ndarray | None,
    n_users: int | None = None,
    *,
    edges: Sequence[int] = (25, 35, 45),
) -> np.ndarray:
    """Age buckets ``"<25"``, ``"25-34"``, ``"35-44"``, ``"45+"``.

    Parameters
    ----------
    user_age : array or None
        Ages (``Dataset.user_age``); negative or NaN means unknown.  ``None``
        needs ``n_users`` and labels everyone ``"unknown"``.
    n_users : int, optional
        Only used when ``user_age`` is None.
    edges : sequence of int
        Increasing bucket edges; bucket ``j`` is ``[edges[j-1], edges[j])``.

    Returns
    -------
    np.ndarray
        ``(n_users,)`` object array of labels.
    """
    if user_age is None:
        if n_users is None:
            raise ValueError("user_age is None: pass n_users")
        return np.full(n_users, UNKNOWN, dtype=object)
    edges = [int(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be non-empty and increasing; got {edges}")
    names = [f"<{edges[0]}"]
    names += [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    names += [f"{edges[-1]}+"]
    age = np.asarray(user_age, dtype=np.float64).ravel()
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), age, side="right")
    out = np.array(names, dtype=object)[np.minimum(idx, len(names) - 1)]
    out[~np.isfinite(age) | (age < 0)] = UNKNOWN
    return out


def group_means(
    per_user_values: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    exclude_from_gap: Sequence[str] = (UNKNOWN,),
) -> dict[str, dict]:
    """Per-group means of per-user metrics, their gaps and the group sizes.

    Parameters
    ----------
    per_user_values : mapping of str to np.ndarray
        ``metric -> (n_users,)`` values (e.g. ``EvalResult.per_user``).
    labels : np.ndarray
        ``(n_users,)`` group label of each user, aligned with the values.
    exclude_from_gap : sequence of str
        Groups left out of the gap (by default ``"unknown"``).

    Returns
    -------
    dict
        ``{group: {metric: mean}}`` for every group present (sorted by label),
        plus ``"gap": {metric: max group mean - min group mean}`` over the
        groups not excluded (0.0 with fewer than two such groups) and
        ``"sizes": {group: number of users}``.

    Raises
    ------
    ValueError
        If lengths differ or a group is named ``"gap"`` or ``"sizes"``.
    """
    labels = np.asarray(labels, dtype=object).ravel()
    for name, v in per_user_values.items():
        if len(np.asarray(v)) != len(labels):
            raise ValueError(f"{name}: {len(np.asarray(v))} values for {len(labels)} labels")
    groups = sorted({str(x) for x in labels.tolist()})
    str_labels = np.array([str(x) for x in labels.tolist()], dtype=object)
    clash = [g for g in groups if g in _RESERVED]
    if clash:
        raise ValueError(f"group labels {clash} are reserved")
    out: dict[str, dict] = {}
    sizes: dict[str, int] = {}
    for g in groups:
        mask = str_labels == g
        sizes[g] = int(mask.sum())
        out[g] = {m: float(np.asarray(v, dtype=np.float64)[mask].mean()) for m, v in per_user_values.items()}
    in_gap = [g for g in groups if g not in set(exclude_from_gap)]
    out["gap"] = {
        m: (max(out[g][m] for g in in_gap) - min(out[g][m] for g in in_gap)) if len(in_gap) > 1 else 0.0
        for m in per_user_values
    }
    out["sizes"] = sizes
    return out
