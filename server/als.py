"""The server of (private) ALS: sums the nodes' statistics, adds the noise, solves the items.

Round 1: the nodes' capped item counts are summed and noised once; they choose the
trained items (the ``als-head`` fraction with the largest noisy counts) and rank
the others (``item_bias``).  Round ``1 + t``: the per-item sums ``b`` and the Gram
matrix ``K`` of the users' clipped vectors are summed and noised, and the item
table is solved from them (:func:`fedrec.als.item_vectors`).  The noise is drawn
from ``(seed, round, 17)`` and nothing else is computed from un-noised sums: the
parameters sent to nodes are post-processing of the noised releases.  The
messages (sampling, configs, evaluation) are :class:`NodeMessages`'s.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

from fedrec import als
from fedrec.config import FedConfig
from fedrec.federated.optim import OptState
from fedrec.privacy.randomness import DPRandomness
from fedrec_app.server.strategy import NodeMessages, RunRecord, accept_replies, validate_arrays, validate_metrics

__all__ = ["ALSStrategy"]


class _NoOptimizer:
    """What the run log checkpoints of a server optimiser: ALS has none."""

    state = OptState()


class ALSStrategy(NodeMessages):
    """(Private) ALS rounds through Flower; see the module docstring.

    Parameters
    ----------
    cfg
        A resolved config with ``als`` on (``als-noise-multiplier`` 0: no noise).
    n_nodes, n_users
        Nodes and users of the federation (``n_users``: the denominator of the
        per-item Gram estimate, public).
    n_items, dim
        Shape of the item table.
    cold_items
        Held-out items: never trained, ranked last.
    """

    def __init__(self, cfg: FedConfig, *, n_nodes: int, n_users: int, n_items: int, dim: int,
                 cold_items: np.ndarray | None = None):
        self.record = RunRecord()
        super().__init__(cfg, self.record, n_nodes=n_nodes)
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.cold_items = np.asarray(cold_items if cold_items is not None else [], dtype=np.int64)
        self.counts: np.ndarray | None = None  # noisy counts (released)
        self.head: np.ndarray | None = None
        self.offset, self.user_dp, self.optimizer = 0, None, _NoOptimizer()

    def expected(self, server_round: int) -> dict[str, tuple[int, ...]]:
        if server_round <= 1:
            return {"counts": (self.n_items,)}
        return {"b": (self.n_items, self.dim), "K": (self.dim, self.dim)}

    def _sum(self, server_round: int, replies) -> dict[str, np.ndarray] | None:
        """The sum (float64) of the contributing replies' arrays; ``None`` with fewer than
        ``min-replies`` of them (:func:`accept_replies` records the round)."""
        expected = self.expected(server_round)

        def why_bad(msg) -> str | None:
            c = msg.content
            if len(c.array_records) != 1 or len(c.metric_records) != 1:
                return "expected exactly one ArrayRecord and one MetricRecord"
            arrays = {k: v.numpy() for k, v in next(iter(c.array_records.values())).items()}
            return validate_arrays(arrays, expected) or validate_metrics(dict(next(iter(c.metric_records.values()))),
                                                                          self.n_users, 0)

        contributing = accept_replies(self.record, self.cfg, server_round, replies, why_bad)
        if contributing is None:
            return None
        total = {k: np.zeros(s) for k, s in expected.items()}
        for msg in contributing:
            for k, v in next(iter(msg.content.array_records.values())).items():
                total[k] += v.numpy().astype(np.float64)
        return total

    def aggregate_train(self, server_round, replies):
        c = self.cfg
        total = self._sum(server_round, replies)
        if total is None or (server_round > 1 and self.counts is None):
            return None, None
        rng = DPRandomness.of(c.reproducible_noise, c.seed, server_round, 17).numpy()  # the server's secret
        z = c.als_noise_multiplier
        params = {k: np.array(v, dtype=np.float32) for k, v in self.current.items()}
        if server_round <= 1:
            counts = total["counts"]
            self.counts = als.noisy_counts(counts, noise_multiplier=z, cap=c.als_cap, rng=rng) if z > 0 else counts
            self.head = als.head_items(self.counts, c.als_head, exclude=self.cold_items)
            params["item_embedding"][~self.head] = 0.0
            params["item_bias"] = als.tail_bias(self.counts, self.head)
        else:
            b, K = total["b"], total["K"]
            if z > 0:
                b, K = als.noisy_pass(b, K, noise_multiplier=z, cap=c.als_pass_cap, clip=c.als_clip, rng=rng)
            reg = c.als_reg * c.als_clip ** 2 * self.n_users
            params["item_embedding"] = als.item_vectors(b, K, self.counts, self.head, n_users=self.n_users,
                                                        alpha=c.als_alpha, reg=reg).astype(np.float32)
        self.record.info(server_round)["head-items"] = int(self.head.sum())
        return ArrayRecord({k: Array(v) for k, v in params.items()}), MetricRecord(self.record.train[server_round])
