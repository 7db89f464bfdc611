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


def pytest_collection_modifyitems(items):
    """End-to-end runs through Flower (marked ``slow``) share :func:`ray_session`: Ray's start
    (15-20 s on 2 cores) is paid once, not per run."""
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.fixturenames.append("ray_session")
