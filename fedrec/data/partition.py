"""Partitioning users into Flower clients (nodes)."""

from __future__ import annotations

import numpy as np

__all__ = ["partition_users"]


def partition_users(users: np.ndarray, *, users_per_node: int = 1) -> list[np.ndarray]:
    """Split ``users`` into consecutive cohorts of ``users_per_node`` users.

    One user per node (the default) is the deployment picture; several users
    per node keep Flower's per-node dispatch cost down in large simulations.
    The last cohort may be smaller.
    """
    if users_per_node < 1:
        raise ValueError(f"users_per_node must be >= 1; got {users_per_node}")
    users = np.asarray(users, dtype=np.int64)
    return [users[s : s + users_per_node] for s in range(0, len(users), users_per_node)]
