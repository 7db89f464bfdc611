"""User-level DP end to end through Flower's engine: Flower's DP wrappers around
fedrec's aggregation, Poisson user sampling, epsilon per round from Opacus."""

import json

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.data import load_dataset, make_split
from fedrec_app.simulations.simulate import simulate
from fedrec.engine import LocalConfig, mf_round

pytestmark = pytest.mark.slow


def _rdp(sigma, q, steps, delta=1e-5):
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("mode,upn", [("client", 20), ("server", 1)])
def test_user_level_run_reports_its_epsilon(tmp_path, mode, upn):
    cfg = FedConfig(data="synthetic:40x30:0", dim=4, users_per_node=upn, num_server_rounds=3, eval_every=3,
                    user_dp=mode, user_target_epsilon=8.0, user_clip=0.05, user_sample_rate=0.5, server_opt="sgd",
                    server_lr=1.0, out=str(tmp_path))
    np.random.seed(1234)  # the caller's global generator: Flower's DP noise must not consume or reseed it
    simulate(cfg, num_cpus=2)
    after = np.random.random()
    np.random.seed(1234)
    assert after == np.random.random()
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    sigma = resolved(cfg).user_noise_multiplier
    for r in rows:
        assert r["user-epsilon"] == pytest.approx(_rdp(sigma, 0.5, r["round"]), rel=1e-9)
    # who took part is what Poisson user sampling keeps secret: no exact count is logged
    assert all("users" not in r and "declined" not in r for r in rows)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["privacy"]["unit"] == "user-level" and m["privacy"]["epsilon"] == pytest.approx(rows[-1]["user-epsilon"])
    assert m["privacy"]["epsilon"] <= 8.0 + 1e-6


def test_client_side_clipping_bounds_each_users_whole_update():
    ds = load_dataset("synthetic:60x40:0")
    sp_ = make_split(ds)
    users = np.flatnonzero(np.diff(sp_.train.indptr) > 0)[:12]
    g = torch.Generator().manual_seed(0)
    ue, ie, ib = torch.randn(12, 4, generator=g), torch.randn(40, 4, generator=g), torch.zeros(40)
    for u in range(12):
        for noise in (0.0, 1.0):  # with interaction-level noise too: the clip covers the noise
            _, iu, bu, _ = mf_round(ue[u:u + 1], ie, ib, sp_.train, users[u:u + 1],
                                    LocalConfig(update_clip=0.01, noise_multiplier=noise, sample_rate=0.5),
                                    seed=0, server_round=1, generator=g)
            norm = float(torch.sqrt((iu ** 2).sum() + (bu ** 2).sum()))
            assert norm <= 0.01 * (1 + 1e-5)
    # the cohort's release is the mean of the users' clipped releases
    loose = LocalConfig(update_clip=1e6)
    _, a, _, _ = mf_round(ue, ie, ib, sp_.train, users, loose, seed=0, server_round=1)
    _, b, _, _ = mf_round(ue, ie, ib, sp_.train, users, LocalConfig(), seed=0, server_round=1)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-8)


def test_the_user_level_noise_outside_a_run_is_the_noise_of_flowers_wrapper():
    """`add_user_level_noise` (what the leakage study adds to a sum of clipped updates)
    draws what Flower's DP wrapper adds to the same sum, as `UserLevelMean` configures it,
    from the same randomness; and its std is sigma * C."""
    from flwr.app import Array, ArrayRecord
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    from fedrec.privacy.randomness import DPRandomness
    from fedrec_app.server.strategy import add_user_level_noise, flower_noise_from

    total = [np.zeros((400, 5)), np.ones(400)]
    ours = [a.copy() for a in total]
    add_user_level_noise(ours, noise_multiplier=2.0, clip=0.25, randomness=DPRandomness.from_seed(3, 1))
    wrapper = DifferentialPrivacyClientSideFixedClipping(FedAvg(), noise_multiplier=2.0, clipping_norm=0.25,
                                                         num_sampled_clients=1)
    with flower_noise_from(DPRandomness.from_seed(3, 1)):
        record = ArrayRecord({str(i): Array(a.copy()) for i, a in enumerate(total)})
        theirs = wrapper._add_noise_to_aggregated_arrays(record)
    for a, b in zip(ours, theirs.to_numpy_ndarrays()):
        np.testing.assert_array_equal(a, b)
    assert np.std(ours[0]) == pytest.approx(0.5, rel=0.05) and np.mean(ours[1]) == pytest.approx(1.0, abs=0.05)
