"""Secure aggregation mode: fedrec on Flower's SecAgg+ (legacy NumPyClient/workflow stack).

In this mode the server sees only the **sum** of the nodes' updates, never one
node's update.  It uses Flower's own SecAgg+ as it is (``secaggplus_mod`` on the
client, :class:`flwr.server.workflow.SecAggPlusWorkflow` on the server).  fedrec
adds no cryptography of its own.  In flwr 1.41 SecAgg+ runs only on the legacy
stack, so this module has its own small legacy app and does not use the
message-API apps (``clients/app.py``, ``server/app.py``).

Usage::

    .venv/bin/python -m fedrec_app.server.secagg --data ml-100k --rounds 3

    from fedrec.config import FedConfig
    from fedrec_app.server.secagg import run_secagg, plain_aggregates
    out = run_secagg(FedConfig(data="ml-100k"), num_rounds=3)
    plain = plain_aggregates(FedConfig(data="ml-100k"), out)   # same rounds, no SecAgg

The pieces:

* **Client** (:class:`SecAggNodeClient`).  ``fit`` calls
  :func:`fedrec.node.train_round` for the node's partition.  It returns the
  node's mean update ``[item_embedding, item_bias(, item_counts)]`` in float64
  and ``num_examples`` = the users it trained.  The users' embeddings and DP
  steps stay in ``context.state`` on the node.
* **Protocol** (Flower).  Each node sends ``w_i * update_i``, with
  ``w_i = num_examples_i / max_weight``, clipped to ``[-C, C]``, stochastically
  quantised to integers in ``[0, Q]`` and masked.  Pairwise masks cancel in the
  sum, and the server removes the self-masks from shares of the other nodes.
  The server then divides the unmasked sum by ``sum_i w_i``, so the result is
  the **user-weighted mean** of the nodes' updates.  This is the same quantity
  that plain FedAvg computes.
* **Server** (:class:`SecAggFedRecStrategy`, a legacy ``FedAvg``).  Its
  ``aggregate_fit`` receives only that mean.  It applies item-wise scaling if
  configured, then fedrec's server optimiser
  (:func:`fedrec.optim.server_step`).  The result is the next global
  parameters.

Choice of ranges (``C`` = ``clipping_range``, ``Q`` = ``quantization_range``)
------------------------------------------------------------------------------
``max_weight`` is the largest cohort, so ``w_i <= 1``.  Without DP, one user's
release per item is a convex combination of sigmoid weights in ``[0, 1]``.  So
a node's bias update is at most 1 in absolute value, and its embedding update is
at most ``max |p_u|``, which is below 1 in practice (0.66 after 5 rounds on
ML-100K).  The observed node updates on ML-100K are much smaller: at most 0.01
without DP and at most 0.04 with noise multiplier 1 and sample rate 0.5 (median
about 1e-5).  The default ``C = 1.0`` therefore gives 25x or more headroom, so
no value is clipped in practice.  Flower clips silently; nodes count the values
they would clip and report the count as ``secagg-clipped``, and the run warns
when it is non-zero.  Raise ``C`` with DP on very small cohorts, where the noise
can be large.

``Q`` defaults to the largest power of two (capped at 2**30, the limit of
Flower's int32 rounding) with ``n_nodes * Q < modulus_range = 2**32``.  With
that, the sum of the quantised values cannot wrap around the modulus.  For
ML-100K (15 nodes) this gives ``Q = 2**28``.  Nodes send float64, because
float32 cannot resolve a quantisation step of ``2C/Q``.

Quantisation error bound.  Stochastic rounding moves each node's value by less
than one step of ``2C/Q``, and the weights are rounded to ``1/Q``.  For every
coordinate::

    |secagg - plain| <= N * C * (2 + 1/min_i w_i) / (Q * sum_i w_i)

Here ``N`` is the number of nodes in the round.  The bound holds when no value
is clipped.  With full cohorts it is about ``3C/Q``.  For ML-100K (15 nodes,
one of them with 47 users) it is 1.3e-8; the measured ``max |secagg - plain|``
is 3-4e-9 per round.  The error is zero-mean, because the rounding is
stochastic.  See :func:`quantization_bound`.

What the server sees, and the limits
------------------------------------
The server sees the sum: the weighted mean update of the round.  It also sees
each node's ``num_examples`` (its cohort size, which is public in fedrec) and
the nodes' scalar train metrics (loss, partition id, clip count, epsilon
summary).  With fedrec's server optimiser (Adam by default) it also keeps its
moments, as usual.  SecAgg+ is *not* differential privacy.  The aggregate can
still leak information about the users; combine it with fedrec's
interaction-level DP on the client (``noise_multiplier`` / ``target_epsilon``).
Other limits:

* SecAgg+ needs at least 2 nodes per round.
* It tolerates the drop-out of up to ``num_shares - threshold`` neighbours of a
  node.
* It assumes a semi-honest server: there is no verification of the inputs, and
  a node can send any vector within ``[-C, C]``.
* Flower derives its mask PRG seeds by XOR-folding to 32 bits
  (``numpy.random.RandomState``).  This is well below cryptographic strength:
  use it for research and simulation, not as a production security guarantee.
* With Adam, coordinates whose true update is ~0 get quantisation noise of
  order ``C/Q``.  Adam rescales that noise, unless ``server_eps`` is above the
  noise.
* Evaluation (on the final round only) reports per-node metric sums in the
  clear, as in the normal stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from flwr.client import NumPyClient
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from fedrec import node
from fedrec.config import FedConfig
from fedrec.federation import federated_model, load_federation
from fedrec.optim import OptState, server_step
from fedrec_app.clients.app import STATE_KEY, array_record, stored_state
from fedrec_app.server.strategy import itemwise_scale

__all__ = [
    "SecAggSettings",
    "SecAggNodeClient",
    "SecAggFedRecStrategy",
    "make_secagg_client_app",
    "make_secagg_server_app",
    "run_secagg",
    "plain_aggregates",
    "quantization_bound",
    "auto_quantization_range",
]

COUNTS_KEY = "item_counts"
MODULUS_RANGE = 2**32

log = logging.getLogger("fedrec.secagg")


@dataclass(frozen=True)
class SecAggSettings:
    """Parameters of Flower's SecAgg+ (see :class:`flwr.server.workflow.SecAggPlusWorkflow`).

    ``num_shares`` and ``reconstruction_threshold`` as floats are fractions: of
    the sampled nodes, and of the shares.  ``quantization_range=0`` picks
    :func:`auto_quantization_range`.  ``max_weight=0`` means the largest
    cohort.
    """

    num_shares: float | int = 1.0  # every sampled node is a neighbour (= SecAgg)
    reconstruction_threshold: float | int = 0.67  # > 1/2: honest-majority shares
    clipping_range: float = 1.0
    quantization_range: int = 0
    modulus_range: int = MODULUS_RANGE
    max_weight: float = 0.0
    timeout: float | None = None

    def resolved(self, n_nodes: int, max_cohort: int) -> "SecAggSettings":
        q = self.quantization_range or auto_quantization_range(n_nodes, self.modulus_range)
        w = self.max_weight or float(max_cohort)
        return SecAggSettings(self.num_shares, self.reconstruction_threshold, self.clipping_range, q,
                              self.modulus_range, w, self.timeout)


def auto_quantization_range(n_nodes: int, modulus_range: int = MODULUS_RANGE) -> int:
    """Largest power of two ``Q <= 2**30`` with ``n_nodes * Q < modulus_range``.

    Each node's quantised value lies in ``[0, Q]``. This condition keeps the sum
    of the ``n_nodes`` values from wrapping around the modulus.
    """
    k = int(math.log2(modulus_range)) - math.ceil(math.log2(max(n_nodes, 1) + 1))
    return 2 ** max(1, min(30, k))


def quantization_bound(num_examples, *, clipping_range: float, quantization_range: int, max_weight: float) -> float:
    """Worst-case ``|secagg - plain|`` per coordinate of the mean update of one round.

    ``num_examples``: the weights of the round's nodes.  The bound holds when
    no value was clipped (see the module docstring).
    """
    q = quantization_range
    w = np.array([round(n / max_weight * q) / q for n in num_examples])
    return float(len(w) * clipping_range * (2.0 + 1.0 / w.min()) / (q * w.sum()))


# --------------------------------------------------------------------------- client
def _update_list(update: dict[str, np.ndarray]) -> list[np.ndarray]:
    keys = list(update)  # the model's global parameters in its order (then item counts)
    # float64: float32 cannot resolve a quantisation step of 2C/Q (~1e-8)
    return [np.asarray(update[k], dtype=np.float64) for k in keys]


class SecAggNodeClient(NumPyClient):
    """A fedrec node on the legacy stack. Its users' state is kept in ``context.state``."""

    def __init__(self, context, run_config: dict | None = None):
        self.ctx = context
        rc = run_config if run_config is not None else dict(context.run_config)
        self.cfg, self.fed, self.partition = node.setup(rc, context.node_config)
        self.keys = list(federated_model(self.cfg, self.fed).global_shapes())

    def _params(self, parameters) -> dict[str, np.ndarray]:
        return {k: np.asarray(a, dtype=np.float32) for k, a in zip(self.keys, parameters)}

    def fit(self, parameters, config):
        state = node.load_state(stored_state(self.ctx), self.fed, self.partition, self.cfg)
        update, metrics, state = node.train_round(
            self.cfg, self.fed, self.partition, state,
            global_params=self._params(parameters), server_round=int(config["server-round"]),
        )
        self.ctx.state[STATE_KEY] = array_record(node.save_state(state))
        n = int(metrics["num-examples"])
        arrays = _update_list(update)
        # what SecAgg+ would clip: |w * x| > C with w = n / max_weight
        w = n / float(config["secagg-max-weight"])
        clip = float(config["secagg-clip"])
        clipped = int(sum(int((np.abs(w * a) > clip).sum()) for a in arrays))
        out = {"train-loss": float(metrics["train-loss"]), "partition-id": self.partition,
               "secagg-clipped": clipped}
        if "epsilon" in metrics:
            out["epsilon-max"] = float(max(metrics["epsilon"]))
        return arrays, n, out

    def evaluate(self, parameters, config):
        state = node.load_state(stored_state(self.ctx), self.fed, self.partition, self.cfg)
        m = node.evaluate_round(self.cfg, self.fed, self.partition, state, global_params=self._params(parameters))
        return 0.0, int(m.pop("num-examples")), m


def make_secagg_client_app(run_config: dict | None = None, *, secure: bool = True):
    """Legacy ClientApp (``client_fn`` + ``secaggplus_mod`` when ``secure``)."""
    from flwr.client import ClientApp
    from flwr.client.mod import secaggplus_mod

    def client_fn(context):
        return SecAggNodeClient(context, run_config).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if secure else [])


# --------------------------------------------------------------------------- server
class SecAggFedRecStrategy(FedAvg):
    """Legacy FedAvg whose mean (computed by SecAgg+ or in the clear) becomes a
    fedrec server-optimiser step.  It records, per round, the parameters it
    broadcast, the aggregate, the weights and partitions, and the timings."""

    def __init__(self, cfg: FedConfig, *, params0: dict[str, np.ndarray], n_nodes: int,
                 settings: SecAggSettings, num_rounds: int, evaluate: bool, record: dict,
                 item_tables: tuple[str, ...] = ()):
        super().__init__(
            fraction_fit=cfg.fraction_train,
            fraction_evaluate=1.0,
            min_fit_clients=min(2, n_nodes),
            min_evaluate_clients=n_nodes,
            min_available_clients=n_nodes,
            initial_parameters=ndarrays_to_parameters(list(params0.values())),
            on_fit_config_fn=self._fit_config,
            fit_metrics_aggregation_fn=self._fit_metrics,
            accept_failures=False,
        )
        self.cfg, self.settings, self.num_rounds, self.do_eval = cfg, settings, num_rounds, evaluate
        self.n_nodes = n_nodes
        self.current = {k: np.asarray(v, dtype=np.float32) for k, v in params0.items()}
        self.keys = list(params0)
        self.item_tables = set(item_tables)
        self.opt_state = OptState()
        self.rec = record
        for key in ("broadcast", "aggregates", "weights", "seconds", "train", "clipped"):
            record.setdefault(key, {})
        self._t0: dict[int, float] = {}

    def _fit_config(self, server_round: int) -> dict:
        return {"server-round": server_round, "secagg-clip": float(self.settings.clipping_range),
                "secagg-max-weight": float(self.settings.max_weight)}

    @staticmethod
    def _fit_metrics(pairs):
        users = sum(n for n, _ in pairs)
        out = {"train-loss": sum(n * m["train-loss"] for n, m in pairs) / max(users, 1),
               "users": float(users), "nodes": float(len(pairs)),
               "secagg-clipped": float(sum(m.get("secagg-clipped", 0) for _, m in pairs))}
        eps = [m["epsilon-max"] for _, m in pairs if "epsilon-max" in m]
        if eps:
            out["epsilon-max"] = float(max(eps))
        return out

    def num_fit_clients(self, num_available_clients: int) -> tuple[int, int]:
        # FedAvg sizes the sample from the nodes registered *so far*; in round 1 that
        # can be fewer than the federation.  Size it from the federation and wait for it.
        k = max(int(round(self.fraction_fit * self.n_nodes)), self.min_fit_clients)
        return k, self.n_nodes

    def configure_fit(self, server_round, parameters, client_manager):
        self._t0[server_round] = time.perf_counter()
        self.rec["broadcast"][server_round] = dict(zip(self.keys, parameters_to_ndarrays(parameters)))
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        if failures or not results:
            log.warning("round %d: %d failures, %d results; global parameters unchanged",
                        server_round, len(failures), len(results))
            return None, {}
        agg, metrics = super().aggregate_fit(server_round, results, failures)
        arrays = parameters_to_ndarrays(agg)
        keys = self.keys + ([COUNTS_KEY] if len(arrays) == len(self.keys) + 1 else [])
        mean = dict(zip(keys, arrays))
        self.rec["aggregates"][server_round] = mean
        self.rec["weights"][server_round] = {int(r.metrics["partition-id"]): int(r.num_examples) for _, r in results}
        self.rec["clipped"][server_round] = int(metrics.get("secagg-clipped", 0))
        if self.rec["clipped"][server_round]:
            log.warning("round %d: %d values outside the clipping range +-%g were clipped by SecAgg+",
                        server_round, self.rec["clipped"][server_round], self.settings.clipping_range)
        update = {k: mean[k] for k in self.keys}
        if self.cfg.aggregation == "itemwise":
            update = itemwise_scale(update, mean[COUNTS_KEY], self.item_tables)
        new, self.opt_state = server_step(
            self.current, update, self.opt_state, opt=self.cfg.server_opt, lr=self.cfg.server_lr,
            beta1=self.cfg.beta1, beta2=self.cfg.beta2, eps=self.cfg.server_eps,
        )
        self.current = {k: np.asarray(v, dtype=np.float32) for k, v in new.items()}
        self.rec["params"] = self.current
        self.rec["train"][server_round] = dict(metrics)
        self.rec["seconds"][server_round] = time.perf_counter() - self._t0[server_round]
        return ndarrays_to_parameters([self.current[k] for k in self.keys]), metrics

    def configure_evaluate(self, server_round, parameters, client_manager):
        if not self.do_eval or server_round != self.num_rounds:
            return []
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        sums: dict[str, float] = {}
        counts = {"valid": 0, "test": 0}
        for _, r in results:
            for stage in counts:
                counts[stage] += int(r.metrics.get(f"{stage}-count", 0))
            for k, v in r.metrics.items():
                if "/" in k:
                    sums[k] = sums.get(k, 0.0) + float(v)
        out = {k: v / max(1, counts[k.split("/")[0]]) for k, v in sums.items()}
        self.rec["eval"] = out
        return None, out


def make_secagg_server_app(cfg: FedConfig, *, num_rounds: int, settings: SecAggSettings, secure: bool = True,
                           evaluate: bool = False, record: dict | None = None):
    """Legacy ServerApp: ``DefaultWorkflow`` with ``SecAggPlusWorkflow`` as fit workflow
    (``secure=False``: Flower's default, plain fit workflow)."""
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    fed = load_federation(cfg)
    model = federated_model(cfg, fed)
    s = settings.resolved(fed.n_nodes, max(len(c) for c in fed.cohorts))
    rec = record if record is not None else {}
    rec["settings"] = asdict(s)
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        strategy = SecAggFedRecStrategy(cfg, params0=model.global_params(), n_nodes=fed.n_nodes, settings=s,
                                        num_rounds=num_rounds, evaluate=evaluate, record=rec,
                                        item_tables=model.item_tables)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds), strategy=strategy)
        fit_workflow = None
        if secure:
            fit_workflow = SecAggPlusWorkflow(
                num_shares=s.num_shares,
                reconstruction_threshold=s.reconstruction_threshold,
                max_weight=s.max_weight,
                clipping_range=s.clipping_range,
                quantization_range=s.quantization_range,
                modulus_range=s.modulus_range,
                timeout=s.timeout,
            )
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    return app


# --------------------------------------------------------------------------- runs
def run_secagg(cfg: FedConfig, *, num_rounds: int | None = None, settings: SecAggSettings | None = None,
               secure: bool = True, evaluate: bool = False, num_cpus: int | None = None,
               verbose: bool = False) -> dict:
    """Run ``num_rounds`` rounds on Flower's simulation engine, one SuperNode per cohort.

    Returns a dict with ``params`` (final global parameters); ``aggregates``
    ({round: {key: mean update}}, the only thing the server sees of the
    updates); ``broadcast`` ({round: parameters sent}); ``weights`` ({round:
    {partition: num_examples}}); ``seconds`` (per round, from configure to
    server step); ``train`` (aggregated train metrics); ``clipped``;
    ``settings`` (resolved SecAgg+ parameters); ``bounds`` ({round: quantisation
    error bound}); ``eval`` (final-round metrics if ``evaluate``).
    """
    from flwr.simulation import run_simulation

    from fedrec.flower_compat import backend_config

    cfg = cfg.resolved()
    num_rounds = num_rounds or cfg.num_server_rounds
    fed = load_federation(cfg)
    if secure and fed.n_nodes < 2:
        raise ValueError(f"SecAgg+ needs at least 2 nodes; {cfg.data!r} with users-per-node={cfg.users_per_node} "
                         f"gives {fed.n_nodes}")
    settings = settings or SecAggSettings()
    record: dict = {}
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    backend = backend_config(num_cpus)
    backend["init_args"]["log_to_driver"] = verbose  # secaggplus_mod logs every stage at DEBUG
    t0 = time.perf_counter()
    run_simulation(
        server_app=make_secagg_server_app(cfg, num_rounds=num_rounds, settings=settings, secure=secure,
                                          evaluate=evaluate, record=record),
        client_app=make_secagg_client_app(cfg.to_run_config(), secure=secure),
        num_supernodes=fed.n_nodes,
        backend_config=backend,
        verbose_logging=verbose,
    )
    record["wall_seconds"] = time.perf_counter() - t0
    if len(record.get("aggregates", {})) != num_rounds:
        raise RuntimeError(f"the run aggregated {len(record.get('aggregates', {}))} of {num_rounds} rounds "
                           "(see the log above)")
    s = record["settings"]
    record["secure"] = secure
    record["bounds"] = {
        r: quantization_bound(list(w.values()), clipping_range=s["clipping_range"],
                              quantization_range=s["quantization_range"], max_weight=s["max_weight"])
        for r, w in record["weights"].items()
    }
    return record


def plain_aggregates(cfg: FedConfig, run: dict) -> dict[int, dict[str, np.ndarray]]:
    """The plain user-weighted mean of the nodes' updates for every round of ``run``.

    Replays :func:`fedrec.node.train_round` in this process for the partitions
    that took part, with the parameters the server broadcast in that round.
    ``train_round`` is deterministic given (seed, round, partition, state,
    parameters), so this is the aggregate that plain FedAvg would have computed
    for the same round.
    """
    cfg = cfg.resolved()
    fed = load_federation(cfg)
    states: dict[int, node.NodeState] = {}
    out = {}
    for r in sorted(run["aggregates"]):
        params = {k: np.asarray(v, dtype=np.float32) for k, v in run["broadcast"][r].items()}
        total, acc = 0, None
        for p in sorted(run["weights"][r]):
            st = states.get(p) or node.load_state({}, fed, p, cfg)
            update, metrics, states[p] = node.train_round(cfg, fed, p, st, global_params=params, server_round=r)
            n = int(metrics["num-examples"])
            arrs = {k: n * np.asarray(v, dtype=np.float64) for k, v in update.items()}
            acc = arrs if acc is None else {k: acc[k] + arrs[k] for k in acc}
            total += n
        out[r] = {k: v / total for k, v in acc.items()}
    return out


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64)).max()) for k in a)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fedrec_app.server.secagg",
        description="Federated MF with Flower's SecAgg+ (the server sees only the sum of the node updates); "
                    "compares each round's aggregate with the plain weighted mean.",
    )
    p.add_argument("--data", default="ml-100k", help="dataset (as for `fedrec simulate --data`)")
    p.add_argument("--rounds", type=int, default=3, help="server rounds")
    p.add_argument("--users-per-node", type=int, default=FedConfig.users_per_node, help="users per node (cohort)")
    p.add_argument("--dim", type=int, default=FedConfig.dim)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="interaction-level DP on the nodes")
    p.add_argument("--sample-rate", type=float, default=1.0)
    p.add_argument("--clipping-range", type=float, default=SecAggSettings.clipping_range)
    p.add_argument("--quantization-range", type=int, default=0, help="0: automatic (see module doc)")
    p.add_argument("--num-shares", type=float, default=SecAggSettings.num_shares,
                   help="<=1: fraction of the sampled nodes; >1: a number (int)")
    p.add_argument("--threshold", type=float, default=SecAggSettings.reconstruction_threshold,
                   help="<=1: fraction of the shares; >1: a number (int)")
    p.add_argument("--no-compare", action="store_true", help="skip the plain replay")
    p.add_argument("--evaluate", action="store_true", help="evaluate after the last round")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--json", default="", help="write the summary to this file")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silence Ray's FutureWarning (CPU only)

    def num(x: float):
        return int(x) if x > 1 else float(x)

    cfg = FedConfig(data=a.data, users_per_node=a.users_per_node, dim=a.dim, seed=a.seed,
                    num_server_rounds=a.rounds, noise_multiplier=a.noise_multiplier, sample_rate=a.sample_rate)
    settings = SecAggSettings(num_shares=num(a.num_shares), reconstruction_threshold=num(a.threshold),
                              clipping_range=a.clipping_range, quantization_range=a.quantization_range)
    run = run_secagg(cfg, num_rounds=a.rounds, settings=settings, evaluate=a.evaluate, num_cpus=a.num_cpus,
                     verbose=a.verbose)
    plain = {} if a.no_compare else plain_aggregates(cfg, run)
    s = run["settings"]
    print(f"SecAgg+ on {a.data}: {len(load_federation(cfg).cohorts)} nodes, clipping_range={s['clipping_range']}, "
          f"quantization_range=2**{math.log2(s['quantization_range']):g}, max_weight={s['max_weight']:g}, "
          f"num_shares={s['num_shares']}, threshold={s['reconstruction_threshold']}")
    rows = []
    for r in sorted(run["aggregates"]):
        row = {"round": r, "seconds": run["seconds"][r], "bound": run["bounds"][r], "clipped": run["clipped"][r],
               "max_abs_aggregate": max(float(np.abs(v).max()) for v in run["aggregates"][r].values()),
               "train_loss": run["train"][r].get("train-loss")}
        if plain:
            row["max_abs_error"] = max_abs_diff(plain[r], run["aggregates"][r])
        rows.append(row)
        print("round {round}: {seconds:.2f}s  max|agg|={max_abs_aggregate:.3g}  ".format(**row)
              + (f"max|secagg-plain|={row['max_abs_error']:.3g}  " if plain else "")
              + "bound={bound:.3g}  clipped={clipped}  train-loss={train_loss:.4f}".format(**row))
    secs = [run["seconds"][r] for r in sorted(run["seconds"])]
    steady = secs[1:] or secs  # round 1 includes the start of the simulation's actors
    print(f"{np.mean(steady):.2f} s/round (mean of rounds {'2' if len(secs) > 1 else '1'}-{len(secs)}); "
          f"wall {run['wall_seconds']:.1f}s incl. start-up")
    if run.get("eval"):
        print("final:", {k: round(v, 4) for k, v in run["eval"].items() if k in ("valid/ndcg@10", "valid/hr@10")})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"settings": s, "rounds": rows, "eval": run.get("eval", {})}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
