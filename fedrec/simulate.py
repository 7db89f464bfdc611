"""Run a federated experiment on Flower's simulation engine from Python."""

from __future__ import annotations

import logging
import os

from fedrec.config import FedConfig
from fedrec.federation import load_federation

__all__ = ["simulate", "backend_config"]


def backend_config(num_cpus: int | None = None) -> dict:
    """Ray backend: one CPU (and one torch thread) per ClientApp actor."""
    n = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n, "include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True},
    }


def simulate(cfg: FedConfig, *, num_cpus: int | None = None, verbose: bool = False) -> dict:
    """Run ``cfg`` through ``flwr.simulation.run_simulation``; returns the run summary.

    The config reaches both apps explicitly (``run_simulation`` does not read
    ``[tool.flwr.app.config]``); the number of SuperNodes is the number of user
    cohorts (users / users-per-node).
    """
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from server.app import make_server_app

    cfg = cfg.resolved()
    fed = load_federation(cfg)
    if cfg.resume and cfg.out:
        from pathlib import Path

        from server.checkpoint import load_checkpoint

        if (Path(cfg.out) / "checkpoint" / "checkpoint.npz").exists():
            load_checkpoint(Path(cfg.out) / "checkpoint", cfg)  # a corrupt/incompatible checkpoint fails here, clearly
    rc = cfg.to_run_config()
    results: list = []
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=make_server_app(rc, results),
        client_app=make_client_app(rc),
        num_supernodes=fed.n_nodes,
        backend_config=backend_config(num_cpus),
        verbose_logging=verbose,
    )
    if not results:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    return results[0]
