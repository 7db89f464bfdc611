"""What both sides of a federated run derive from the config: the data, the split
and the cohorts of users hosted by each node.  Cached per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.config import FedConfig
from fedrec.data import Dataset, Split, load_dataset, make_split, partition_users

__all__ = ["Federation", "load_federation", "init_global_params", "init_user_embeddings"]


@dataclass(frozen=True)
class Federation:
    dataset: Dataset
    split: Split
    cohorts: tuple[np.ndarray, ...]  # users of node (partition) p

    @property
    def n_nodes(self) -> int:
        return len(self.cohorts)

    @property
    def n_users(self) -> int:
        return int(sum(len(c) for c in self.cohorts))

    def with_nodes(self, n_nodes: int) -> "Federation":
        """The same users split into ``n_nodes`` contiguous cohorts (when the
        federation has another number of nodes than ``users-per-node`` implies)."""
        if n_nodes == self.n_nodes:
            return self
        if not 1 <= n_nodes <= self.n_users:
            raise ValueError(f"cannot spread {self.n_users} users over {n_nodes} nodes")
        users = np.concatenate(self.cohorts)
        return Federation(self.dataset, self.split, tuple(np.array_split(users, n_nodes)))


@functools.lru_cache(maxsize=4)
def _cached(data: str, format: str, min_rating: float, kcore: int, split: str, users_per_node: int) -> Federation:
    ds = load_dataset(data, format=format, min_rating=min_rating or None, kcore=kcore)
    sp_ = make_split(ds, kind=split)
    users = np.flatnonzero(np.diff(sp_.train.indptr) > 0)
    return Federation(ds, sp_, tuple(partition_users(users, users_per_node=users_per_node)))


def load_federation(cfg: FedConfig) -> Federation:
    """Dataset, split and node cohorts for ``cfg`` (users with training data only)."""
    return _cached(cfg.data, cfg.format, cfg.min_rating, cfg.kcore, cfg.split, cfg.users_per_node)


def init_global_params(n_items: int, cfg: FedConfig) -> dict[str, np.ndarray]:
    """Initial item embeddings ``N(0, init_std)`` and zero biases (seeded)."""
    rng = np.random.default_rng([cfg.seed, 1])
    return {
        "item_embedding": (rng.standard_normal((n_items, cfg.dim)) * cfg.init_std).astype(np.float32),
        "item_bias": np.zeros(n_items, dtype=np.float32),
    }


def init_user_embeddings(users: np.ndarray, cfg: FedConfig) -> np.ndarray:
    """Initial local embeddings, a function of (seed, user) only."""
    out = np.empty((len(users), cfg.dim), dtype=np.float32)
    for j, u in enumerate(np.asarray(users).tolist()):
        out[j] = np.random.default_rng([cfg.seed, 2, u]).standard_normal(cfg.dim) * cfg.init_std
    return out
