"""Hand-computed oracles for fedrec.metrics (ranking, sampled, beyond, groups, aggregate)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import scipy.sparse as sp

import fedrec.metrics as fm
import fedrec.metrics.ranking as ranking_mod
from fedrec.metrics import (
    activity_groups,
    age_groups,
    aggregate_metric_sums,
    average_popularity,
    coverage,
    coverage_from_counts,
    gender_groups,
    group_means,
    intra_list_diversity,
    metric_sums,
    metrics_from_ranks,
    novelty,
    per_user_diversity,
    sample_negatives,
    sampled_metrics,
    sampled_target_ranks,
    target_ranks,
    top_k,
)


def csr(rows):
    return sp.csr_matrix(np.asarray(rows, dtype=np.float32))


def onehot(n_items, *items_per_user):
    m = np.zeros((len(items_per_user), n_items), dtype=np.float32)
    for u, items in enumerate(items_per_user):
        m[u, list(items)] = 1
    return sp.csr_matrix(m)


L2 = lambda r: 1.0 / math.log2(r + 2)  # noqa: E731  (gain of a 0-based rank)


# --------------------------------------------------------------------------- package


def test_all_exports_exist():
    # fedrec.metrics.evaluate (the attribute) is the function; the module is in sys.modules.
    names = ("ranking", "sampled", "beyond", "groups", "aggregate", "evaluate")
    for mod in [fm] + [importlib.import_module(f"fedrec.metrics.{n}") for n in names]:
        assert mod.__all__
        for name in mod.__all__:
            assert hasattr(mod, name), (mod.__name__, name)


# --------------------------------------------------------------------------- full ranking


def test_single_target_excluded_items_never_counted():
    # item:      0    1    2    3    4    5
    s = np.array([[0.1, 0.9, 0.4, 0.8, 0.3, 0.7]])
    t = onehot(6, {3})
    # Without a mask only item 1 (0.9) beats the target (0.8): rank 1.
    r = target_ranks(s, t, None)
    assert r.ranks.tolist() == [1] and r.n_candidates.tolist() == [6]
    # Masking item 1 (a training item) leaves nothing above: rank 0, 5 candidates.
    r = target_ranks(s, t, onehot(6, {1}))
    assert r.ranks.tolist() == [0] and r.n_candidates.tolist() == [5]
    assert r.rows.tolist() == [0] and r.items.tolist() == [3]


def test_multi_target_oracle():
    # item:      0    1    2    3    4    5
    s = np.array([[0.5, 0.9, 0.2, 0.8, 0.1, 0.6]])
    # Item 1 excluded; candidates by score: 3 (.8), 5 (.6), 0 (.5), 2 (.2), 4 (.1).
    # Targets {0, 2}: rank(0) = 2, rank(2) = 3.
    r = target_ranks(s, onehot(6, {0, 2}), onehot(6, {1}))
    assert r.ranks.tolist() == [2, 3]
    assert r.n_targets.tolist() == [2] and r.n_candidates.tolist() == [5]
    m = r.metrics(ks=(2, 4))
    # @2: no hit.
    assert m["hr@2"][0] == 0 and m["recall@2"][0] == 0 and m["ndcg@2"][0] == 0 and m["map@2"][0] == 0
    # @4: both hit. recall 2/2, precision 2/4.
    assert m["hr@4"][0] == 1 and m["recall@4"][0] == 1 and m["precision@4"][0] == 0.5
    # DCG = 1/log2(4) + 1/log2(5) = 0.5 + 0.430677; IDCG (2 targets) = 1 + 1/log2(3).
    assert m["ndcg@4"][0] == pytest.approx((0.5 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    # AP@4 = (P@rank2 = 1/3 + P@rank3 = 2/4) / min(4, 2) = 5/12.
    assert m["map@4"][0] == pytest.approx(5 / 12)
    # MRR = 1 / (2 + 1).
    assert m["mrr"][0] == pytest.approx(1 / 3)
    # AUC: non-targets {3 (.8), 5 (.6), 4 (.1)}; target 0 beats only 4, target 2
    # beats only 4: 2 wins out of 2 * 3 pairs.
    assert m["auc"][0] == pytest.approx(1 / 3)


def test_metrics_from_ranks_cutoff_normalisation():
    # 3 targets at ranks 0, 1, 5; k = 2.
    # hits@2 = 2: recall 2/3, precision 2/2, NDCG = (1 + 1/log2 3) / IDCG(min(2,3)=2) = 1,
    # AP@2 = (1/1 + 2/2) / min(2, 3) = 1.
    m = metrics_from_ranks([np.array([0, 1, 5])], [3], [10], ks=(2,))
    assert m["recall@2"][0] == pytest.approx(2 / 3)
    assert m["precision@2"][0] == 1.0
    assert m["ndcg@2"][0] == pytest.approx(1.0)
    assert m["map@2"][0] == pytest.approx(1.0)
    assert m["mrr"][0] == 1.0
    # AUC: 7 non-targets; targets at 0 and 1 have none above, the one at rank 5
    # has 5 - 2 = 3 above: 1 - 3 / (3 * 7).
    assert m["auc"][0] == pytest.approx(1 - 3 / 21)


def test_metrics_from_ranks_several_users_and_2d_input():
    # user 0: one target at rank 3 of 6 candidates; user 1: one at rank 0 of 4.
    m = metrics_from_ranks(np.array([[3], [0]]), [1, 1], [6, 4], ks=(1, 5))
    assert m["hr@1"].tolist() == [0.0, 1.0]
    assert m["hr@5"].tolist() == [1.0, 1.0]
    assert m["precision@5"].tolist() == [0.2, 0.2]
    assert m["ndcg@5"] == pytest.approx([1 / math.log2(5), 1.0])
    assert m["map@5"] == pytest.approx([1 / 4, 1.0])  # AP = P(rank 3) = 1/4
    assert m["mrr"] == pytest.approx([1 / 4, 1.0])
    # AUC = 1 - rank / n_negatives: 1 - 3/5 and 1 - 0/3.
    assert m["auc"] == pytest.approx([2 / 5, 1.0])
    assert list(m) == fm.ranking_metric_names((1, 5))


def test_metrics_from_ranks_validates():
    with pytest.raises(ValueError):
        metrics_from_ranks([np.array([0, 1])], [1], [5])  # more ranks than targets
    with pytest.raises(ValueError):
        metrics_from_ranks([np.array([0])], [0], [5])
    with pytest.raises(ValueError):
        metrics_from_ranks([np.array([0])], [1, 2], [5])
    with pytest.raises(ValueError):
        metrics_from_ranks([np.array([0])], [1], [5], ks=(0,))


def test_missing_ranks_count_as_misses():
    # n_targets = 2 but only one rank (0) known: recall@5 = 1/2, IDCG over 2 targets.
    m = metrics_from_ranks([np.array([0])], [2], [10], ks=(5,))
    assert m["recall@5"][0] == 0.5
    assert m["ndcg@5"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_constant_model_pessimistic_gets_worst_rank():
    # 5 items, all scored 1.0; target item 2, nothing excluded.
    s = np.ones((1, 5))
    r = target_ranks(s, onehot(5, {2}), None)
    # Every other candidate ties and counts as above: rank 4 of 0..4.
    assert r.ranks.tolist() == [4]
    m = r.metrics(ks=(1, 4))
    assert m["hr@4"][0] == 0 and m["mrr"][0] == pytest.approx(1 / 5)
    assert m["auc"][0] == 0.0  # all 4 pairs tied: losses


def test_partial_ties_pessimistic_vs_random():
    # item:      0  1  2  3  4 ; target 2 ties with 1 and 3, item 0 is above.
    s = np.array([[3.0, 2.0, 2.0, 2.0, 1.0]])
    t = onehot(5, {2})
    assert target_ranks(s, t, None).ranks.tolist() == [3]  # 1 higher + 2 tied
    # AUC pessimistic: 4 negatives, 3 ranked above-or-tied -> 1/4.
    assert target_ranks(s, t, None).metrics(ks=(1,))["auc"][0] == pytest.approx(0.25)
    seen = {int(target_ranks(s, t, None, ties="random", rng=seed).ranks[0]) for seed in range(60)}
    assert seen == {1, 2, 3}  # higher + Uniform{0, 1, 2}


def test_random_ties_uniform_for_constant_model():
    n_users, n_items = 3000, 5
    s = np.zeros((n_users, n_items))
    t = sp.csr_matrix((np.ones(n_users), (np.arange(n_users), np.full(n_users, 2))), shape=(n_users, n_items))
    r = target_ranks(s, t, None, ties="random", rng=np.random.default_rng(0))
    counts = np.bincount(r.ranks, minlength=n_items)
    assert counts.sum() == n_users and np.all(np.abs(counts - 600) < 100)
    # Reproducible with the same seed; one generator per row works too.
    again = target_ranks(s, t, None, ties="random", rng=np.random.default_rng(0))
    assert np.array_equal(r.ranks, again.ranks)
    gens = [np.random.default_rng(u) for u in range(n_users)]
    assert target_ranks(s, t, None, ties="random", rng=gens).ranks.max() <= 4


def test_random_ties_multi_target_distinct_ranks():
    # Constant model, 3 targets among 6 items: one random order per user, so the
    # three targets get distinct ranks and the metrics stay in [0, 1].
    s = np.zeros((50, 6))
    t = sp.csr_matrix(np.tile([1, 0, 1, 0, 1, 0], (50, 1)).astype(float))
    r = target_ranks(s, t, None, ties="random", rng=1)
    for ranks in r.ranks_per_user:
        assert len(set(ranks.tolist())) == 3 and ranks.max() <= 5
    m = r.metrics(ks=(1, 3, 6))
    for name, v in m.items():
        assert np.all((v >= 0) & (v <= 1 + 1e-12)), name
    assert np.all(m["recall@6"] == 1)  # all 3 targets within the 6 candidates
    # Pessimistic: each target has the 5 others above it (rank 5).
    assert target_ranks(s, t, None).ranks.tolist() == [5] * 150


def test_target_in_exclude_is_still_ranked():
    s = np.array([[0.1, 0.9, 0.4, 0.8]])
    r = target_ranks(s, onehot(4, {3}), onehot(4, {1, 3}))
    assert r.ranks.tolist() == [0] and r.n_candidates.tolist() == [3]


def test_users_without_targets_are_skipped():
    s = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.5, 0.5, 0.5]])
    r = target_ranks(s, onehot(3, set(), {0}, {1, 2}), None)
    assert r.rows.tolist() == [1, 2]
    assert r.ranks_per_user[0].tolist() == [0]
    assert r.ranks_per_user[1].tolist() == [2, 2]  # pessimistic: all tied
    assert r.n_targets.tolist() == [1, 2]


def test_non_finite_scores_raise_naming_user():
    s = np.array([[0.1, 0.2, 0.3], [0.3, np.nan, 0.1]])
    t = onehot(3, {0}, {0})
    with pytest.raises(ValueError, match="user 42"):
        target_ranks(s, t, None, user_ids=np.array([7, 42]))
    # A non-finite score on an excluded item is fine (e.g. the model's own mask).
    s2 = np.array([[0.1, -np.inf, 0.3], [0.3, np.inf, 0.1]])
    r = target_ranks(s2, t, onehot(3, {1}, {1}))
    assert r.ranks.tolist() == [1, 0]
    # A user without targets is not checked.
    assert target_ranks(s, onehot(3, {0}, set()), None).rows.tolist() == [0]


def test_bad_arguments():
    s = np.zeros((1, 3))
    with pytest.raises(ValueError):
        target_ranks(s, onehot(3, {0}), None, ties="optimistic")
    with pytest.raises(ValueError):
        target_ranks(s, onehot(4, {0}), None)
    with pytest.raises(ValueError):
        target_ranks(np.zeros(3), onehot(3, {0}), None)


def _brute_ranks(s, targets, exclude):
    out = []
    for u in range(s.shape[0]):
        tset = set(np.flatnonzero(targets[u]))
        cand = [i for i in range(s.shape[1]) if not exclude[u, i] or i in tset]
        for t in sorted(tset):
            out.append(sum(1 for c in cand if c != t and s[u, c] >= s[u, t]))
    return out


@pytest.mark.parametrize("multi", [False, True])
def test_vectorised_matches_brute_force(multi, monkeypatch):
    rng = np.random.default_rng(5)
    n_users, n_items = 30, 12
    s = rng.integers(0, 4, size=(n_users, n_items)).astype(float)  # many ties
    ex = rng.random((n_users, n_items)) < 0.3
    if multi:
        tg = (rng.random((n_users, n_items)) < 0.3) & ~ex
        monkeypatch.setattr(ranking_mod, "_CHUNK_ELEMENTS", 25)  # exercise chunking
    else:
        tg = np.zeros((n_users, n_items), dtype=bool)
        tg[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    tg[0] = False  # a user without targets
    r = target_ranks(s, sp.csr_matrix(tg), sp.csr_matrix(ex))
    assert r.ranks.tolist() == _brute_ranks(s, tg, ex)
    # Random ties: higher <= rank <= pessimistic rank, never below.
    rr = target_ranks(s, sp.csr_matrix(tg), sp.csr_matrix(ex), ties="random", rng=3)
    assert np.all(rr.ranks <= r.ranks)
    strictly = np.array(
        [
            sum(1 for c in range(n_items) if (not ex[u, c] or tg[u, c]) and s[u, c] > s[u, t])
            for u in range(n_users)
            for t in np.flatnonzero(tg[u])
        ]
    )
    assert np.all(rr.ranks >= strictly)


# --------------------------------------------------------------------------- sampled


def test_sampled_rank_hand_example():
    # item:      0    1    2    3    4    5
    s = np.array([[0.1, 0.9, 0.4, 0.8, 0.3, 0.7]])
    # Target 3 (.8) against negatives 1 (.9), 0 (.1), 5 (.7): only item 1 is above.
    r = sampled_target_ranks(s, onehot(6, {3}), np.array([[1, 0, 5]]))
    assert r.ranks.tolist() == [1] and r.n_candidates.tolist() == [4]
    m = r.metrics(ks=(1, 2), prefix="sampled_")
    assert m["sampled_hr@1"][0] == 0 and m["sampled_hr@2"][0] == 1
    assert m["sampled_ndcg@2"][0] == pytest.approx(1 / math.log2(3))
    assert m["sampled_mrr"][0] == 0.5
    assert m["sampled_auc"][0] == pytest.approx(2 / 3)  # beats 0 and 5, not 1
    # A tied negative counts as above (pessimistic): negatives 1 and a tie (item 4 set to .8).
    s2 = s.copy()
    s2[0, 4] = 0.8
    assert sampled_target_ranks(s2, onehot(6, {3}), np.array([[4, 0, -1]])).ranks.tolist() == [1]


def test_sample_negatives_excludes_positives_and_pads():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 50
    pos = rng.random((n_users, n_items)) < 0.3
    pos[0] = True
    pos[0, [7, 11]] = False  # user 0 has only 2 non-positive items
    negs = sample_negatives(sp.csr_matrix(pos), n_negatives=20, rng=np.random.default_rng(1))
    assert negs.shape == (n_users, 20)
    assert sorted(negs[0, :2].tolist()) == [7, 11] and np.all(negs[0, 2:] == -1)
    for u in range(1, n_users):
        row = negs[u]
        assert np.all(row >= 0) and len(set(row.tolist())) == 20
        assert not pos[u, row].any()
    # Fixed seed: same negatives.
    again = sample_negatives(sp.csr_matrix(pos), n_negatives=20, rng=np.random.default_rng(1))
    assert np.array_equal(negs, again)


def test_sample_negatives_uniform():
    # 4 allowed items (1, 2, 4, 5) out of 6; draw 1 negative for 4000 users.
    n = 4000
    pos = np.zeros((n, 6), dtype=bool)
    pos[:, [0, 3]] = True
    negs = sample_negatives(sp.csr_matrix(pos), n_negatives=1, rng=2).ravel()
    counts = np.bincount(negs, minlength=6)
    assert counts[0] == 0 and counts[3] == 0
    assert np.all(np.abs(counts[[1, 2, 4, 5]] - 1000) < 120)


def test_sampled_rank_consistent_with_fixed_rng():
    # Score = item id, so a target's rank is the number of its negatives with a
    # larger id; recompute it by hand from the negatives a fixed rng draws.
    n_users, n_items = 20, 30
    rng = np.random.default_rng(4)
    s = np.tile(np.arange(n_items, dtype=float), (n_users, 1))
    targets = np.zeros((n_users, n_items), dtype=bool)
    targets[np.arange(n_users), rng.integers(0, n_items, n_users)] = True
    train = (rng.random((n_users, n_items)) < 0.2) & ~targets
    positives = sp.csr_matrix(targets | train)
    negs = sample_negatives(positives, n_negatives=5, rng=np.random.default_rng(9))
    r = sampled_target_ranks(s, sp.csr_matrix(targets), negs)
    t_items = targets.argmax(axis=1)
    expected = [(negs[u] > t_items[u]).sum() for u in range(n_users)]
    assert r.ranks.tolist() == expected
    tr, m = sampled_metrics(
        s, sp.csr_matrix(targets), positives, n_negatives=5, ks=(1,), rng=np.random.default_rng(9)
    )
    assert tr.ranks.tolist() == expected
    names = ("hr@1", "recall@1", "precision@1", "ndcg@1", "map@1", "mrr", "auc")
    assert set(m) == {f"sampled_{k}" for k in names}
    assert m["sampled_hr@1"].tolist() == [float(e == 0) for e in expected]


def test_sampled_negatives_must_not_contain_targets():
    with pytest.raises(ValueError, match="row 0"):
        sampled_target_ranks(np.zeros((1, 4)), onehot(4, {2}), np.array([[1, 2]]))


# --------------------------------------------------------------------------- beyond accuracy


def test_top_k_order_ties_and_exclusion():
    # item:      0    1    2    3    4    5
    s = np.array([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5]])
    # Item 3 excluded; 1 first, then the ties at .5 by item id: 0, 2, 5; then 4.
    assert top_k(s, onehot(6, {3}), 3).tolist() == [[1, 0, 2]]
    assert top_k(s, onehot(6, {3}), 6).tolist() == [[1, 0, 2, 5, 4, -1]]
    assert top_k(s, None, 2).tolist() == [[1, 3]]
    assert top_k(s, None, 8).tolist() == [[1, 3, 0, 2, 5, 4, -1, -1]]
    with pytest.raises(ValueError):
        top_k(np.array([[np.nan, 1.0]]), None, 1)


def test_top_k_many_rows_matches_sort():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(50, 20)).astype(float)
    ex = sp.csr_matrix(rng.random((50, 20)) < 0.5)
    got = top_k(s, ex, 7)
    dense = ex.toarray()
    for u in range(50):
        items = sorted((i for i in range(20) if not dense[u, i]), key=lambda i: (-s[u, i], i))[:7]
        assert got[u].tolist() == items + [-1] * (7 - len(items))


def test_coverage():
    # Recommended: {0, 1, 2} of 6 items (padding ignored).
    assert coverage(np.array([[0, 1], [1, 2], [2, -1]]), 6) == 0.5
    assert coverage_from_counts(np.array([2, 0, 1, 0])) == 0.5


def test_intra_list_diversity():
    feats = np.array(
        [
            [1.0, 0.0],  # 0
            [1.0, 0.0],  # 1 (same genre as 0)
            [0.0, 1.0],  # 2
            [1.0, 1.0],  # 3
            [0.0, 0.0],  # 4 (no genre)
        ]
    )
    topk = np.array([[0, 1, 2], [0, 3, -1], [4, 0, -1], [4, -1, -1]])
    d = per_user_diversity(topk, feats)
    # [0,1,2]: pairs (0,1) -> 0, (0,2) -> 1, (1,2) -> 1: mean 2/3.
    # [0,3]: 1 - cos 45 deg = 1 - 1/sqrt 2.  [4,0]: zero vector -> 1.  [4]: no pair -> 0.
    assert d == pytest.approx([2 / 3, 1 - 1 / math.sqrt(2), 1.0, 0.0])
    assert intra_list_diversity(topk[:3], feats) == pytest.approx((2 / 3 + 1 - 1 / math.sqrt(2) + 1) / 3)


def test_novelty_and_arp():
    pop = np.array([8, 4, 2, 0])
    topk = np.array([[0, 1], [2, 3]])
    # -log2(8/16) = 1, -log2(4/16) = 2, -log2(2/16) = 3, pop 0 -> 1: -log2(1/16) = 4.
    # Users: (1 + 2)/2 = 1.5 and (3 + 4)/2 = 3.5 -> 2.5.
    assert novelty(topk, pop, 16) == pytest.approx(2.5)
    # ARP: (8 + 4)/2 = 6 and (2 + 0)/2 = 1 -> 3.5.
    assert average_popularity(topk, pop) == pytest.approx(3.5)
    assert average_popularity(np.array([[0, -1]]), pop) == 8.0


# --------------------------------------------------------------------------- groups


def test_activity_groups_terciles():
    # Quantiles of 1..6: q1 = 2.67, q2 = 4.33.
    labels = activity_groups(np.array([1, 2, 3, 4, 5, 6]))
    assert labels.tolist() == ["light", "light", "medium", "medium", "heavy", "heavy"]
    # From a user x item matrix: row counts 1, 3, 2 -> q1 = 1.67, q2 = 2.33.
    m = csr([[1, 0, 0], [1, 1, 1], [0, 1, 1]])
    assert activity_groups(m).tolist() == ["light", "heavy", "medium"]


def test_age_and_gender_groups():
    ages = [18, 24, 25, 34, 35, 44, 45, 56, -1]
    assert age_groups(ages).tolist() == [
        "<25", "<25", "25-34", "25-34", "35-44", "35-44", "45+", "45+", "unknown",
    ]  # fmt: skip
    assert age_groups(None, 2).tolist() == ["unknown", "unknown"]
    assert gender_groups(np.array(["M", "F", None, ""], dtype=object)).tolist() == [
        "M", "F", "unknown", "unknown",
    ]  # fmt: skip


def test_group_means_and_gap():
    per_user = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0, 0.0]), "mrr": np.array([1.0, 0.0, 0.5, 0.5, 0.0])}
    labels = np.array(["a", "a", "b", "b", "unknown"], dtype=object)
    g = group_means(per_user, labels)
    assert g["a"] == {"hr@10": 0.5, "mrr": 0.5}
    assert g["b"] == {"hr@10": 1.0, "mrr": 0.5}
    assert g["unknown"] == {"hr@10": 0.0, "mrr": 0.0}
    # Gap over a and b ("unknown" left out): hr 1.0 - 0.5, mrr 0.5 - 0.5.
    assert g["gap"] == {"hr@10": 0.5, "mrr": 0.0}
    assert g["sizes"] == {"a": 2, "b": 2, "unknown": 1}
    with pytest.raises(ValueError):
        group_means(per_user, np.array(["gap"] * 5))


# --------------------------------------------------------------------------- aggregation


def test_aggregate_metric_sums_equals_global_mean():
    rng = np.random.default_rng(0)
    per_user = {"hr@10": rng.integers(0, 2, 101).astype(float), "ndcg@10": rng.random(101)}
    cuts = [0, 7, 7, 60, 101]  # includes an empty client
    parts = [metric_sums({k: v[a:b] for k, v in per_user.items()}) for a, b in zip(cuts, cuts[1:])]
    assert [c for _, c in parts] == [7, 0, 53, 41]
    agg = aggregate_metric_sums(parts)
    for k, v in per_user.items():
        assert agg[k] == pytest.approx(v.mean(), rel=1e-12)
    assert math.isnan(aggregate_metric_sums([({}, 0)]).get("x", float("nan")))
    with pytest.raises(ValueError):
        aggregate_metric_sums([({"a": 1.0}, 1), ({"b": 1.0}, 1)])


def test_sparse_input_forms_agree():
    s = np.array([[0.5, 0.9, 0.2, 0.8, 0.1, 0.6]])
    expected = [2, 3]  # as in test_multi_target_oracle
    # Unsorted, duplicated CSR with a stored zero (item 5 is NOT a target).
    data, cols = np.array([1.0, 1.0, 1.0, 0.0]), np.array([2, 0, 2, 5])
    t = sp.csr_matrix((data, cols, np.array([0, 4])), shape=(1, 6))
    assert not t.has_canonical_format
    e = sp.csr_array(np.array([[0, 1, 0, 0, 0, 0]]))
    r = target_ranks(s, t, e)
    assert r.ranks.tolist() == expected and r.items.tolist() == [0, 2]
    dense = target_ranks(s, np.array([[1, 0, 1, 0, 0, 0]]), np.array([[0, 1, 0, 0, 0, 0]]))
    assert dense.ranks.tolist() == expected
    f32 = target_ranks(s.astype(np.float32), t, e)
    assert f32.ranks.tolist() == expected


def test_masks_in_any_sparse_layout_give_the_same_ranks():
    """A mask with duplicate or unsorted entries (a sum of CSR matrices, COO) masks the same
    coordinates as its canonical CSR, including duplicates whose values cancel."""
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 40))
    targets = sp.csr_matrix((np.ones(6), (np.arange(6), rng.integers(0, 40, 6))), shape=(6, 40))
    rows, cols = rng.integers(0, 6, 120), rng.integers(0, 40, 120)
    canonical = sp.csr_matrix((np.ones(120), (rows, cols)), shape=(6, 40))
    canonical.sum_duplicates()
    canonical.data[:] = 1.0
    canonical = canonical - canonical.multiply(targets)  # never mask a target
    canonical.eliminate_zeros()
    r, c = canonical.nonzero()
    # the same coordinates: listed twice (once as +1, once as -1 at one of them), unsorted
    dup = sp.coo_matrix((np.r_[np.ones(len(r)), -np.ones(1)], (np.r_[r, r[:1]], np.r_[c, c[:1]])), shape=(6, 40))
    ip = canonical.indptr
    reversed_rows = np.concatenate([canonical.indices[ip[u]:ip[u + 1]][::-1] for u in range(6)])
    unsorted = sp.csr_matrix((np.ones(len(r)), reversed_rows, ip.copy()), shape=(6, 40))
    unsorted.has_sorted_indices = False
    want = fm.target_ranks(scores, targets, canonical).ranks
    for mask in (dup, dup.tocsr(), canonical + sp.csr_matrix((6, 40)), unsorted):
        np.testing.assert_array_equal(fm.target_ranks(scores, targets, mask).ranks, want)
