"""Every use of Flower internals, in one version-guarded module.

fedrec runs on Flower's public API except for its entry to the simulation engine
and two speed patches of it, kept here so that a Flower upgrade breaks one module, loudly:

- :func:`run_engine`: Flower's simulation engine, entered where ``flwr run`` enters it.
  For a simulation federation ``flwr run`` starts Flower's simulation runtime
  (``flwr-simulation``), which calls ``flwr.simulation.run_simulation._run_simulation``;
  the Python wrapper ``flwr.simulation.run_simulation`` is deprecated.  fedrec's own
  commands call the same function in their process, so that Ctrl-C, the run's summary
  and the patches below stay in their hands (``flwr run .`` runs the same apps through a
  SuperLink, see ``docs/guides/federated-training.md``).

- :func:`fast_grid_polling`: two fixed waits of 0.1 s per round dominate fast
  rounds: ``run_simulation``'s ``InMemoryGrid`` polls for replies every 0.1 s,
  and the engine's dispatch loop (``vce_api.add_messages_to_queue``) scans for
  new messages every 0.1 s.  Within the block each is woken by the other side
  instead: the grid's push wakes the dispatch loop, a stored reply wakes the
  grid (Flower's loops otherwise, with :data:`GRID_PULL_INTERVAL` as the longest
  wait).
- :func:`reuse_ray`: Flower shuts Ray down after every simulation; a sweep of
  many runs keeps it up (starting it costs seconds per run).

All three were written against :data:`TESTED_FLOWER` (``flwr==1.41.*``).  On another
version the patches do nothing (the run is correct, only slower) and the engine is
entered through the public ``run_simulation``; each says so once.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
import warnings
from queue import Empty

__all__ = ["GRID_PULL_INTERVAL", "WORKER_NICENESS", "INLINE_OBJECT_BYTES", "WORKER_MALLOC_ENV", "TESTED_FLOWER",
           "backend_config", "run_engine", "fast_grid_polling", "worker_heap_env", "environment", "reuse_ray",
           "patches_supported", "RunStopped", "stop_waiting", "STOP"]

#: Set to make the ServerApp's waits for replies end at once (:func:`stop_waiting`): an
#: interrupted simulation's server thread leaves its round instead of waiting out the timeout.
STOP = threading.Event()


class RunStopped(RuntimeError):
    """Raised in the ServerApp's thread when the run was interrupted while it waited for replies."""


def stop_waiting() -> None:
    """End the ServerApp's current and future waits for replies (the run was interrupted)."""
    STOP.set()

#: Longest wait of the ServerApp's polls for replies and the engine's scans for new messages (Flower: 0.1);
#: within :func:`fast_grid_polling` both are woken as soon as there is something to take.
GRID_PULL_INTERVAL = 0.01
#: Niceness of a local Ray's workers (Ray's default 15 starves them on a shared machine).
WORKER_NICENESS = 0
#: Largest argument or result a local Ray passes inline with the call instead of through its shared-memory
#: object store (Ray's ``max_direct_call_object_size``, default 100 KiB). Flower ships each node's message
#: (the global parameters: 428 KB for ML-100K's MF, about 1 MB for ML-1M's) as one argument and its reply
#: as one result; through the object store a no-op actor call with ML-100K's message took 28-32 ms on a
#: loaded 2-core machine, inline 12-14 ms; from about 1.5 MB up the object store is faster again.
INLINE_OBJECT_BYTES = 1 << 20
#: glibc heap settings a local Ray's workers start with (:func:`worker_heap_env`): blocks under
#: 32 MiB come from the heap and up to 64 MiB of free heap is kept, the ceilings glibc's own
#: adaptive thresholds reach in a large run. In a small run they stayed low, and an actor
#: handed its freed pages back to the OS and faulted them in again every round (ML-100K, 2
#: nodes: about 1,400 page faults per round against 9; a DP node round took 27 ms of CPU in
#: the actor against 19-21 ms called directly). Lower settings cost the large run: 4 and 16
#: MiB made a 138k-user round 10.3 s against 6.7 s, 32 and 16 MiB still left 200 faults a
#: round at ML-100K.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}
#: The Flower release line the patches were written and tested against.
TESTED_FLOWER = "1.41"


def patches_supported() -> bool:
    """Whether the installed Flower is the release line the patches were tested on."""
    from importlib.metadata import version

    return version("flwr").startswith(TESTED_FLOWER + ".")


def _skip(what: str) -> None:
    from importlib.metadata import version

    warnings.warn(f"fedrec: {what} is written for flwr {TESTED_FLOWER}.* and flwr {version('flwr')} is installed: "
                  "left out (runs are correct, only slower)", RuntimeWarning, stacklevel=3)


def run_engine(*, server_app, client_app, num_supernodes: int, backend_config: dict,
               verbose: bool = False) -> None:
    """Run ``server_app`` with ``num_supernodes`` nodes of ``client_app`` on Flower's simulation
    engine (Ray backend) in this process, entered as Flower's simulation runtime enters it for
    ``flwr run`` (``_run_simulation``); the ServerApp runs in a thread of this process.

    On a Flower other than :data:`TESTED_FLOWER` the public, deprecated ``run_simulation``
    is called instead (same engine, with Flower's deprecation banner).
    """
    if not patches_supported():
        _skip("entering the engine as `flwr run` does")
        from flwr.simulation import run_simulation

        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_supernodes,
                       backend_config=backend_config, verbose_logging=verbose)
        return
    from flwr.supercore.telemetry import EventType

    rs = importlib.import_module("flwr.simulation.run_simulation")
    rs._run_simulation(num_supernodes=num_supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                       client_app=client_app, server_app=server_app, backend_name="ray",
                       backend_config=backend_config, verbose_logging=verbose)


@contextlib.contextmanager
def fast_grid_polling():
    """Within the block, ``run_simulation``'s grid and the engine's dispatch loop wake each
    other (a push, a stored reply) instead of polling; none waits longer than
    :data:`GRID_PULL_INTERVAL` s.  With 10 ms polls a round paid about 10 ms of
    waiting (two polls, half an interval each on average)."""
    if not patches_supported():
        _skip("fast grid polling")
        yield
        return
    rs = importlib.import_module("flwr.simulation.run_simulation")
    base = rs.InMemoryGrid
    pushed, replied = threading.Event(), threading.Event()

    class _Grid(base):  # the same grid: it wakes the dispatch loop when it pushes, and is woken by replies
        def __init__(self, *a, **k):
            k.setdefault("pull_interval", GRID_PULL_INTERVAL)
            super().__init__(*a, **k)

        def push_messages(self, messages):
            ids = list(super().push_messages(messages))
            pushed.set()
            return ids

        def send_and_receive(self, messages, *, timeout=None):
            # Flower's loop (push, then pull until every reply is in or the timeout passes) with
            # its sleep replaced by a wait that a stored reply ends at once
            msg_ids = set(self.push_messages(messages))
            end_time = time.time() + (timeout if timeout is not None else 0.0)
            ret = []
            while timeout is None or time.time() < end_time:
                if STOP.is_set():
                    raise RunStopped("the run was interrupted")
                replied.clear()
                res_msgs = self.pull_messages(msg_ids)
                ret.extend(res_msgs)
                msg_ids.difference_update({m.metadata.reply_to_message_id for m in res_msgs})
                if not msg_ids:
                    break
                replied.wait(self.pull_interval)
            return ret

    vce = importlib.import_module("flwr.server.superlink.fleet.vce.vce_api")
    dispatch, store = vce.add_messages_to_queue, vce.put_message_into_state

    def _dispatch(state, queue, nodes_mapping, f_stop):
        # Flower's loop (each node's next message into the queue), woken by the grid's push
        # instead of scanning every 0.1 s; GRID_PULL_INTERVAL bounds a wait all the same
        while not f_stop.is_set():
            pushed.clear()
            found = False
            for node_id in nodes_mapping.keys():
                for msg in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(msg)
                    found = True
            if not found:
                pushed.wait(GRID_PULL_INTERVAL)

    def _store(state, queue, f_stop):  # Flower's loop; a stored reply wakes the grid
        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(reply)
            replied.set()

    rs.InMemoryGrid, vce.add_messages_to_queue, vce.put_message_into_state = _Grid, _dispatch, _store
    try:
        yield
    finally:
        rs.InMemoryGrid, vce.add_messages_to_queue, vce.put_message_into_state = base, dispatch, store


@contextlib.contextmanager
def environment(values: dict[str, str], *, keep_set: bool = False):
    """Environment variables ``values`` within the block (``keep_set``: a value the user
    already set is kept); the environment is restored after."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if keep_set:
            os.environ.setdefault(k, v)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker_heap_env():
    """Within the block, processes this one starts (a local Ray's workers, which inherit its
    environment) get :data:`WORKER_MALLOC_ENV`; a value the user set is kept. This process's
    own heap is not changed (glibc reads them at start); the environment is restored after."""
    return environment(WORKER_MALLOC_ENV, keep_set=True)


@contextlib.contextmanager
def reuse_ray():
    """Keep Ray running between the simulations of a sweep; Ray stops when the process exits."""
    if not patches_supported():
        _skip("keeping Ray up between runs")
        yield
        return
    from flwr.server.superlink.fleet.vce.backend import raybackend

    real = raybackend.ray.shutdown
    raybackend.ray.shutdown = lambda *a, **k: None
    try:
        yield
    finally:
        raybackend.ray.shutdown = real


def backend_config(num_cpus: int | None = None, ray_address: str | None = None, gpus: int = 0,
                   nodes: int | None = None) -> dict:
    """Ray backend: one CPU (and one torch thread) per ClientApp actor.

    ``nodes`` (the run's SuperNodes): with fewer nodes than CPUs (``num_cpus``, default
    every CPU), each actor asks Ray for ``num_cpus // nodes`` CPUs, so that Flower starts
    about one actor per node instead of one per CPU. A node's round runs in one actor
    call, so an actor beyond the number of nodes never works; each one still holds
    torch and Flower (about 170 MiB idle, more with a CUDA context): on a 16-core
    machine, 14 idle actors of a 2-node run held 2.4 GiB. Each actor still computes
    with one torch thread (results do not depend on the machine's core count).

    ``gpus`` (> 0, ``device=cuda``): the actors share that many GPUs, an equal fraction
    each, so that Ray makes the GPUs visible to them.

    A local Ray starts its workers at niceness 0 (Ray's ``worker_niceness``; Ray's
    default, 15, gives the actors that do a simulation's work about 1/30 of a core
    against any ordinary process on a shared machine: an ML-1M round went from 1.9 s to
    55 s beside two busy loops on 2 cores).

    A local Ray passes messages of up to :data:`INLINE_OBJECT_BYTES` with the actor call
    rather than through its object store (a DP round of ML-100K through Flower: 63-64 ms
    -> 43-48 ms on a loaded machine, alternating runs).

    ``ray_address`` (e.g. ``"auto"`` or ``"HEAD_IP:6379"``) connects to a running
    multi-machine Ray cluster instead of starting a local one; actors are then
    spread over every machine's CPUs (see ``docs/ray-cluster.md``; start its nodes with
    ``RAY_worker_niceness=0`` for the same fair share).
    """
    n = num_cpus or os.cpu_count() or 1
    per_actor = 1
    if nodes is not None and not ray_address:
        # Flower starts n // per_actor actors (between nodes and 2 x nodes - 1 when there are
        # fewer nodes than CPUs); Ray itself keeps all n CPUs, so that a Ray kept up between
        # the runs of a sweep (reuse_ray) serves a later run of more nodes all the same
        per_actor = max(1, n // max(1, nodes))
    actors = n // per_actor
    share = min(1.0, gpus / actors) if gpus > 0 else 0.0  # the actors share the GPUs equally
    if ray_address:
        return {"client_resources": {"num_cpus": 1, "num_gpus": share},
                "init_args": {"address": ray_address, "logging_level": logging.ERROR, "log_to_driver": True}}
    init = {"num_cpus": n, "include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True,
            "_system_config": {"worker_niceness": WORKER_NICENESS, "max_direct_call_object_size": INLINE_OBJECT_BYTES}}
    if gpus > 0:
        init["num_gpus"] = gpus
    return {"client_resources": {"num_cpus": per_actor, "num_gpus": share}, "init_args": init}
