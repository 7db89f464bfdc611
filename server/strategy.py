"""fedrec's strategy: Flower FedAvg over the global (item) parameters only,
followed by a server optimiser.

Clients reply with a pseudo-gradient of the global parameters (never their user
embedding), ``num-examples`` (the number of users the node trained: every user
weighs the same) and their metrics.  ``aggregate_train`` rejects malformed
replies, lets :class:`flwr.serverapp.strategy.FedAvg` average the rest, turns
item-wise averaging on where asked, and applies the server optimiser.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedrec.config import FedConfig
from fedrec.optim import OptState, server_step

__all__ = ["FedRecStrategy", "SumOfUpdates", "validate_reply", "aggregate_train_metrics", "itemwise_scale"]

COUNTS_KEY = "item_counts"


def validate_reply(content: RecordDict, expected: dict[str, tuple[int, ...]], max_examples: int,
                   min_examples: int = 1) -> str | None:
    """Why a train reply must be rejected, or ``None`` if it is well-formed.

    Checks: one ArrayRecord with exactly the expected keys and shapes, finite
    values, a MetricRecord with an integer ``num-examples`` in
    ``[min_examples, max_examples]`` (0: a node none of whose users trained this
    round — sampled out or out of budget — which is valid but carries no weight).
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
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n != int(n) \
            or n < min_examples or n > max_examples:
        return f"num-examples={n!r} is not an integer in [{min_examples}, {max_examples}]"
    if "train-loss" not in metrics:
        return "metric 'train-loss' missing"
    return None


def itemwise_scale(update: dict[str, np.ndarray], frac: np.ndarray, item_tables) -> dict[str, np.ndarray]:
    """Item-wise averaging: each row of every item table divided by the mean over users of
    "the user touched this row" (``frac``); untouched rows get no update, dense parameters
    are left as they are."""
    scale = np.where(frac > 0, 1.0 / np.maximum(frac, 1e-12), 0.0)
    return {k: v * scale.reshape((-1,) + (1,) * (v.ndim - 1)) if k in item_tables else v for k, v in update.items()}


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Combine train metrics: user-weighted mean loss, node and user counts, and the
    exact distribution of per-user epsilons (nodes send the list of their users')."""
    loss = users = declined = 0.0
    eps: list[float] = []
    for r in records:
        m = next(iter(r.metric_records.values()))
        n = float(m[weight_key])
        users += n
        loss += n * float(m["train-loss"])
        declined += float(m.get("declined", 0))
        eps.extend(float(x) for x in m.get("epsilon", []))
    out = {"train-loss": loss / max(users, 1.0), "nodes": float(len(records)), "users": users, "declined": declined}
    if eps:
        e = np.asarray(eps)
        out.update({"epsilon-min": float(e.min()), "epsilon-median": float(np.median(e)), "epsilon-max": float(e.max())})
    return MetricRecord(out)


def _crash_point(server_round: int) -> None:
    """Fault injection for tests: ``FEDREC_CRASH_AT_ROUND=N`` kills the server process
    (no cleanup, like SIGKILL) when round N's replies arrive — after the nodes have
    trained and saved round N, before the server's round-N checkpoint."""
    if os.environ.get("FEDREC_CRASH_AT_ROUND") == str(server_round):
        os._exit(70)


class _DropDiscrepancyWarning(logging.Filter):
    # Flower's DP wrappers warn when replies != num_sampled_clients; fedrec passes 1
    # on purpose (noise std sigma*C on the *sum*; see FedRecStrategy) and records
    # what arrived itself.
    def filter(self, record: logging.LogRecord) -> bool:
        return "differs from the number of sampled clients" not in str(record.msg)


def _quiet_dp_discrepancy() -> None:
    """Install the filter once, when a strategy with a DP wrapper is built (not at import)."""
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _DropDiscrepancyWarning) for f in flwr_log.filters):
        flwr_log.addFilter(_DropDiscrepancyWarning())


class SumOfUpdates(FedAvg):
    """The item-aggregation strategy Flower's DP wrappers wrap for user-level DP.

    Replies hold ``current + sum of the node's users' updates``; this returns
    ``current + sum over replies of (reply - current)``: the sum of every user's
    (clipped) update, on which the wrapper then puts Gaussian noise of std
    ``noise_multiplier * clip`` (``num_sampled_clients=1``).  No server
    optimiser here: it runs on the *noised* sum, in :class:`FedRecStrategy`.
    """

    def __init__(self, make_messages, keys: tuple[str, ...]):
        super().__init__(train_metrics_aggr_fn=aggregate_train_metrics)
        self.make_messages = make_messages
        self.keys = keys
        self.current: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self.current = {k: v.numpy() for k, v in arrays.items()}
        return self.make_messages(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        total = {k: np.zeros_like(self.current[k], dtype=np.float64) for k in self.keys}
        for msg in replies:
            arrays = next(iter(msg.content.array_records.values()))
            for k in self.keys:
                total[k] += arrays[k].numpy().astype(np.float64) - self.current[k]
        out = ArrayRecord({k: Array((self.current[k] + total[k]).astype(np.float64)) for k in self.keys})
        return out, aggregate_train_metrics([m.content for m in replies], "num-examples")


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
    n_users
        Users in the federation (population of the user-level accountant).

    User-level DP (``cfg.user_dp``) wraps :class:`SumOfUpdates` in Flower's
    ``DifferentialPrivacyClientSideFixedClipping`` (users' updates clipped on
    the node, per user), ``DifferentialPrivacyServerSideFixedClipping`` or
    ``DifferentialPrivacyServerSideAdaptiveClipping`` (one user per node).  The
    wrapper returns ``current + sum + N(0, (sigma C)^2)``; only then is the sum
    divided by the *expected* number of users per round (``user-sample-rate *
    n_users``, a fixed denominator as in DP-FedAvg) and handed to the server
    optimiser.  No server state is computed from un-noised client data.
    """

    def __init__(self, cfg: FedConfig, *, shapes: dict[str, tuple[int, ...]], n_nodes: int, n_users: int | None = None,
                 item_tables: tuple[str, ...] = (), cold_items: np.ndarray | None = None):
        super().__init__(
            fraction_train=cfg.fraction_train,
            fraction_evaluate=1.0,
            min_train_nodes=1,
            min_evaluate_nodes=n_nodes,
            min_available_nodes=n_nodes,
            train_metrics_aggr_fn=aggregate_train_metrics,
        )
        self.cfg = cfg
        # rows of held-out items: not in the catalogue at training time, so no update
        # reaches them (a feature-aware model ranks them through its item tower)
        self.item_tables = tuple(t for t in item_tables if t in shapes)
        self.cold_items = np.asarray(cold_items if cold_items is not None else [], dtype=np.int64)
        self.keys = tuple(shapes)
        self.sent: dict[str, np.ndarray] | None = None
        self.shapes = dict(shapes)
        if cfg.aggregation == "itemwise":
            if not self.item_tables:
                raise ValueError("item-wise aggregation needs a model with item tables")
            self.shapes[COUNTS_KEY] = (shapes[self.item_tables[0]][0],)
        self.n_nodes = n_nodes
        self.opt_state = OptState()
        self.current: dict[str, np.ndarray] | None = None
        self.rejected: list[tuple[int, int, str]] = []  # (round, node, reason)
        self.round_info: dict[int, dict] = {}
        self.result_train: dict[int, dict] = {}
        self.result_eval: dict[int, dict] = {}
        self.round_offset = 0  # > 0 when resuming: Flower counts from 1 again
        self.n_users = n_users or n_nodes * cfg.users_per_node
        self.dp_wrapper: Strategy | None = None
        if cfg.user_level:
            _quiet_dp_discrepancy()
            self.summer = SumOfUpdates(self._train_messages, self.keys)
            sigma, clip = cfg.user_noise_multiplier, cfg.user_clip
            if cfg.user_dp == "client":
                self.dp_wrapper = DifferentialPrivacyClientSideFixedClipping(
                    self.summer, noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=1)
            elif cfg.user_dp == "server":
                self.dp_wrapper = DifferentialPrivacyServerSideFixedClipping(
                    self.summer, noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=1)
            else:
                self.dp_wrapper = DifferentialPrivacyServerSideAdaptiveClipping(
                    self.summer, noise_multiplier=sigma, num_sampled_clients=1, initial_clipping_norm=clip,
                    target_clipped_quantile=cfg.user_clip_quantile, clip_norm_lr=0.2,
                    clipped_count_stddev=max(sigma, cfg.user_sample_rate * self.n_users / 20))

    def freeze_cold_rows(self, update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The update with the rows of held-out items zeroed in every item table."""
        if not len(self.cold_items):
            return update
        out = dict(update)
        for t in self.item_tables:
            out[t] = update[t].copy()
            out[t][self.cold_items] = 0.0
        return out

    @property
    def max_examples(self) -> int:
        """Most users one node can host (bounds a reply's weight): users-per-node, or
        the even spread of all users over the nodes that connected."""
        return max(self.cfg.users_per_node, -(-self.n_users // max(1, self.n_nodes)))

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
        server_round += self.round_offset
        self.current = {k: v.numpy() for k, v in arrays.items()}
        self.sent = self.current
        if self.dp_wrapper is not None:  # the wrapper sees the round (clip norm, current arrays)
            return self.dp_wrapper.configure_train(server_round, arrays, config, grid)
        return self._train_messages(server_round, arrays, config, grid)

    def _train_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        node_ids = self.wait_for_nodes(grid)
        chosen = self.sample(server_round, node_ids)
        config["server-round"] = server_round
        config.update(self.mechanism())
        self.round_info[server_round] = {"sent": len(chosen)}
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, chosen, MessageType.TRAIN))

    # --- aggregation -----------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the valid replies and step the server optimiser.

        Error replies (failed or dropped nodes) and malformed replies are left
        out with a logged reason and counted; replies of nodes none of whose
        users trained (``num-examples`` 0) carry no weight.  With fewer than
        ``min-replies`` contributing replies the global parameters stay as they are.
        """
        server_round += self.round_offset
        _crash_point(server_round)
        good, failed, rejected = [], 0, 0
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                failed += 1
                self.rejected.append((server_round, node, f"error reply: {msg.error.reason}"))
                log(WARNING, "round %d: node %s failed: %s", server_round, node, msg.error.reason)
                continue
            reason = validate_reply(msg.content, self.shapes, max_examples=self.max_examples, min_examples=0)
            if reason is None:
                good.append(msg)
            else:
                rejected += 1
                self.rejected.append((server_round, node, reason))
                log(WARNING, "round %d: rejected reply of node %s: %s", server_round, node, reason)
        contributing = [m for m in good if next(iter(m.content.metric_records.values()))["num-examples"] > 0]
        info = self.round_info.setdefault(server_round, {})
        sent = info.get("sent", len(good) + failed + rejected)
        info.update({"replies": len(good), "contributing": len(contributing), "failed": failed, "rejected": rejected,
                     "missing": max(0, sent - len(good) - failed - rejected)})
        if len(contributing) < self.cfg.min_replies:
            info["skipped"] = 1
            log(WARNING, "round %d: %d contributing replies < min-replies %d; global parameters unchanged",
                server_round, len(contributing), self.cfg.min_replies)
            if good:
                self.result_train[server_round] = dict(aggregate_train_metrics([m.content for m in good], "num-examples"))
            return None, None
        if self.dp_wrapper is not None:
            update, metrics = self._user_level_update(server_round, contributing)
            if update is None:
                return None, None
        else:
            mean, metrics = super().aggregate_train(server_round, contributing)
            update = {k: mean[k].numpy() for k in self.keys}
            if self.cfg.aggregation == "itemwise":
                update = itemwise_scale(update, mean[COUNTS_KEY].numpy(), self.item_tables)
        update = self.freeze_cold_rows(update)
        # loss, counts and epsilons over every valid reply (declined users included)
        metrics = aggregate_train_metrics([m.content for m in good], "num-examples")
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

    def _user_level_update(self, server_round: int, replies: list[Message]):
        """Flower's DP wrapper clips (server-side modes) and noises the sum; the mean
        over the expected users per round is what the server optimiser sees."""
        # Flower draws its noise from numpy's global generator: seed it per round so
        # a resumed run repeats the same noise, and give the caller's generator back after
        saved = np.random.get_state()
        np.random.seed(int(np.random.default_rng([self.cfg.seed, server_round, 13]).integers(2**31)))
        try:
            noised, metrics = self.dp_wrapper.aggregate_train(server_round, replies)
        finally:
            np.random.set_state(saved)
        if noised is None:
            return None, None
        expected = self.cfg.user_sample_rate * self.n_users
        update = {k: (noised[k].numpy().astype(np.float64) - self.sent[k]) / expected for k in self.keys}
        self.round_info[server_round]["user-clip"] = float(self.dp_wrapper.clipping_norm)
        return update, metrics

    # --- evaluation ------------------------------------------------------
    def is_eval_round(self, server_round: int) -> bool:
        """(``server_round`` already includes the resume offset.)"""
        if self.cfg.eval_every == 0:  # evaluation off: nodes release no metrics
            return False
        return server_round % self.cfg.eval_every == 0 or server_round == self.cfg.num_server_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if not self.is_eval_round(server_round):
            return []
        config["server-round"] = server_round
        config.update(self.mechanism())
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.wait_for_nodes(grid), MessageType.EVALUATE)

    def mechanism(self) -> dict:
        """The privacy mechanism as resolved once by the server (noise multipliers
        calibrated for the planned rounds), sent with every message so that nodes
        never calibrate: ``mechanism/<run-config key>``."""
        return {f"mechanism/{k}": float(getattr(self.cfg, k.replace("-", "_")))
                for k in ("noise-multiplier", "user-noise-multiplier")}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Exact means over users: sum the nodes' metric sums, divide by each stage's
        user count (``<stage>-count``); coverage from the summed top-10 counts."""
        server_round += self.round_offset
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        topk = None
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: evaluation error from node %s: %s", server_round,
                    msg.metadata.src_node_id, msg.error.reason)
                continue
            m = next(iter(msg.content.metric_records.values()))
            for k, v in m.items():
                if k.endswith("-count"):
                    counts[k[: -len("-count")]] = counts.get(k[: -len("-count")], 0) + int(v)
                elif k == "test-topk":
                    v = np.asarray(v, dtype=np.int64)
                    topk = v if topk is None else topk + v
                elif "/" in k:
                    sums[k] = sums.get(k, 0.0) + float(v)
        if not sums:
            return None
        out = {k: v / max(1, counts.get(k.split("/")[0], 0)) for k, v in sums.items()}
        out.update({f"{s}-users": float(c) for s, c in counts.items()})
        if topk is not None and len(topk):
            out["test/coverage@10"] = float((topk > 0).mean())
        self.result_eval[server_round] = out
        return MetricRecord(out)
