"""fedrec's server, composed the way Flower composes strategies.

Each piece is small and does one thing; :class:`FedRecStrategy` stacks them::

    Resumed                              the resume offset: every piece below sees absolute rounds
     └ ServerOptimizer                   freeze held-out items' rows, then FedOpt (fedrec.federated.optim)
        └ ValidReplies                   drop error and malformed replies, min-replies, bookkeeping
           └ MeanOfUpdates               Flower FedAvg of the nodes' mean updates (item-wise: per row)
             or RobustOfUpdates          Flower's FedMedian / FedTrimmedAvg / Krum / MultiKrum / Bulyan of them
             or UserLevelMean            (user-level DP) mean over the expected users of ...
                 └ Flower's DifferentialPrivacy*Clipping   ... the noised sum of ...
                    └ SumOfUpdates       ... the users' (clipped) updates

Every piece writes what it saw into one :class:`RunRecord` (round information,
train and evaluation metrics, rejected replies): the run log reads that, and
nothing else.  The message-building base, :class:`NodeMessages`, is Flower's
``FedAvg`` with fedrec's seeded node sampling, the mechanism in every message's
config and exact evaluation means.  Secure aggregation (``secure-aggregation``)
runs the same :class:`ServerOptimizer`, :class:`RunRecord`, sampling and
evaluation behind Flower's SecAgg+ workflow (:mod:`fedrec_app.server.secure`).

Clients reply with a pseudo-gradient of the global parameters (never their user
state), ``num-examples`` (the users the node trained: every user weighs the
same) and their metrics.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_stdv
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedrec.federated import protocol
from fedrec.flower_compat import STOP, RunStopped
from fedrec.config import FedConfig
from fedrec.federated.optim import OptState, server_step
from fedrec.privacy.randomness import DPRandomness

__all__ = [
    "FedRecStrategy", "RunRecord", "NodeMessages", "MeanOfUpdates", "RobustOfUpdates", "ROBUST_RULES", "robust_rule",
    "SumOfUpdates", "UserLevelMean", "ValidReplies", "add_user_level_noise", "flower_noise_from",
    "ServerOptimizer", "Resumed", "validate_reply", "validate_arrays", "max_node_users",
    "aggregate_train_metrics", "itemwise_scale",
    "sample_nodes", "evaluation_means", "mechanism_config", "is_eval_round", "triage_replies", "accept_replies",
    "reply_order", "COUNTS_KEY", "NodeFailure", "error_reason", "stop_on_node_error",
]

COUNTS_KEY = protocol.ITEM_COUNTS


# --------------------------------------------------------------------------- pure pieces
class NodeFailure(RuntimeError):
    """A node's error reply, other than a simulated dropout, in a run with ``node-errors``
    ``stop``: the run ends before the round is aggregated, its finished rounds kept."""


def error_reason(reason: str) -> str:
    """One line for a node's error reply: Flower writes ``<class 'pkg.Error'>:<'text'>``
    with the text of nested exceptions; this is ``Error: <its last line that says what
    happened>``."""
    import re

    m = re.match(r"<class '(?:[\w.]*\.)?(\w+)'>:<'(.*)'>$", reason.strip(), re.S)
    kind, text = (m.group(1), m.group(2)) if m else ("", reason)
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    said = [x for x in lines if x.startswith("Exception ClientAppException occurred. Message:")]
    line = said[-1].split("Message:", 1)[1].strip() if said else (lines[0] if lines else "no reason given")
    line = line.rstrip("'>").strip()
    return f"{kind}: {line}" if kind and kind != "ClientAppException" else line


def stop_on_node_error(cfg: FedConfig, replies: Iterable[Message], where: str) -> None:
    """Raise :class:`NodeFailure` for the first error reply that says a node is broken
    when ``node-errors`` is ``stop``: its ClientApp raised (data it cannot read) or its
    process died (a simulation's actor stays dead, so every later round would miss its
    users, unnoticed).  A node that is gone (Flower's ``*_UNAVAILABLE`` codes: a device
    left) and a simulated dropout are the federation's life: counted, never fatal."""
    from flwr.common.constant import ErrorCode

    if cfg.node_errors != "stop":
        return
    gone = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
    for msg in replies:
        if msg.has_error() and msg.error.code not in gone and "simulated dropout of node" not in msg.error.reason:
            raise NodeFailure(f"{where}: a node failed ({error_reason(msg.error.reason)}); the run stops "
                              "before aggregating it, its finished rounds kept: --resume continues it "
                              "(--node-errors continue goes on without failed nodes)")


def validate_arrays(arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> str | None:
    """Why these arrays cannot be an update (keys, shapes, non-finite values), or ``None``."""
    if set(arrays) != set(expected):
        return f"array keys {sorted(arrays)} != expected {sorted(expected)}"
    for k, shape in expected.items():
        a = arrays[k]
        if tuple(a.shape) != shape:
            return f"array {k!r} has shape {tuple(a.shape)}, expected {shape}"
        if not np.isfinite(a).all():
            return f"array {k!r} has non-finite values"
    return None


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
    reason = validate_arrays({k: arrays[k].numpy() for k in arrays.keys()}, expected)
    if reason:
        return reason
    return validate_metrics(dict(next(iter(content.metric_records.values()))), max_examples, min_examples)


def max_node_users(users_per_node: int, n_users: int, n_nodes: int) -> int:
    """The most users one node's reply may claim (``num-examples``): users-per-node, or
    the even spread of all users over the nodes that connected."""
    return max(users_per_node, -(-n_users // max(1, n_nodes)))


def validate_metrics(metrics: dict, max_examples: int, min_examples: int = 1) -> str | None:
    """Why a reply's train metrics are unusable (``num-examples``; a ``train-loss`` that is
    not a finite number), or ``None``.  Private runs send no loss."""
    n = metrics.get(protocol.NUM_EXAMPLES)
    if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n != int(n) \
            or n < min_examples or n > max_examples:
        return f"num-examples={n!r} is not an integer in [{min_examples}, {max_examples}]"
    loss = metrics.get(protocol.TRAIN_LOSS, 0.0)
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return f"train-loss={loss!r} is not a finite number"
    return None


def itemwise_scale(update: dict[str, np.ndarray], frac: np.ndarray, item_tables) -> dict[str, np.ndarray]:
    """Item-wise averaging: each row of every item table divided by the mean over users of
    "the user touched this row" (``frac``); untouched rows get no update, dense parameters
    are left as they are."""
    scale = np.where(frac > 0, 1.0 / np.maximum(frac, 1e-12), 0.0)
    return {k: v * scale.reshape((-1,) + (1,) * (v.ndim - 1)) if k in item_tables else v for k, v in update.items()}


def aggregate_train_metrics(records: list[RecordDict] | list[dict],
                            weight_key: str = protocol.NUM_EXAMPLES) -> MetricRecord:
    """Combine train metrics (RecordDicts or plain dicts): user-weighted mean loss (only
    where replies carry one: private runs release none), node and user counts, and the
    exact distribution of per-user epsilons (nodes send the list of their users')."""
    loss = users = declined = loss_users = 0.0
    eps: list[np.ndarray] = []
    for r in records:
        m = next(iter(r.metric_records.values())) if isinstance(r, RecordDict) else r
        n = float(m[weight_key])
        users += n
        if protocol.TRAIN_LOSS in m:
            loss += n * float(m[protocol.TRAIN_LOSS])
            loss_users += n
        declined += float(m.get(protocol.DECLINED, 0))
        eps.append(np.asarray(m.get(protocol.EPSILON, []), dtype=np.float64))
    out = {"nodes": float(len(records)), "users": users, "declined": declined}
    if loss_users:
        out["train-loss"] = loss / loss_users
    if sum(len(e) for e in eps):
        e = np.concatenate(eps)
        out.update({"epsilon-min": float(e.min()), "epsilon-median": float(np.median(e)),
                    "epsilon-max": float(e.max())})
    return MetricRecord(out)


def sample_nodes(seed: int, server_round: int, node_ids: Iterable[int], fraction: float) -> list[int]:
    """Seeded, reproducible sample of ``fraction`` of the nodes for a round (at least one)."""
    node_ids = sorted(node_ids)
    k = max(1, int(round(fraction * len(node_ids))))
    if k >= len(node_ids):
        return node_ids
    rng = np.random.default_rng([seed, server_round, 7])
    return sorted(rng.choice(node_ids, size=k, replace=False).tolist())


def mechanism_config(cfg: FedConfig) -> dict[str, float]:
    """The privacy mechanism as resolved once by the server (noise multipliers
    calibrated for the planned rounds), sent with every message so that nodes
    never calibrate (:func:`fedrec.federated.protocol.mechanism_config`)."""
    return protocol.mechanism_config(cfg)


def is_eval_round(cfg: FedConfig, server_round: int) -> bool:
    """Whether nodes evaluate after ``server_round`` (absolute round)."""
    if cfg.eval_every == 0:  # evaluation off: nodes release no metrics
        return False
    if cfg.als and server_round <= 1 and cfg.als_passes > 0:  # ALS: round 1 releases counts only, the item
        return False  # table is still random (with no pass, the counts are the model: private MostPop)
    return server_round % cfg.eval_every == 0 or server_round == cfg.num_server_rounds


def evaluation_means(replies: Iterable[dict], *, item_popularity: np.ndarray | None = None,
                     n_users: int = 0) -> dict[str, float] | None:
    """Exact means over users from the nodes' evaluation replies: the nodes' metric sums
    divided by each stage's user count (``<stage>-count``); coverage from the summed
    top-10 counts (``test-topk``), and with the server's ``item_popularity`` (training
    counts over ``n_users`` users) novelty and ARP from the same counts: nodes hold no
    federation-wide statistic.  ``None`` when no reply carried a metric."""
    sums: dict[str, list[float]] = {}  # summed exactly (math.fsum): the means do not depend on the replies' order
    counts: dict[str, int] = {}
    exposure: dict[str, np.ndarray] = {}
    topk = None
    for m in replies:
        for k, v in m.items():
            if k.startswith(protocol.EXPOSURE_PREFIX):
                v = np.asarray(v, dtype=np.int64)
                group = k[len(protocol.EXPOSURE_PREFIX):]
                exposure[group] = exposure.get(group, 0) + v
            elif k.endswith("-count"):
                counts[k[: -len("-count")]] = counts.get(k[: -len("-count")], 0) + int(v)
            elif k == protocol.TEST_TOPK:
                v = np.asarray(v, dtype=np.int64)
                topk = v if topk is None else topk + v
            elif "/" in k:
                sums.setdefault(k, []).append(float(v))
    if not sums:
        return None
    out = {k: math.fsum(v) / max(1, counts.get(k.split("/")[0], 0)) for k, v in sums.items()}
    out.update({f"{s}-users": float(c) for s, c in counts.items()})
    if topk is not None and len(topk):
        out["test/coverage@10"] = float((topk > 0).mean())
        if item_popularity is not None and topk.sum() > 0:
            from fedrec.metrics.beyond import list_novelty_and_popularity

            out["test/novelty@10"], out["test/arp@10"] = list_novelty_and_popularity(topk, item_popularity, n_users)
    if exposure:
        from fedrec.metrics.exposure import exposure_ratios

        out.update({f"test/{k}": v for k, v in exposure_ratios(exposure).items()})
    return out


def wait_for_nodes(get_node_ids, n_nodes: int, timeout: float = 120.0) -> list[int]:
    """Node ids once ``n_nodes`` are connected, or those connected when their number has
    been stable for 10 s (a smaller federation: users are spread over them) or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last, stable_since = -1, time.monotonic()
    while len(ids := list(get_node_ids())) < n_nodes and time.monotonic() < deadline:
        if STOP.is_set():
            raise RunStopped("the run was interrupted")
        if len(ids) != last:
            last, stable_since = len(ids), time.monotonic()
        elif ids and time.monotonic() - stable_since > 10.0:
            log(WARNING, "%d nodes connected (expected %d): users are spread over them", len(ids), n_nodes)
            break
        time.sleep(0.05)
    if len(ids) < n_nodes and time.monotonic() >= deadline:
        log(WARNING, "only %d of %d nodes connected after %.0fs", len(ids), n_nodes, timeout)
    return sorted(ids)


def _crash_point(server_round: int) -> None:
    """Fault injection for tests: ``FEDREC_CRASH_AT_ROUND=N`` kills the server process
    (no cleanup, like SIGKILL) when round N's replies arrive — after the nodes have
    trained and saved round N, before the server's round-N checkpoint."""
    if os.environ.get("FEDREC_CRASH_AT_ROUND") == str(server_round):
        os._exit(70)


@dataclass
class RunRecord:
    """What the server saw, per absolute round: what the run log, the checkpoint and
    the report read.  ``rejected``: (round, node, reason) of every dropped reply."""

    round_info: dict[int, dict] = field(default_factory=dict)
    train: dict[int, dict] = field(default_factory=dict)
    evaluation: dict[int, dict] = field(default_factory=dict)
    rejected: list[tuple[int, int, str]] = field(default_factory=list)
    n_nodes: int = 0  # nodes connected (a deployment may start fewer than planned)
    message_config: dict = field(default_factory=dict)  # sent with every message (train-head's trained items)
    item_popularity: np.ndarray | None = None  # training counts, for novelty and ARP (the simulation's measurement)
    n_users: int = 0  # the users the popularity was counted over

    def info(self, server_round: int) -> dict:
        return self.round_info.setdefault(server_round, {})


# --------------------------------------------------------------------------- strategies
class NodeMessages(FedAvg):
    """Flower's FedAvg with fedrec's messages: seeded node sampling, ``server-round`` and
    the resolved mechanism in every config, evaluation every ``eval-every`` rounds on
    every node, exact evaluation means.  ``aggregate_train`` is FedAvg's weighted mean."""

    def __init__(self, cfg: FedConfig, record: RunRecord, *, n_nodes: int):
        super().__init__(fraction_train=cfg.fraction_train, fraction_evaluate=1.0, min_train_nodes=1,
                         min_evaluate_nodes=n_nodes, min_available_nodes=n_nodes,
                         train_metrics_aggr_fn=aggregate_train_metrics)
        self.cfg, self.record = cfg, record
        record.n_nodes = n_nodes
        self._sent: ArrayRecord | None = None  # the parameters sent this round
        self._current: dict[str, np.ndarray] | None = None  # ... as numpy arrays, once asked for

    @property
    def current(self) -> dict[str, np.ndarray] | None:
        """The parameters sent this round, as numpy arrays (converted when first asked for:
        only the user-level aggregation reads them)."""
        if self._current is None and self._sent is not None:
            self._current = {k: v.numpy() for k, v in self._sent.items()}
        return self._current

    @current.setter
    def current(self, params: dict[str, np.ndarray] | None) -> None:
        self._sent, self._current = None, params

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, node_ids: list[int],
                  kind: str) -> list[Message]:
        config[protocol.SERVER_ROUND] = server_round
        config.update(mechanism_config(self.cfg))
        config.update(self.record.message_config)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return list(self._construct_messages(record, node_ids, kind))

    def _nodes(self, grid: Grid) -> list[int]:
        ids = wait_for_nodes(grid.get_node_ids, self.record.n_nodes)
        self.record.n_nodes = len(ids) or self.record.n_nodes
        return ids

    def configure_train(self, server_round, arrays, config, grid):
        self._sent, self._current = arrays, None
        chosen = sample_nodes(self.cfg.seed, server_round, self._nodes(grid), self.cfg.fraction_train)
        self.record.info(server_round)["sent"] = len(chosen)
        return self._messages(server_round, arrays, config, chosen, MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        if not is_eval_round(self.cfg, server_round):
            return []
        return self._messages(server_round, arrays, config, self._nodes(grid), MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        stop_on_node_error(self.cfg, replies, f"evaluation of round {server_round}")
        metrics = []
        for msg in replies:
            if msg.has_error():
                log(WARNING, "round %d: evaluation error from node %s: %s", server_round,
                    msg.metadata.src_node_id, error_reason(msg.error.reason))
                continue
            metrics.append(dict(next(iter(msg.content.metric_records.values()))))
        out = evaluation_means(metrics, item_popularity=self.record.item_popularity, n_users=self.record.n_users)
        if out is None:
            return None
        self.record.evaluation[server_round] = out
        return MetricRecord(out)


class MeanOfUpdates(NodeMessages):
    """The user-weighted mean of the nodes' mean updates (Flower's FedAvg); with
    ``itemwise``, each item-table row is divided by the fraction of users that touched it."""

    def __init__(self, cfg: FedConfig, record: RunRecord, *, n_nodes: int, keys: tuple[str, ...],
                 item_tables: tuple[str, ...] = ()):
        super().__init__(cfg, record, n_nodes=n_nodes)
        self.keys, self.item_tables = keys, item_tables

    def aggregate_train(self, server_round, replies):
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None:
            return None, metrics
        update = {k: mean[k].numpy() for k in self.keys}
        if self.cfg.aggregation == "itemwise":
            update = itemwise_scale(update, mean[COUNTS_KEY].numpy(), self.item_tables)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in update.items()}), metrics


#: Flower's robust strategies by ``aggregation`` name (their ``aggregate_train`` used as it is).
ROBUST_RULES: dict[str, type[FedAvg]] = {"median": FedMedian, "trimmed-mean": FedTrimmedAvg, "krum": Krum,
                                         "multikrum": MultiKrum, "bulyan": Bulyan}


def robust_rule(cfg: FedConfig, n_nodes: int) -> FedAvg:
    """Flower's robust strategy named by ``cfg.aggregation``, set up for ``n_nodes`` replies
    (``trim-beta``; ``byzantine-nodes`` = f; MultiKrum averages the ``n - f`` best-scored
    nodes).  Raises ``ValueError`` when ``n_nodes`` is too few for the rule to tolerate f
    (Krum and MultiKrum need ``n >= 2f + 3``, Bulyan ``n >= 4f + 3``)."""
    name, f = cfg.aggregation, cfg.byzantine_nodes
    kw: dict = dict(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1,
                    train_metrics_aggr_fn=aggregate_train_metrics)
    need = {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(name, 1)
    if n_nodes < need:
        raise ValueError(f"aggregation={name} with byzantine-nodes={f} needs at least {need} nodes per round; "
                         f"the run has {n_nodes}")
    if name == "trimmed-mean":
        kw["beta"] = cfg.trim_beta
    if name in ("krum", "multikrum", "bulyan"):
        kw["num_malicious_nodes"] = f
    if name == "multikrum":
        kw["num_nodes_to_select"] = n_nodes - f
    return ROBUST_RULES[name](**kw)


class RobustOfUpdates(NodeMessages):
    """The nodes' mean updates aggregated by one of Flower's robust strategies as it is
    (:data:`ROBUST_RULES`): a coordinate-wise median or trimmed mean, or Krum's selection,
    in place of FedAvg's weighted mean.  The updates are pseudo-gradients of the shared
    parameters only (item tables and layers; a user's state never leaves its node), so
    the rule compares exactly what the server aggregates.  A row a node's users did not
    touch counts as that node's zero, as FedAvg counts it."""

    def __init__(self, cfg: FedConfig, record: RunRecord, *, n_nodes: int, keys: tuple[str, ...]):
        super().__init__(cfg, record, n_nodes=n_nodes)
        self.keys = keys
        self.rule = robust_rule(cfg, max(1, round(cfg.fraction_train * n_nodes)))

    def aggregate_train(self, server_round, replies):
        update, metrics = self.rule.aggregate_train(server_round, list(replies))
        if update is None:
            return None, metrics
        return ArrayRecord({k: Array(np.asarray(update[k].numpy())) for k in self.keys}), metrics


class SumOfUpdates(NodeMessages):
    """What Flower's DP wrappers wrap for user-level DP.

    Replies hold ``current + sum of the node's users' updates``; this returns
    ``current + sum over replies of (reply - current)``: the sum of every user's
    (clipped) update, on which the wrapper then puts Gaussian noise of std
    ``noise_multiplier * clip`` (``num_sampled_clients=1``).
    """

    def __init__(self, cfg: FedConfig, record: RunRecord, *, n_nodes: int, keys: tuple[str, ...]):
        super().__init__(cfg, record, n_nodes=n_nodes)
        self.keys = keys

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        total = {k: np.zeros_like(self.current[k], dtype=np.float64) for k in self.keys}
        for msg in replies:
            arrays = next(iter(msg.content.array_records.values()))
            for k in self.keys:
                total[k] += arrays[k].numpy().astype(np.float64) - self.current[k]
        out = ArrayRecord({k: Array((self.current[k] + total[k]).astype(np.float64)) for k in self.keys})
        return out, aggregate_train_metrics([m.content for m in replies])


class _Wrapper(Strategy):
    """A strategy around another: everything not overridden goes to ``inner``."""

    def __init__(self, inner: Strategy):
        self.inner = inner

    def configure_train(self, server_round, arrays, config, grid):
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


class _DropDiscrepancyWarning(logging.Filter):
    # Flower's DP wrappers warn when replies != num_sampled_clients; fedrec passes 1
    # on purpose (noise std sigma*C on the *sum*) and records what arrived itself.
    def filter(self, record: logging.LogRecord) -> bool:
        return "differs from the number of sampled clients" not in str(record.msg)


def _quiet_dp_discrepancy() -> None:
    """Install the filter once, when a strategy with a DP wrapper is built (not at import)."""
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _DropDiscrepancyWarning) for f in flwr_log.filters):
        flwr_log.addFilter(_DropDiscrepancyWarning())


@contextlib.contextmanager
def flower_noise_from(randomness: DPRandomness):
    """Within the block, numpy's global generator (which Flower's DP wrappers draw their
    noise from) is seeded from ``randomness``; the caller's state is given back after."""
    saved = np.random.get_state()
    np.random.seed(randomness.legacy_seed())
    try:
        yield
    finally:
        np.random.set_state(saved)


def add_user_level_noise(arrays: list[np.ndarray], *, noise_multiplier: float, clip: float,
                         randomness: DPRandomness) -> None:
    """The noise :class:`UserLevelMean` puts on a sum of clipped user updates, in place:
    Flower's Gaussian noise of std ``noise_multiplier * clip`` (its wrappers' own
    functions, one sampled client), drawn from ``randomness``."""
    with flower_noise_from(randomness):
        add_gaussian_noise_inplace(arrays, compute_stdv(noise_multiplier, clip, 1))


class UserLevelMean(_Wrapper):
    """User-level DP: Flower's DP wrapper (``client``: users clipped on the node;
    ``server``: one user per node, clipped by the wrapper) over
    :class:`SumOfUpdates` returns ``current + sum + N(0, (sigma C)^2)``; this divides
    the noised sum by the *expected* number of users per round (``user-sample-rate *
    n_users``, a fixed denominator as in DP-FedAvg).  No server state is computed
    from un-noised client data, and no exact count of the users who took part is
    recorded.  Flower draws its noise from numpy's global generator: it is seeded
    each round from the server's secret randomness (:class:`DPRandomness`; from the
    seed only with ``reproducible-noise``) and the caller's generator state is given
    back afterwards.  (Flower's adaptive clipping is refused by the config: it noises
    the sum at the next round's clip, below the clip applied.)"""

    def __init__(self, cfg: FedConfig, record: RunRecord, *, n_nodes: int, n_users: int, keys: tuple[str, ...]):
        _quiet_dp_discrepancy()
        self.summer = SumOfUpdates(cfg, record, n_nodes=n_nodes, keys=keys)
        sigma, clip = cfg.user_noise_multiplier, cfg.user_clip
        if cfg.user_dp == "client":
            wrapper = DifferentialPrivacyClientSideFixedClipping(
                self.summer, noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=1)
        elif cfg.user_dp == "server":
            wrapper = DifferentialPrivacyServerSideFixedClipping(
                self.summer, noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=1)
        else:
            raise ValueError(f"user-dp={cfg.user_dp!r}: fixed clipping only ('client' or 'server')")
        super().__init__(wrapper)
        self.cfg, self.record, self.keys, self.n_users = cfg, record, keys, n_users

    def aggregate_train(self, server_round, replies):
        with flower_noise_from(DPRandomness.of(self.cfg.reproducible_noise, self.cfg.seed, server_round, 13)):
            noised, metrics = self.inner.aggregate_train(server_round, replies)
        if noised is None:
            return None, None
        expected = self.cfg.user_sample_rate * self.n_users
        sent = self.summer.current
        update = {k: (noised[k].numpy().astype(np.float64) - sent[k]) / expected for k in self.keys}
        self.record.info(server_round)["user-clip"] = float(self.inner.clipping_norm)
        return ArrayRecord({k: Array(v) for k, v in update.items()}), metrics


def triage_replies(record: RunRecord, server_round: int, replies: Iterable[Message],
                   why_bad) -> tuple[list[Message], int, int]:
    """(well-formed replies, failed, rejected): error replies and those ``why_bad(msg)``
    gives a reason for are left out, recorded in ``record.rejected`` and logged."""
    good, failed, rejected = [], 0, 0
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            failed += 1
            record.rejected.append((server_round, node, f"error reply: {msg.error.reason}"))
            log(WARNING, "round %d: node %s failed: %s", server_round, node, error_reason(msg.error.reason))
            continue
        reason = why_bad(msg)
        if reason is None:
            good.append(msg)
        else:
            rejected += 1
            record.rejected.append((server_round, node, reason))
            log(WARNING, "round %d: rejected reply of node %s: %s", server_round, node, reason)
    return good, failed, rejected


def reply_order(msg: Message) -> bytes:
    """A key that orders replies by what they hold (a hash of their arrays), so that the
    server sums them in the same order in every run of one seed, whatever order they
    arrive in and whatever ids the nodes were given."""
    h = hashlib.blake2b(digest_size=16)
    for record in msg.content.array_records.values():
        for key in sorted(record.keys()):
            h.update(key.encode())
            h.update(record[key].data)
    return h.digest()


def accept_replies(record: RunRecord, cfg: FedConfig, server_round: int, replies: Iterable[Message],
                   why_bad) -> list[Message] | None:
    """The round's contributing replies (well-formed, ``num-examples`` > 0), with the
    round's counts (replies, contributing, failed, rejected, missing) and the train
    metrics of every valid reply in ``record``; ``None`` (the round changes nothing)
    when fewer than ``min-replies`` contribute."""
    replies = list(replies)
    stop_on_node_error(cfg, replies, f"round {server_round}")
    good, failed, rejected = triage_replies(record, server_round, replies, why_bad)
    good.sort(key=reply_order)  # sums of floats depend on their order: never the order of arrival
    contributing = [m for m in good if next(iter(m.content.metric_records.values()))[protocol.NUM_EXAMPLES] > 0]
    info = record.info(server_round)
    sent = info.get("sent", len(good) + failed + rejected)
    info.update({"replies": len(good), "contributing": len(contributing), "failed": failed, "rejected": rejected,
                 "missing": max(0, sent - len(good) - failed - rejected)})
    if good:  # loss, counts and epsilons over every valid reply (declined users included)
        train = dict(aggregate_train_metrics([m.content for m in good]))
        if cfg.user_level:  # which users took part is what user sampling keeps secret: no exact counts
            train.pop("users", None)
            train.pop(protocol.DECLINED, None)
        record.train[server_round] = train
    if len(contributing) < cfg.min_replies:
        info["skipped"] = 1
        log(WARNING, "round %d: %d contributing replies < min-replies %d; global parameters unchanged",
            server_round, len(contributing), cfg.min_replies)
        return None
    return contributing


def keep_replies(directory: Path, replies: list[Message]) -> None:
    """Write each reply's arrays and metrics to ``directory/reply-K.npz`` (K: the reply's
    place in :func:`reply_order`, with ``node`` its sender): the view of an honest-but-
    curious server, kept for audits (``keep-replies``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for k, msg in enumerate(replies):
        arrays = {f"array/{name}": a.numpy() for record in msg.content.array_records.values()
                  for name, a in record.items()}
        metrics = {f"metric/{name}": np.asarray(v) for record in msg.content.metric_records.values()
                   for name, v in record.items()}
        np.savez(directory / f"reply-{k}.npz", node=np.asarray(msg.metadata.src_node_id), **arrays, **metrics)


class ValidReplies(_Wrapper):
    """Leaves out error replies (failed or dropped nodes) and malformed ones with a logged
    reason, counts them, and passes the contributing replies (``num-examples`` > 0) on;
    with fewer than ``min-replies`` of them the round changes nothing.  Train metrics
    (loss, users, declined users, epsilons) are over every valid reply."""

    def __init__(self, inner: Strategy, cfg: FedConfig, record: RunRecord, *, shapes: dict[str, tuple[int, ...]],
                 n_users: int):
        super().__init__(inner)
        self.cfg, self.record, self.shapes, self.n_users = cfg, record, dict(shapes), n_users

    @property
    def max_examples(self) -> int:
        """Most users one node can host (bounds a reply's weight): :func:`max_node_users`."""
        return max_node_users(self.cfg.users_per_node, self.n_users, self.record.n_nodes)

    def aggregate_train(self, server_round, replies):
        _crash_point(server_round)
        contributing = accept_replies(
            self.record, self.cfg, server_round, replies,
            lambda msg: validate_reply(msg.content, self.shapes, max_examples=self.max_examples, min_examples=0))
        if contributing is None:
            return None, None
        if self.cfg.keep_replies and self.cfg.out:
            keep_replies(Path(self.cfg.out) / "replies" / f"round-{server_round}", contributing)
        update, _ = self.inner.aggregate_train(server_round, contributing)
        if update is None:
            return None, None
        return update, MetricRecord(self.record.train[server_round])


class ServerOptimizer(_Wrapper):
    """Turns the update the inner strategy aggregated (ascent direction) into the next
    global parameters: the rows of held-out items are frozen in every item table (no
    update may reach an item that is not in the catalogue at training time), then one
    step of the server optimiser (:func:`fedrec.federated.optim.server_step`; see there why not
    Flower's FedAdam).  ``state`` (the moments) is what the checkpoint keeps."""

    def __init__(self, inner: Strategy | None, cfg: FedConfig, *, item_tables: tuple[str, ...] = (),
                 cold_items: np.ndarray | None = None):
        super().__init__(inner)
        self.cfg = cfg
        self.item_tables = item_tables
        self.cold_items = np.asarray(cold_items if cold_items is not None else [], dtype=np.int64)
        self.state = OptState()
        self.current: dict[str, np.ndarray] | None = None
        self._returned: ArrayRecord | None = None  # the record of ``current`` the last step returned

    def freeze_cold_rows(self, update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The update with the rows of held-out items zeroed in every item table."""
        if not len(self.cold_items):
            return update
        out = dict(update)
        for t in self.item_tables:
            out[t] = np.array(update[t], copy=True)
            out[t][self.cold_items] = 0.0
        return out

    def step(self, update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next global parameters from ``current`` and an aggregated ``update``."""
        c = self.cfg
        new, self.state = server_step(self.current, self.freeze_cold_rows(update), self.state, opt=c.server_opt,
                                      lr=c.server_lr, beta1=c.beta1, beta2=c.beta2, eps=c.server_eps)
        self.current = {k: np.asarray(v, dtype=np.float32) for k, v in new.items()}
        return self.current

    def configure_train(self, server_round, arrays, config, grid):
        if arrays is not self._returned:  # else ``current`` holds them already (the last step's result)
            self.current = {k: v.numpy() for k, v in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        update, metrics = self.inner.aggregate_train(server_round, replies)
        if update is None:
            return None, None
        new = self.step({k: update[k].numpy() for k in update.keys()})
        self._returned = ArrayRecord({k: Array(v) for k, v in new.items()})
        return self._returned, metrics


class Resumed(_Wrapper):
    """Outermost: Flower counts rounds from 1 in every run; after a resume from round
    ``offset`` the pieces below see absolute rounds (sampling, noise seeds, evaluation
    rounds and the record all depend on them)."""

    def __init__(self, inner: Strategy, offset: int = 0):
        super().__init__(inner)
        self.offset = offset

    def configure_train(self, server_round, arrays, config, grid):
        return self.inner.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        return self.inner.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round + self.offset, replies)


class FedRecStrategy(Resumed):
    """fedrec's server strategy for a run: the pieces of this module stacked for ``cfg``.

    Parameters
    ----------
    cfg
        The run's configuration (``aggregation``, ``user-dp``, ``server-opt``,
        ``server-lr``, ``fraction-train``, ``min-replies``, ``seed``, ``eval-every`` ...).
    shapes
        Shapes of the global parameters (what every reply must match).
    n_nodes
        Nodes in the federation.
    n_users
        Users in the federation (population of the user-level accountant).
    item_tables, cold_items
        The model's item tables, and the held-out items whose rows no update may touch.

    The pieces stay reachable: ``record`` (:class:`RunRecord`), ``optimizer``
    (:class:`ServerOptimizer`, whose ``state`` the checkpoint keeps), ``user_dp``
    (Flower's DP wrapper, or ``None``) and ``offset`` (rounds done before a resume).
    """

    def __init__(self, cfg: FedConfig, *, shapes: dict[str, tuple[int, ...]], n_nodes: int, n_users: int | None = None,
                 item_tables: tuple[str, ...] = (), cold_items: np.ndarray | None = None):
        self.cfg = cfg
        self.record = RunRecord()
        keys = tuple(shapes)
        item_tables = tuple(t for t in item_tables if t in shapes)
        n_users = n_users or n_nodes * cfg.users_per_node
        expected = dict(shapes)
        if cfg.user_level:
            aggregate: Strategy = UserLevelMean(cfg, self.record, n_nodes=n_nodes, n_users=n_users, keys=keys)
            self.user_dp = aggregate.inner
        else:
            if cfg.aggregation == "itemwise":
                if not item_tables:
                    raise ValueError("item-wise aggregation needs a model with item tables")
                expected[COUNTS_KEY] = (shapes[item_tables[0]][0],)
            if cfg.robust_aggregation:
                aggregate = RobustOfUpdates(cfg, self.record, n_nodes=n_nodes, keys=keys)
            else:
                aggregate = MeanOfUpdates(cfg, self.record, n_nodes=n_nodes, keys=keys, item_tables=item_tables)
            self.user_dp = None
        self.valid = ValidReplies(aggregate, cfg, self.record, shapes=expected, n_users=n_users)
        self.optimizer = ServerOptimizer(self.valid, cfg, item_tables=item_tables, cold_items=cold_items)
        super().__init__(self.optimizer)

    @property
    def rejected(self) -> list[tuple[int, int, str]]:
        return self.record.rejected

    @property
    def round_info(self) -> dict[int, dict]:
        return self.record.round_info
