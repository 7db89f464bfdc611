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
