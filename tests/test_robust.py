"""Poisoning attacks and defences: exposure, row bounds, the per-user stage, attacks that work."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.config import ConfigError, FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.engine.cohort import LocalConfig, row_bound_factors
from fedrec.metrics.exposure import exposure_counts, exposure_ratios
from fedrec_app.simulations.attacks.poisoning import Attack, per_user_stage, pick_targets


def test_exposure_counts_by_hand_with_pessimistic_ties():
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0],   # target 2 ranks 3rd (after 0, 1)
                       [1.0, 1.0, 1.0, 0.0, 0.0],   # target 2 ties with 0 and 1: rank 3 (pessimistic)
                       [9.0, 0.0, 8.0, 0.0, 0.0]])  # user 2 has seen item 0: target 2 ranks 1st
    seen = sp.csr_matrix(np.array([[0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float32))
    c = exposure_counts(lambda u: scores[u], np.arange(3), seen, [2, 4], ks=(1, 3))
    assert c["eligible"] == [3, 2]  # item 4 is in user 0's history
    assert c["hits@1"] == [1, 0] and c["hits@3"] == [3, 0]
    r = exposure_ratios(c)
    assert r["er@1"] == pytest.approx((1 / 3 + 0) / 2) and r["er@3"] == pytest.approx(0.5)


def test_row_bounds_by_hand():
    owner = torch.tensor([0, 0, 0, 1, 1])
    rows = {"e": torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 2.0], [1.0, 0.0], [0.0, 0.1]]),
            "b": torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])}
    f = row_bound_factors(owner, rows, row_norm=1.0, max_rows=2)
    # user 0 keeps its two largest rows (norms 5 and 2) clipped to 1; user 1 keeps both
    assert torch.allclose(f, torch.tensor([0.2, 0.0, 0.5, 1.0, 1.0], dtype=f.dtype))
    assert torch.allclose(row_bound_factors(owner, rows), torch.ones(5, dtype=f.dtype))


def test_per_user_stage_bounds_what_a_sybil_can_change():
    from fedrec.models import build_federated_model

    model = build_federated_model("mf", 30, dim=4)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    releases = [{"item_embedding": torch.as_tensor(rng.normal(size=(30, 4)) * 10, dtype=torch.float32),
                 "item_bias": torch.as_tensor(rng.normal(size=30) * 10, dtype=torch.float32)} for _ in range(3)]
    cfg = FedConfig(data="synthetic:20x30:1", row_norm=0.5, max_rows=4)
    mean = per_user_stage(releases, model, params, cfg)
    row_norm = np.sqrt((mean["item_embedding"] ** 2).sum(1) + mean["item_bias"] ** 2)
    assert (row_norm > 0).sum() <= 3 * 4  # each sybil changes at most max_rows rows
    assert row_norm.max() <= 0.5 + 1e-6  # and each by at most row_norm (its mean over 3 sybils)
    plain = per_user_stage(releases, model, params, FedConfig(data="synthetic:20x30:1"))
    assert np.allclose(plain["item_bias"], np.mean([r["item_bias"].numpy() for r in releases], 0), atol=1e-5)
    with pytest.raises(ConfigError, match="un-noised rows"):
        FedConfig(data="synthetic:20x30:1", row_norm=0.5, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="interaction-level DP"):
        LocalConfig(max_rows=3, noise_multiplier=1.0)


def _attacked_exposure(kind: str, *, rounds: int = 8, row_norm: float = 0.0, ndcg: bool = False,
                       boost: float = 10.0) -> float:
    """ER@10 of the targets (``ndcg``: the users' test NDCG@10) after ``rounds`` of FedAvg +
    server SGD with (or without) sybils."""
    from fedrec.federated import node
    from fedrec.federated.federation import init_global_params, load_federation

    cfg = FedConfig(data="synthetic:120x80:2:20", users_per_node=60, dim=8, row_norm=row_norm, server_opt="sgd",
                    server_lr=2.0)
    fed = load_federation(cfg)
    targets = pick_targets(fed.split.train, 3, seed=0)
    cfg = resolved(dataclasses.replace(cfg, exposure_items=",".join(map(str, targets))))
    params = init_global_params(cfg, fed)
    states = [node.load_state({}, fed, p, cfg) for p in range(fed.n_nodes)]
    att = Attack.named(kind, targets, sybils=6, first_partition=fed.n_nodes, boost=boost) if kind != "none" else None
    rc = cfg.to_run_config()
    for r in range(1, rounds + 1):
        ups = []
        for p in range(fed.n_nodes):
            up, m, states[p] = node.train_round(cfg, fed, p, states[p], global_params=params, server_round=r)
            ups.append((up, m["num-examples"]))
        if att is not None:
            up, m = att.train(rc, {"server-round": r}, params, fed.n_nodes)
            ups.append((up, m["num-examples"]))
        total = sum(n for _, n in ups)
        params = {k: params[k] + cfg.server_lr * sum(u[k] * n for u, n in ups) / total for k in params}
    counts, sums = {}, np.zeros(2)
    for p in range(fed.n_nodes):
        out = node.evaluate_round(cfg, fed, p, states[p], global_params=params)
        sums += (out["test/ndcg@10"], out["test-count"])
        for k, v in out.items():
            if k.startswith("exposure-"):
                counts[k[9:]] = np.asarray(counts.get(k[9:], 0)) + np.asarray(v)
    return sums[0] / sums[1] if ndcg else exposure_ratios(counts)["er@10"]


@pytest.mark.parametrize("kind", ["boost", "fedrecattack", "ahum", "disguise"])
def test_each_attack_raises_exposure_and_row_bounds_cut_it(kind):
    clean = _attacked_exposure("none")
    attacked = _attacked_exposure(kind)
    bounded = _attacked_exposure(kind, row_norm=0.01)
    assert attacked > clean + 0.1, (clean, attacked)
    assert bounded < attacked, (bounded, attacked)


def test_cluster_pull_moves_every_row_to_its_k_means_centre():
    from fedrec_app.simulations.attacks.poisoning import cluster_pull

    table = torch.tensor([[0.0, 0.0], [0.2, 0.0], [5.0, 5.0], [5.0, 5.4]])
    pull = cluster_pull(table, 2, seed=0)
    moved = table + pull
    assert torch.allclose(moved[:2], torch.tensor([[0.1, 0.0], [0.1, 0.0]]))
    assert torch.allclose(moved[2:], torch.tensor([[5.0, 5.2], [5.0, 5.2]]))
    assert torch.allclose(table + cluster_pull(table, 1, seed=0), table.mean(0).expand(4, 2))


def test_cluster_attack_degrades_accuracy_and_row_bounds_limit_it():
    """Untargeted: 6 sybils pulling the item rows toward 2 centres cut the honest users'
    test NDCG@10 on FedAvg (measured: 0.208 -> 0.143); a row bound of 0.05 keeps the
    clean run's accuracy under the same attack (0.205 clean, 0.213 attacked)."""
    clean = _attacked_exposure("none", ndcg=True)
    attacked = _attacked_exposure("cluster", ndcg=True)
    assert attacked < 0.8 * clean, (clean, attacked)
    clean_bounded = _attacked_exposure("none", row_norm=0.05, ndcg=True)
    bounded = _attacked_exposure("cluster", row_norm=0.05, ndcg=True)
    assert bounded > 0.95 * clean_bounded and bounded > attacked + 0.03, (clean_bounded, bounded, attacked)


def test_adam_eps_floor_damps_rows_that_few_users_push():
    """The ``adam-eps`` defence by hand: with Adam's epsilon at 1e-4, a row whose mean update
    is 1e-6 per coordinate (a few bounded sybils among many users) moves by about
    lr * 1e-6 / (1e-6 + 1e-4) per step, not by a full lr as with epsilon 1e-8; a row
    whose mean update is 1e-2 (an item many users train) keeps nearly the full step."""
    from fedrec.federated.optim import OptState, server_step
    from fedrec_app.simulations.attacks.poisoning import DEFENCES

    d = DEFENCES["row-bounds+adam-eps"]
    lr, eps = d["server_lr"], d["server_eps"]
    params = {"t": np.zeros((2, 3))}
    update = {"t": np.array([[1e-6] * 3, [1e-2] * 3])}
    damped, _ = server_step(params, update, OptState(m={}, v={}, t=0), opt="adam", lr=lr, eps=eps)
    plain, _ = server_step(params, update, OptState(m={}, v={}, t=0), opt="adam", lr=lr, eps=1e-8)
    # first step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    np.testing.assert_allclose(damped["t"][0], lr * 1e-6 / (1e-6 + eps), rtol=1e-6)
    np.testing.assert_allclose(damped["t"][1], lr * 1e-2 / (1e-2 + eps), rtol=1e-6)
    assert damped["t"][0, 0] < plain["t"][0, 0] / 50 and damped["t"][1, 0] > 0.98 * plain["t"][1, 0]


def test_attack_sweep_server_is_plain_fedavg_or_fedrecs_adam():
    """``--server fedavg`` runs every cell with server SGD (the attack papers' FedAvg);
    a defence that sets the server's Adam is refused with it, in one line, before any run."""
    from fedrec_app.simulations.attacks.poisoning import SERVERS, attack_cells

    cells = attack_cells("synthetic:60x40:0", attacks=("boost",), defences=("none", "row-bounds"), fractions=(0.05,),
                         rounds=3, server="fedavg")
    assert len(cells) == 4 and all((c.cfg.server_opt, c.cfg.server_lr) == ("sgd", 20.0) for c, _ in cells)
    assert SERVERS["adam"] == {} and attack_cells("synthetic:60x40:0", attacks=("boost",), defences=("none",),
                                                  fractions=(0.05,), rounds=3)[0][0].cfg.server_opt == "adam"
    with pytest.raises(ValueError, match="set the server's Adam") as e:
        attack_cells("synthetic:60x40:0", defences=("row-bounds+adam-eps",), server="fedavg")
    assert "\n" not in str(e.value)


def test_sample_size_inflation_claims_the_servers_cap_and_wins_weight():
    """``+inflate``: the malicious node reports the most users the server accepts from one
    node (its cap: here 60, the honest nodes' size) instead of its 6 sybils, so FedAvg
    weighs it 10x; with the same update the targets' exposure rises further."""
    from fedrec.federated.federation import init_global_params, load_federation
    from fedrec_app.server.strategy import FedRecStrategy

    cfg = resolved(FedConfig(data="synthetic:120x80:2:20", users_per_node=60, dim=8))
    fed = load_federation(cfg)
    att = Attack.named("boost+inflate", (1, 2), sybils=6, first_partition=fed.n_nodes)
    assert att.kind == "boost" and att.inflate
    _, m = att.train(cfg.to_run_config(), {"server-round": 1}, init_global_params(cfg, fed), fed.n_nodes)
    s = FedRecStrategy(cfg, shapes={}, n_nodes=fed.n_nodes + 1, n_users=fed.n_users)
    s.record.n_nodes = fed.n_nodes + 1
    assert m["num-examples"] == s.valid.max_examples == 60
    with pytest.raises(ValueError, match="unknown option 'twice'"):
        Attack.named("boost+twice", (1,), sybils=1, first_partition=2)
    plain = _attacked_exposure("boost", boost=1.0)
    inflated = _attacked_exposure("boost+inflate", boost=1.0)
    assert inflated > plain + 0.05, (plain, inflated)


def test_robust_defences_spread_the_sybils_over_nodes_of_the_honest_size():
    """A robust rule's cells: honest users and sybils alike in nodes of 16 users, the rule
    told the malicious nodes of the largest fraction; the sybils' partitions follow the
    honest nodes."""
    from fedrec.federated.federation import load_federation
    from fedrec_app.simulations.attacks.poisoning import attack_cells

    cells = attack_cells("synthetic:200x40:0", attacks=("fedrecattack",), defences=("none", "krum"),
                         fractions=(0.05, 0.2), rounds=3)
    by = {c.name: (c, a) for c, a in cells}
    c, a = by["fedrecattack-0.2-krum"]
    assert c.cfg.aggregation == "krum" and c.cfg.users_per_node == 16 and c.cfg.byzantine_nodes == 3
    assert (a.sybils, a.nodes, a.first_partition) == (40, 3, load_federation(c.cfg).n_nodes) == (40, 3, 13)
    assert by["fedrecattack-0.05-krum"][1].nodes == 1 and by["clean-krum"][0].cfg.byzantine_nodes == 3
    assert by["fedrecattack-0.2-none"][1].nodes == 1  # two honest nodes of 100: the sybils fit one


def test_attack_sweep_runs_through_flower_with_a_robust_rule(tmp_path):
    """End to end through Flower's simulation engine: a clean and an attacked run (the
    sybils as extra SuperNodes, inflating their count) under FedMedian; every reply is
    accepted and the report is written."""
    import csv

    from fedrec_app.simulations.attacks.poisoning import run_attacks

    report = run_attacks(tmp_path, data="synthetic:64x30:0", attacks=("boost+inflate",), defences=("median",),
                         fractions=(0.1,), rounds=2, say=lambda *_: None)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert sorted(r["attack"] for r in rows) == ["boost+inflate", "none"]
    assert all(float(r["test_ndcg@10"]) >= 0 for r in rows)
    for run in ("clean-median-seed0", "boost+inflate-0.1-median-seed0"):
        log = list(csv.DictReader(open(tmp_path / "runs" / run / "rounds.csv")))
        sent = {int(float(r["sent"])) for r in log if r.get("sent")}
        assert sent == ({4} if run.startswith("clean") else {5}), (run, sent)  # 4 honest nodes of 16 (+1 malicious)
        assert all(float(r.get("rejected") or 0) == 0 for r in log)
    assert "median" in report.read_text()
