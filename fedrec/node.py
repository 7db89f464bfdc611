"""What a node does, as functions of (config, data, node state, global parameters).

Used by the Flower ClientApp (``clients/app.py``) and callable directly (the
benchmarks compare the two).  A node hosts the cohort of users of its partition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.config import FedConfig
from fedrec.federation import Federation, init_user_embeddings, load_federation
from fedrec.metrics.evaluate import evaluate
from fedrec.privacy.accounting import epsilons_for_steps
from fedrec.training import train_cohort

__all__ = ["NodeState", "setup", "load_state", "save_state", "train_round", "evaluate_round", "to_arrays"]

STATE_KEY = "fedrec-users"


@dataclass
class NodeState:
    """Local state of the node's users: embeddings and DP steps taken (accountant)."""

    users: np.ndarray  # (k,) global user ids
    user_emb: np.ndarray  # (k, d) float32 — never sent
    dp_steps: np.ndarray  # (k,) int64 steps of the subsampled Gaussian mechanism
    rounds: np.ndarray  # (k,) rounds taken part in


def setup(run_config, node_config) -> tuple[FedConfig, Federation, int]:
    cfg = FedConfig.from_run_config(dict(run_config)).resolved()
    fed = load_federation(cfg)
    partition = int(node_config.get("partition-id", 0))
    n_part = int(node_config.get("num-partitions", fed.n_nodes))
    # a federation with another number of nodes than users-per-node implies
    # (e.g. `flwr run` with Flower's default connection) splits the users evenly
    fed = fed.with_nodes(n_part)
    return cfg, fed, partition


def load_state(record_dict, fed: Federation, partition: int, cfg: FedConfig) -> NodeState:
    users = fed.cohorts[partition]
    if STATE_KEY in record_dict:
        a = record_dict[STATE_KEY]
        return NodeState(
            users=a["users"].numpy(),
            user_emb=a["user_emb"].numpy(),
            dp_steps=a["dp_steps"].numpy(),
            rounds=a["rounds"].numpy(),
        )
    return NodeState(
        users=users,
        user_emb=init_user_embeddings(users, cfg),
        dp_steps=np.zeros(len(users), dtype=np.int64),
        rounds=np.zeros(len(users), dtype=np.int64),
    )


def save_state(record_dict, state: NodeState) -> None:
    from flwr.app import ArrayRecord

    record_dict[STATE_KEY] = ArrayRecord(to_arrays(state.__dict__))


def to_arrays(d: dict) -> dict:
    from flwr.app import Array

    return {k: Array(np.ascontiguousarray(v)) for k, v in d.items()}


def train_round(
    cfg: FedConfig,
    fed: Federation,
    partition: int,
    state: NodeState,
    *,
    global_params: dict[str, np.ndarray],
    server_round: int,
) -> tuple[dict[str, np.ndarray], dict, NodeState]:
    """Train the node's users for one round.

    Returns the node's release (mean over its users of their item
    pseudo-gradients; with item-wise aggregation also the fraction of users that
    touched each item row), its metrics (``num-examples`` = users trained, loss,
    and each user's interaction-level epsilon so far) and the new local state.
    """
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, server_round, partition, 3]).integers(2**62)))
    res = train_cohort(
        torch.as_tensor(state.user_emb),
        torch.as_tensor(global_params["item_embedding"]),
        torch.as_tensor(global_params["item_bias"]),
        fed.split.train,
        state.users,
        cfg.local,
        seed=cfg.seed,
        server_round=server_round,
        generator=gen,
    )
    steps = state.dp_steps + (cfg.steps_per_round if cfg.dp else 0)
    new = NodeState(state.users, res.user_emb.numpy().astype(np.float32), steps, state.rounds + 1)
    update = {
        "item_embedding": res.item_update.numpy().astype(np.float32),
        "item_bias": res.bias_update.numpy().astype(np.float32),
    }
    if cfg.aggregation == "itemwise":
        update["item_counts"] = (res.item_counts / res.n_users).astype(np.float32)
    metrics = {"num-examples": int(res.n_users), "train-loss": float(res.loss)}
    if cfg.dp:
        eps = epsilons_for_steps(steps, noise_multiplier=cfg.noise_multiplier, sample_rate=cfg.sample_rate, delta=cfg.delta)
        metrics["epsilon"] = [float(x) for x in eps]
    return update, metrics, new


def evaluate_round(
    cfg: FedConfig,
    fed: Federation,
    partition: int,
    state: NodeState,
    *,
    global_params: dict[str, np.ndarray],
) -> dict:
    """Full-ranking metrics of the node's users on validation and test, as sums.

    Keys ``valid/<metric>`` and ``test/<metric>`` hold sums over users;
    ``valid-count``/``test-count`` the number of users evaluated.  The server
    selects rounds on validation only.
    """
    q, b = global_params["item_embedding"], global_params["item_bias"]
    row = {int(u): j for j, u in enumerate(state.users.tolist())}
    emb = state.user_emb

    def score(users: np.ndarray) -> np.ndarray:
        return emb[[row[int(u)] for u in users]] @ q.T + b[None, :]

    out: dict = {"num-examples": int(len(state.users))}
    for stage in ("valid", "test"):
        r = evaluate(score, fed.split, stage=stage, users=state.users, ties=cfg.ties,
                     sampled_negatives=99, seed=cfg.seed)
        sums, count = r.sums()
        out[f"{stage}-count"] = int(count)
        for k, v in sums.items():
            out[f"{stage}/{k}"] = float(v)
    return out
