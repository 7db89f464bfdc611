"""Synthetic populations with planted low-rank preferences.

Used by tests (tiny, deterministic) and scale runs (up to millions of users):
nothing dense of size users x items is ever built.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.dataset import Dataset

__all__ = ["synthetic_dataset"]


def synthetic_dataset(
    *,
    n_users: int = 100,
    n_items: int = 200,
    interactions_per_user: float = 20.0,
    rank: int = 8,
    popularity_exponent: float = 1.0,
    n_genres: int = 6,
    seed: int = 0,
    chunk: int = 8192,
) -> Dataset:
    """Generate an implicit-feedback :class:`Dataset`.

    Each user ``u`` has a latent vector ``p_u`` and each item ``i`` a latent
    vector ``q_i`` (``rank`` dimensions) and a power-law popularity
    ``pop_i ~ (i+1)^-popularity_exponent`` (items shuffled).  A user draws
    ``max(3, Poisson(interactions_per_user))`` distinct items with probability
    proportional to ``pop_i * exp(p_u . q_i)``; timestamps are increasing per
    user.  Items get ``n_genres`` multi-hot genres derived from their latent
    vector (so content features carry signal) and a year.

    Memory is ``O(chunk x n_items + interactions)``.
    """
    for name, value in (("n_users", n_users), ("n_items", n_items), ("rank", rank)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if not 1 <= interactions_per_user < n_items:
        raise ValueError(
            f"interactions_per_user must be in [1, n_items); got {interactions_per_user} with n_items={n_items}"
        )
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_items, rank)).astype(np.float32) / np.sqrt(rank) * 2.0
    log_pop = -popularity_exponent * np.log(np.arange(1, n_items + 1, dtype=np.float64))
    log_pop = rng.permutation(log_pop)
    counts = np.clip(rng.poisson(interactions_per_user, size=n_users), 3, n_items // 2)
    users, items = [], []
    chunk = max(16, min(chunk, (1 << 23) // n_items))
    for start in range(0, n_users, chunk):
        stop = min(n_users, start + chunk)
        p = rng.normal(size=(stop - start, rank)).astype(np.float32)
        logits = p @ q.T + log_pop[None, :].astype(np.float32)
        # Gumbel top-k = sampling without replacement proportional to exp(logits).
        g = logits - np.log(-np.log(rng.random(logits.shape, dtype=np.float32) + 1e-12) + 1e-12)
        kmax = int(counts[start:stop].max())
        top = np.argpartition(-g, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(g, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        for r in range(stop - start):
            c = counts[start + r]
            chosen = rng.permutation(top[r, :c])
            users.append(np.full(c, start + r, dtype=np.int64))
            items.append(chosen.astype(np.int64))
    user = np.concatenate(users)
    item = np.concatenate(items)
    # increasing timestamps within each user, interleaved across users
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(len(user)) - np.repeat(starts, counts)
    timestamp = (1_000_000_000 + pos * 86_400 + rng.integers(0, 86_400, size=len(user))).astype(np.int64)
    genre_w = rng.normal(size=(rank, n_genres)).astype(np.float32)
    genres = (q @ genre_w > 0.5).astype(np.float32)
    year = rng.integers(1950, 2020, size=n_items).astype(np.float64)
    return Dataset(
        user=user,
        item=item,
        timestamp=timestamp,
        n_users=n_users,
        n_items=n_items,
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items),
        item_genres=genres,
        genre_names=tuple(f"g{j}" for j in range(n_genres)),
        item_year=year,
        name=f"synthetic-{n_users}x{n_items}-s{seed}",
        info={"format": "synthetic", "seed": seed, "rank": rank},
    )
