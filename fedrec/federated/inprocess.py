"""Federated rounds in this process, without Flower's transport.

Each node runs its round (:func:`fedrec.federated.node.train_round`), and the
server does what the composed strategy does with the replies of a run without a
server-side mechanism: the user-weighted mean of the nodes' mean updates (Flower's
FedAvg over ``num-examples``) and the optimiser's step
(:func:`fedrec.federated.optim.server_step`).  For studies that need the model and
the users' local state in memory (the leakage attacks), for benchmarks (the floor
Flower's engine is compared with) and for tests; a run through Flower is
``fedrec simulate``, and a test holds the two to the same parameters.

What only the server application implements is refused here in one line:
user-level DP (the noise on the sum is Flower's DP wrapper's), item-wise and robust
aggregation, the popularity prior and DP-FEST's trained head, node sampling and private ALS (its own server).

Example
-------
>>> from fedrec.config import FedConfig
>>> from fedrec.federated.federation import load_federation
>>> from fedrec.federated.inprocess import run_rounds
>>> cfg = FedConfig(data="synthetic:20x30:0", users_per_node=10, dim=4)
>>> run = run_rounds(cfg, load_federation(cfg), rounds=2)
>>> sorted(run.params), run.server_round
(['item_bias', 'item_embedding'], 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.config import FedConfig
from fedrec.federated import node, protocol
from fedrec.federated.federation import Federation, init_global_params
from fedrec.federated.optim import OptState, server_step
from fedrec.privacy.calibration import resolved

__all__ = ["InProcessRun", "in_process_problem", "mean_of_releases", "run_rounds"]


@dataclass
class InProcessRun:
    """The state of a run after :func:`run_rounds`: what the server holds (``params``,
    ``opt_state``) and what each node holds (``states``, one per partition)."""

    params: dict[str, np.ndarray]
    states: list[node.NodeState]
    opt_state: OptState = field(default_factory=OptState)
    server_round: int = 0

    def local(self, name: str, n_users: int) -> np.ndarray:
        """Local state ``name`` of every user, ``(n_users, ...)`` by global user id (users
        of no partition: zeros)."""
        first = self.states[0].local[name]
        out = np.zeros((n_users,) + first.shape[1:], dtype=first.dtype)
        for st in self.states:
            out[st.users] = st.local[name]
        return out


def in_process_problem(cfg: FedConfig) -> str | None:
    """Why ``cfg`` cannot run in process (one line), or ``None``."""
    if cfg.user_level:
        return "user-level DP noises the sum on the server (Flower's DP wrapper): run it with `fedrec simulate`"
    if cfg.als:
        return "private ALS has its own server: run it with `fedrec simulate`"
    if cfg.aggregation != "fedavg":
        return f"aggregation={cfg.aggregation} is the server application's: run it with `fedrec simulate`"
    if cfg.train_head > 0 or cfg.prior_noise > 0:
        return "the popularity prior (prior-noise, train-head) is released by the server: run it with `fedrec simulate`"
    if cfg.fraction_train < 1:
        return "fraction-train < 1 samples nodes on the server: run it with `fedrec simulate`"
    return None


def mean_of_releases(replies: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray] | None:
    """User-weighted mean of the nodes' mean updates ``(update, num-examples)``; ``None``
    when no user trained (the server then keeps its parameters)."""
    total = sum(n for _, n in replies)
    if total == 0:
        return None
    keys = next(u for u, n in replies if n).keys()
    return {k: sum(u[k].astype(np.float64) * n for u, n in replies if n) / total for k in keys}


def run_rounds(cfg: FedConfig, fed: Federation, *, rounds: int, start: InProcessRun | None = None) -> InProcessRun:
    """Run ``rounds`` rounds of ``cfg`` on ``fed`` in this process.

    Parameters
    ----------
    cfg : FedConfig
        The run's settings (target epsilons are calibrated as for a run).
    fed : Federation
        Data, split and the nodes' cohorts.
    rounds : int
        Rounds to run (>= 0).
    start : InProcessRun, optional
        Continue from this state (rounds are numbered on from its ``server_round``);
        default: the run's initial parameters and fresh local state.

    Returns
    -------
    InProcessRun
        Parameters, optimiser state, every node's state and the last round's number.
    """
    problem = in_process_problem(cfg)
    if problem:
        raise ValueError(problem)
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0; got {rounds}")
    cfg = resolved(cfg)
    if start is None:
        start = InProcessRun(params=init_global_params(cfg, fed),
                             states=[node.load_state({}, fed, p, cfg) for p in range(fed.n_nodes)])
    params, opt_state, states = start.params, start.opt_state, list(start.states)
    for r in range(start.server_round + 1, start.server_round + rounds + 1):
        replies = []
        for p in range(fed.n_nodes):
            update, metrics, states[p] = node.train_round(cfg, fed, p, states[p], global_params=params,
                                                          server_round=r)
            replies.append((update, int(metrics[protocol.NUM_EXAMPLES])))
        mean = mean_of_releases(replies)
        if mean is not None:
            params, opt_state = server_step(params, {k: mean[k] for k in params}, opt_state, opt=cfg.server_opt,
                                            lr=cfg.server_lr)
    return InProcessRun(params=params, states=states, opt_state=opt_state,
                        server_round=start.server_round + rounds)
