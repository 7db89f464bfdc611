"""Run a federated experiment on Flower's simulation engine from Python."""

from __future__ import annotations

import contextlib
import logging
import os

from fedrec.config import FedConfig
from fedrec.federation import load_federation

__all__ = ["simulate", "backend_config", "reuse_ray", "GRID_PULL_INTERVAL"]

#: Seconds between the ServerApp's polls for replies.  Flower's InMemoryGrid
#: defaults to 0.1 s, a fixed latency per round that dominates fast rounds; its
#: ``pull_interval`` parameter is set to this instead.
GRID_PULL_INTERVAL = 0.01


@contextlib.contextmanager
def _fast_grid_polling():
    import importlib

    rs = importlib.import_module("flwr.simulation.run_simulation")

    base = rs.InMemoryGrid

    class _Grid(base):  # the same grid, polling more often
        def __init__(self, *a, **k):
            k.setdefault("pull_interval", GRID_PULL_INTERVAL)
            super().__init__(*a, **k)

    rs.InMemoryGrid = _Grid
    try:
        yield
    finally:
        rs.InMemoryGrid = base



@contextlib.contextmanager
def reuse_ray():
    """Keep Ray running between the simulations of a sweep (Flower shuts it down
    after every run; starting it again costs seconds per run).  Ray is shut
    down when the process exits."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    real = raybackend.ray.shutdown
    raybackend.ray.shutdown = lambda *a, **k: None
    try:
        yield
    finally:
        raybackend.ray.shutdown = real


def backend_config(num_cpus: int | None = None, ray_address: str | None = None) -> dict:
    """Ray backend: one CPU (and one torch thread) per ClientApp actor.

    ``ray_address`` (e.g. ``"auto"`` or ``"HEAD_IP:6379"``) connects to a running
    multi-machine Ray cluster instead of starting a local one; actors are then
    spread over every machine's CPUs (see ``docs/ray-cluster.md``).
    """
    if ray_address:
        return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"address": ray_address, "logging_level": logging.ERROR, "log_to_driver": True}}
    n = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": n, "include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True},
    }


def simulate(cfg: FedConfig, *, num_cpus: int | None = None, verbose: bool = False,
             ray_address: str | None = None) -> dict:
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
    with _fast_grid_polling():
        run_simulation(
            server_app=make_server_app(rc, results),
            client_app=make_client_app(rc),
            num_supernodes=fed.n_nodes,
            backend_config=backend_config(num_cpus, ray_address),
            verbose_logging=verbose,
        )
    if not results:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    return results[0]
