"""Secure aggregation: the same server pipeline behind Flower's SecAgg+.

With ``secure-aggregation`` the server never sees one node's update, only the
sum of a round's updates.  fedrec uses Flower's SecAgg+ as it is
(``secaggplus_mod`` on the nodes, :class:`flwr.server.workflow.SecAggPlusWorkflow`
on the server) and adds no cryptography.  In flwr 1.41 SecAgg+ exists only as a
workflow of Flower's legacy strategy interface, so :class:`SecureAggregation` is
a legacy ``Strategy`` made of the pieces of :mod:`fedrec_app.server.strategy`:
the same seeded node sampling and mechanism config, the same reply checks (on
what the server can check: each node's weight and metrics, and the aggregate),
the same :class:`ServerOptimizer` (held-out rows frozen, FedOpt step), the same
:class:`RunRecord`, evaluation means, run log, checkpoint and early stop.  The
nodes run the same ClientApp handlers; only the encoding of the messages differs.

The protocol.  Each node sends ``w_i * update_i`` with ``w_i = num_examples_i /
max_weight``, clipped to ``[-C, C]`` (``secagg-clip``), stochastically quantised
to integers in ``[0, Q]`` and masked; pairwise masks cancel in the sum and the
server removes the self-masks with shares of the other nodes; it then divides
the sum by ``sum_i w_i``: the *user-weighted mean* of the nodes' updates, what
plain FedAvg computes.

Choice of ranges.  ``max_weight`` is the largest cohort, so ``w_i <= 1``.
Without DP, one user's release per item is a convex combination of sigmoid
weights in ``[0, 1]``; observed node updates on ML-100K are at most 0.01
without DP and 0.04 with noise multiplier 1 and sample rate 0.5, so ``C = 1``
leaves 25x headroom.  Flower clips silently; the nodes count the values they
would clip (``secagg-clipped``) and the run warns when any is.  ``Q`` defaults
to the largest power of two (at most 2**30, the limit of Flower's int32
rounding) with ``n_nodes * Q < 2**32``, so the sum cannot wrap around the
modulus (``Q = 2**28`` for 15 nodes).  Nodes send float64: float32 cannot
resolve a step of ``2C/Q``.  Per coordinate, when nothing was clipped::

    |secure - plain| <= N * C * (2 + 1/min_i w_i) / (Q * sum_i w_i)

about ``3C/Q`` with full cohorts (:func:`quantization_bound`); the error is
zero-mean (stochastic rounding).

What the server still sees, and the limits: each node's ``num_examples`` (its
cohort size, public in fedrec) and scalar train metrics (loss, declined users,
the users' epsilons); evaluation replies as in the plain pipeline (a
simulation's measurement, off by default in deployments).  SecAgg+ is not
differential privacy: combine it with interaction-level DP on the nodes, or with
distributed user-level DP (``user-dp='distributed'``: each user adds an integer
noise share, the nodes send their users' sum in the field on SecAgg+'s grid, and
the server decodes it; :mod:`fedrec.privacy.distributed`).  It needs 2+ nodes per
round, tolerates the drop-out of up to ``num_shares - threshold`` neighbours of a
node, assumes a semi-honest server, and Flower derives its mask PRG seeds by
XOR-folding to 32 bits (research strength, not a production security guarantee).
Central user-level DP is refused with it (the DP wrappers clip single replies).
"""

from __future__ import annotations

import dataclasses
from logging import WARNING

import numpy as np
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.server.strategy import Strategy as LegacyStrategy

from fedrec.federated import protocol
from fedrec.config import FedConfig
from fedrec.privacy.distributed import (
    MODULUS_RANGE,
    SECAGG_CLIP,
    auto_quantization_range,
    distributed_mechanism,
    from_flower_sum,
    rotation_signs,
)
from fedrec_app.server.strategy import (
    COUNTS_KEY,
    RunRecord,
    ServerOptimizer,
    _crash_point,
    aggregate_train_metrics,
    evaluation_means,
    is_eval_round,
    itemwise_scale,
    mechanism_config,
    sample_nodes,
    validate_arrays,
    validate_metrics,
)

__all__ = ["SecureAggregation", "secagg_workflow", "check_nodes", "auto_quantization_range", "quantization_bound",
           "MODULUS_RANGE"]


def quantization_bound(num_examples, *, clipping_range: float, quantization_range: int, max_weight: float) -> float:
    """Worst-case ``|secure - plain|`` per coordinate of a round's mean update, for the
    round's node weights ``num_examples`` (when no value was clipped)."""
    q = quantization_range
    w = np.array([round(n / max_weight * q) / q for n in num_examples])
    return float(len(w) * clipping_range * (2.0 + 1.0 / w.min()) / (q * w.sum()))


def check_nodes(n_nodes: int, users_per_node: int, *, what: str = "nodes") -> None:
    """SecAgg+ needs 2+ nodes per round: a federation of fewer is refused (ValueError, one
    line), by every entry point before anything starts."""
    if n_nodes < 2:
        raise ValueError(f"--secure-aggregation needs at least 2 {what}; users-per-node={users_per_node} "
                         f"gives {n_nodes}")


def _fraction_or_count(x: float) -> float | int:
    return int(x) if x > 1 else float(x)


def secagg_workflow(cfg: FedConfig, *, n_nodes: int, max_weight: int):
    """Flower's ``SecAggPlusWorkflow`` with the run's settings (see the module docstring).
    With distributed DP its clipping range is :data:`SECAGG_CLIP` (the field's integers
    pass exactly), and before the unmasking stage it asks the strategy
    (:meth:`SecureAggregation.may_unmask`) whether the surviving nodes hold enough noise
    shares: a round with too few is not unmasked."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class Workflow(SecAggPlusWorkflow):
        def unmask_stage(self, grid, context, state):
            shares = sum(int(res.metrics.get(protocol.NOISE_SHARES, 0)) for proxy, res in state.legacy_results
                         if int(proxy.node_id) in state.active_node_ids)
            if not context.strategy.may_unmask(shares):
                return False
            return super().unmask_stage(grid, context, state)

    distributed = cfg.user_dp == "distributed"
    return (Workflow if distributed else SecAggPlusWorkflow)(
        num_shares=_fraction_or_count(cfg.secagg_shares),
        reconstruction_threshold=_fraction_or_count(cfg.secagg_threshold),
        max_weight=float(max_weight),
        clipping_range=SECAGG_CLIP if distributed else cfg.secagg_clip,
        quantization_range=cfg.secagg_quantization or auto_quantization_range(n_nodes),
        timeout=cfg.round_timeout,
    )


def _metrics(raw: dict) -> dict:
    """A legacy reply's metrics with the lists the nodes sent as bytes decoded."""
    out = dict(raw)
    if isinstance(out.get(protocol.EPSILON), bytes):
        out[protocol.EPSILON] = np.frombuffer(out[protocol.EPSILON], dtype=np.float64).tolist()
    if isinstance(out.get(protocol.TEST_TOPK), bytes):
        out[protocol.TEST_TOPK] = np.frombuffer(out[protocol.TEST_TOPK], dtype=np.int64)
    return out


class SecureAggregation(LegacyStrategy):
    """The server pipeline as a legacy strategy for Flower's SecAgg+ workflow.

    ``aggregate_fit`` receives only the aggregate (every "result" carries the same
    unmasked mean) plus each node's weight and metrics.  ``on_round(server_round,
    parameters)`` is the run log (called after each round, once its evaluation is in);
    when it raises ``stop`` the remaining rounds send nothing.  ``record``,
    ``optimizer``, ``offset`` and ``user_dp`` (``None``) are what the run log and the
    checkpoint read, as on :class:`~fedrec_app.server.strategy.FedRecStrategy`.
    """

    def __init__(self, cfg: FedConfig, *, shapes: dict[str, tuple[int, ...]], n_nodes: int, max_weight: int,
                 item_tables: tuple[str, ...] = (), cold_items=None, on_round=None,
                 stop: type[Exception] = StopIteration, n_users: int | None = None):
        super().__init__()
        self.cfg, self.n_nodes, self.max_weight = cfg, n_nodes, max_weight
        self.keys = tuple(shapes)
        self.item_tables = tuple(t for t in item_tables if t in shapes)
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        self.ddp = None  # distributed DP: the mechanism, whose sum the server decodes
        self.n_users = n_users
        if cfg.user_dp == "distributed":
            if n_users is None:
                raise ValueError("distributed DP needs the federation's number of users")
            self.param_shapes = dict(self.shapes)
            dim = sum(int(np.prod(v)) for v in self.shapes.values())
            target = float(cfg.user_target_epsilon)
            if target > 0:  # the least noise whose planned rounds reach the target
                cfg = dataclasses.replace(cfg, user_noise_multiplier=1.0, user_target_epsilon=0.0)
            self.ddp = distributed_mechanism(cfg, n_users=n_users, n_nodes=n_nodes, dim=dim)
            if target > 0:
                self.ddp = self.ddp.calibrated(target, cfg.num_server_rounds)
                self.cfg = cfg = dataclasses.replace(cfg, user_noise_multiplier=self.ddp.noise_multiplier)
            self.shapes = {protocol.DDP_SUM: (self.ddp.padded_dim,)}
        if cfg.aggregation == "itemwise":
            if not self.item_tables:
                raise ValueError("item-wise aggregation needs a model with item tables")
            self.shapes[COUNTS_KEY] = (self.shapes[self.item_tables[0]][0],)
        self.initial: dict[str, np.ndarray] | None = None  # set before the run (after a resume, the checkpoint's)
        self.record = RunRecord(n_nodes=n_nodes)
        self.optimizer = ServerOptimizer(None, cfg, item_tables=self.item_tables, cold_items=cold_items)
        self.offset = 0
        self.user_dp = None
        self.on_round, self.stop = on_round, stop
        self.stopped: str | None = None  # why the run stopped early
        self._eval_parameters = None  # the parameters the nodes evaluate this round

    # --- helpers ---------------------------------------------------------
    def _config(self, server_round: int) -> dict:
        return {protocol.SERVER_ROUND: server_round, **mechanism_config(self.cfg),
                protocol.PARAM_KEYS: ",".join(self.keys),
                **({} if self.ddp is None else protocol.distributed_config(
                    min_users=self.ddp.min_users, max_users=self.ddp.max_users, bits=self.ddp.bits)),
                "secagg-clip": float(SECAGG_CLIP if self.ddp is not None else self.cfg.secagg_clip),
                "secagg-max-weight": float(self.max_weight),
                **self.record.message_config}

    def _nodes(self, client_manager) -> dict[int, object]:
        client_manager.wait_for(self.n_nodes, timeout=int(self.cfg.round_timeout))
        return {int(p.node_id): p for p in client_manager.all().values()}

    def _log_round(self, server_round: int, parameters) -> None:
        if self.on_round is None or self.stopped:
            return
        from flwr.app import Array, ArrayRecord

        arrays = ArrayRecord({k: Array(v) for k, v in zip(self.keys, parameters_to_ndarrays(parameters))})
        try:
            self.on_round(server_round, arrays)
        except self.stop as e:
            self.stopped = str(e)

    def may_unmask(self, shares: int) -> bool:
        """Distributed DP: whether the surviving nodes' ``shares`` noise shares are enough to
        unmask the round's sum (the mechanism's ``min_users``); otherwise the round is
        skipped before the server learns anything of it."""
        if self.ddp is None or shares >= self.ddp.min_users:
            return True
        r = self._round
        info = self.record.info(r)
        info.update({"skipped": 1, "noise-shares": shares})
        self.record.rejected.append((r, -1, f"{shares} noise shares survived, fewer than the {self.ddp.min_users} "
                                            "the noise is sized for: the sum was not unmasked"))
        log(WARNING, "round %d: only %d noise shares survived (at least %d needed): not unmasked, parameters "
            "unchanged", r, shares, self.ddp.min_users)
        return False

    def _decode(self, server_round: int, aggregate: np.ndarray, n_nodes: int) -> dict[str, np.ndarray]:
        """The round's update from the decoded sum: the users' clipped updates plus the noise
        of every share, over the expected number of users (a fixed denominator)."""
        total = from_flower_sum(aggregate, n_nodes=n_nodes, clipping_range=SECAGG_CLIP,
                                quantization_range=self.ddp.modulus)
        flat = self.ddp.decode(total, signs=rotation_signs(self.cfg.seed, server_round, self.ddp.padded_dim))
        flat = flat / (self.cfg.user_sample_rate * self.n_users)
        out, at = {}, 0
        for k in protocol.ddp_order(self.param_shapes):
            n = int(np.prod(self.param_shapes[k]))
            out[k] = flat[at:at + n].reshape(self.param_shapes[k])
            at += n
        return out

    # --- legacy Strategy -------------------------------------------------
    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([self.initial[k] for k in self.keys])

    def configure_fit(self, server_round, parameters, client_manager):
        if self.stopped:
            return []
        r = server_round + self.offset
        self._round = r
        self.optimizer.current = dict(zip(self.keys, parameters_to_ndarrays(parameters)))
        nodes = self._nodes(client_manager)
        chosen = sample_nodes(self.cfg.seed, r, nodes, self.cfg.fraction_train)
        self.record.info(r)["sent"] = len(chosen)
        ins = FitIns(parameters, self._config(r))
        return [(nodes[n], ins) for n in chosen]

    def aggregate_fit(self, server_round, results, failures):
        r = server_round + self.offset
        _crash_point(r)
        info = self.record.info(r)
        for f in failures:
            reason = f"error reply: {f if isinstance(f, BaseException) else f[1].status.message}"
            self.record.rejected.append((r, -1, reason))
            log(WARNING, "round %d: %s", r, reason)
        metrics, bad = [], 0
        for proxy, res in results:
            m = {**_metrics(res.metrics), protocol.NUM_EXAMPLES: int(res.num_examples)}
            reason = validate_metrics(m, max_examples=self.max_weight, min_examples=0)
            if reason:
                bad += 1
                self.record.rejected.append((r, int(proxy.node_id), reason))
            metrics.append(m)
        info.update({"replies": len(results), "contributing": sum(m[protocol.NUM_EXAMPLES] > 0 for m in metrics),
                     "failed": len(failures), "rejected": bad,
                     "missing": max(0, info.get("sent", 0) - len(results) - len(failures))})
        if metrics:
            self.record.train[r] = dict(aggregate_train_metrics(metrics))
            if self.ddp is not None:  # every user adds a share; who trained is the users' secret
                self.record.train[r].pop("users", None)
        clipped = int(sum(m.get("secagg-clipped", 0) for m in metrics))
        if clipped:
            info["secagg-clipped"] = clipped
            log(WARNING, "round %d: %d values outside the clipping range +-%g were clipped by SecAgg+", r, clipped,
                self.cfg.secagg_clip)
        # distributed DP: SecAgg+ removed the masks of the nodes that dropped out, and the noise
        # shares that survived were counted before unmasking (may_unmask), so the sum stands
        dropped = bool(failures) and self.ddp is None
        if not results or bad or dropped or info["contributing"] < self.cfg.min_replies:
            # a masked sum cannot be taken apart: one bad reply spoils the round
            info["skipped"] = 1
            log(WARNING, "round %d: %d results, %d failures, %d malformed; global parameters unchanged",
                r, len(results), len(failures), bad)
            return None, {}
        keys = list(self.shapes)
        mean = dict(zip(keys, parameters_to_ndarrays(results[0][1].parameters)))
        reason = validate_arrays(mean, self.shapes)
        if reason:
            info["skipped"] = 1
            self.record.rejected.append((r, -1, f"aggregate: {reason}"))
            log(WARNING, "round %d: unusable aggregate (%s); global parameters unchanged", r, reason)
            return None, {}
        if self.ddp is not None:
            shares = int(sum(m.get(protocol.NOISE_SHARES, 0) for m in metrics))
            info["noise-shares"] = shares
            update = self._decode(r, mean[protocol.DDP_SUM], len(results))
            new = self.optimizer.step(update)
            return ndarrays_to_parameters([new[k] for k in self.keys]), self.record.train[r]
        update = {k: mean[k] for k in self.keys}
        if self.cfg.aggregation == "itemwise":
            update = itemwise_scale(update, mean[COUNTS_KEY], self.item_tables)
        new = self.optimizer.step(update)
        return ndarrays_to_parameters([new[k] for k in self.keys]), self.record.train[r]

    def evaluate(self, server_round, parameters):
        # Flower's centralised-evaluation hook, right after each round's fit: the run log,
        # unless nodes evaluate this round (then it runs once their replies are in)
        r = server_round + self.offset
        if server_round > 0 and not is_eval_round(self.cfg, r):
            self._log_round(server_round, parameters)
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        r = server_round + self.offset
        if self.stopped or not is_eval_round(self.cfg, r):
            return []
        self._eval_parameters = parameters
        nodes = self._nodes(client_manager)
        ins = EvaluateIns(parameters, self._config(r))
        return [(nodes[n], ins) for n in sorted(nodes)]

    def aggregate_evaluate(self, server_round, results, failures):
        r = server_round + self.offset
        for f in failures:
            log(WARNING, "round %d: evaluation error: %s", r, f)
        out = evaluation_means((_metrics(res.metrics) for _, res in results),
                               item_popularity=self.record.item_popularity, n_users=self.record.n_users)
        if out is not None:
            self.record.evaluation[r] = out
        self._log_round(server_round, self._eval_parameters)
        return None, out or {}
