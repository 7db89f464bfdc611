"""Run a federated experiment on Flower's simulation engine from Python."""

from __future__ import annotations

import contextlib
import signal
import logging
from pathlib import Path

from fedrec.config import FedConfig
from fedrec.federated.algorithms import check_run
from fedrec.federated.federation import load_federation, write_node_data, write_plan
from fedrec.presets import apply_choice
from fedrec.privacy.calibration import resolved
from fedrec.flower_compat import (STOP, backend_config, environment, fast_grid_polling, run_engine, stop_waiting,
                                  worker_heap_env)
from fedrec.results import check_run_dir, lock_run_dir
from fedrec.scratch import scratch_dir
from fedrec_app.simulations.cli.signals import Interrupted

__all__ = ["simulate"]


class _DropNodeTracebacks(logging.Filter):
    """The engine's multi-screen tracebacks of a node's error (the server says it in one
    line: a node failed, and why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "/fleet/vce/" in record.pathname.replace("\\", "/"))


@contextlib.contextmanager
def _without_node_tracebacks():
    """Within the block, the engine's tracebacks of a node's error are not printed (fedrec
    names a failed node in one line; ``--verbose`` shows them)."""
    logger, drop = logging.getLogger("flwr"), _DropNodeTracebacks()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _stop_server(grace: float = 20.0) -> None:
    """After an interrupt or an error of the engine: the ServerApp's thread leaves its wait for
    replies (no round is logged for the abandoned one; the last complete checkpoint stays),
    Ray's local cluster is shut down, and the caller's ``with`` blocks remove the temporary
    node files."""
    import threading
    import time

    stop_waiting()
    deadline = time.monotonic() + grace
    for th in threading.enumerate():
        if th is not threading.current_thread() and not th.daemon:
            th.join(max(0.0, deadline - time.monotonic()))
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - shutting down what may already be gone
        pass


def simulate(cfg: FedConfig, *, num_cpus: int | None = None, verbose: bool = False,
             ray_address: str | None = None, overwrite: bool = False, attack=None, changed: dict | None = None,
             argv: list[str] | None = None, given: set[str] | None = None) -> dict:
    """Run ``cfg`` on Flower's simulation engine (:func:`fedrec.flower_compat.run_engine`, the
    entry ``flwr run`` uses); returns the run summary.

    The config reaches both apps explicitly (the engine does not read
    ``[tool.flwr.app.config]``); the number of SuperNodes is the number of user
    cohorts (users / users-per-node).  A run directory that holds a run is
    refused unless ``cfg.resume`` or ``overwrite``.

    As in a deployment, each node reads only its own users' data: the driver writes
    one file per node (:func:`fedrec.federated.federation.write_node_data`, in a temporary
    directory removed at the end) and no actor loads the dataset; the server reads
    the federation plan written with them (:func:`fedrec.federated.federation.write_plan`).  On a Ray cluster
    (``ray_address``) the actors load the dataset themselves (the same data on every
    machine, see ``docs/ray-cluster.md``).

    ``attack`` (:mod:`fedrec_app.simulations.attacks.poisoning`): ``attack.nodes`` more SuperNodes
    join, whose ClientApp the attack swaps (``make_client_app(malicious=...)``).

    The run directory records each invocation (``run.json``: the command line, versions,
    git commit, the data file and its SHA-256, and ``changed``, the recorded settings a
    resume changed; ``argv``, default ``sys.argv``) and the ids of the file (``id_map.json``).

    ``cfg.privacy_unit`` and ``cfg.epsilon`` (``--privacy``, ``--epsilon``): the mechanism
    and its preset are chosen for the data (:func:`fedrec.presets.apply_choice`; the
    fields in ``given`` keep their values, ``None``: those that differ from the defaults),
    said in one line and recorded in ``run.json``.
    """
    check_run_dir(cfg.out, resume=cfg.resume, overwrite=overwrite)
    with lock_run_dir(cfg.out):  # one process per run directory, taken before the data is read
        return _simulate(cfg, num_cpus=num_cpus, verbose=verbose, ray_address=ray_address, attack=attack,
                         changed=changed, argv=argv, given=given)


def _simulate(cfg: FedConfig, *, num_cpus, verbose, ray_address, attack, changed, argv, given) -> dict:
    from fedrec_app.clients.app import make_client_app
    from fedrec_app.server.app import make_server_app

    check_run(cfg)  # what the model or algorithm cannot run, refused before the data is read
    fed = load_federation(cfg)
    cfg, choice = apply_choice(cfg, fed.dataset.name, fed.dataset.n_users, given)  # --privacy UNIT --epsilon E
    if choice is not None:
        import time

        print(f"[fedrec {time.strftime('%H:%M:%S')}] privacy: {choice.line()}", flush=True)
    cfg = resolved(cfg)
    check_run(cfg)  # again: the chosen mechanism
    if attack is not None and attack.first_partition != fed.n_nodes:
        raise ValueError(f"the attack's sybils start at partition {attack.first_partition}, but the run has "
                         f"{fed.n_nodes} honest nodes")
    if cfg.secure_aggregation:
        from fedrec_app.server.secure import check_nodes

        check_nodes(fed.n_nodes, cfg.users_per_node)
    gpus = 0
    if cfg.device != "cpu":  # a GPU PyTorch does not see is refused before Ray starts
        from fedrec.federated.node import compute_device

        compute_device(cfg.device)
        import torch

        if cfg.device != "cuda":
            raise ValueError(f"device={cfg.device}: in a simulation Ray gives each actor its GPU "
                             f"(CUDA_VISIBLE_DEVICES); use device=cuda")
        gpus = torch.cuda.device_count()
    if cfg.warm_start and not (Path(cfg.warm_start) / "checkpoint.npz").is_file():  # before Ray starts
        raise ValueError(f"--warm-start {cfg.warm_start}: no checkpoint.npz there (a run directory's checkpoint/)")
    if cfg.resume and cfg.out:
        from fedrec_app.server.checkpoint import load_checkpoint

        if (Path(cfg.out) / "checkpoint" / "checkpoint.npz").exists():
            load_checkpoint(Path(cfg.out) / "checkpoint", cfg)  # a corrupt/incompatible checkpoint fails here, clearly
    rc = cfg.to_run_config()
    results: list = []
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if cfg.out:
        import sys

        from fedrec.results import data_record, record_invocation

        record_invocation(cfg.out, argv=argv or sys.argv, data=data_record(cfg.data), changed=changed,
                          choice=None if choice is None else {"unit": choice.unit, "epsilon": choice.epsilon,
                                                              "preset": choice.preset, "settings": choice.settings,
                                                              "evidence": choice.evidence, "row": choice.matched})
        fed.dataset.save_id_maps(cfg.out)  # results trace back to the file's ids
    with contextlib.ExitStack() as stack:
        node_data = plan = None
        if not ray_address:
            # the users' data: private (0700), removed on every exit path, SIGKILL included (fedrec.scratch)
            node_data = stack.enter_context(scratch_dir("fedrec-nodes-"))
            write_node_data(fed, node_data)
            # the server's public view: it reads no interactions (the training counts are the
            # simulation's measurement of novelty and ARP)
            plan = write_plan(fed, node_data, measurement=True)
            from fedrec.federated.node import trim_heap

            trim_heap()  # the files' working set goes back to the OS before the actors start
            stack.enter_context(worker_heap_env())  # the actors Ray starts keep their freed heap pages
        stack.enter_context(fast_grid_polling())
        # Ray's driver would install a C-level SIGTERM handler that aborts the process: SIGTERM
        # stays a clean stop (fedrec_app.simulations.cli.signals)
        # (and Ray's FutureWarning about accelerator variables is answered: actors without GPUs
        # keep the environment they have)
        stack.enter_context(environment({"RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1",
                                         "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}))
        if not verbose:
            stack.enter_context(_without_node_tracebacks())
        supernodes = fed.n_nodes + (attack.nodes if attack is not None else 0)
        STOP.clear()
        try:
            run_engine(
                server_app=make_server_app(rc, results, plan=plan),
                client_app=make_client_app(rc, node_data=node_data, malicious=attack),
                num_supernodes=supernodes,
                backend_config=backend_config(num_cpus, ray_address, gpus=gpus, nodes=supernodes),
                verbose=verbose,
            )
        except SystemExit as e:  # Ray's driver turns SIGTERM into sys.exit(15)
            _stop_server()
            if e.code == signal.SIGTERM:
                raise Interrupted(signal.SIGTERM) from None
            raise
        except BaseException:  # Ctrl-C or SIGTERM (fedrec_app.simulations.cli.signals), or an error of the engine:
            _stop_server()     # the ServerApp's thread must not outlive the run
            raise
    if not results:
        raise RuntimeError("the simulation ended without a result (see the log above)")
    return results[0]
