"""Private ALS (fedrec.als, the node's rounds, the ALS server): dense oracles,
partition invariance, sensitivity, noise scale, accounting against Opacus, the
config's refusals, and one run through Flower equal to the same math done directly."""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from opacus.accountants import RDPAccountant

from fedrec import als
from fedrec.config import ConfigError, FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.privacy.mechanisms import PrivateALS, mechanisms_of


def _train(n_users=12, n_items=15, p=0.4, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    m = (rng.random((n_users, n_items)) < p).astype(np.float32)
    m[:, 0] = 1  # every user has at least one item
    return sp.csr_matrix(m)


def test_user_solve_is_the_dense_normal_equations():
    train = _train()
    V = np.random.default_rng(1).standard_normal((15, 3))
    users = np.array([0, 3, 7, 11])
    U = als.user_vectors(V, train, users, alpha=0.3, reg_user=0.7)
    for j, u in enumerate(users):
        items = train[u].indices
        A = V[items].T @ V[items] + 0.3 * V.T @ V + 0.7 * np.eye(3)
        np.testing.assert_allclose(U[j], np.linalg.solve(A, V[items].sum(0)), rtol=1e-10, atol=1e-12)


def test_item_solve_and_statistics_match_the_dense_formulas():
    train = _train()
    users = np.arange(12)
    U = np.random.default_rng(2).standard_normal((12, 3))
    Uc = als.clip_rows(U, 0.5)
    np.testing.assert_allclose(np.linalg.norm(Uc, axis=1), np.minimum(np.linalg.norm(U, axis=1), 0.5))
    b, K = als.pass_statistics(Uc, train, users, cap=100, seed=0)  # no cap binds
    dense = train.toarray()
    np.testing.assert_allclose(b, dense.T @ Uc, atol=1e-12)
    np.testing.assert_allclose(K, Uc.T @ Uc, atol=1e-12)
    counts = als.count_statistics(train, users, cap=100, seed=0)
    np.testing.assert_array_equal(counts, dense.sum(0))
    head = als.head_items(counts, 0.5)
    V = als.item_vectors(b, K, counts, head, n_users=12, alpha=0.2, reg=0.1)
    for i in range(15):
        if head[i]:
            A = (counts[i] / 12 + 0.2) * K + 0.1 * np.eye(3)
            np.testing.assert_allclose(V[i], np.linalg.solve(A, b[i]), rtol=1e-9, atol=1e-12)
        else:
            assert not V[i].any()


def test_statistics_are_sums_over_any_partition_of_users():
    train = _train(n_users=20, n_items=30, seed=4)
    V = np.random.default_rng(3).standard_normal((30, 4))
    users = np.arange(20)
    U = als.clip_rows(als.user_vectors(V, train, users, alpha=0.2, reg_user=1.0), 0.1)
    b, K = als.pass_statistics(U, train, users, cap=3, seed=5)
    c = als.count_statistics(train, users, cap=3, seed=5)
    parts = np.array_split(np.random.default_rng(6).permutation(20), 3)
    bs, Ks, cs = 0, 0, 0
    for part in parts:
        Up = als.clip_rows(als.user_vectors(V, train, part, alpha=0.2, reg_user=1.0), 0.1)
        bp, Kp = als.pass_statistics(Up, train, part, cap=3, seed=5)
        bs, Ks, cs = bs + bp, Ks + Kp, cs + als.count_statistics(train, part, cap=3, seed=5)
    np.testing.assert_allclose(bs, b, atol=1e-12)
    np.testing.assert_allclose(Ks, K, atol=1e-12)
    np.testing.assert_array_equal(cs, c)


def test_a_pass_adds_each_user_to_its_own_head_items_only():
    """With the trained head given, a user's vector goes to its items in the head (all
    of them when they are at most the pass cap, else a subset of that size), and the
    node reads the head back from the item biases the server sends."""
    train = _train(n_users=12, n_items=15, p=0.5, seed=3)
    users = np.arange(12)
    U = np.random.default_rng(4).standard_normal((12, 3))
    head = np.zeros(15, dtype=bool)
    head[[0, 2, 5, 7, 11]] = True
    dense = train.toarray()
    b, K = als.pass_statistics(U, train, users, cap=5, seed=0, head=head)  # no user has more than 5 head items
    np.testing.assert_allclose(b, (dense * head).T @ U, atol=1e-12)
    np.testing.assert_allclose(K, U.T @ U, atol=1e-12)
    b2, _ = als.pass_statistics(U, train, users, cap=2, seed=0, head=head)
    alone = [als.pass_statistics(U[[j]], train, np.array([j]), cap=2, seed=0, head=head)[0] for j in users]
    for j, bj in zip(users, alone):  # each user in at most 2 rows, all of them its own head items
        mine = np.flatnonzero(np.abs(bj).sum(1) > 0)
        assert len(mine) == min(2, int((dense[j] * head).sum())) and set(mine) <= set(np.flatnonzero(dense[j] * head))
    np.testing.assert_allclose(sum(alone), b2, atol=1e-12)
    counts = np.arange(15.0)
    mask = als.head_items(counts, 0.3)
    np.testing.assert_array_equal(als.head_of(als.tail_bias(counts, mask)), mask)


def test_a_user_with_no_history_ranks_the_head_by_popularity_and_the_others_rank_as_before():
    """The head's biases order it by the noisy counts for a zero user vector (the cold-start
    curve's k = 0, once a tie of every trained item) and change no ranking of a user with a vector."""
    import torch

    rng = np.random.default_rng(3)
    n, d = 300, 16
    counts = rng.normal(50, 30, n)  # noisy counts: some negative
    head = als.head_items(counts, 0.2)
    bias = als.tail_bias(counts, head)
    V = (rng.standard_normal((n, d)) * 0.1).astype(np.float32)
    cold = (torch.zeros(1, d) @ torch.as_tensor(V).T + torch.as_tensor(bias)).numpy()[0]
    top = np.argsort(-cold, kind="stable")[:10]
    np.testing.assert_array_equal(top, np.argsort(-np.where(head, counts, -np.inf), kind="stable")[:10])
    U = torch.as_tensor(rng.standard_normal((50, d)).astype(np.float32))
    flat = np.where(head, 0.0, bias).astype(np.float32)  # the head tied at 0, as before
    now = (U @ torch.as_tensor(V).T + torch.as_tensor(bias)).numpy()
    before = (U @ torch.as_tensor(V).T + torch.as_tensor(flat)).numpy()
    assert (np.argsort(-now, axis=1, kind="stable") == np.argsort(-before, axis=1, kind="stable")).mean() > 0.999


def test_capped_items_depend_on_the_user_alone():
    items = np.arange(100, 180)
    a = als.capped_items(items, user=7, cap=10, seed=3)
    assert len(a) == 10 and set(a) <= set(items)
    np.testing.assert_array_equal(a, als.capped_items(items[::-1], user=7, cap=10, seed=3))
    assert not np.array_equal(a, als.capped_items(items, user=8, cap=10, seed=3))
    np.testing.assert_array_equal(als.capped_items(items[:4], user=7, cap=10, seed=3), items[:4])


@pytest.mark.parametrize("with_head", [False, True])
def test_one_user_moves_the_releases_by_at_most_the_sensitivity(with_head):
    cap, clip = 5, 0.2
    train = _train(n_users=10, n_items=40, p=0.5, seed=7)
    train = sp.csr_matrix(np.vstack([train.toarray(), np.ones((1, 40), np.float32)]))  # user 10: every item
    users = np.arange(11)
    head = (np.arange(40) % 3 == 0) if with_head else None  # 14 trained items: user 10 has more than `cap`
    V = np.random.default_rng(8).standard_normal((40, 4))
    U = als.clip_rows(als.user_vectors(V, train, users, alpha=0.2, reg_user=0.01), clip)
    b, K = als.pass_statistics(U, train, users, cap=cap, seed=1, head=head)
    c = als.count_statistics(train, users, cap=cap, seed=1)
    worst = 0.0
    for j in users:
        rest = users[users != j]
        b2, K2 = als.pass_statistics(U[rest], train, rest, cap=cap, seed=1, head=head)
        c2 = als.count_statistics(train, rest, cap=cap, seed=1)
        touched = np.abs(b - b2).sum(1) > 0
        assert touched.sum() <= cap  # at most `cap` item rows touched
        if with_head:
            assert not touched[~head].any()  # never a row outside the trained head
        assert np.linalg.norm(c - c2) <= als.count_sensitivity(cap) + 1e-12
        change = math.sqrt(np.sum((b - b2) ** 2) + np.sum(((K - K2) / clip) ** 2))
        assert change <= als.pass_sensitivity(cap, clip) + 1e-12
        worst = max(worst, change)
    # the bound is attained by a user at the clip with at least `cap` items
    assert np.linalg.norm(U[10]) == pytest.approx(clip)
    assert worst == pytest.approx(als.pass_sensitivity(cap, clip))


def test_noise_has_the_stated_scale_and_the_gram_stays_psd():
    rng = np.random.default_rng(0)
    z, cap, clip = 1.5, 8, 0.1
    b = np.zeros((4000, 6))
    K = 100.0 * np.eye(6)  # far from the PSD boundary: the projection leaves the noise as it is
    bn, Kn = als.noisy_pass(b, K, noise_multiplier=z, cap=cap, clip=clip, rng=rng)
    assert bn.std() == pytest.approx(z * clip * math.sqrt(cap + 1), rel=0.02)
    offdiag = np.stack([als.noisy_pass(b[:1], K, noise_multiplier=z, cap=cap, clip=clip, rng=rng)[1][0, 1]
                        for _ in range(3000)])
    assert offdiag.std() == pytest.approx(z * clip ** 2 * math.sqrt(cap + 1) / math.sqrt(2), rel=0.05)
    _, Kneg = als.noisy_pass(b[:1], np.zeros((6, 6)), noise_multiplier=z, cap=cap, clip=clip, rng=rng)
    np.testing.assert_allclose(Kneg, Kneg.T)
    assert np.linalg.eigvalsh(Kneg).min() >= -1e-12
    cn = als.noisy_counts(np.zeros(20000), noise_multiplier=z, cap=cap, rng=rng)
    assert cn.std() == pytest.approx(z * math.sqrt(cap), rel=0.02)


def test_epsilon_is_opacus_rdp_over_the_counts_and_every_pass():
    mech = PrivateALS(noise_multiplier=2.0, cap=50, pass_cap=20, clip=0.05, passes=3, delta=1e-5)
    acc = RDPAccountant()
    acc.history = [(2.0, 1.0, 4)]
    assert mech.epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert mech.epsilon() == pytest.approx(4.7285, abs=5e-4)  # pinned (Opacus 1.6 RDP)
    assert mech.epsilon(0) == 0 and mech.epsilon(1) < mech.epsilon(2) < mech.epsilon()
    assert mech.epsilon(10) == mech.epsilon()  # no release after the last pass
    cfg = resolved(FedConfig(als=True, als_target_epsilon=8.0, als_passes=3))
    assert PrivateALS.from_config(cfg).epsilon() == pytest.approx(8.0, abs=0.02)
    assert [m.unit for m in mechanisms_of(cfg)] == ["user-level"]
    assert mechanisms_of(FedConfig(als=True)) == []  # ALS without noise: no epsilon claimed


@pytest.mark.parametrize("kw, key", [
    (dict(als=True, model="gmf"), "model"),
    (dict(als=True, user_dp="client", user_noise_multiplier=1.0), "als"),
    (dict(als=True, noise_multiplier=1.0), "als"),
    (dict(als=True, user_sample_rate=0.5), "als"),
    (dict(als=True, secure_aggregation=True), "als"),
    (dict(als_target_epsilon=8.0), "als"),
    (dict(als=True, als_noise_multiplier=1.0, als_target_epsilon=8.0), "als-target-epsilon"),
    (dict(als=True, als_head=1.5), "als-head"),
    (dict(als=True, als_passes=-1), "als-passes"),
])
def test_config_refuses_what_the_accounting_does_not_cover(kw, key):
    with pytest.raises(ConfigError) as e:
        FedConfig(**kw)
    assert e.value.key == key
    assert "\n" not in str(e.value)


def _direct(cfg: FedConfig, fed, V0: np.ndarray) -> list[np.ndarray]:
    """The item tables of every pass, computed in one process from all users at once (the
    server's noise as ``reproducible-noise`` derives it from the seed)."""
    from fedrec.privacy.randomness import DPRandomness

    train, users = fed.split.train, np.concatenate(fed.cohorts)
    rng = DPRandomness.from_seed(cfg.seed, 1, 17).numpy()
    counts = als.noisy_counts(als.count_statistics(train, users, cap=cfg.als_cap, seed=cfg.seed),
                              noise_multiplier=cfg.als_noise_multiplier, cap=cfg.als_cap, rng=rng)
    head = als.head_items(counts, cfg.als_head)
    V = V0.astype(np.float32).copy()
    V[~head] = 0
    out = []
    for t in range(cfg.als_passes):
        U = als.user_vectors(V, train, users, alpha=cfg.als_alpha, reg_user=cfg.als_user_reg)
        b, K = als.pass_statistics(als.clip_rows(U, cfg.als_clip), train, users, cap=cfg.als_pass_cap, seed=cfg.seed,
                                   head=head)
        b, K = als.noisy_pass(b, K, noise_multiplier=cfg.als_noise_multiplier, cap=cfg.als_pass_cap, clip=cfg.als_clip,
                              rng=DPRandomness.from_seed(cfg.seed, t + 2, 17).numpy())
        V = als.item_vectors(b, K, counts, head, n_users=len(users), alpha=cfg.als_alpha,
                             reg=cfg.als_reg * cfg.als_clip ** 2 * len(users)).astype(np.float32)
        out.append(V)
    return out


@pytest.mark.slow
def test_private_als_through_flower_is_the_same_math(tmp_path, monkeypatch):
    """Through Flower's simulation engine (4 nodes): the replies hold only counts and
    per-item sums (no user vector), the item table of each pass equals the direct
    computation, and metrics.json reports the user-level epsilon of all releases."""
    from fedrec.federated.federation import federated_model, load_federation
    from fedrec_app.server import als as als_server
    from fedrec_app.simulations.simulate import simulate

    seen, tables = [], {}
    orig = als_server.ALSStrategy.aggregate_train

    def aggregate_train(self, rnd, replies):
        replies = list(replies)
        for m in replies:
            seen.append({k: v.numpy().shape for rec in m.content.array_records.values() for k, v in rec.items()})
        res = orig(self, rnd, replies)
        tables[rnd] = res[0]["item_embedding"].numpy().copy()
        return res

    monkeypatch.setattr(als_server.ALSStrategy, "aggregate_train", aggregate_train)
    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:24x50:1", users_per_node=6, dim=4, als=True, als_passes=2, als_cap=4,
                    als_pass_cap=3, als_head=0.5, als_noise_multiplier=1.0, out=str(out), reproducible_noise=True)
    simulate(cfg, num_cpus=2)

    assert len(seen) == 4 * 3  # 4 nodes x (counts + 2 passes)
    assert all(set(s) == {"counts"} for s in seen[:4])
    assert all(s == {"b": (50, 4), "K": (4, 4)} for s in seen[4:])
    fed = load_federation(cfg)
    V0 = federated_model(cfg, fed).global_params()["item_embedding"]
    for t, V in enumerate(_direct(cfg, fed, V0)):
        np.testing.assert_allclose(tables[t + 2], V, rtol=1e-5, atol=1e-6)
    doc = json.loads((out / "metrics.json").read_text())
    priv = doc["privacy"]
    acc = RDPAccountant()
    acc.history = [(1.0, 1.0, 3)]
    assert priv["unit"] == "user-level" and priv["epsilon"] == pytest.approx(acc.get_epsilon(1e-5))
    assert priv["noise"] == "reproducible" and "no one who knows" in priv["holds_against"]
    assert doc["selected"]["round"] in (2, 3) and 0 <= doc["test"]["ndcg@10"] <= 1
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3] and "valid/ndcg@10" not in rows[0]
    assert rows[-1]["user-epsilon"] == pytest.approx(priv["epsilon"])


def test_populations_are_nested_subsets_with_the_whole_catalogue():
    from fedrec.federated.federation import load_federation

    small = load_federation(FedConfig(data="synthetic:60x40:2", max_users=10))
    large = load_federation(FedConfig(data="synthetic:60x40:2", max_users=25))
    full = load_federation(FedConfig(data="synthetic:60x40:2"))
    users = lambda f: set(np.flatnonzero(np.diff(f.split.train.indptr) > 0).tolist())  # noqa: E731
    assert len(users(small)) == small.n_users == 10 and len(users(large)) == 25
    assert users(small) < users(large) < users(full)
    assert small.split.train.shape == full.split.train.shape  # every item still ranked
    kept = sorted(users(small))
    for m in ("train", "valid", "test"):  # the kept users' rows are untouched, the others' empty
        a, b = getattr(small.split, m), getattr(full.split, m)
        assert (a[kept] != b[kept]).nnz == 0 and a.nnz == a[kept].nnz
    with pytest.raises(ConfigError):
        FedConfig(max_users=-1)


def test_frontier_cells_pair_each_private_cell_with_its_twin():
    from dataclasses import fields

    from fedrec_app.simulations.studies.frontier import frontier_cells

    cells = frontier_cells("synthetic:40x30:1", epsilons=(8.0, 1.0), populations=(0, 20))
    by = {c.name: c for c in cells}
    # populations x (mechanisms x (twin + 2 epsilons), ALS: twins of its low and interaction presets, 2nd unit)
    assert len(cells) == 2 * (3 * 3 + 2 + 2)
    for mech, noise_keys in (("private-als", ("als_target_epsilon",)),
                             ("dp-sgd", ("target_epsilon", "prior_noise")),
                             ("dp-fedavg", ("user_target_epsilon", "user_dp", "prior_noise"))):
        twin, priv = by[f"{mech}-non-private-u20"], by[f"{mech}-eps8-u20"]
        if mech == "private-als":  # below epsilon 8 its own preset, with its own twin
            low, low_twin = by["private-als-eps1-u20"], by["private-als-non-private-low-u20"]
            assert low.cfg.als_head < priv.cfg.als_head and low.labels["preset"] == low_twin.labels["preset"] == "low"
            assert {f.name for f in fields(FedConfig)
                    if getattr(low.cfg, f.name) != getattr(low_twin.cfg, f.name)} == {"als_target_epsilon"}
        assert twin.labels["unit"] == "none" and priv.labels["epsilon"] == 8.0 and priv.labels["users"] == 20
        differ = {f.name for f in fields(FedConfig) if getattr(twin.cfg, f.name) != getattr(priv.cfg, f.name)}
        assert differ <= set(noise_keys), (mech, differ)  # same preset: only the noise differs
        assert not (twin.cfg.dp or twin.cfg.user_level or twin.cfg.als_private)
    inter = by["private-als-ieps8-u20"]
    assert inter.cfg.als_unit == "interaction-level" and inter.labels["unit"] == "interaction-level"
    i_twin = by["private-als-non-private-interaction-u20"]
    assert inter.labels["preset"] == i_twin.labels["preset"] == "interaction"
    assert {f.name for f in fields(FedConfig)
            if getattr(inter.cfg, f.name) != getattr(i_twin.cfg, f.name)} == {"als_target_epsilon", "als_unit"}
    assert (resolved(by["private-als-eps1"].cfg).als_noise_multiplier
            > resolved(by["private-als-eps8"].cfg).als_noise_multiplier)


def test_frontier_report_and_plot_from_rows(tmp_path):
    from fedrec_app.simulations.studies.frontier import plot_frontier, write_frontier_report

    rows = []
    for s, (a, b, m, p) in enumerate([(0.05, 0.06, 0.04, 0.039), (0.052, 0.061, 0.04, 0.041),
                                      (0.054, 0.059, 0.04, 0.04)]):
        rows += [{"mechanism": "private-als", "unit": "user-level", "epsilon": 8.0, "seed": s, "users": 100,
                  "ndcg@10": a, "hr@10": 0.1, "coverage@10": 0.05},
                 {"mechanism": "private-als", "unit": "none", "epsilon": math.inf, "seed": s, "users": 100,
                  "ndcg@10": b, "hr@10": 0.1, "coverage@10": 0.2},
                 {"mechanism": "MostPop", "unit": "none", "epsilon": math.inf, "seed": s, "users": 100,
                  "ndcg@10": m, "hr@10": 0.1, "coverage@10": 0.01},
                 {"mechanism": "private-mostpop", "unit": "user-level", "epsilon": 8.0, "seed": s, "users": 100,
                  "ndcg@10": p, "hr@10": 0.1, "coverage@10": 0.01}]
    # a second unit at the same epsilon on another preset, with its own twin
    rows += [{"mechanism": "private-als", "unit": "interaction-level", "epsilon": 8.0, "seed": s, "users": 100,
              "ndcg@10": 0.045, "hr@10": 0.1, "coverage@10": 0.05, "preset": "low"} for s in range(3)]
    rows += [{"mechanism": "private-als", "unit": "none", "epsilon": math.inf, "seed": s, "users": 100,
              "ndcg@10": 0.05, "hr@10": 0.1, "coverage@10": 0.05, "preset": "low"} for s in range(3)]
    for r in rows:
        if r["mechanism"] == "private-als" and "preset" not in r:
            r["preset"] = "high"
    plots = plot_frontier(tmp_path, rows)
    assert [p.name for p in plots] == ["frontier-100.png"] and plots[0].stat().st_size > 0
    text = write_frontier_report(tmp_path, rows, data="x", command="fedrec sweep frontier", plot=plots,
                                 seconds=1.0).read_text()
    line = next(x for x in text.splitlines() if x.startswith("| private-als"))
    assert "| – |" in line and "0.0520 ± 0.0020" in line and "0.0600" in line and "87%" in line  # mean ± sd, twin, kept
    assert "0.0400 ± 0.0010" in line and "+0.0120 (6.0 sd)" in line  # private MostPop, margin over MostPop
    inter = next(x for x in text.splitlines() if x.startswith("| private-als | interaction-level"))
    assert "| 0.0500 | 90% |" in inter  # kept: against the twin of its own preset
    one = write_frontier_report(tmp_path, [r for r in rows if r["seed"] == 0], data="x", command="c", plot=plots,
                                seconds=1.0).read_text()
    line = next(x for x in one.splitlines() if x.startswith("| private-als | user-level"))
    assert "+0.0100 (one seed: no sd) | 1 |" in line  # no spread, no margin in standard deviations


def test_private_als_release_of_one_user_leaks_without_noise_and_little_with_it():
    """The noise is secret, so the noised AUC varies per run: over 20 runs here its mean was
    0.542 (counts; sd 0.011) and 0.505 (pass; sd 0.014), against 0.720 without noise. One
    user's counts at the epsilon-8 preset's noise still lift its items a little above chance:
    the bound below is that, with a margin of about five run-to-run sd."""
    from fedrec_app.simulations.attacks.leakage import als_attack

    train = _train(n_users=60, n_items=80, p=0.15, seed=9)
    users = np.arange(60)
    clear = als_attack(train, users, noise_multiplier=0.0, cap=5, clip=0.05, dim=4)
    noised = als_attack(train, users, noise_multiplier=1.3, cap=5, clip=0.05, dim=4)  # the epsilon-8 preset's noise
    assert clear["counts"]["auc"] > 0.6 and clear["pass"]["auc"] > 0.6  # the capped items stand out
    for a in ("counts", "pass"):
        assert abs(noised[a]["auc"] - 0.5) < 0.1 and noised[a]["auc"] < clear[a]["auc"] - 0.1, (a, noised[a])


def test_interaction_level_epsilon_of_private_als_is_computed_not_assumed():
    mech = PrivateALS(noise_multiplier=2.0, cap=50, pass_cap=20, clip=0.05, passes=3, delta=1e-5)
    acc = RDPAccountant()
    acc.history = [(2.0 * 5.0, 1.0, 1), (1.0, 1.0, 3)]  # counts: z sqrt(cap / 2); passes: z / 2
    assert mech.interaction_epsilon() == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert mech.interaction_epsilon() > mech.epsilon()
    # an interaction moves a pass by at most twice a user's bound: removing one turns the user's vector
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float32))
    V = np.array([[1.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])
    full = als.clip_rows(als.user_vectors(V, train, np.array([0]), alpha=0.0, reg_user=1e-3), 0.1)
    less = als.clip_rows(als.user_vectors(V, train, np.array([1]), alpha=0.0, reg_user=1e-3), 0.1)
    assert np.linalg.norm(full - less) == pytest.approx(2 * 0.1)  # opposite ends of the clip ball: twice a user


def test_a_resolved_als_config_is_the_one_the_server_runs_and_records():
    cfg = resolved(FedConfig(als=True, als_passes=2, num_server_rounds=500, patience=5, eval_every=10))
    assert (cfg.num_server_rounds, cfg.eval_every, cfg.patience) == (3, 1, 0)  # a sweep finds its finished runs
    assert resolved(FedConfig(als=True, eval_every=0)).eval_every == 0  # evaluation off stays off


def test_als_noise_calibrated_for_either_unit():
    user = resolved(FedConfig(als=True, als_target_epsilon=8.0))
    inter = resolved(FedConfig(als=True, als_target_epsilon=8.0, als_unit="interaction-level"))
    assert PrivateALS.from_config(inter).interaction_epsilon() == pytest.approx(8.0, rel=1e-3)
    assert PrivateALS.from_config(inter).interaction_epsilon() <= 8.0
    assert PrivateALS.from_config(user).epsilon() == pytest.approx(8.0, abs=0.02)
    assert inter.als_noise_multiplier > user.als_noise_multiplier  # an interaction costs more than a user's share


def test_the_als_server_sums_good_replies_and_rejects_malformed_ones(monkeypatch):
    from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedrec_app.server.als import ALSStrategy

    for attr in ("_task_id", "_run_id", "_node_id"):  # the identity a server process would have (Message needs it)
        monkeypatch.setattr(TaskIdentity, attr, 1)

    def reply(node, arrays, n=3):
        out = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                              "metrics": MetricRecord({"num-examples": n})})
        return Message(content=content, reply_to=out)

    cfg = resolved(FedConfig(als=True, als_head=0.5, als_cap=2))
    s = ALSStrategy(cfg, n_nodes=3, n_users=9, n_items=4, dim=2)
    s.current = {"item_embedding": np.ones((4, 2), np.float32), "item_bias": np.zeros(4, np.float32)}
    params, _ = s.aggregate_train(1, [reply(1, {"counts": [3.0, 0, 1, 2]}), reply(2, {"counts": [1.0, 0, 0, 2]}),
                                      reply(3, {"counts": [1.0, 2]})])  # node 3: wrong shape
    assert [r[1] for r in s.record.rejected] == [3] and "shape" in s.record.rejected[0][2]
    np.testing.assert_array_equal(s.counts, [4, 0, 1, 4])  # no noise: the sum of the good replies
    np.testing.assert_array_equal(s.head, [True, False, False, True])
    emb = params["item_embedding"].numpy()
    assert not emb[[1, 2]].any() and (emb[[0, 3]] == 1).all()  # untrained rows zeroed, trained kept
    bias = params["item_bias"].numpy()
    # the head (0, 3) by count (a tie: the later item first), just above 0; the tail far below, by count
    assert 0 <= bias[0] < bias[3] <= als.HEAD_BIAS_SCALE and bias[2] > bias[1] and bias.max() - bias[1:3].max() > 100
    K = np.eye(2)
    params, _ = s.aggregate_train(2, [reply(1, {"b": np.ones((4, 2)), "K": K}),
                                      reply(2, {"b": np.ones((4, 2)), "K": K})])
    V = params["item_embedding"].numpy()
    reg = cfg.als_reg * cfg.als_clip ** 2 * 9
    np.testing.assert_allclose(V[0], 2 / ((4 / 9 + cfg.als_alpha) * 2 + reg), rtol=1e-6)
    assert not V[[1, 2]].any()


def test_one_run_audit_of_private_als_within_claim_and_negative_control_caught():
    from fedrec_app.simulations.attacks.audit import audit_als

    real = audit_als(noise_multiplier=3.0, m=300, guesses=100, seed=1)
    broken = audit_als(noise_multiplier=3.0, m=300, guesses=100, seed=1, negative_control=True)
    assert real["eps_claimed"] == broken["eps_claimed"] == pytest.approx(2.03, abs=0.01)
    assert real["eps_lower"] <= real["eps_claimed"]
    assert broken["correct"] == broken["guesses"] and broken["eps_lower"] > broken["eps_claimed"]


def test_dp_fest_cells_pair_each_unit_with_its_own_twin():
    from dataclasses import fields

    from fedrec_app.simulations.studies.frontier import FEST_PRESET, frontier_cells

    cells = frontier_cells("synthetic:40x30:1", mechanisms=("dp-fest",), epsilons=(8.0, 2.0))
    by = {c.name: c for c in cells}
    assert sorted(by) == ["dp-fest-eps2", "dp-fest-eps8", "dp-fest-ieps2", "dp-fest-ieps8",
                          "dp-fest-non-private-interaction-level", "dp-fest-non-private-user-level"]
    for unit, priv, keys in (("interaction-level", "dp-fest-ieps8", {"target_epsilon", "prior_noise"}),
                             ("user-level", "dp-fest-eps8", {"user_target_epsilon", "user_dp", "prior_noise"})):
        twin, p = by[f"dp-fest-non-private-{unit}"], by[priv]
        assert twin.labels["preset"] == p.labels["preset"] == unit and p.labels["unit"] == unit
        assert twin.cfg.train_head == p.cfg.train_head == FEST_PRESET[unit]["train_head"] > 0
        differ = {f.name for f in fields(FedConfig) if getattr(twin.cfg, f.name) != getattr(p.cfg, f.name)}
        assert differ <= keys, (unit, differ)
        assert not (twin.cfg.dp or twin.cfg.user_level)


@pytest.mark.parametrize("mech, server_opt, rounds",
                         [("sasrec-dp-fedavg", "sgd", 60), ("sasrec-dp-fedadam", "adam", 100)])
def test_sequential_frontier_cells_differ_from_their_twin_only_in_the_mechanism(mech, server_opt, rounds):
    from dataclasses import fields

    from fedrec_app.simulations.studies.frontier import frontier_cells

    by = {c.name: c for c in frontier_cells("synthetic:40x30:1", mechanisms=(mech,), epsilons=(8.0,))}
    assert sorted(by) == [f"{mech}-eps8", f"{mech}-non-private"]
    twin, p = by[f"{mech}-non-private"], by[f"{mech}-eps8"]
    assert p.cfg.model == twin.cfg.model == "sasrec" and p.labels["unit"] == "user-level"
    assert p.cfg.server_opt == twin.cfg.server_opt == server_opt
    assert p.cfg.num_server_rounds == twin.cfg.num_server_rounds == rounds
    differ = {f.name for f in fields(FedConfig) if getattr(twin.cfg, f.name) != getattr(p.cfg, f.name)}
    assert differ == {"user_dp", "user_target_epsilon"}, differ
    assert not twin.cfg.user_level and p.cfg.user_level
    assert frontier_cells("synthetic:40x30:1", mechanisms=(mech,), epsilons=(8.0,),
                          rounds=7)[0].cfg.num_server_rounds == 7
