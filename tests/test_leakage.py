"""Measured leakage (simulations.leakage) and the one-run DP audit (simulations.audit)
on tiny synthetic data."""

import math

import numpy as np
import pytest
import torch

from fedrec.data import leave_last_out, synthetic_dataset
from fedrec.privacy.accounting import calibrate_noise
from fedrec.engine import LocalConfig
from fedrec_app.simulations.attacks.audit import audit, eps_lower_bound, p_value
from fedrec_app.simulations.attacks.leakage import (clip_and_noise, leakage_table, roc_auc, train_federated,
                                                    update_attack)


@pytest.fixture(scope="module")
def small_split():
    return leave_last_out(synthetic_dataset(n_users=60, n_items=80, interactions_per_user=10, seed=5))


@pytest.fixture(scope="module")
def small_model(small_split):
    return train_federated(small_split.train, dim=8, rounds=20, cfg=LocalConfig(user_lr=1.0), server_lr=0.05)


def test_roc_auc_hand_computed_with_ties():
    # positives 0.35, 0.8, 0.4; negatives 0.1, 0.4.  Pairs won: 0.35 -> 1 (beats 0.1),
    # 0.8 -> 2, 0.4 -> 1 + 0.5 (tie with the negative 0.4): 4.5 / 6.
    assert roc_auc([0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert roc_auc([3, 2, 1], [1, 1, 0]) == 1.0
    assert roc_auc([3, 2, 1], [0, 0, 1]) == 0.0
    with pytest.raises(ValueError):
        roc_auc([1, 2], [1, 1])
    with pytest.raises(ValueError):
        roc_auc([1, np.nan], [1, 0])


def test_roc_auc_matches_pairwise_definition(rng):
    s = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pos, neg = s[y][:, None], s[~y][None, :]
    expected = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
    assert roc_auc(s, y) == pytest.approx(expected)


def test_clip_and_noise():
    upd = {"item": np.full((4, 3), 2.0), "bias": np.full(4, 2.0)}  # norm 8
    out = clip_and_noise(upd, clip_norm=1.0, noise_multiplier=0.0)
    assert isinstance(out["item"], np.ndarray)
    assert math.sqrt((out["item"] ** 2).sum() + (out["bias"] ** 2).sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(out["item"] / upd["item"], 1 / 8)
    small = clip_and_noise(upd, clip_norm=100.0, noise_multiplier=0.0)
    np.testing.assert_allclose(small["bias"], upd["bias"])
    big = {"x": torch.zeros(20000)}
    noised = clip_and_noise(big, clip_norm=0.5, noise_multiplier=2.0, generator=torch.Generator().manual_seed(0))
    assert isinstance(noised["x"], torch.Tensor)
    assert float(noised["x"].std()) == pytest.approx(1.0, rel=0.05)


def test_update_attack_without_protection_recovers_training_items(small_split, small_model):
    q, b, p = small_model
    res = update_attack(q, b, p, small_split.train, np.arange(60), LocalConfig(user_lr=1.0))
    assert res["norm"]["auc"] > 0.9
    assert res["signed"]["auc"] > 0.99  # the sign of the bias update separates positives from negatives
    assert res["norm"]["n_targets"] == 60


def test_update_attack_with_heavy_interaction_level_noise_is_near_chance(small_split, small_model):
    q, b, p = small_model
    cfg = LocalConfig(user_lr=1.0, noise_multiplier=50.0, sample_rate=0.5, max_grad_norm=0.5)
    res = update_attack(q, b, p, small_split.train, np.arange(60), cfg, generator=torch.Generator().manual_seed(1))
    for a in ("norm", "signed"):
        assert abs(res[a]["auc"] - 0.5) < 0.1


def test_secure_aggregation_leaks_less_than_a_single_release(small_split, small_model):
    q, b, p = small_model
    one = update_attack(q, b, p, small_split.train, np.arange(60), LocalConfig(user_lr=1.0))
    agg = update_attack(q, b, p, small_split.train, np.arange(60), LocalConfig(user_lr=1.0), cohort_size=10)
    assert agg["signed"]["auc"] < one["signed"]["auc"] - 0.1
    assert agg["signed"]["n_targets"] == 60


def test_leakage_table_rows(small_split):
    rows = leakage_table(small_split, n_users=20, dim=4, rounds=3, server_lr=0.05, interaction_epsilons=(8.0,),
                         dp_rounds=3, user_sigmas=(1.0,), cohort_sizes=(5,))
    for r in rows:
        assert {"setting", "unit", "epsilon", "attack", "auc"} <= set(r)
        assert 0.0 <= r["auc"] <= 1.0
        assert r["unit"]
        if r["unit"].startswith("none"):
            assert math.isinf(r["epsilon"])
        else:
            assert 0 < r["epsilon"] < math.inf
    settings = {r["setting"].split(" (")[0] for r in rows}
    assert {"none", "interaction-level DP", "user-level DP", "secure aggregation",
            "user-level DP + secure aggregation"} <= settings
    assert any(r["attack"].startswith("membership") for r in rows)


def test_p_value_and_lower_bound():
    # Appendix D example of the paper: 75 of 100 correct at eps = log 3, delta = 0
    assert p_value(100, 100, 75, math.log(3), 0.0) == pytest.approx(0.5535, abs=1e-3)
    # pure DP, every guess right: P[Binomial(r, x) = r] = x^r = p  =>  eps = logit(p^(1/r))
    x = 0.05 ** (1 / 100)
    assert eps_lower_bound(100, 100, 100, delta=0.0) == pytest.approx(math.log(x / (1 - x)), abs=1e-6)
    # the delta term only weakens the bound; chance-level guessing gives 0
    assert eps_lower_bound(1000, 100, 100, delta=1e-3) < eps_lower_bound(1000, 100, 100, delta=0.0)
    assert eps_lower_bound(1000, 100, 50, delta=1e-5) == 0.0


def test_audit_real_mechanism_within_claim_and_negative_control_caught(small_split):
    sigma = calibrate_noise(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=2)
    cfg = LocalConfig(user_lr=1.0, noise_multiplier=sigma, max_grad_norm=0.5)
    real = audit(small_split.train, cfg=cfg, m=200, guesses=100, dim=16, seed=0)
    assert real["eps_claimed"] == pytest.approx(1.0, abs=0.05)
    assert real["eps_lower"] <= real["eps_claimed"]
    broken = audit(small_split.train, cfg=cfg, m=200, guesses=100, dim=16, seed=0, negative_control=True)
    assert broken["correct"] == broken["guesses"] == 100
    assert broken["eps_lower"] > broken["eps_claimed"] + 1.0


def test_dp_fest_releases_only_trained_rows_and_leaks_nothing_under_noise(small_split, small_model):
    """DP-FEST (trained rows only): without noise a user's release reveals its trained
    items and is exactly zero on the frozen rows; under interaction-level noise and under
    user-level clipping and noise the update attack is at chance."""
    from fedrec_app.simulations.attacks.leakage import release

    q, b, p = small_model
    trained = torch.as_tensor((np.arange(80) % 2 == 0).astype(np.float64))
    gi, gb = release(p[[3]], q, b, small_split.train, np.array([3]), LocalConfig(user_lr=1.0), seed=0,
                     server_round=1, trainable=trained)
    frozen = trained.numpy() == 0
    assert not gi[frozen].any() and not gb[frozen].any() and np.abs(gb[~frozen]).sum() > 0
    clear = update_attack(q, b, p, small_split.train, np.arange(60), LocalConfig(user_lr=1.0), trainable=trained)
    assert clear["signed"]["auc"] > 0.7  # the trained half of each user's items stands out
    noisy = update_attack(q, b, p, small_split.train, np.arange(60),
                          LocalConfig(user_lr=1.0, noise_multiplier=50.0, sample_rate=0.5, max_grad_norm=0.5),
                          trainable=trained, generator=torch.Generator().manual_seed(1))
    user = update_attack(q, b, p, small_split.train, np.arange(60), LocalConfig(user_lr=1.0), trainable=trained,
                         user_level=(0.1, 50.0), generator=torch.Generator().manual_seed(2))
    for res in (noisy, user):
        for a in ("norm", "signed"):
            assert abs(res[a]["auc"] - 0.5) < 0.1, (a, res)


def test_audit_of_dp_fest_within_claim_and_negative_control_caught(small_split):
    sigma = calibrate_noise(target_epsilon=1.0, delta=1e-5, sample_rate=1.0, steps=2)
    cfg = LocalConfig(user_lr=1.0, noise_multiplier=sigma, max_grad_norm=0.5)
    real = audit(small_split.train, cfg=cfg, m=200, guesses=100, dim=16, seed=0, train_head=0.1)
    assert real["train_head"] == 0.1 and real["eps_lower"] <= real["eps_claimed"] == pytest.approx(1.0, abs=0.05)
    broken = audit(small_split.train, cfg=cfg, m=200, guesses=100, dim=16, seed=0, negative_control=True,
                   train_head=0.1)
    assert broken["correct"] == broken["guesses"] == 100
    assert broken["eps_lower"] > broken["eps_claimed"] + 1.0
