import os

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_ds():
    """Synthetic population: 30 users, 40 items, deterministic."""
    from fedrec.data import synthetic_dataset

    return synthetic_dataset(n_users=30, n_items=40, interactions_per_user=8, seed=3)


@pytest.fixture(scope="session")
def tiny_split(tiny_ds):
    from fedrec.data import leave_last_out

    return leave_last_out(tiny_ds)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data():
    """Path of a dataset in ``../shared/data`` (the developers' and CI's copies of data
    that may not ship); the test skips, saying why, where it is absent."""

    def get(name: str):
        path = SHARED_DATA / name
        if not path.is_dir():
            pytest.skip(f"{name} is not at {path} (its licence forbids shipping it; CI has it)")
        return path

    return get


def marked_processes(marker: str) -> list[int]:
    """Live processes whose command line or environment names ``marker`` (a test's own
    temporary directory): what a test started, and must find gone."""
    from pathlib import Path

    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            text = (d / "cmdline").read_bytes() + (d / "environ").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in text and state != "Z":
            pids.append(int(d.name))
    return pids


def kill_marked(marker: str) -> None:
    """SIGKILL every process :func:`marked_processes` finds (a failed test's cleanup)."""
    import signal

    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # gone meanwhile
            pass


@pytest.fixture
def processes_marked():
    """:func:`marked_processes`, for tests that check a process tree is gone."""
    return marked_processes


@pytest.fixture
def processes_killed():
    """:func:`kill_marked`, for the cleanup of tests that start process trees."""
    return kill_marked


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every end-to-end run of the session (each simulation still starts
    and terminates its own actors); stopped at the end of the session."""
    from fedrec.flower_compat import reuse_ray

    with reuse_ray():
        yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


#: The longest test files run first, so that with ``-n 2 --dist loadfile`` (``make test``) the
#: two workers end together instead of one waiting on the study at the end.
LONGEST_FIRST = ("test_study.py", "test_deploy.py", "test_stream.py", "test_fault_tolerance.py",
                 "test_privacy_adversary.py", "test_user_level_dp.py", "test_signals.py")


def pytest_collection_modifyitems(items):
    """End-to-end runs through Flower (marked ``slow``) share :func:`ray_session`: Ray's start
    (15-20 s on 2 cores) is paid once, not per run; the longest files come first."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.fixturenames.append("ray_session")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
