"""Private ALS on the node (:mod:`fedrec.als`): user-level DP by sufficient statistics; the
server (``fedrec_app.server.als``) adds the noise and solves the item table."""

from __future__ import annotations

import numpy as np

from fedrec.federated import protocol
from fedrec.federated.algorithms.base import StatisticsAlgorithm
from fedrec.federated.state import LocalState

__all__ = ["ALS"]


class ALS(StatisticsAlgorithm):
    """Round 1 releases the sum of the users' capped item indicators (``counts``); every
    later round solves each user's vector exactly from the item table it received and all
    of the user's training items (kept on the node, never released), clips it to
    ``als-clip`` and releases the sums ``b`` (per item, over the users' capped head items:
    at most ``als-pass-cap`` of the items the server trains, read from the received item
    biases) and ``K`` (the Gram matrix of the clipped vectors).  Its mechanism is its own
    (``FedConfig.als_*``); the units of DP-SGD and DP-FedAvg are refused with it."""

    name = "als"

    def problem(self, cfg, model_class):
        return None if cfg.als else "private ALS is turned on by --als (its settings are in the als section)"

    def round(self, cfg, fed, partition, state, *, global_params, server_round):
        from fedrec import als

        train, users = fed.split.train, state.users
        local = {n: v.copy() for n, v in state.local.items()}
        if server_round <= 1:
            update = {"counts": als.count_statistics(train, users, cap=cfg.als_cap, seed=cfg.seed)}
        else:
            U = _solve_users(cfg, fed, users, global_params)
            local["user"] = U.astype(np.float32)
            b, K = als.pass_statistics(als.clip_rows(U, cfg.als_clip), train, users, cap=cfg.als_pass_cap,
                                       seed=cfg.seed, head=als.head_of(global_params["item_bias"]))
            update = {"b": b, "K": K}
        new = LocalState(users, local, state.dp_steps.copy(), state.rounds + 1)
        metrics = {protocol.NUM_EXAMPLES: int(len(users)), protocol.DECLINED: 0}
        return {n: v.astype(np.float64) for n, v in update.items()}, metrics, new

    def evaluation_state(self, cfg, fed, state, global_params):
        """Each user's exact solve from the item table evaluated (on the device, never released)."""
        U = _solve_users(cfg, fed, state.users, global_params)
        return LocalState(state.users, {"user": U.astype(np.float32)}, state.dp_steps, state.rounds)


def _solve_users(cfg, fed, users: np.ndarray, global_params: dict[str, np.ndarray]) -> np.ndarray:
    """Each user's exact ALS solve from the item table received and all of its training items."""
    from fedrec.als import user_vectors

    return user_vectors(global_params["item_embedding"], fed.split.train, users, alpha=cfg.als_alpha,
                        reg_user=cfg.als_user_reg)
