"""Federated analytics: statistics the server learns from the nodes' own contributions.

The DP popularity prior (and DP-FEST's head, post-processing of the same release) is
one Flower query before training: every node answers with the sum of its users'
unit-norm item vectors (:func:`fedrec.federated.node.analytics_round`), and the server adds its
secret Gaussian noise to the sum over nodes.  The server never reads the users'
interactions for it, in simulation as in a deployment; the guarantee holds against other
users and anyone who sees the model, and (as for private ALS's counts) not against the
server, which sees each node's un-noised sum.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedrec.config import FedConfig
from fedrec.federated import protocol
from fedrec.privacy.prior import add_popularity_noise
from fedrec.privacy.randomness import DPRandomness
from fedrec_app.server.strategy import error_reason, reply_order, stop_on_node_error, validate_arrays, wait_for_nodes

__all__ = ["collect_popularity", "wait_until_ready"]


def collect_popularity(grid: Grid, cfg: FedConfig, *, n_nodes: int, n_items: int) -> np.ndarray:
    """The DP popularity prior's release: the sum of every node's contribution plus the
    server's noise of std ``prior-noise`` (secret unless ``reproducible-noise``).  A node
    that fails or sends a malformed reply is left out (logged): its users are simply not in
    the sum, which the guarantee covers.  Raises ``ValueError`` when no node answers."""
    ids = wait_for_nodes(grid.get_node_ids, n_nodes)
    messages = [Message(content=RecordDict({"config": ConfigRecord({protocol.ANALYTICS: "popularity"})}),
                        dst_node_id=nid, message_type=MessageType.QUERY) for nid in ids]
    good = []
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    stop_on_node_error(cfg, replies, "the popularity prior")
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            log(logging.WARNING, "popularity prior: node %s failed: %s", node, error_reason(msg.error.reason))
            continue
        records = list(msg.content.array_records.values())
        arrays = {k: v.numpy() for k, v in records[0].items()} if len(records) == 1 else {}
        why = validate_arrays(arrays, {"popularity": (n_items,)})
        if why:
            log(logging.WARNING, "popularity prior: rejected the reply of node %s: %s", node, why)
            continue
        good.append(msg)
    if not good:
        raise ValueError("popularity prior: no node answered the query")
    total = np.zeros(n_items, dtype=np.float64)
    for msg in sorted(good, key=reply_order):  # a fixed order: the sum of floats depends on it
        total += next(iter(msg.content.array_records.values()))["popularity"].numpy().astype(np.float64)
    return add_popularity_noise(total, noise=cfg.prior_noise,
                                randomness=DPRandomness.of(cfg.reproducible_noise, cfg.seed, 21))


def wait_until_ready(grid: Grid, cfg: FedConfig, *, n_nodes: int) -> tuple[int, float]:
    """Ask every node to start and read its data (a readiness ``QUERY``), so that round 1's
    time is the round's, not the engine's start (Ray's actors, a deployment's first
    ClientApp process).  Returns (nodes that answered, seconds)."""
    import time

    t0 = time.perf_counter()
    ids = wait_for_nodes(grid.get_node_ids, n_nodes)
    messages = [Message(content=RecordDict({"config": ConfigRecord({protocol.READY: 1})}), dst_node_id=nid,
                        message_type=MessageType.QUERY) for nid in ids]
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    stop_on_node_error(cfg, replies, "the nodes' start")
    for msg in replies:
        if msg.has_error():
            log(logging.WARNING, "start: node %s failed: %s", msg.metadata.src_node_id, error_reason(msg.error.reason))
    return sum(not m.has_error() for m in replies), time.perf_counter() - t0
