"""Measured leakage (simulations.leakage) and the one-run DP audit (simulations.audit)
on tiny synthetic data."""

import math

import numpy as np
import pytest

from fedrec.engine import LocalConfig
from fedrec.privacy.accounting import calibrate_noise
from fedrec_app.simulations.attacks.audit import audit, eps_lower_bound, p_value
from fedrec_app.simulations.attacks.leakage import (leakage_table, local_state, model_config, release, roc_auc,
                                                    train_model, update_attack)


@pytest.fixture(scope="module")
def small():
    """Federated MF on 60 users x 80 items (10 interactions each), 20 rounds: (config,
    federation, parameters, every user's local state)."""
    cfg = model_config("synthetic:60x80:5:10", dim=8, rounds=20, server_lr=0.05)
    run, fed = train_model(cfg)
    return cfg, fed, run.params, local_state(run, fed)


@pytest.fixture(scope="module")
def small_split(small):
    return small[1].split


def attack(small, cfg=None, **kw):
    c, fed, params, local = small
    return update_attack(cfg or c, fed, params, local, np.arange(60), server_round=21, **kw)


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


def test_update_attack_without_protection_recovers_training_items(small):
    res = attack(small)
    assert res["norm"]["auc"] > 0.9
    assert res["signed"]["auc"] > 0.99  # the sign of the bias update separates positives from negatives
    assert res["norm"]["n_targets"] == 60


def test_a_release_is_the_nodes_own(small):
    """The sum of two users' releases is what a node hosting both releases, times two, and
    the sum of what each releases alone (users are independent in a round)."""
    cfg, fed, params, local = small
    both = release(cfg, fed, params, local, np.array([3, 7]), server_round=21)
    one = [release(cfg, fed, params, local, np.array([u]), server_round=21) for u in (3, 7)]
    for k in params:
        np.testing.assert_allclose(both[k], one[0][k] + one[1][k], rtol=1e-5, atol=1e-7)
    assert np.abs(both["item_bias"]).sum() > 0


def test_update_attack_with_heavy_interaction_level_noise_is_near_chance(small):
    from dataclasses import replace

    cfg = replace(small[0], noise_multiplier=50.0, sample_rate=0.5, max_grad_norm=0.5)
    res = attack(small, cfg)
    for a in ("norm", "signed"):
        assert abs(res[a]["auc"] - 0.5) < 0.1


def test_user_level_clipping_and_noise_bring_the_attack_to_chance(small):
    clear = attack(small, user_level=(0.1, 1e-6))  # clipped only: the items still stand out
    noisy = attack(small, user_level=(0.1, 50.0))
    assert clear["signed"]["auc"] > 0.9
    for a in ("norm", "signed"):
        assert abs(noisy[a]["auc"] - 0.5) < 0.1


def test_secure_aggregation_leaks_less_than_a_single_release(small):
    one = attack(small)
    agg = attack(small, cohort_size=10)
    assert agg["signed"]["auc"] < one["signed"]["auc"] - 0.1
    assert agg["signed"]["n_targets"] == 60


def test_leakage_table_rows():
    cfg = model_config("synthetic:60x80:5:10", dim=4, rounds=3, server_lr=0.05)
    rows = leakage_table(cfg, n_users=20, interaction_epsilons=(8.0,), dp_rounds=3, user_sigmas=(1.0,),
                         cohort_sizes=(5,))
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


def test_dp_fest_releases_only_trained_rows_and_leaks_nothing_under_noise(small):
    """DP-FEST (trained rows only): without noise a user's release reveals its trained
    items and is exactly zero on the frozen rows; under interaction-level noise and under
    user-level clipping and noise the update attack is at chance."""
    from dataclasses import replace

    cfg, fed, params, local = small
    fest = replace(cfg, train_head=0.5, prior_noise=1.0)  # the head is the prior's (here: given)
    trained = np.arange(80) % 2 == 0
    one = release(fest, fed, params, local, np.array([3]), server_round=21, trained_items=trained)
    assert not one["item_embedding"][~trained].any() and not one["item_bias"][~trained].any()
    assert np.abs(one["item_bias"][trained]).sum() > 0
    clear = attack(small, fest, trained_items=trained)
    assert clear["signed"]["auc"] > 0.7  # the trained half of each user's items stands out
    noisy = attack(small, replace(fest, noise_multiplier=50.0, sample_rate=0.5, max_grad_norm=0.5),
                   trained_items=trained)
    user = attack(small, fest, trained_items=trained, user_level=(0.1, 50.0))
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
