"""The version-guarded speed patches of Flower's simulation engine (fedrec/flower_compat.py)."""

import threading
import time
from queue import Queue

import pytest

from fedrec import flower_compat


class _State:
    """A LinkState stand-in that records when the dispatch loop scans it."""

    def __init__(self):
        self.scans = []

    def get_message_ins(self, node_id, limit):
        self.scans.append(time.perf_counter())
        return []


def _scans_in(seconds: float) -> int:
    from flwr.server.superlink.fleet.vce import vce_api

    state, stop = _State(), threading.Event()
    th = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, Queue(), {0: 0}, stop))
    th.start()
    time.sleep(seconds)
    stop.set()
    th.join(timeout=2)
    assert not th.is_alive()
    return len(state.scans)


@pytest.mark.skipif(not flower_compat.patches_supported(), reason="patches are for the tested Flower line")
def test_dispatch_loop_scans_every_pull_interval_inside_the_block_only():
    import importlib

    from flwr.server.superlink.fleet.vce import vce_api

    rs = importlib.import_module("flwr.simulation.run_simulation")  # the module, not its function

    original, grid = vce_api.add_messages_to_queue, rs.InMemoryGrid
    before = _scans_in(0.5)  # Flower's loop: one scan per 0.1 s
    with flower_compat.fast_grid_polling():
        assert vce_api.add_messages_to_queue is not original and rs.InMemoryGrid is not grid
        during = _scans_in(0.5)
    assert vce_api.add_messages_to_queue is original and rs.InMemoryGrid is grid
    assert before <= 7
    assert during >= 4 * before, (before, during)  # every GRID_PULL_INTERVAL = 0.01 s (noisy machine: >= 4x)


def test_local_ray_workers_run_at_ordinary_priority():
    """Ray nices its workers to 15 by default: on a shared machine the actors that do a
    simulation's work then get about 1/30 of a core against any ordinary process (an
    ML-1M round: 1.9 s alone, 55 s beside two busy loops).  fedrec's backend starts them at 0."""
    import os

    import ray

    args = flower_compat.backend_config(num_cpus=1)["init_args"]
    assert args["_system_config"]["worker_niceness"] == flower_compat.WORKER_NICENESS == 0
    # and messages of up to 1 MiB (an ML-1M item table) pass inline with the call, not through the object store
    assert args["_system_config"]["max_direct_call_object_size"] == flower_compat.INLINE_OBJECT_BYTES == 2**20
    started = not ray.is_initialized()  # else the session's Ray, started by fedrec's backend (tests/conftest.py)
    if started:
        ray.init(**args)
    try:
        @ray.remote(num_cpus=1)
        class Probe:
            def niceness(self):
                return os.nice(0)

        assert ray.get(Probe.remote().niceness.remote(), timeout=120) == os.nice(0)
    finally:
        if started:
            ray.shutdown()


def test_processes_started_in_the_block_keep_their_freed_heap(monkeypatch):
    """A local Ray's workers inherit the environment: started within ``worker_heap_env`` they
    get glibc's heap settings (a user's own value wins), and the environment is as it was after."""
    import os
    import subprocess
    import sys

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")  # the user's
    read = [sys.executable, "-c", "import os; print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), "
                                  "os.environ.get('MALLOC_TRIM_THRESHOLD_'))"]
    with flower_compat.worker_heap_env():
        child = subprocess.run(read, capture_output=True, text=True, check=True).stdout.split()
    assert child == [str(32 << 20), "12345"] == [flower_compat.WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"], "12345"]
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_TRIM_THRESHOLD_"] == "12345"


def test_actors_share_the_gpus_only_when_asked():
    """``device=cuda``: each of the n actors (one per CPU when the nodes are not given) asks Ray
    for GPUs / n, so that Ray makes a GPU visible to it; a CPU run asks for none (Ray then hides
    no device it does not manage)."""
    cpu = flower_compat.backend_config(num_cpus=4)
    assert cpu["client_resources"]["num_gpus"] == 0.0 and "num_gpus" not in cpu["init_args"]
    gpu = flower_compat.backend_config(num_cpus=4, gpus=2)
    assert gpu["client_resources"] == {"num_cpus": 1, "num_gpus": 0.5} and gpu["init_args"]["num_gpus"] == 2
    assert flower_compat.backend_config(num_cpus=1, gpus=2)["client_resources"]["num_gpus"] == 1.0
    assert flower_compat.backend_config(num_cpus=4, ray_address="auto", gpus=1)["client_resources"]["num_gpus"] == 0.25


@pytest.mark.parametrize("cpus,nodes,actors", [(16, 2, 2), (16, 3, 3), (16, 6, 8), (16, 16, 16), (16, 40, 16),
                                               (2, 1, 1), (2, 2, 2), (2, 9, 2), (1, 1, 1)])
def test_about_one_actor_per_node(cpus, nodes, actors):
    """A local run of fewer nodes than CPUs starts about one actor per node, not one per CPU
    (an idle actor holds torch and Flower: 14 of them held 2.4 GiB in a 2-node run on 16 cores);
    the count is Flower's own (``pool_size_from_resources``) arithmetic on the CPUs Ray keeps
    (all of them, so that a Ray reused by a sweep serves a later run of more nodes)."""
    cfg = flower_compat.backend_config(num_cpus=cpus, nodes=nodes, gpus=1)
    per = cfg["client_resources"]["num_cpus"]
    assert cfg["init_args"]["num_cpus"] == cpus and isinstance(per, int)
    assert int(cpus / per) == actors  # flwr.simulation.ray_transport.ray_actor.pool_size_from_resources
    assert cfg["client_resources"]["num_gpus"] == pytest.approx(1 / actors)  # every actor fits on the GPU
    assert flower_compat.backend_config(num_cpus=cpus, nodes=nodes,
                                        ray_address="auto")["client_resources"]["num_cpus"] == 1


def test_flower_starts_the_actors_the_config_asks_for():
    """Flower's pool-size function, on a live Ray started from the config, agrees with the
    arithmetic above (1 node on 2 CPUs: one actor; 3 nodes: two)."""
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    one = flower_compat.backend_config(num_cpus=2, nodes=1)
    started = not ray.is_initialized()
    if started:
        ray.init(**one["init_args"])
    try:
        if ray.cluster_resources().get("CPU") != 2:
            pytest.skip("a Ray of another size is already running in this session")
        assert pool_size_from_resources(one["client_resources"]) == 1
        assert pool_size_from_resources(flower_compat.backend_config(num_cpus=2, nodes=3)["client_resources"]) == 2
    finally:
        if started:
            ray.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not flower_compat.patches_supported(), reason="patches are for the tested Flower line")
def test_rounds_do_not_wait_for_polls(tmp_path, monkeypatch):
    """Within ``fast_grid_polling`` the grid's push wakes the dispatch loop and a stored reply
    wakes the grid: with a 0.5 s poll interval, rounds of a tiny run still take a small
    fraction of it (polling alone would add 0.5 s per round: two polls, half an interval each)."""
    import json

    from fedrec.config import FedConfig
    from fedrec_app.simulations.simulate import simulate

    monkeypatch.setattr(flower_compat, "GRID_PULL_INTERVAL", 0.5)
    out = tmp_path / "run"
    simulate(FedConfig(data="synthetic:20x30:1", dim=4, users_per_node=10, num_server_rounds=6, eval_every=0,
                       patience=0, out=str(out)))
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    secs = sorted(r["seconds"] for r in rows[1:])  # round 1 starts the actors
    assert secs[len(secs) // 2] < 0.2, secs
