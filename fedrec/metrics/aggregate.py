"""Exact aggregation of per-user metrics across clients (or batches).

A federated client evaluates its own users and reports, per metric, the *sum*
of the per-user values together with the number of users; the server adds the
sums and the counts and divides.  That equals the mean over all users that a
centralised evaluation would report (up to float rounding), which averaging
the clients' means would not (clients have different numbers of users).

Set-level metrics such as catalogue coverage are not means over users; combine
them from the summed ``EvalResult.topk_item_counts`` with
:func:`coverage_from_counts` instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["metric_sums", "aggregate_metric_sums", "coverage_from_counts"]


def metric_sums(per_user: Mapping[str, np.ndarray]) -> tuple[dict[str, float], int]:
    """Per-metric sums of per-user values and the number of users.

    Parameters
    ----------
    per_user : mapping of str to np.ndarray
        ``metric -> (n_users,)`` values, all of the same length.

    Returns
    -------
    (dict of str to float, int)
        ``({metric: sum}, n_users)``.
    """
    lengths = {len(np.asarray(v)) for v in per_user.values()}
    if len(lengths) > 1:
        raise ValueError(f"per-user arrays of different lengths: {sorted(lengths)}")
    count = lengths.pop() if lengths else 0
    return {k: math.fsum(np.asarray(v, dtype=np.float64).tolist()) for k, v in per_user.items()}, count


def aggregate_metric_sums(parts: Iterable[tuple[Mapping[str, float], int]]) -> dict[str, float]:
    """Combine ``(sums, count)`` pairs from :func:`metric_sums` into global means.

    Parameters
    ----------
    parts : iterable of (mapping, int)
        One ``(sums, count)`` per client.  Parts with ``count == 0`` may omit
        metrics; the others must all report the same metrics.

    Returns
    -------
    dict of str to float
        ``metric -> sum of sums / sum of counts`` (NaN when the total count is 0).
    """
    parts = [(dict(s), int(c)) for s, c in parts]
    if any(c < 0 for _, c in parts):
        raise ValueError("counts must be >= 0")
    live = [(s, c) for s, c in parts if c > 0]
    keys = [k for s, _ in parts for k in s]
    names = list(dict.fromkeys(keys))
    for s, _ in live:
        if set(s) != set(names):
            missing = sorted(set(names) - set(s))
            raise ValueError(f"a part with users lacks metrics {missing}")
    total = sum(c for _, c in live)
    if total == 0:
        return {k: float("nan") for k in names}
    return {k: math.fsum(s[k] for s, _ in live) / total for k in names}


def coverage_from_counts(item_counts: np.ndarray) -> float:
    """Coverage from per-item recommendation counts (summed over clients).

    Parameters
    ----------
    item_counts : np.ndarray
        ``(n_items,)`` number of top-K lists each item appeared in.
    """
    c = np.asarray(item_counts)
    return float(np.count_nonzero(c) / len(c)) if len(c) else 0.0
