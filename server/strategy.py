"""fedrec's strategy: Flower FedAvg over the global (item) parameters only,
followed by a server optimiser.

Clients reply with a pseudo-gradient of the global parameters (never their user
embedding), ``num-examples`` (the number of users the node trained: every user
weighs the same) and their metrics.  ``aggregate_train`` rejects malformed
replies, lets :class:`flwr.serverapp.strategy.FedAvg` average the rest, turns
item-wise averaging on where asked, and applies the server optimiser.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedrec.config import FedConfig
from server.optimizers import OptState, server_step

__all__ = ["FedRecStrategy", "validate_reply", "aggregate_train_metrics", "GLOBAL_KEYS"]

GLOBAL_KEYS = ("item_embedding", "item_bias")
COUNTS_KEY = "item_counts"


def validate_reply(content: RecordDict, expected: dict[str, tuple[int, ...]], max_examples: int) -> str | None:
    """Why a train reply must be rejected, or ``None`` if it is well-formed.

    Checks: one ArrayRecord with exactly the expected keys and shapes, finite
    values, a MetricRecord with ``num-examples`` in ``[1, max_examples]``.
    """
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "expected exactly one ArrayRecord and one MetricRecord"
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(expected):
        return f"array keys {sorted(arrays.keys())} != expected {sorted(expected)}"
    for k, shape in expected.items():
        a = arrays[k].numpy()
        if tuple(a.shape) != shape:
            return f"array {k!r} has shape {tuple(a.shape)}, expected {shape}"
        if not np.isfinite(a).all():
            return f"array {k!r} has non-finite values"
    metrics = next(iter(content.metric_records.values()))
    n = metrics.get("num-examples")
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n < 1 or n > max_examples:
        return f"num-examples={n!r} outside [1, {max_examples}]"
    return None


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Combine train metrics: user-weighted mean loss, node and user counts, and the
    exact distribution of per-user epsilons (nodes send the list of their users')."""
    loss = users = 0.0
    eps: list[float] = []
    for r in records:
        m = next(iter(r.metric_records.values()))
        n = float(m[weight_key])
        users += n
        loss += n * float(m["train-loss"])
        eps.extend(float(x) for x in m.get("epsilon", []))
    out = {"train-loss": loss / max(users, 1.0), "nodes": float(len(records)), "users": users}
    if eps:
        e = np.asarray(eps)
        out.update({"epsilon-min": float(e.min()), "epsilon-median": float(np.median(e)), "epsilon-max": float(e.max())})
    return MetricRecord(out)


class FedRecStrategy(FedAvg):
    """FedAvg over global parameters + a server optimiser, with seeded node sampling.

    Parameters
    ----------
    cfg
        The run's configuration (``aggregation``, ``server_opt``, ``server_lr``,
        ``fraction_train``, ``seed``, ``eval_every`` ...).
    shapes
        Shapes of the global parameters (what every reply must match).
    n_nodes
        Nodes in the federation (for evaluation every round).
    """

    def __init__(self, cfg: FedConfig, *, shapes: dict[str, tuple[int, ...]], n_nodes: int, n_users: int | None = None):
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=n_nodes,
            min_available_nodes=n_nodes,
            train_metrics_aggr_fn=aggregate_train_metrics,
        )
        self.cfg = cfg
        self.shapes = dict(shapes)
        if cfg.aggregation == "itemwise":
            self.shapes[COUNTS_KEY] = (shapes["item_embedding"][0],)
        self.n_nodes = n_nodes
        self.max_examples = n_users or cfg.users_per_node  # no node can train more users than exist
        self.opt_state = OptState()
        self.current: dict[str, np.ndarray] | None = None
        self.rejected: list[tuple[int, int, str]] = []  # (round, node, reason)
        self.round_info: dict[int, dict] = {}
        self.result_train: dict[int, dict] = {}
        self.result_eval: dict[int, dict] = {}

    # --- sampling --------------------------------------------------------
    def sample(self, server_round: int, node_ids: list[int]) -> list[int]:
        """Seeded, reproducible sample of ``fraction_train`` of the nodes for a round."""
        node_ids = sorted(node_ids)
        k = max(1, int(round(self.cfg.fraction_train * len(node_ids))))
        if k >= len(node_ids):
            return node_ids
        rng = np.random.default_rng([self.cfg.seed, server_round, 7])
        return sorted(rng.choice(node_ids, size=k, replace=False).tolist())

    def wait_for_nodes(self, grid: Grid, timeout: float = 120.0) -> list[int]:
        """Node ids once all ``n_nodes`` are connected, or those connected after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last, stable_since = -1, time.monotonic()
        while len(ids := list(grid.get_node_ids())) < self.n_nodes and time.monotonic() < deadline:
            if len(ids) != last:
                last, stable_since = len(ids), time.monotonic()
            elif ids and time.monotonic() - stable_since > 10.0:
                log(WARNING, "%d nodes connected (expected %d): users are spread over them", len(ids), self.n_nodes)
                self.n_nodes = len(ids)  # a federation with fewer nodes; stop waiting for more
                break
            time.sleep(0.05)
        if len(ids) < self.n_nodes:
            log(WARNING, "only %d of %d nodes connected after %.0fs", len(ids), self.n_nodes, timeout)
        return sorted(ids)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}
        node_ids = self.wait_for_nodes(grid)
        chosen = self.sample(server_round, node_ids)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, chosen, MessageType.TRAIN)

    # --- aggregation -----------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good = []
        for msg in replies:
            if msg.has_error():
                reason = f"error reply: {msg.error.reason}"
            else:
                reason = validate_reply(msg.content, self.shapes, max_examples=self.max_examples)
            if reason is None:
                good.append(msg)
            else:
                node = msg.metadata.src_node_id
                self.rejected.append((server_round, node, reason))
                log(WARNING, "round %d: rejected reply of node %s: %s", server_round, node, reason)
        info = {"replies": len(good), "rejected": sum(1 for r in self.rejected if r[0] == server_round)}
        self.round_info[server_round] = info
        if not good:
            log(WARNING, "round %d: no valid reply; global parameters unchanged", server_round)
            return None, None
        mean, metrics = super().aggregate_train(server_round, good)
        update = {k: mean[k].numpy() for k in GLOBAL_KEYS}
        if self.cfg.aggregation == "itemwise":
            frac = mean[COUNTS_KEY].numpy()  # mean over users of "user touched this row"
            scale = np.where(frac > 0, 1.0 / np.maximum(frac, 1e-12), 0.0)
            update = {k: v * scale.reshape((-1,) + (1,) * (v.ndim - 1)) for k, v in update.items()}
        new, self.opt_state = server_step(
            self.current,
            update,
            self.opt_state,
            opt=self.cfg.server_opt,
            lr=self.cfg.server_lr,
            beta1=self.cfg.beta1,
            beta2=self.cfg.beta2,
            eps=self.cfg.server_eps,
        )
        self.current = new
        if metrics is not None:
            self.result_train[server_round] = dict(metrics)
        return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in new.items()}), metrics

    # --- evaluation ------------------------------------------------------
    def is_eval_round(self, server_round: int) -> bool:
        return server_round % self.cfg.eval_every == 0 or server_round == self.cfg.num_server_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if not self.is_eval_round(server_round):
            return []
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.wait_for_nodes(grid), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Exact means over users: sum the nodes' metric sums, divide by user counts."""
        sums: dict[str, float] = {}
        counts = {"valid": 0, "test": 0}
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: evaluation error from node %s: %s", server_round,
                    msg.metadata.src_node_id, msg.error.reason)
                continue
            m = next(iter(msg.content.metric_records.values()))
            for stage in counts:
                counts[stage] += int(m.get(f"{stage}-count", 0))
            for k, v in m.items():
                if "/" in k:
                    sums[k] = sums.get(k, 0.0) + float(v)
        if not sums:
            return None
        out = {k: v / max(1, counts[k.split("/")[0]]) for k, v in sums.items()}
        out.update({f"{s}-users": float(c) for s, c in counts.items()})
        self.result_eval[server_round] = out
        return MetricRecord(out)
