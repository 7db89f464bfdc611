"""The evaluation protocol of fedrec.metrics.evaluate, checked on hand-made splits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from fedrec.data.splits import Split
from fedrec.metrics import (
    EvalResult,
    aggregate_metric_sums,
    coverage_from_counts,
    evaluate,
    stage_matrices,
    users_to_evaluate,
)


def onehot(n_items, *items_per_user):
    m = np.zeros((len(items_per_user), n_items), dtype=np.float32)
    for u, items in enumerate(items_per_user):
        m[u, list(items)] = 1
    return sp.csr_matrix(m)


# 3 users, 6 items.
#   user 0: train {0, 1}, valid {2}, test {3}
#   user 1: train {2},    valid {3}, test {4}
#   user 2: train {0},    valid {},  test {5}
SPLIT = Split(
    train=onehot(6, {0, 1}, {2}, {0}),
    valid=onehot(6, {2}, {3}, set()),
    test=onehot(6, {3}, {4}, {5}),
    kind="hand",
)
# Hand-written scores (item 0 .. 5).
SCORES = np.array(
    [
        [9.0, 9.0, 7.0, 8.0, 1.0, 0.0],  # user 0: test item 3 (8) > valid item 2 (7)
        [0.0, 1.0, 9.0, 8.0, 6.0, 5.0],  # user 1: valid item 3 (8) > test item 4 (6)
        [10.0, 1.0, 2.0, 3.0, 4.0, 0.0],  # user 2: test item 5 scored lowest
    ]
)


class Recorder:
    """score_fn returning SCORES rows, remembering the user batches it saw."""

    def __init__(self, scores=SCORES):
        self.scores = scores
        self.calls: list[list[int]] = []

    def __call__(self, users: np.ndarray) -> np.ndarray:
        self.calls.append(users.tolist())
        return self.scores[users]


def test_stage_matrices_protocol():
    t, e = stage_matrices(SPLIT, "valid")
    assert (t != SPLIT.valid).nnz == 0 and (e != SPLIT.train).nnz == 0
    t, e = stage_matrices(SPLIT, "test")
    assert (t != SPLIT.test).nnz == 0
    assert e.toarray().astype(bool).tolist() == (SPLIT.train + SPLIT.valid).toarray().astype(bool).tolist()
    with pytest.raises(ValueError):
        stage_matrices(SPLIT, "train")


def test_valid_stage_masks_train_only():
    fn = Recorder()
    res = evaluate(fn, SPLIT, stage="valid", ks=(1, 2), sampled_negatives=0, batch_size=1)
    # User 2 has no validation item: not evaluated, never scored.
    assert res.users.tolist() == [0, 1] and res.n_users == 2
    assert fn.calls == [[0], [1]]
    # User 0: train {0,1} masked; candidates 2 (7), 3 (8), 4, 5.  The test item 3
    # is NOT masked at the validation stage and beats the target: rank 1.
    # User 1: train {2} masked; target 3 (8) is the best candidate: rank 0.
    assert res.per_user["mrr"].tolist() == [0.5, 1.0]
    assert res.per_user["hr@1"].tolist() == [0.0, 1.0]
    assert res.per_user["ndcg@2"] == pytest.approx([1 / math.log2(3), 1.0])
    # AUC: user 0 beats 4 and 5, loses to 3 -> 2/3; user 1 beats all 4 -> 1.
    assert res.per_user["auc"] == pytest.approx([2 / 3, 1.0])
    assert res.metrics["mrr"] == pytest.approx(0.75)
    assert res.metrics["hr@1"] == pytest.approx(0.5)
    assert res.stage == "valid"


def test_test_stage_masks_train_and_valid():
    res = evaluate(Recorder(), SPLIT, stage="test", ks=(1, 2), sampled_negatives=0)
    assert res.users.tolist() == [0, 1, 2]
    # User 0: {0,1,2} masked, target 3 (8) best: rank 0.
    # User 1: {2,3} masked; the valid item 3 (8) would beat the target 4 (6),
    #         but it is masked at the test stage: rank 0.
    # User 2: {0} masked; target 5 (0) below 1, 2, 3, 4: rank 4.
    assert res.per_user["mrr"] == pytest.approx([1.0, 1.0, 0.2])
    assert res.per_user["hr@1"].tolist() == [1.0, 1.0, 0.0]
    assert res.metrics["mrr"] == pytest.approx(2.2 / 3)
    assert res.metrics["recall@2"] == pytest.approx(2 / 3)
    assert res.metrics["precision@2"] == pytest.approx(1 / 3)  # (1/2 + 1/2 + 0) / 3
    # AUC: users 0 and 1 rank first (1.0); user 2 beats none of its 4 negatives.
    assert res.metrics["auc"] == pytest.approx(2 / 3)


def test_rank_consumed_lets_earlier_items_compete():
    """mask_consumed=False: nothing is masked, so consumed items scored above the target
    count against it (hand-computed ranks)."""
    res = evaluate(Recorder(), SPLIT, stage="test", ks=(1, 2), sampled_negatives=0, mask_consumed=False)
    # User 0: items 0, 1 (9, 9) now beat the target 3 (8): rank 2.
    # User 1: the valid item 3 (8) and train item 2 (9) beat the target 4 (6): rank 2.
    # User 2: item 0 (10) joins 1, 2, 3, 4 above the target 5 (0): rank 5.
    assert res.per_user["mrr"] == pytest.approx([1 / 3, 1 / 3, 1 / 6])
    assert res.per_user["hr@2"].tolist() == [0.0, 0.0, 0.0]
    masked = evaluate(Recorder(), SPLIT, stage="test", ks=(1, 2), sampled_negatives=0)
    assert masked.per_user["mrr"] == pytest.approx([1.0, 1.0, 0.2])


def test_test_item_never_masked_even_if_scored_highest():
    # A model that puts the test item first gets rank 0 at the test stage.
    s = np.zeros((3, 6))
    s[[0, 1, 2], [3, 4, 5]] = 100.0
    res = evaluate(lambda u: s[u], SPLIT, stage="test", ks=(1,), sampled_negatives=0)
    assert res.per_user["hr@1"].tolist() == [1.0, 1.0, 1.0]


def test_constant_model_is_worst_under_pessimistic_ties():
    s = np.ones((3, 6))
    res = evaluate(lambda u: s[u], SPLIT, stage="test", ks=(1, 2), sampled_negatives=0)
    # Candidates: 3, 4 and 5 items; the target ties with all of them: last.
    assert res.per_user["mrr"] == pytest.approx([1 / 3, 1 / 4, 1 / 5])
    assert res.metrics["hr@2"] == 0.0 and res.metrics["auc"] == 0.0
    rnd = evaluate(lambda u: s[u], SPLIT, stage="test", ks=(1, 2), sampled_negatives=0, ties="random")
    assert np.all(rnd.per_user["mrr"] >= res.per_user["mrr"])


def test_sampled_metrics_in_evaluate():
    # With 99 negatives and 6 items every user gets all its non-positive items.
    res = evaluate(Recorder(), SPLIT, stage="test", ks=(1,), sampled_negatives=99)
    # User 0: positives {0,1,2,3} -> negatives {4, 5}; target 3 (8) first.
    # User 1: positives {2,3,4}   -> negatives {0, 1, 5}; target 4 (6) first.
    # User 2: positives {0,5}     -> negatives {1, 2, 3, 4}; target 5 (0) last.
    assert res.per_user["sampled_mrr"] == pytest.approx([1.0, 1.0, 0.2])
    assert res.per_user["sampled_hr@1"].tolist() == [1.0, 1.0, 0.0]
    assert res.per_user["sampled_auc"] == pytest.approx([1.0, 1.0, 0.0])
    assert "sampled_ndcg@1" in res.metrics and "sampled_hr@1" in res.metrics
    # At the validation stage user 0's test item 3 is a positive, so it is never
    # a sampled negative: the valid item 2 (7) ranks first among {2, 4, 5}
    # (whereas the full ranking puts it second, behind item 3).
    res = evaluate(Recorder(), SPLIT, stage="valid", ks=(1,), sampled_negatives=99)
    assert res.per_user["sampled_mrr"][0] == 1.0 and res.per_user["mrr"][0] == 0.5
    off = evaluate(Recorder(), SPLIT, stage="valid", ks=(1,), sampled_negatives=0)
    assert not any(k.startswith("sampled_") for k in off.metrics)


def test_beyond_accuracy_and_groups():
    feats = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], dtype=float)
    pop = np.array([2, 1, 2, 2, 1, 1])
    res = evaluate(
        Recorder(),
        SPLIT,
        stage="test",
        ks=(1,),
        sampled_negatives=0,
        item_features=feats,
        item_popularity=pop,
        user_groups={"g": np.array(["a", "b", "a"], dtype=object)},
        beyond_k=2,
    )
    # Top-2 with the test-stage mask: user 0 -> [3, 4], user 1 -> [4, 5],
    # user 2 -> [4, 3].  Recommended items {3, 4, 5}: coverage 3/6.
    assert res.metrics["coverage@2"] == 0.5
    assert res.topk_item_counts.tolist() == [0, 0, 0, 2, 3, 1]
    assert coverage_from_counts(res.topk_item_counts) == 0.5
    # Diversity: (3,4): 1 - 1/sqrt2; (4,5): zero vector -> 1; (4,3): 1 - 1/sqrt2.
    c = 1 - 1 / math.sqrt(2)
    assert res.per_user["diversity@2"] == pytest.approx([c, 1.0, c])
    # ARP: (2 + 1)/2, (1 + 1)/2, (1 + 2)/2.
    assert res.per_user["arp@2"] == pytest.approx([1.5, 1.0, 1.5])
    # Novelty over n_users = 3: -log2(2/3) = 0.585, -log2(1/3) = 1.585.
    a, b = -math.log2(2 / 3), -math.log2(1 / 3)
    assert res.per_user["novelty@2"] == pytest.approx([(a + b) / 2, b, (a + b) / 2])
    assert res.metrics["novelty@2"] == pytest.approx(np.mean([(a + b) / 2, b, (a + b) / 2]))
    # Groups: a = users {0, 2}, mrr (1 + 0.2)/2 = 0.6; b = user 1, mrr 1.
    g = res.groups["g"]
    assert g["a"]["mrr"] == pytest.approx(0.6) and g["b"]["mrr"] == 1.0
    assert g["gap"]["mrr"] == pytest.approx(0.4)
    assert g["sizes"] == {"a": 2, "b": 1}


def test_users_argument_and_empty_result():
    assert users_to_evaluate(SPLIT, "valid").tolist() == [0, 1]
    assert users_to_evaluate(SPLIT, "test", np.array([2, 0, 2])).tolist() == [0, 2]
    res = evaluate(Recorder(), SPLIT, stage="valid", users=np.array([1, 2]), sampled_negatives=0)
    assert res.users.tolist() == [1]
    fn = Recorder()
    empty = evaluate(fn, SPLIT, stage="valid", users=np.array([2]))
    assert fn.calls == [] and empty.n_users == 0
    assert math.isnan(empty.metrics["hr@10"]) and len(empty.per_user["hr@10"]) == 0
    assert empty.sums() == ({k: 0.0 for k in empty.per_user}, 0)
    with pytest.raises(ValueError):
        evaluate(Recorder(), SPLIT, users=np.array([3]))


def test_score_fn_errors():
    with pytest.raises(ValueError, match="shape"):
        evaluate(lambda u: np.zeros((len(u), 5)), SPLIT)
    bad = SCORES.copy()
    bad[1, 5] = np.nan  # a candidate of user 1
    with pytest.raises(ValueError, match="user 1"):
        evaluate(lambda u: bad[u], SPLIT, stage="test")
    ok = SCORES.copy()
    ok[1, 2] = -np.inf  # a masked (train) item: allowed
    evaluate(lambda u: ok[u], SPLIT, stage="test")
    with pytest.raises(ValueError):
        evaluate(Recorder(), SPLIT, stage="final")


def test_torch_scores_accepted():
    torch = pytest.importorskip("torch")
    res = evaluate(lambda u: torch.tensor(SCORES[u], dtype=torch.float32), SPLIT, stage="test", ks=(1,))
    assert res.per_user["mrr"] == pytest.approx([1.0, 1.0, 0.2])


def _random_split(seed=0, n_users=60, n_items=25):
    rng = np.random.default_rng(seed)
    r = rng.random((n_users, n_items))
    train = r < 0.25
    valid = (r >= 0.25) & (r < 0.32)
    test = (r >= 0.32) & (r < 0.36)
    return Split(sp.csr_matrix(train), sp.csr_matrix(valid), sp.csr_matrix(test), kind="random"), rng


def test_batching_and_client_aggregation_are_exact():
    split, rng = _random_split()
    scores = rng.integers(0, 4, size=(split.n_users, split.n_items)).astype(float)  # ties
    kw = dict(
        stage="test",
        ks=(5, 10),
        ties="random",
        sampled_negatives=7,
        seed=3,
        item_features=rng.integers(0, 2, size=(split.n_items, 4)).astype(float),
        item_popularity=np.asarray(split.train.sum(0)).ravel(),
    )
    full = evaluate(lambda u: scores[u], split, batch_size=256, **kw)
    small = evaluate(lambda u: scores[u], split, batch_size=7, **kw)
    assert np.array_equal(full.users, small.users)
    for k in full.per_user:
        assert np.array_equal(full.per_user[k], small.per_user[k]), k
    # Four "clients" with disjoint users report sums; the server's aggregate is
    # the centralised mean (same negatives and tie draws per user).
    parts = []
    counts = np.zeros(split.n_items, dtype=np.int64)
    for client_users in np.array_split(np.arange(split.n_users), 4):
        r = evaluate(lambda u: scores[u], split, users=client_users, **kw)
        parts.append(r.sums())
        counts += r.topk_item_counts
    agg = aggregate_metric_sums(parts)
    assert set(agg) == set(full.per_user)
    for k, v in agg.items():
        assert v == pytest.approx(full.metrics[k], rel=1e-12, abs=1e-12), k
    assert coverage_from_counts(counts) == full.metrics["coverage@10"]
    # A different seed changes the random draws but the result stays a valid EvalResult.
    other = evaluate(lambda u: scores[u], split, **{**kw, "seed": 4})
    assert isinstance(other, EvalResult) and other.n_users == full.n_users


def test_metric_values_in_range():
    split, rng = _random_split(1)
    scores = rng.normal(size=(split.n_users, split.n_items))
    res = evaluate(lambda u: scores[u], split, stage="valid", ks=(1, 5, 50), sampled_negatives=10)
    for k, v in res.per_user.items():
        assert np.all((v >= 0) & (v <= 1 + 1e-12)), k
    # recall@k is non-decreasing in k and reaches 1 when k >= n_candidates.
    assert np.all(res.per_user["recall@1"] <= res.per_user["recall@5"])
    assert np.all(res.per_user["recall@50"] == 1.0)
