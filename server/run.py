"""The server's run: rounds, per-round log and progress, checkpoint, final report."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import json
import shutil

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedrec.config import FedConfig, nested_run_config
from fedrec.federated.federation import federated_model, load_federation, load_plan
from fedrec.federated.optim import OptState
from fedrec.privacy.mechanisms import PrivateALS, UserLevel
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.federated.protocol import trained_items_config
from fedrec.federated.algorithms import check_run
from fedrec.privacy.ledger import ledger_entries, warm_start_problem
from fedrec.privacy.prior import head_from_release, prior_from_release
from fedrec.privacy.randomness import noise_statement
from fedrec.results import append_round, write_json, write_metrics
from fedrec_app.server.checkpoint import load_checkpoint, save_checkpoint
from fedrec_app.server.strategy import FedRecStrategy

__all__ = ["run_server", "RunLog", "EarlyStop"]


class EarlyStop(Exception):
    """Raised by :class:`RunLog` when validation has not improved for ``patience`` evaluations."""


def _say(msg: str) -> None:
    print(f"[fedrec {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class RunLog:
    """Collects per-round rows, prints progress, tracks the best round on validation,
    checkpoints.  ``server`` is the composed strategy (:class:`FedRecStrategy`, or the
    SecAgg+ one): its ``record``, ``offset``, ``optimizer.state`` and ``user_dp`` are read."""

    def __init__(self, cfg: FedConfig, server):
        self.cfg, self.server = cfg, server
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.since_best = 0  # evaluations since the best one
        self.stopped_early = False
        self.out = Path(cfg.out) if cfg.out else None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self.earlier_ledger: list | None = None  # a warm start's checkpoint's ledger
        self.unaccounted = False  # a warm start from an unaccounted history: every epsilon is infinite
        self.max_steps = 0  # the most DP-SGD steps any user took so far
        self.head: np.ndarray | None = None  # DP-FEST's trained items (kept in the checkpoint)
        self.start_seconds: float | None = None  # the nodes' start, timed apart from round 1

    def _checkpoint(self, **kwargs) -> None:
        """Write a checkpoint on a background thread, so the next round does not wait for
        the disk (a few ms per round: a fifth of a DP round on ML-100K).  One write at a
        time, in round order: the previous one is finished (and its error raised) first.
        A server killed meanwhile leaves the previous complete checkpoint, at most one
        round older; resuming from it repeats that round exactly (nodes keep their last
        three rounds' state, and the log is cut back to the checkpoint's round)."""
        self.flush()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedrec-checkpoint")
        self._pending = self._writer.submit(save_checkpoint, **kwargs)

    def flush(self) -> None:
        """Wait for the checkpoint being written (raising its error, if any)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the last checkpoint and stop the writer thread."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn`` hook: called after every round (and before round 1)."""
        if server_round == 0:
            return None
        server_round += self.server.offset
        record = self.server.record
        now = time.perf_counter()
        res = record.train.get(server_round)
        ev = record.evaluation.get(server_round)
        row = {"round": server_round, "seconds": round(now - self.last, 4), "elapsed": round(now - self.t0, 3)}
        row.update(record.round_info.get(server_round, {}))
        if res:
            row.update({k: v for k, v in res.items()})
        if self.cfg.dp:  # steps taken by the user who took the most, for the ledger (an upper bound)
            self.max_steps += steps_per_round(self.cfg) if res else 0
        if self.cfg.user_level and getattr(self.server, "ddp", None) is not None:
            # distributed DP: every round is one Poisson-subsampled release of the users' noised
            # sum (unmasked or not: a round left masked is counted too)
            row["user-epsilon"] = self.server.ddp.epsilon(server_round)
        elif self.cfg.user_level:
            # user-level epsilon: every round is one step of the Poisson-subsampled
            # Gaussian mechanism on the sum of clipped user updates, for every user
            # (after a warm start from a run at another noise: its rounds composed as they ran)
            row["user-epsilon"] = UserLevel.from_config(self.cfg).epsilon(server_round,
                                                                            getattr(self.server, "user_earlier", ()))
        if self.cfg.als_private:  # the counts (round 1), then one release per pass
            row["user-epsilon"] = PrivateALS.from_config(self.cfg).epsilon(server_round)
        if self.unaccounted:  # continued from rounds no accountant covers
            for key in ("user-epsilon", "epsilon-min", "epsilon-median", "epsilon-max"):
                if key in row:
                    row[key] = float("inf")
        if ev:
            row.update({k: v for k, v in ev.items()})
        self.last = now
        self.rows.append(row)
        sel = f"valid/{self.cfg.select_metric}"
        loss = (f"loss {row['train-loss']:.4f}" if "train-loss" in row
                else ("ALS" if self.cfg.als else "loss not released (DP)"))
        msg = f"round {server_round}/{self.cfg.num_server_rounds} {row['seconds']:.2f}s {loss}"
        if "users" in row:  # not under user-level DP: who took part is what user sampling keeps secret
            msg += f" users {int(row['users'])}"
        if "epsilon-max" in row:
            msg += (f" eps(interaction-level, delta={self.cfg.delta:g}) median {row['epsilon-median']:.2f} "
                    f"max {row['epsilon-max']:.2f}")
        if "user-epsilon" in row:
            msg += f" eps(user-level, delta={self.cfg.delta:g}) {row['user-epsilon']:.2f}"
        for key in ("failed", "rejected", "missing", "declined"):
            if row.get(key):
                msg += f" {key} {int(row[key])}"
        if row.get("skipped"):
            msg += " (too few replies: parameters unchanged)"
        if ev:
            # a window split has no validation: the model is the last evaluated round's (no selection)
            no_validation = self.cfg.split.startswith("window:")
            if not no_validation:
                # test only at the end
                msg += f" | valid ndcg@10 {ev['valid/ndcg@10']:.4f} hr@10 {ev['valid/hr@10']:.4f}"
            if self.best is None or no_validation or ev[sel] > self.best[sel]:
                self.since_best = 0
                self.best = dict(row)
                if self.out:  # the selected model, as nodes see it (for cold-start studies and devices)
                    np.savez(self.out / "best_params.tmp.npz", round=server_round,
                             **{k: v.numpy() for k, v in arrays.items()})
                    (self.out / "best_params.tmp.npz").replace(self.out / "best_params.npz")
            else:
                self.since_best += 1
        _say(msg)
        if self.out:
            append_round(self.out, row)
            user_dp = self.server.user_dp
            extra = {"user_clip": user_dp.clipping_norm} if user_dp is not None else {}
            extra["since_best"] = self.since_best
            if self.cfg.user_dp in ("client", "server"):
                # the rounds so far as (noise, rate, rounds) segments: a warm start composes them
                extra["user_segments"] = UserLevel.from_config(self.cfg).segments(
                    server_round, getattr(self.server, "user_earlier", ()))
            extra["ledger"] = ledger_entries(self.cfg, server_round, earlier=self.earlier_ledger,
                                             max_steps=self.max_steps, user_segments=extra.get("user_segments"))
            if self.unaccounted:  # a run that continues this one inherits the infinite epsilon
                extra["ledger"].append({"unit": "none", "rounds": 0})
            extra.update(earlier_ledger=self.earlier_ledger, unaccounted=self.unaccounted, max_steps=self.max_steps)
            if self.head is not None:  # DP-FEST's trained items: a resume keeps the one release
                extra["trained_items"] = np.flatnonzero(self.head).tolist()
            # the optimiser's state is replaced, never changed in place, by each step (optim.server_step)
            self._checkpoint(directory=self.out / "checkpoint", cfg=self.cfg, server_round=server_round,
                             params={k: v.numpy() for k, v in arrays.items()}, opt_state=self.server.optimizer.state,
                             best=None if self.best is None else dict(self.best), extra=extra)
        if ev and self.cfg.patience and self.since_best >= self.cfg.patience:
            self.stopped_early = True
            raise EarlyStop(f"no better validation {self.cfg.select_metric} in {self.since_best} evaluations")
        return None


def _strategy(cfg: FedConfig, fed, model, shapes: dict, head: np.ndarray | None = None):
    """The composed server for ``cfg``: :class:`FedRecStrategy`, or with
    ``secure-aggregation`` the same pieces behind Flower's SecAgg+ workflow, or with
    ``als`` the ALS server (:class:`fedrec_app.server.als.ALSStrategy`).  ``head``
    (``train-head``): the items trained; every other row is frozen like a held-out
    item's, and the mask goes to the nodes with every message."""
    if cfg.als:
        from fedrec_app.server.als import ALSStrategy

        return ALSStrategy(cfg, n_nodes=fed.n_nodes, n_users=fed.n_users, n_items=shapes["item_embedding"][0],
                           dim=shapes["item_embedding"][1], cold_items=fed.split.cold_items)
    frozen = fed.split.cold_items if head is None else np.union1d(fed.split.cold_items, np.flatnonzero(~head))
    if not cfg.secure_aggregation:
        strategy = FedRecStrategy(cfg, shapes=shapes, n_nodes=fed.n_nodes, n_users=fed.n_users,
                                  item_tables=model.item_tables, cold_items=frozen)
    else:
        from fedrec_app.server.secure import SecureAggregation, check_nodes

        check_nodes(fed.n_nodes, cfg.users_per_node)
        strategy = SecureAggregation(cfg, shapes=shapes, n_nodes=fed.n_nodes,
                                     max_weight=max(len(c) for c in fed.cohorts), item_tables=model.item_tables,
                                     cold_items=frozen, stop=EarlyStop, n_users=fed.n_users)
    strategy.record.message_config = trained_items_config(head)
    return strategy


def _run_secure(grid: Grid, context, cfg: FedConfig, strategy, params: dict, num_rounds: int) -> None:
    """The rounds through Flower's legacy workflow with SecAgg+ as its fit workflow."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow

    from fedrec_app.server.secure import secagg_workflow

    strategy.initial = params
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=num_rounds, round_timeout=cfg.round_timeout),
                           strategy=strategy)
    DefaultWorkflow(fit_workflow=secagg_workflow(cfg, n_nodes=strategy.n_nodes, max_weight=strategy.max_weight))(
        grid, legacy)
    if strategy.stopped:
        raise EarlyStop(strategy.stopped)


def _warm_start(cfg: FedConfig, strategy, params: dict[str, np.ndarray],
                log: "RunLog") -> tuple[dict[str, np.ndarray], int]:
    """Global parameters, server-optimiser state and round of the checkpoint
    ``cfg.warm_start`` (an earlier run of the same model, e.g. the previous window of a
    stream).  The rounds count on from the checkpoint's, as after a resume: sampling
    and the accountant see one sequence of rounds across both runs.

    The checkpoint's privacy ledger (:mod:`fedrec.privacy.ledger`) is composed into this
    run's epsilon; a checkpoint without one, with non-private rounds or under another
    mechanism is refused, unless ``warm-start-unaccounted`` (then every epsilon the run
    reports is infinite)."""
    ck_dir = Path(cfg.warm_start)
    try:
        ck = load_checkpoint(ck_dir, cfg, same_config=False)
    except FileNotFoundError:
        raise ValueError(f"warm-start {ck_dir}: no checkpoint.npz there (a run directory's checkpoint/)") from None
    ledger = ck.get("extra", {}).get("ledger")
    problem = warm_start_problem(ledger, cfg)
    if problem:
        if not cfg.warm_start_unaccounted:
            raise ValueError(f"warm-start {ck_dir}: {problem}; pass --warm-start-unaccounted to continue it with an "
                             "infinite epsilon")
        log.unaccounted = True
        _say(f"warm start from {ck_dir}: {problem}; every epsilon of this run is reported as infinite")
    log.earlier_ledger = ledger
    theirs = {k: v.shape for k, v in ck["param"].items()}
    ours = {k: v.shape for k, v in params.items()}
    if theirs != ours:
        raise ValueError(f"warm-start {ck_dir}: its parameters {theirs} are not this model's {ours}")
    if int(ck["round"]) >= cfg.num_server_rounds:
        raise ValueError(f"warm-start {ck_dir}: the checkpoint is at round {ck['round']}; num-server-rounds "
                         f"({cfg.num_server_rounds}) must be larger (rounds count on from the checkpoint's)")
    params, start = _restore(ck, strategy)
    _say(f"warm start from {ck_dir}: rounds {start + 1}-{cfg.num_server_rounds} follow its round {start}")
    return params, start


def _kept_checkpoint(cfg: FedConfig) -> dict | None:
    """The checkpoint a ``--resume`` continues (``None``: the run starts from round 1)."""
    ck_dir = Path(cfg.out) / "checkpoint" if cfg.out else None
    if not (cfg.resume and ck_dir is not None and (ck_dir / "checkpoint.npz").exists()):
        return None
    return load_checkpoint(ck_dir, cfg)


def _restore(ck: dict, strategy) -> tuple[dict[str, np.ndarray], int]:
    """Put a checkpoint's server-optimiser state, round offset and user-level clip into
    ``strategy``; returns its global parameters and round (a resume and a warm start)."""
    start = int(ck["round"])
    strategy.optimizer.state = OptState(m=ck["m"], v=ck["v"], t=int(ck["opt_t"]))
    strategy.offset = start
    # the checkpoint's rounds as they ran (a checkpoint written before segments were recorded:
    # none, i.e. all rounds at this run's noise, as that run's accountant assumed)
    strategy.user_earlier = tuple(tuple(x) for x in ck.get("extra", {}).get("user_segments", ()))
    if strategy.user_dp is not None and "user_clip" in ck.get("extra", {}):
        strategy.user_dp.clipping_norm = float(ck["extra"]["user_clip"])
    return {k: v.astype(np.float32) for k, v in ck["param"].items()}, start


def run_server(grid: Grid, cfg: FedConfig, context=None, *, plan: "str | Path | None" = None) -> dict:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``; write the run directory.

    With ``cfg.resume`` and a checkpoint in ``OUT/checkpoint`` the run continues
    after the checkpoint's round (parameters, optimiser state, best round and
    the per-round log as they were then); a checkpoint of another configuration
    or a corrupt one is an error (:class:`server.checkpoint.CheckpointError`).
    ``context`` (the ServerApp's) is needed with ``secure-aggregation``.

    ``plan`` (or the config's ``federation-plan``): the federation plan written with the
    node files (:func:`fedrec.federated.federation.write_plan`); the server then never opens the
    interactions, as in a deployment.  Without one (a Ray cluster's simulation) the
    server derives the same public view from the dataset.
    """
    # the counts, then one round per pass, as FedConfig.resolved sets them (here too for an unresolved config)
    if cfg.als:
        cfg = resolved(cfg)
    check_run(cfg)  # `flwr run` and a deployment reach the server without fedrec's driver
    plan = plan or cfg.federation_plan
    if plan:
        fed, item_popularity = load_plan(plan)
        about = {"dataset": {"name": fed.dataset.name, "users": fed.dataset.n_users, "items": fed.dataset.n_items,
                             "source": "federation plan: the server holds no interactions"},
                 "split": {"kind": fed.split.kind, "cold_users": int(len(fed.split.cold_users)),
                           "cold_items": int(len(fed.split.cold_items)), "counts": "held by the nodes"}}
    else:
        fed = load_federation(cfg)
        item_popularity = np.asarray(fed.split.train.sum(axis=0)).ravel().astype(np.float64)
        about = {"dataset": fed.dataset.summary(), "split": fed.split.summary()}
    model = federated_model(cfg, fed)
    params = model.global_params()
    # the popularity prior's one release, collected from the nodes (federated analytics; the
    # server's secret noise): the prior and DP-FEST's head derive from it; a resumed run reads
    # the head from its checkpoint instead of releasing again
    kept = _kept_checkpoint(cfg)
    release = None
    if cfg.prior_noise > 0 and kept is None:
        from fedrec_app.server.analytics import collect_popularity

        release = collect_popularity(grid, cfg, n_nodes=fed.n_nodes, n_items=model.n_items)
    head = None
    if cfg.train_head > 0:  # DP-FEST: train only the items the prior's release ranks highest
        if release is None:
            items = (kept or {}).get("extra", {}).get("trained_items")
            if items is None:
                raise ValueError(f"resume {cfg.out}: the checkpoint does not hold DP-FEST's trained items; start over")
            head = np.zeros(fed.dataset.n_items, dtype=bool)
            head[np.asarray(items, dtype=np.int64)] = True
        else:
            head = head_from_release(release, cfg.train_head, exclude=fed.split.cold_items)
    strategy = _strategy(cfg, fed, model, {k: v.shape for k, v in params.items()}, head)
    log = RunLog(cfg, strategy)
    log.head = head
    # novelty and ARP of the evaluation: the server's own measurement from the nodes' top-10 counts
    strategy.record.item_popularity = item_popularity  # None in a deployment: no novelty or ARP
    strategy.record.n_users = fed.split.n_users
    if cfg.secure_aggregation:
        strategy.on_round = log
    start = 0
    if log.out:
        log.out.mkdir(parents=True, exist_ok=True)
        ck_dir = log.out / "checkpoint"
        if kept is not None:  # --resume with a checkpoint in OUT/checkpoint
            params, start = _restore(kept, strategy)
            extra = kept.get("extra", {})
            log.earlier_ledger = extra.get("earlier_ledger")
            log.max_steps = int(extra.get("max_steps", 0))
            log.unaccounted = bool(extra.get("unaccounted", False))
            log.best = kept["best"]
            log.since_best = int(extra.get("since_best", 0))
            log.rows = _rows_up_to(log.out, start)
            _say(f"resuming after round {start} from {ck_dir}")
        else:
            if cfg.resume:
                _say(f"--resume: no checkpoint in {ck_dir}; starting from round 1")
            for name in ("rounds.csv", "rounds.jsonl"):
                (log.out / name).unlink(missing_ok=True)
            shutil.rmtree(ck_dir, ignore_errors=True)
            if not cfg.state_dir:
                shutil.rmtree(log.out / "client-state", ignore_errors=True)  # this run's nodes start fresh
        write_json(log.out / "config.json", {"run_config": nested_run_config(cfg.to_run_config()), **about,
                                             "nodes": fed.n_nodes})
    if cfg.warm_start and start == 0:
        params, start = _warm_start(cfg, strategy, params, log)
    if head is not None and start == 0:  # the frozen rows start (and stay) at zero: the prior ranks them
        for t in model.table_names():
            params[t][~head] = 0.0
    if release is not None and start == 0:
        params = model.with_item_prior(params, prior_from_release(release))
    privacy = []
    if cfg.dp:
        privacy.append(f"interaction-level DP noise {cfg.noise_multiplier:.3f} clip {cfg.max_grad_norm} "
                       f"q {cfg.sample_rate}")
    if cfg.secure_aggregation:
        privacy.append(f"SecAgg+ (the server sees only each round's sum; clip {cfg.secagg_clip})")
    if cfg.user_dp == "distributed":
        ddp = strategy.ddp
        privacy.append(f"user-level {ddp.name} (each user clips to {cfg.user_clip} and adds a {cfg.ddp_noise} "
                       f"share; noise {ddp.noise_multiplier:.3f} on the sum of at least {ddp.min_users} shares, "
                       f"{ddp.bits} bits per coordinate) user sample rate {cfg.user_sample_rate}")
    elif cfg.user_level:
        privacy.append(f"user-level DP ({cfg.user_dp} clipping) noise {cfg.user_noise_multiplier:.3f} "
                       f"clip {cfg.user_clip} user sample rate {cfg.user_sample_rate}")
    if cfg.als:
        privacy.append(f"ALS, {cfg.als_passes} passes" + (
            f", DP noise {cfg.als_noise_multiplier:.3f} ({cfg.als_unit} target) cap {cfg.als_cap} (counts) / "
            f"{cfg.als_pass_cap} (passes) clip {cfg.als_clip}"
            if cfg.als_private else " (no DP)"))
    algorithm = "" if cfg.algorithm == "auto" else f"algorithm {cfg.algorithm}, "
    _say(f"{fed.dataset.name}: {fed.dataset.n_users} users on {fed.n_nodes} nodes, "
         f"{fed.dataset.n_items} items, {cfg.num_server_rounds} rounds, {algorithm}" + ("; ".join(privacy) or "no DP"))
    if start < cfg.num_server_rounds and not (cfg.patience and log.since_best >= cfg.patience):
        from fedrec_app.server.analytics import wait_until_ready

        ready, log.start_seconds = wait_until_ready(grid, cfg, n_nodes=fed.n_nodes)
        _say(f"{ready} nodes started and read their data in {log.start_seconds:.1f}s")
        log.last = time.perf_counter()  # round 1's time is the round's
        try:
            if cfg.secure_aggregation:
                _run_secure(grid, context, cfg, strategy, params, cfg.num_server_rounds - start)
            else:
                strategy.start(
                    grid=grid,
                    initial_arrays=ArrayRecord({k: Array(v) for k, v in params.items()}),
                    num_rounds=cfg.num_server_rounds - start,
                    timeout=cfg.round_timeout,
                    evaluate_fn=log,
                )
        except EarlyStop as e:
            _say(f"stopped early after round {log.rows[-1]['round']}: {e}")
        finally:
            log.close()  # the last round's checkpoint is on disk before the run returns
    summary = summarize(cfg, log)
    if cfg.eval_every == 0:
        _say(f"evaluation off: the model is round {log.rows[-1]['round'] if log.rows else 0}'s "
             f"(checkpoint/); {summary['seconds']:.1f}s")
        return summary
    _say(f"best round on validation: {summary['selected_round']}; "
         f"test ndcg@10 {summary['test'].get('ndcg@10', float('nan')):.4f} "
         f"hr@10 {summary['test'].get('hr@10', float('nan')):.4f}; {summary['seconds']:.1f}s")
    return summary


def _rows_up_to(out: Path, last_round: int) -> list[dict]:
    """The logged rows of rounds <= ``last_round``; the log files are cut back to them."""
    path = out / "rounds.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    rows = [r for r in rows if r["round"] <= last_round]
    for name in ("rounds.csv", "rounds.jsonl"):
        (out / name).unlink(missing_ok=True)
    for r in rows:
        append_round(out, r)
    return rows


def summarize(cfg: FedConfig, log: RunLog) -> dict:
    best = log.best or {}
    valid = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("valid/")}
    test = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("test/")}
    # test metrics of user-activity groups and of held-out / other items, at the selected round
    slices: dict[str, dict] = {}
    for k, v in best.items():
        if k.startswith("test@") and "/" in k:
            name, metric = k[len("test@"):].split("/", 1)
            slices.setdefault(name, {})[metric] = v
    for k, v in best.items():
        if k.startswith("test@") and k.endswith("-users"):
            slices.setdefault(k[len("test@"):-len("-users")], {})["users"] = v
    slices = {k: v for k, v in slices.items() if v.get("users", 0) > 0}
    privacy = None
    last = log.rows[-1] if log.rows else {}
    units = []
    if cfg.dp:
        units.append({
            "unit": "interaction-level",
            "protects": "each single interaction (user, item) of a user",
            "mechanism": "DP-SGD per user (Poisson sampling, per-interaction clipping: one sample is one interaction "
                         "with its negatives, Gaussian noise added on the device)",
            "normaliser": f"sample-rate x interaction-cap = {cfg.sample_rate * cfg.interaction_cap:g} (public)",
            "holds_against": "the server, other users and anyone who sees the model",
            "accountant": "opacus rdp",
            "noise_multiplier": cfg.noise_multiplier,
            "max_grad_norm": cfg.max_grad_norm,
            "sample_rate": cfg.sample_rate,
            "delta": cfg.delta,
            "epsilon_median": last.get("epsilon-median"),
            "epsilon_max": last.get("epsilon-max"),
            "epsilon_min": last.get("epsilon-min"),
            "budget_epsilon": cfg.budget_epsilon or None,
            "popularity_prior_noise": cfg.prior_noise or None,
            "note": "epsilon after all rounds (the model of the selected round was released earlier, at no more)",
        })
    ddp = getattr(log.server, "ddp", None)
    if cfg.user_level and ddp is not None:
        units.append({
            "unit": "user-level",
            "protects": ddp.protects,
            "mechanism": f"{ddp.name}: each user clips its update, rotates, rounds and adds a {ddp.noise} share "
                         "on its device; SecAgg+ releases only the sum in the field, which the server decodes",
            "holds_against": ddp.against + f" (semi-honest, as long as at least {ddp.min_users} users' shares are "
                             "in each sum: a round with fewer is not unmasked)",
            "accountant": ("Skellam RDP (Agarwal et al. 2021, Thm 3.5" if ddp.noise == "skellam" else
                           "distributed discrete Gaussian RDP (Kairouz et al. 2021, Prop. 14") +
                          "; Poisson user sampling, Zhu & Wang 2019 Thm 6), opacus conversion",
            **{k: v for k, v in ddp.to_dict().items() if k not in ("unit", "mechanism")},
            "rounds": last.get("round"),
            "epsilon": last.get("user-epsilon"),
            "note": "every round counts, including rounds not unmasked",
        })
    elif cfg.user_level:
        units.append({
            "unit": "user-level",
            "protects": "everything one user contributes (all of its interactions, every round)",
            "mechanism": f"DP-FedAvg: per-user update clipping ({cfg.user_dp}), Gaussian noise on the sum "
                         "before the server optimiser",
            "holds_against": "other users and anyone who sees the model, not the server (it sees each node's "
                             "clipped update before it adds the noise)",
            "accountant": "opacus rdp (Poisson user sampling)",
            "noise_multiplier": cfg.user_noise_multiplier,
            "clip": cfg.user_clip,
            "sample_rate": cfg.user_sample_rate,
            "rounds": last.get("round"),
            "delta": cfg.delta,
            "epsilon": last.get("user-epsilon"),
            "earlier_segments": [list(x) for x in getattr(log.server, "user_earlier", ())] or None,
            "popularity_prior_noise": cfg.prior_noise or None,
            "note": "every round counts, including rounds whose replies were partly lost: noise is calibrated to "
                    "the clip, not to who replied",
        })
    if cfg.als_private:
        units.append({
            "unit": "user-level",
            "protects": "everything one user contributes (all of its interactions, every round)",
            "mechanism": "private ALS: capped item counts once, then per pass the per-item sums of clipped user "
                         "vectors over capped head items and their Gram matrix, Gaussian noise added by the server "
                         "to the sums",
            "holds_against": "other users and anyone who sees the model, not the server (it sees each node's "
                             "un-noised sums before it adds the noise)",
            "accountant": "opacus rdp (every user in every release)",
            "noise_multiplier": cfg.als_noise_multiplier,
            "cap": cfg.als_cap,
            "pass_cap": cfg.als_pass_cap,
            "clip": cfg.als_clip,
            "passes": cfg.als_passes,
            "delta": cfg.delta,
            "epsilon": PrivateALS.from_config(cfg).epsilon(),
            "interaction_epsilon": PrivateALS.from_config(cfg).interaction_epsilon(),
            "note": "the number of users is treated as public (the denominator of the per-item Gram estimate); "
                    "interaction_epsilon: one interaction added or removed, computed from the sensitivities "
                    "(larger than the user-level epsilon: one interaction can turn the user's whole vector)",
        })
    for u in units:
        said = noise_statement(cfg.reproducible_noise)
        u["noise"] = said["noise"]
        if cfg.reproducible_noise:  # derived from the seed in config.json: it protects from no one who reads it
            u["holds_against"] = said["holds_against"]
        if log.unaccounted:
            for key in ("epsilon", "epsilon_median", "epsilon_max", "epsilon_min", "interaction_epsilon"):
                if u.get(key) is not None:
                    u[key] = float("inf")
            u["unaccounted"] = "warm start from a history no accountant covers (--warm-start-unaccounted)"
        u["not_covered"] = ("nothing: evaluation was off" if cfg.eval_every == 0 else
                            "evaluation replies: exact metric sums of each node's users on their held-out items, "
                            f"every {cfg.eval_every} rounds (a simulation's measurement; not noised)")
    if units:
        privacy = units[0] if len(units) == 1 else {"units": units}
    out = {
        "selected_round": best.get("round"),
        "valid": valid,
        "test": test,
        "seconds": time.perf_counter() - log.t0,
        "rejected": len(log.server.record.rejected),
        "failed": int(sum(r.get("failed", 0) for r in log.rows)),
        "declined": int(sum(r.get("declined", 0) for r in log.rows)),
        "privacy": privacy,
        "stopped_early": log.stopped_early,
    }
    if cfg.out:
        write_metrics(cfg.out, validation=valid, test=test, config=nested_run_config(cfg.to_run_config()),
                      seed=cfg.seed, privacy=privacy,
                      extra={"selected": {"round": best.get("round"), "on": f"valid {cfg.select_metric}"},
                             "seconds": out["seconds"], "start_seconds": log.start_seconds,
                             "rounds": len(log.rows),
                             "rejected_replies": out["rejected"], "failed_replies": out["failed"],
                             "declined_user_rounds": out["declined"], "test_slices": slices,
                             "stopped_early": log.stopped_early})
        if cfg.mlflow:  # the finished run, logged where the researcher tracks experiments
            from fedrec.tracking import log_run

            out["mlflow_run_id"] = log_run(cfg.out, tracking_uri=cfg.mlflow, experiment=cfg.mlflow_experiment)
            _say(f"logged to MLflow {cfg.mlflow} (experiment {cfg.mlflow_experiment!r}, run {out['mlflow_run_id']})")
        if cfg.tensorboard:
            from fedrec.tracking import log_tensorboard

            out["tensorboard_dir"] = str(log_tensorboard(cfg.out, cfg.tensorboard))
            _say(f"TensorBoard scalars in {out['tensorboard_dir']}")
    return out
