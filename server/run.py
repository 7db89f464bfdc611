"""The server's run: rounds, per-round log and progress, checkpoint, final report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedrec.config import FedConfig
from fedrec.federation import init_global_params, load_federation
from fedrec.results import append_round, write_json, write_metrics
from server.checkpoint import save_checkpoint
from server.strategy import FedRecStrategy

__all__ = ["run_server", "RunLog"]


def _say(msg: str) -> None:
    print(f"[fedrec {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class RunLog:
    """Collects per-round rows, prints progress, tracks the best round on validation."""

    def __init__(self, cfg: FedConfig, strategy: FedRecStrategy):
        self.cfg, self.strategy = cfg, strategy
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.rows: list[dict] = []
        self.best: dict | None = None
        self.out = Path(cfg.out) if cfg.out else None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn`` hook: called after every round (and before round 1)."""
        if server_round == 0:
            return None
        now = time.perf_counter()
        res = self.strategy.result_train.get(server_round)
        ev = self.strategy.result_eval.get(server_round)
        row = {"round": server_round, "seconds": round(now - self.last, 4), "elapsed": round(now - self.t0, 3)}
        row.update(self.strategy.round_info.get(server_round, {}))
        if res:
            row.update({k: v for k, v in res.items()})
        if ev:
            row.update({k: v for k, v in ev.items()})
        self.last = now
        self.rows.append(row)
        sel = f"valid/{self.cfg.select_metric}"
        msg = f"round {server_round}/{self.cfg.num_server_rounds} {row['seconds']:.2f}s loss {row.get('train-loss', float('nan')):.4f} users {int(row.get('users', 0))}"
        if "epsilon-max" in row:
            msg += f" eps(interaction-level, delta={self.cfg.delta:g}) median {row['epsilon-median']:.2f} max {row['epsilon-max']:.2f}"
        if row.get("rejected"):
            msg += f" rejected {row['rejected']}"
        if ev:
            msg += f" | valid ndcg@10 {ev['valid/ndcg@10']:.4f} hr@10 {ev['valid/hr@10']:.4f} | test ndcg@10 {ev['test/ndcg@10']:.4f}"
            if self.best is None or ev[sel] > self.best[sel]:
                self.best = dict(row)
        _say(msg)
        if self.out:
            append_round(self.out, row)
            save_checkpoint(self.out / "checkpoint", cfg=self.cfg, server_round=server_round,
                            params={k: v.numpy() for k, v in arrays.items()}, strategy=self.strategy,
                            best=self.best)
        return None


def run_server(grid: Grid, cfg: FedConfig) -> dict:
    """Run ``cfg.num_server_rounds`` rounds on ``grid``; write the run directory."""
    fed = load_federation(cfg)
    params = init_global_params(fed.dataset.n_items, cfg)
    strategy = FedRecStrategy(cfg, shapes={k: v.shape for k, v in params.items()}, n_nodes=fed.n_nodes, n_users=fed.n_users)
    log = RunLog(cfg, strategy)
    if log.out:
        log.out.mkdir(parents=True, exist_ok=True)
        write_json(log.out / "config.json", {"run_config": cfg.to_run_config(), "dataset": fed.dataset.summary(),
                                             "split": fed.split.summary(), "nodes": fed.n_nodes})
        for name in ("rounds.csv", "rounds.jsonl"):
            (log.out / name).unlink(missing_ok=True)
    _say(f"{fed.dataset.summary()['name']}: {fed.dataset.n_users} users on {fed.n_nodes} nodes, "
         f"{fed.dataset.n_items} items, {cfg.num_server_rounds} rounds"
         + (f", interaction-level DP noise {cfg.noise_multiplier:.3f} clip {cfg.max_grad_norm} q {cfg.sample_rate}" if cfg.dp else ", no DP"))
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in params.items()}),
        num_rounds=cfg.num_server_rounds,
        evaluate_fn=log,
    )
    summary = summarize(cfg, log)
    _say(f"best round on validation: {summary['selected_round']}; test ndcg@10 {summary['test'].get('ndcg@10', float('nan')):.4f} "
         f"hr@10 {summary['test'].get('hr@10', float('nan')):.4f}; {summary['seconds']:.1f}s")
    return summary


def summarize(cfg: FedConfig, log: RunLog) -> dict:
    best = log.best or {}
    valid = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("valid/")}
    test = {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("test/")}
    privacy = None
    if cfg.dp:
        last = log.rows[-1] if log.rows else {}
        privacy = {
            "unit": "interaction-level",
            "mechanism": "DP-SGD per user (Poisson sampling, per-pair clipping, Gaussian noise)",
            "accountant": "opacus rdp",
            "noise_multiplier": cfg.noise_multiplier,
            "max_grad_norm": cfg.max_grad_norm,
            "sample_rate": cfg.sample_rate,
            "delta": cfg.delta,
            "epsilon_median": last.get("epsilon-median"),
            "epsilon_max": last.get("epsilon-max"),
            "epsilon_min": last.get("epsilon-min"),
            "note": "epsilon after all rounds (the model of the selected round was released earlier, at no more)",
        }
    out = {
        "selected_round": best.get("round"),
        "valid": valid,
        "test": test,
        "seconds": time.perf_counter() - log.t0,
        "rejected": len(log.strategy.rejected),
    }
    if cfg.out:
        write_metrics(cfg.out, validation=valid, test=test, config=cfg.to_run_config(), seed=cfg.seed,
                      privacy=privacy, extra={"selected": {"round": best.get("round"), "on": f"valid {cfg.select_metric}"},
                                              "seconds": out["seconds"], "rounds": len(log.rows),
                                              "rejected_replies": out["rejected"]})
    return out
