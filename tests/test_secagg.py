"""Secure aggregation (``secure-aggregation``): the one server pipeline behind Flower's
SecAgg+, through the real simulation engine.  The aggregate the server gets equals the
plain user-weighted mean of the nodes' updates within the quantisation error bound, the
server never sees one node's update, and the rest of the pipeline (optimiser, record,
evaluation, run directory) is the plain one's."""

import json

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from fedrec.federated import node
from fedrec.config import ConfigError, FedConfig
from fedrec.federated.federation import load_federation
from fedrec.federated.optim import OptState, server_step
from fedrec_app.server import secure, strategy
from fedrec_app.simulations.simulate import simulate

pytestmark = pytest.mark.slow

BASE = dict(data="synthetic:40x30:0", dim=4, users_per_node=10, num_server_rounds=2, seed=0, eval_every=2, patience=0)
KEYS = ("item_embedding", "item_bias")


def test_auto_quantization_range_cannot_overflow():
    for n in (2, 4, 15, 100, 1000):
        q = secure.auto_quantization_range(n)
        assert n * q < secure.MODULUS_RANGE and q <= 2**30
        assert 2 * n * q >= secure.MODULUS_RANGE or q == 2**30  # the largest such power of two


def test_bound_formula():
    # 4 full cohorts (w = 1): N * C * 3 / (Q * N) = 3 C / Q
    b = secure.quantization_bound([10] * 4, clipping_range=1.0, quantization_range=2**20, max_weight=10)
    assert b == pytest.approx(3.0 / 2**20)


def test_user_level_dp_with_secure_aggregation_is_refused():
    with pytest.raises(ConfigError, match="secure-aggregation"):
        FedConfig(secure_aggregation=True, user_dp="client", user_noise_multiplier=1.0)


def _replay(cfg: FedConfig, broadcast: dict[int, dict]) -> dict[int, dict]:
    """The plain user-weighted mean of every node's update, replayed in this process with
    the parameters the server broadcast (node.train_round is deterministic given them)."""
    fed = load_federation(cfg)
    states, out = {}, {}
    for r in sorted(broadcast):
        total, acc = 0, None
        for p in range(fed.n_nodes):
            st = states.get(p) or node.load_state({}, fed, p, cfg)
            update, metrics, states[p] = node.train_round(cfg, fed, p, st, global_params=broadcast[r], server_round=r)
            n = int(metrics["num-examples"])
            arrs = {k: n * np.asarray(update[k], np.float64) for k in KEYS}
            acc = arrs if acc is None else {k: acc[k] + arrs[k] for k in KEYS}
            total += n
        out[r] = {k: v / total for k, v in acc.items()}
    return out


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory):
    seen = {"broadcast": {}, "results": {}}
    cls = secure.SecureAggregation
    orig_cf, orig_af = cls.configure_fit, cls.aggregate_fit

    def configure_fit(self, rnd, parameters, cm):
        seen["broadcast"][rnd] = dict(zip(KEYS, parameters_to_ndarrays(parameters)))
        return orig_cf(self, rnd, parameters, cm)

    def aggregate_fit(self, rnd, results, failures):
        seen["results"][rnd] = [(int(r.num_examples), parameters_to_ndarrays(r.parameters)) for _, r in results]
        return orig_af(self, rnd, results, failures)

    mp = pytest.MonkeyPatch()
    mp.setattr(cls, "configure_fit", configure_fit)
    mp.setattr(cls, "aggregate_fit", aggregate_fit)
    out = tmp_path_factory.mktemp("secure") / "run"
    cfg = FedConfig(**BASE, secure_aggregation=True, out=str(out))
    try:
        summary = simulate(cfg, num_cpus=2)
    finally:
        mp.undo()
    return cfg, summary, seen, out


def test_secure_aggregate_equals_plain_mean_within_quantisation_error(secure_run):
    cfg, _, seen, _ = secure_run
    plain = _replay(cfg, seen["broadcast"])
    q = secure.auto_quantization_range(4)
    for r in (1, 2):
        weights = [n for n, _ in seen["results"][r]]
        assert sorted(weights) == [10, 10, 10, 10]
        bound = secure.quantization_bound(weights, clipping_range=cfg.secagg_clip, quantization_range=q, max_weight=10)
        assert bound == pytest.approx(3 * cfg.secagg_clip / q)
        agg = dict(zip(KEYS, seen["results"][r][0][1]))
        err = max(float(np.abs(agg[k] - plain[r][k]).max()) for k in KEYS)
        assert 0 < err <= bound, (r, err, bound)  # > 0: it went through quantisation, not the clear path
        assert max(float(np.abs(v).max()) for v in plain[r].values()) > 1e4 * bound  # far above the error


def test_server_sees_only_the_aggregate_and_steps_its_optimiser(secure_run):
    cfg, _, seen, _ = secure_run
    for r in (1, 2):
        first = seen["results"][r][0][1]
        for _, arrays in seen["results"][r][1:]:  # every "result" carries the same, aggregated vector
            assert all(np.array_equal(a, b) for a, b in zip(arrays, first))
    # round 2 was broadcast = the server optimiser's step (Adam) on round 1's aggregate
    new, _ = server_step(seen["broadcast"][1], dict(zip(KEYS, seen["results"][1][0][1])), OptState(),
                         opt=cfg.server_opt, lr=cfg.server_lr)
    for k in KEYS:
        np.testing.assert_array_equal(seen["broadcast"][2][k], new[k].astype(np.float32))
        assert not np.array_equal(seen["broadcast"][2][k], seen["broadcast"][1][k])


def test_secure_run_writes_the_same_run_directory(secure_run):
    _, summary, _, out = secure_run
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["contributing"] == 4 and rows[0]["users"] == 40 and "valid/ndcg@10" not in rows[0]
    assert 0 < rows[1]["valid/ndcg@10"] <= 1  # evaluation every 2 rounds, through the same means
    assert summary["selected_round"] == 2 and 0 < summary["test"]["ndcg@10"] <= 1
    assert (out / "checkpoint" / "checkpoint.npz").exists() and (out / "metrics.json").exists()


def test_plain_pipeline_round_one_agrees_within_the_bound(secure_run, tmp_path, monkeypatch):
    """The same config without secure aggregation: Flower's FedAvg in the clear gives
    round 1's update (same broadcast parameters) equal to the secure one within the bound."""
    cfg, _, seen, _ = secure_run
    got = {}
    orig = strategy.MeanOfUpdates.aggregate_train

    def tap(self, rnd, replies):
        arrays, metrics = orig(self, rnd, replies)
        got[rnd] = {k: arrays[k].numpy() for k in KEYS}
        return arrays, metrics

    monkeypatch.setattr(strategy.MeanOfUpdates, "aggregate_train", tap)
    simulate(FedConfig(**{**BASE, "num_server_rounds": 1}, out=str(tmp_path / "plain")), num_cpus=2)
    agg = dict(zip(KEYS, seen["results"][1][0][1]))
    bound = 3 * cfg.secagg_clip / secure.auto_quantization_range(4)
    assert max(float(np.abs(agg[k] - got[1][k]).max()) for k in KEYS) <= bound
