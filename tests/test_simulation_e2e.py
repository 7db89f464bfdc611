"""End to end through Flower's real simulation engine (Ray backend): a small
synthetic population, DP on.  Every message is inspected: no user embedding
ever leaves a node."""

import json

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.federated import protocol
from fedrec_app.simulations.simulate import simulate
from fedrec_app.server import strategy as strategy_mod

pytestmark = pytest.mark.slow


def test_simulation_with_dp_keeps_user_embeddings_local(tmp_path, monkeypatch):
    seen = []  # (direction, kind, {key: shape}, metric keys)
    cls = strategy_mod.FedRecStrategy

    def tap(direction, kind, msgs):
        for m in msgs:
            if m.has_error():
                continue
            arrays = {k: v.numpy().shape for rec in m.content.array_records.values() for k, v in rec.items()}
            metrics = {k for rec in m.content.metric_records.values() for k in rec}
            seen.append((direction, kind, arrays, metrics))

    orig_ct, orig_at, orig_ce, orig_ae = (cls.configure_train, cls.aggregate_train, cls.configure_evaluate,
                                          cls.aggregate_evaluate)

    def configure_train(self, *a, **k):
        msgs = list(orig_ct(self, *a, **k)); tap("out", "train", msgs); return msgs

    def aggregate_train(self, rnd, replies):
        replies = list(replies); tap("in", "train", replies); return orig_at(self, rnd, replies)

    def configure_evaluate(self, *a, **k):
        msgs = list(orig_ce(self, *a, **k)); tap("out", "eval", msgs); return msgs

    def aggregate_evaluate(self, rnd, replies):
        replies = list(replies); tap("in", "eval", replies); return orig_ae(self, rnd, replies)

    monkeypatch.setattr(cls, "configure_train", configure_train)
    monkeypatch.setattr(cls, "aggregate_train", aggregate_train)
    monkeypatch.setattr(cls, "configure_evaluate", configure_evaluate)
    monkeypatch.setattr(cls, "aggregate_evaluate", aggregate_evaluate)

    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:20x60:1", num_server_rounds=2, users_per_node=5, dim=8, eval_every=1,
                    noise_multiplier=1.2, sample_rate=0.5, max_grad_norm=1.0, out=str(out))
    summary = simulate(cfg, num_cpus=2)

    n_items = 60
    assert {d for d, *_ in seen} == {"in", "out"}
    assert sum(1 for d, k, *_ in seen if (d, k) == ("in", "train")) == 2 * 4  # 4 nodes x 2 rounds, none lost
    for direction, kind, arrays, metrics in seen:
        assert set(arrays) <= {"item_embedding", "item_bias"}, arrays  # MF's global parameters only
        for key, shape in arrays.items():
            assert shape[0] == n_items  # item rows only: nothing shaped like a user's state
        assert not any("user" in k and "users" not in k for k in metrics)

    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc) >= {"validation", "test", "config", "seed", "versions", "privacy"}
    assert 0 <= doc["test"]["ndcg@10"] <= 1 and "hr@10" in doc["validation"]
    priv = doc["privacy"]
    assert priv["unit"] == "interaction-level" and priv["delta"] == 1e-5
    acc = RDPAccountant()
    for _ in range(2 * steps_per_round(cfg)):
        acc.step(noise_multiplier=1.2, sample_rate=0.5)
    assert priv["epsilon_max"] == pytest.approx(acc.get_epsilon(1e-5))
    rows = (out / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and "epsilon-median" in rows[0]
    assert (out / "checkpoint" / "checkpoint.npz").exists()
    assert summary["selected_round"] in (1, 2)
    assert "evaluation replies" in priv["not_covered"]  # said, not hidden


def test_server_sends_the_mechanism_and_evaluation_can_be_off(tmp_path, monkeypatch):
    """Nodes get the mechanism the server resolved (they never calibrate), and with
    --eval-every 0 no evaluation message is sent and no metric is released."""
    cls = strategy_mod.FedRecStrategy
    sent = []
    orig_ct, orig_ce = cls.configure_train, cls.configure_evaluate

    def configure_train(self, *a, **k):
        msgs = list(orig_ct(self, *a, **k))
        sent.extend(("train", dict(m.content["config"])) for m in msgs)
        return msgs

    def configure_evaluate(self, *a, **k):
        msgs = list(orig_ce(self, *a, **k))
        sent.extend(("eval", dict(m.content["config"])) for m in msgs)
        return msgs

    monkeypatch.setattr(cls, "configure_train", configure_train)
    monkeypatch.setattr(cls, "configure_evaluate", configure_evaluate)
    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:20x60:1", num_server_rounds=2, users_per_node=10, dim=8, eval_every=0,
                    target_epsilon=5.0, sample_rate=0.5, out=str(out))
    summary = simulate(cfg, num_cpus=2)
    sigma = resolved(cfg).noise_multiplier
    assert [k for k, _ in sent] == ["train"] * 4  # 2 nodes x 2 rounds, no evaluation
    assert all(c["mechanism/noise-multiplier"] == pytest.approx(sigma) for _, c in sent)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["test"] == {} and doc["validation"] == {} and summary["selected_round"] is None
    assert doc["privacy"]["not_covered"] == "nothing: evaluation was off"
    assert "valid" not in (out / "rounds.csv").read_text()


def test_train_head_freezes_the_other_rows_through_flower(tmp_path, monkeypatch):
    """DP-FEST with user-level DP: the server trains only the items the DP prior's release
    ranks highest; every message carries that mask, and after the run every other item's
    rows are exactly where they started (embedding zero, bias the prior's) although
    Flower's DP wrapper noised every coordinate of the sum."""
    from fedrec.federated.federation import load_federation
    from fedrec.privacy.prior import head_from_release, noisy_popularity, prior_from_release
    from fedrec.privacy.randomness import DPRandomness

    cls = strategy_mod.FedRecStrategy
    masks = []
    orig_ct = cls.configure_train

    def configure_train(self, *a, **k):
        msgs = list(orig_ct(self, *a, **k))
        masks.extend(protocol.trained_items_of(dict(m.content["config"])) for m in msgs)
        return msgs

    monkeypatch.setattr(cls, "configure_train", configure_train)
    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:20x60:1", num_server_rounds=2, users_per_node=10, dim=4, eval_every=1,
                    user_dp="client", user_noise_multiplier=1.0, user_clip=0.5, server_opt="sgd", server_lr=1.0,
                    prior_noise=1.0, train_head=0.25, out=str(out), reproducible_noise=True)
    simulate(cfg, num_cpus=2)
    fed = load_federation(cfg)
    # the prior and the head are one release (the server's, here reproducible from the seed)
    release = noisy_popularity(fed.split.train, noise=1.0, randomness=DPRandomness.from_seed(cfg.seed, 21))
    head = head_from_release(release, 0.25)
    assert head.sum() == 15
    assert len(masks) == 4 and all(np.array_equal(m[:60], head) and not m[60:].any() for m in masks)
    with np.load(out / "checkpoint" / "checkpoint.npz") as z:
        emb, bias = z["param/item_embedding"], z["param/item_bias"]
    assert not emb[~head].any() and np.abs(emb[head]).min() > 0
    prior = prior_from_release(release)
    np.testing.assert_allclose(bias[~head], prior[~head], rtol=0, atol=1e-6)
    assert np.abs(bias[head] - prior[head]).max() > 1e-3  # trained (and noised)
    assert json.loads((out / "metrics.json").read_text())["privacy"]["unit"] == "user-level"


def test_the_engine_is_entered_as_flwr_run_enters_it_not_through_the_deprecated_wrapper(tmp_path, monkeypatch):
    """`flwr.simulation.run_simulation` (the Python wrapper) is deprecated in Flower 1.41: fedrec
    calls the engine where Flower's simulation runtime (`flwr run`) does, so no deprecation
    warning is raised and the run completes."""
    import importlib

    from fedrec import flower_compat

    if not flower_compat.patches_supported():
        pytest.skip("another Flower line: fedrec falls back to the public wrapper")
    rs = importlib.import_module("flwr.simulation.run_simulation")
    warned = []
    monkeypatch.setattr(rs, "warn_deprecated_feature", lambda *a, **k: warned.append(a))
    entered = []
    engine = rs._run_simulation
    monkeypatch.setattr(rs, "_run_simulation", lambda **k: entered.append(k) or engine(**k))
    cfg = FedConfig(data="synthetic:20x60:1", num_server_rounds=1, users_per_node=10, dim=8, eval_every=0,
                    out=str(tmp_path / "run"))
    simulate(cfg, num_cpus=2)
    assert len((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()) == 1
    assert len(entered) == 1 and entered[0]["num_supernodes"] == 2
    assert not warned
