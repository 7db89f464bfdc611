"""Centralized baselines on tiny data: MostPop and EASE against hand/direct oracles,
BPR-MF learns and selects its epoch on validation."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.baselines import ease_item_weights, fit_centralized, fit_ease, fit_most_popular, most_popular_scores
from fedrec.models import Centralized, build_federated_model


def test_most_popular_scores_hand_computed():
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1]], dtype=np.float32))
    assert most_popular_scores(train).tolist() == [1, 3, 1]


def test_ease_matches_direct_solve():
    rng = np.random.default_rng(0)
    x = (rng.random((30, 8)) < 0.3).astype(np.float64)
    lam = 5.0
    b = ease_item_weights(sp.csr_matrix(x), lam)
    assert np.allclose(np.diag(b), 0)
    # each column j solves min ||X_j - X b_j||^2 + lam ||b_j||^2 with b_jj = 0
    for j in range(8):
        others = [k for k in range(8) if k != j]
        xo = x[:, others]
        direct = np.linalg.solve(xo.T @ xo + lam * np.eye(7), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], direct, atol=1e-8)
    with pytest.raises(ValueError):
        ease_item_weights(sp.csr_matrix(x), 0)


def test_baselines_run_and_select_on_validation(tiny_split):
    mp = fit_most_popular(tiny_split, sampled_negatives=0)
    ease = fit_ease(tiny_split, lambdas=(1, 10, 100), sampled_negatives=0)
    assert ease.selected["lambda"] in (1, 10, 100)
    best = max(ease.history, key=lambda h: h["valid_ndcg@10"])
    assert best["lambda"] == ease.selected["lambda"]
    assert set(mp.test.metrics) >= {"hr@10", "ndcg@10", "recall@20", "mrr", "auc"}


def test_centralized_bpr_mf_learns(tiny_ds):
    from fedrec.data import leave_last_out, synthetic_dataset

    ds = synthetic_dataset(n_users=150, n_items=60, interactions_per_user=12, seed=1)
    split = leave_last_out(ds)
    torch.manual_seed(0)
    model = Centralized(build_federated_model("mf", ds.n_items, dim=8), ds.n_users)  # `fedrec baseline --model bpr-mf`
    res = fit_centralized(model, split, epochs=15, lr=0.02,
                          batch_size=128, patience=5, sampled_negatives=0)
    assert res.selected["epoch"] == max(res.history, key=lambda h: h["valid_ndcg@10"])["epoch"]
    first = res.history[0]["loss"]
    assert res.history[-1]["loss"] < first
    assert res.valid.metrics["auc"] > 0.6


def test_private_most_popular_is_one_calibrated_gaussian_release(tiny_split):
    """Private MostPop: the noise reaches the target epsilon by Opacus's own accountant
    (one step at sample rate 1), the scores are the users' unit-norm vectors summed plus
    that noise, and the noise is secret: two fits of one seed differ, unless
    reproducible_noise (then the seed's draw)."""
    from opacus.accountants import RDPAccountant

    from fedrec.baselines import fit_private_most_popular
    from fedrec.privacy.prior import noisy_popularity
    from fedrec.privacy.randomness import DPRandomness

    res = fit_private_most_popular(tiny_split, epsilon=4.0, delta=1e-5, seed=3, sampled_negatives=0,
                                   reproducible_noise=True)
    z = res.selected["noise_multiplier"]
    acc = RDPAccountant()
    acc.history = [(z, 1.0, 1)]
    eps = acc.get_epsilon(delta=1e-5)
    assert 3.9 < eps <= 4.0 and res.selected["epsilon"] == pytest.approx(eps)
    assert res.selected["unit"].startswith("user-level")
    assert res.selected["noise"] == "reproducible"
    # the release, by hand: sum over users of 1[items]/sqrt(n_u), then the seed's noise
    t = (tiny_split.train > 0).astype(np.float64).toarray()
    total = (t / np.sqrt(np.maximum(t.sum(1, keepdims=True), 1))).sum(0)
    noise = DPRandomness.from_seed(3, 21).numpy().normal(0.0, z, size=total.shape)
    np.testing.assert_allclose(noisy_popularity(tiny_split.train, noise=z, randomness=DPRandomness.from_seed(3, 21)),
                               total + noise)
    np.testing.assert_allclose(res.score_fn(np.array([0, 1]))[1], total + noise)
    secret = [fit_private_most_popular(tiny_split, epsilon=4.0, seed=3, sampled_negatives=0) for _ in range(2)]
    assert secret[0].selected["noise"] == "secret"
    assert not np.allclose(secret[0].score_fn(np.array([0]))[0], secret[1].score_fn(np.array([0]))[0])
    # almost no noise: the ranking of the unit-norm popularity
    loose = fit_private_most_popular(tiny_split, epsilon=1e3, seed=0, sampled_negatives=0)
    zl = loose.selected["noise_multiplier"]
    assert zl < z / 10
    np.testing.assert_allclose(loose.score_fn(np.array([0]))[0], total, atol=6 * zl)


def test_ease_mirrors_the_cholesky_inverse_by_blocks():
    from fedrec.baselines import _mirror_lower

    a = np.random.default_rng(1).normal(size=(37, 37))
    for block in (1, 5, 16, 37, 64):
        got = a.copy()
        _mirror_lower(got, block=block)
        np.testing.assert_array_equal(got, np.tril(a) + np.tril(a, -1).T)


@pytest.mark.parametrize("users,items", [(8, 30), (30, 8)])
def test_ease_one_decomposition_matches_the_cholesky_inverse_and_the_direct_solve(users, items):
    """Fewer users than items: the Woodbury route (one eigendecomposition of X X' for every
    lambda) gives the Cholesky route's weights, and each column solves EASE's problem."""
    from fedrec.baselines import ease_weights

    rng = np.random.default_rng(2)
    x = (rng.random((users, items)) < 0.35).astype(np.float64)
    x[3] = 0.0  # a user without data is ignored by both routes
    train = sp.csr_matrix(x)
    lambdas = (0.5, 5.0, 50.0)
    wood = dict(ease_weights(train, lambdas, method="woodbury"))
    chol = dict(ease_weights(train, lambdas, method="cholesky"))
    auto = dict(ease_weights(train, lambdas))
    for lam in lambdas:
        np.testing.assert_allclose(wood[lam], chol[lam], atol=1e-9)
        np.testing.assert_array_equal(auto[lam], wood[lam] if users < items else chol[lam])
        b = auto[lam]
        assert np.all(np.diag(b) == 0)
        j = 1
        others = [k for k in range(items) if k != j]
        xo = x[:, others]
        direct = np.linalg.solve(xo.T @ xo + lam * np.eye(items - 1), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], direct, atol=1e-8)
    with pytest.raises(ValueError, match="method"):
        next(ease_weights(train, (1.0,), method="svd"))
