"""Distributed DP (``user-dp='distributed'``) through Flower's SecAgg+ in the real simulation
engine: the server's sum is exactly the sum of the users' encoded vectors, a round with too
few surviving noise shares is not unmasked, every round is accounted, and a node's masked
message alone is uniform in SecAgg+'s field."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from fedrec.config import ConfigError, FedConfig
from fedrec.federated import node, protocol
from fedrec.federated.federation import load_federation
from fedrec.privacy.distributed import SECAGG_CLIP, distributed_mechanism, from_flower_sum
from fedrec_app.server import secure
from fedrec_app.simulations.simulate import simulate

pytestmark = pytest.mark.slow

BASE = dict(data="synthetic:40x30:0", dim=4, users_per_node=10, num_server_rounds=3, seed=0, eval_every=3, patience=0,
            secure_aggregation=True, user_dp="distributed", user_noise_multiplier=1.0, user_clip=0.5,
            user_sample_rate=0.5)
KEYS = ("item_embedding", "item_bias")


def test_distributed_dp_settings_are_checked_in_one_line():
    for kw, key in [(dict(secure_aggregation=False), "user-dp"),
                    (dict(noise_multiplier=1.0), "user-dp"),
                    (dict(ddp_min_users=1.5), "ddp-min-users"),
                    (dict(prior_noise=2.0), "user-dp")]:
        with pytest.raises(ConfigError, match=key):
            FedConfig(**{**BASE, **kw})
    with pytest.raises(ConfigError, match="secure-aggregation"):  # central user-level DP still cannot
        FedConfig(**{**BASE, "user_dp": "client"})


def _user_level(metrics: dict) -> dict:
    p = metrics["privacy"]
    return p if p.get("unit") == "user-level" else next(u for u in p["units"] if u["unit"] == "user-level")


def _field_ints(grid: np.ndarray, modulus: int) -> np.ndarray:
    """A node's field integers from its reply (the grid values of one node)."""
    return from_flower_sum(grid, n_nodes=1, clipping_range=SECAGG_CLIP, quantization_range=modulus)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    seen = {"broadcast": {}, "total": {}}
    cls = secure.SecureAggregation
    orig_cf, orig_af = cls.configure_fit, cls.aggregate_fit

    def configure_fit(self, rnd, parameters, cm):
        seen["broadcast"][rnd] = dict(zip(KEYS, parameters_to_ndarrays(parameters)))
        return orig_cf(self, rnd, parameters, cm)

    def aggregate_fit(self, rnd, results, failures):
        agg = parameters_to_ndarrays(results[0][1].parameters)[0]
        seen["total"][rnd] = from_flower_sum(agg, n_nodes=len(results), clipping_range=SECAGG_CLIP,
                                             quantization_range=self.ddp.modulus)
        seen["same"] = all(np.array_equal(parameters_to_ndarrays(r.parameters)[0], agg) for _, r in results)
        return orig_af(self, rnd, results, failures)

    mp = pytest.MonkeyPatch()
    mp.setattr(cls, "configure_fit", configure_fit)
    mp.setattr(cls, "aggregate_fit", aggregate_fit)
    out = tmp_path_factory.mktemp("ddp") / "run"
    cfg = FedConfig(**BASE, reproducible_noise=True, out=str(out))
    try:
        simulate(cfg, num_cpus=2)
    finally:
        mp.undo()
    return cfg, seen, out


def test_the_servers_sum_is_exactly_the_sum_of_the_users_encoded_vectors(ddp_run):
    """With reproducible noise the nodes' rounds replay in this process: the field sum the
    server decodes equals the sum of every node's encoded users, exactly."""
    cfg, seen, _ = ddp_run
    fed = load_federation(cfg)
    mech = distributed_mechanism(cfg, n_users=fed.n_users, n_nodes=fed.n_nodes,
                                 dim=sum(v.size for v in seen["broadcast"][1].values()))
    states = {}
    assert seen["same"]  # every "result" carries the one unmasked aggregate: no node's vector alone
    for r in sorted(seen["broadcast"]):
        total = np.zeros(mech.padded_dim, dtype=np.int64)
        for p in range(fed.n_nodes):
            st = states.get(p) or node.load_state({}, fed, p, cfg)
            update, metrics, states[p] = node.train_round(cfg, fed, p, st, global_params=seen["broadcast"][r],
                                                          server_round=r)
            assert set(update) == {protocol.DDP_SUM}
            assert metrics[protocol.NOISE_SHARES] == len(fed.cohorts[p])  # every user adds a share
            total = (total + _field_ints(update[protocol.DDP_SUM], mech.modulus)) % mech.modulus
        np.testing.assert_array_equal(seen["total"][r], total)


def test_the_run_reports_the_distributed_mechanism_and_its_epsilon(ddp_run):
    cfg, seen, out = ddp_run
    metrics = json.loads((out / "metrics.json").read_text())
    unit = _user_level(metrics)
    fed = load_federation(cfg)
    mech = distributed_mechanism(cfg, n_users=fed.n_users, n_nodes=fed.n_nodes, dim=30 * 4 + 30)
    assert unit["epsilon"] == pytest.approx(mech.epsilon(3))
    assert unit["min_users"] == 32 and unit["max_users"] == 40
    assert "seed" in unit["holds_against"]  # reproducible noise: no guarantee against who knows the seed
    rows = list(csv.DictReader(open(out / "rounds.csv")))
    assert [float(r["user-epsilon"]) for r in rows] == pytest.approx([mech.epsilon(r) for r in (1, 2, 3)])
    assert all(int(float(r["noise-shares"])) == 40 for r in rows)
    assert "users" not in rows[0] or not rows[0]["users"]  # who trained is not released


def test_a_target_epsilon_is_calibrated_by_the_server_for_the_distributed_mechanism(tmp_path):
    cfg = FedConfig(**{**BASE, "user_noise_multiplier": 0.0, "num_server_rounds": 2, "eval_every": 2},
                    user_target_epsilon=6.0, out=str(tmp_path / "run"))
    simulate(cfg, num_cpus=2)
    unit = _user_level(json.loads((tmp_path / "run" / "metrics.json").read_text()))
    fed = load_federation(cfg)
    mech = distributed_mechanism(replace(cfg, user_noise_multiplier=1.0, user_target_epsilon=0.0),
                                 n_users=fed.n_users, n_nodes=fed.n_nodes, dim=30 * 4 + 30).calibrated(6.0, 2)
    assert unit["noise_multiplier"] == pytest.approx(mech.noise_multiplier)
    assert 5.9 < unit["epsilon"] <= 6.0


def test_a_round_with_too_few_noise_shares_is_not_unmasked(tmp_path):
    """Seed 1 at dropout rate 0.2 drops node 1 (10 users) in round 1 only: with every
    user's share required that round is skipped before unmasking (parameters unchanged)
    and still accounted; with 30 of 40 required it is unmasked, and its sum is exactly the
    three surviving nodes' (replayed with reproducible noise)."""
    strict = FedConfig(**{**BASE, "seed": 1}, dropout_rate=0.2, ddp_min_users=1.0, out=str(tmp_path / "strict"))
    loose = FedConfig(**{**BASE, "seed": 1}, dropout_rate=0.2, ddp_min_users=0.75, reproducible_noise=True,
                      out=str(tmp_path / "loose"))
    seen, sums = {}, {}
    cls = secure.SecureAggregation
    orig_cf, orig_af = cls.configure_fit, cls.aggregate_fit

    def configure_fit(self, rnd, parameters, cm):
        if rnd == 1:
            sums[self.cfg.out, "broadcast"] = dict(zip(KEYS, parameters_to_ndarrays(parameters)))
        return orig_cf(self, rnd, parameters, cm)

    def aggregate_fit(self, rnd, results, failures):
        seen.setdefault(self.cfg.out, []).append(rnd)
        if rnd == 1:
            sums[self.cfg.out, "total"] = from_flower_sum(parameters_to_ndarrays(results[0][1].parameters)[0],
                                                          n_nodes=len(results), clipping_range=SECAGG_CLIP,
                                                          quantization_range=self.ddp.modulus)
        return orig_af(self, rnd, results, failures)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, "configure_fit", configure_fit)
        mp.setattr(cls, "aggregate_fit", aggregate_fit)
        simulate(strict, num_cpus=2)
        simulate(loose, num_cpus=2)
    assert seen[strict.out] == [2, 3] and seen[loose.out] == [1, 2, 3]
    fed = load_federation(loose)
    params = sums[loose.out, "broadcast"]
    mech = distributed_mechanism(loose, n_users=fed.n_users, n_nodes=fed.n_nodes,
                                 dim=sum(v.size for v in params.values()))
    total = np.zeros(mech.padded_dim, dtype=np.int64)
    for p in (0, 2, 3):  # node 1 dropped out
        update, _, _ = node.train_round(loose, fed, p, node.load_state({}, fed, p, loose), global_params=params,
                                        server_round=1)
        total = (total + _field_ints(update[protocol.DDP_SUM], mech.modulus)) % mech.modulus
    np.testing.assert_array_equal(sums[loose.out, "total"], total)
    rows = list(csv.DictReader(open(tmp_path / "strict" / "rounds.csv")))
    assert int(float(rows[0]["skipped"])) == 1 and int(float(rows[0]["noise-shares"])) == 30
    assert float(rows[0]["user-epsilon"]) > 0  # the round counts
    unit = _user_level(json.loads((tmp_path / "strict" / "metrics.json").read_text()))
    assert unit["holds_against"].startswith("the server")  # secret noise: the guarantee holds against it
    loose_rows = list(csv.DictReader(open(tmp_path / "loose" / "rounds.csv")))
    assert int(float(loose_rows[0]["noise-shares"])) == 30 and not loose_rows[0].get("skipped")


def test_a_nodes_masked_message_alone_is_uniform_in_the_field():
    """What one node sends SecAgg+ (its field vector, quantised and masked as Flower's
    ``secaggplus_mod`` does, before the modulus) is uniform on ``[0, 2**32)``, although
    the vector itself is far from uniform."""
    from flwr.common.secure_aggregation.crypto.shamir import create_shares  # noqa: F401  (Flower's SecAgg+ stack)
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from scipy import stats

    q_range, mod_range = 2**20, 2**32
    vec = np.zeros(20_000)  # a field vector of small values: far from uniform
    vec[:100] = 5
    quantized = quantize([vec * (2 * SECAGG_CLIP / q_range) - SECAGG_CLIP], SECAGG_CLIP, q_range)
    mask = pseudo_rand_gen(b"\x01" * 32, mod_range, [a.shape for a in quantized])
    masked = parameters_mod(parameters_addition(quantized, mask), mod_range)[0]
    assert stats.kstest(masked / mod_range, "uniform").pvalue > 1e-3
    assert stats.kstest(quantized[0] / mod_range, "uniform").pvalue < 1e-10


def test_the_comparison_study_calibrates_each_distributed_row_to_the_target():
    from fedrec_app.simulations.studies.distributed import distributed_cells

    cells = distributed_cells("synthetic:40x30:0", epsilon=8.0, rounds=20, sample_rate=1.0)
    assert [c.name for c in cells] == ["central", "distributed-all", "distributed-80"]
    assert cells[0].cfg.user_dp == "client" and cells[0].cfg.user_target_epsilon == 8.0
    fed = load_federation(cells[1].cfg)
    for c in cells[1:]:
        mech = distributed_mechanism(c.cfg, n_users=fed.n_users, n_nodes=fed.n_nodes, dim=30 * 8 + 30)
        assert 7.9 < mech.epsilon(20) <= 8.0
    assert cells[1].cfg.ddp_min_users == 1.0 and cells[2].cfg.ddp_min_users == 0.8
