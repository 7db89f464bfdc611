"""Accountant numbers pinned against Opacus, calibration, and the epsilon a node reports."""

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.privacy import calibrate_noise, epsilon, epsilons_for_steps


def test_epsilon_pinned():
    # the value quoted in the privacy issue: sigma 1, q 0.01, 1000 steps, delta 1e-5 -> about 2.1
    assert epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=1000, delta=1e-5) == pytest.approx(2.1014, abs=1e-3)


def test_epsilon_equals_independent_opacus_accountant():
    acc = RDPAccountant()
    for _ in range(30):
        acc.step(noise_multiplier=0.8, sample_rate=0.25)
    assert epsilon(noise_multiplier=0.8, sample_rate=0.25, steps=30, delta=1e-5) == pytest.approx(acc.get_epsilon(1e-5))


def test_cached_one_step_rdp_equals_opacus_for_composed_histories():
    """The RDP of one step is cached per (noise, rate) and scaled by the steps: exactly what
    Opacus's accountant computes, for every step count and composed mechanism."""
    cases = [(1.0, 0.1, 17, ()), (0.7, 0.01, 1000, ((5.0, 1.0, 1),)), (2.0, 1.0, 3, ((3.0, 1.0, 2), (1.5, 0.5, 10))),
             (1.1, 0.05, 1, ())] + [(0.9, 0.2, s, ((4.0, 1.0, 1),)) for s in (1, 2, 50, 51, 400)]
    for z, q, steps, extra in cases:
        acc = RDPAccountant()
        acc.history = [(z, q, steps), *extra]
        assert epsilon(noise_multiplier=z, sample_rate=q, steps=steps, delta=1e-5, extra=extra) == acc.get_epsilon(1e-5)


def test_no_noise_is_infinite_and_no_steps_is_zero():
    assert epsilon(noise_multiplier=0.0, sample_rate=0.1, steps=5, delta=1e-5) == float("inf")
    assert epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0


def test_calibration_reaches_target():
    sigma = calibrate_noise(target_epsilon=4.0, delta=1e-5, sample_rate=0.1, steps=200)
    eps = epsilon(noise_multiplier=sigma, sample_rate=0.1, steps=200, delta=1e-5)
    assert eps <= 4.0 and eps > 3.9


def test_epsilons_per_user_steps():
    e = epsilons_for_steps(np.array([10, 20, 10]), noise_multiplier=1.0, sample_rate=0.2, delta=1e-5)
    assert e[0] == e[2] < e[1]


def test_config_resolves_target_epsilon_for_planned_steps():
    cfg = resolved(FedConfig(num_server_rounds=20, target_epsilon=8.0, sample_rate=0.2, user_steps=1, item_steps=2))
    assert cfg.noise_multiplier > 0 and cfg.target_epsilon == 0
    eps = epsilon(noise_multiplier=cfg.noise_multiplier, sample_rate=0.2, steps=60, delta=1e-5)
    assert 7.8 < eps <= 8.0


def test_node_reports_epsilon_of_the_steps_it_ran(tiny_ds):
    """A node's reported epsilon equals an independent Opacus computation for its
    sampling rate, noise and the steps it actually ran (3 rounds x 2 steps)."""
    from fedrec.federated import node
    from fedrec.federated.federation import init_global_params, load_federation

    cfg = FedConfig(data="synthetic:30x40:3", users_per_node=10, noise_multiplier=1.1, sample_rate=0.3,
                    user_steps=1, item_steps=1, num_server_rounds=3)
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    state = node.load_state({}, fed, 0, cfg)
    for r in (1, 2, 3):
        _, metrics, state = node.train_round(cfg, fed, 0, state, global_params=params, server_round=r)
    acc = RDPAccountant()
    for _ in range(6):
        acc.step(noise_multiplier=1.1, sample_rate=0.3)
    assert metrics["epsilon"] == pytest.approx([acc.get_epsilon(1e-5)] * 10)
    assert (state.dp_steps == 6).all()


def test_prior_composes_with_training_in_the_accountant():
    from opacus.accountants import RDPAccountant

    from fedrec.privacy.accounting import calibrate_noise, epsilon

    acc = RDPAccountant()
    acc.history = [(5.0, 1.0, 1), (2.0, 0.3, 200)]
    want = acc.get_epsilon(delta=1e-5)
    got = epsilon(noise_multiplier=2.0, sample_rate=0.3, steps=200, delta=1e-5, extra=((5.0, 1.0, 1),))
    assert got == pytest.approx(want, rel=1e-12)
    assert got > epsilon(noise_multiplier=2.0, sample_rate=0.3, steps=200, delta=1e-5)
    sigma = calibrate_noise(target_epsilon=4.0, delta=1e-5, sample_rate=0.3, steps=200, extra=((5.0, 1.0, 1),))
    assert epsilon(noise_multiplier=sigma, sample_rate=0.3, steps=200, delta=1e-5, extra=((5.0, 1.0, 1),)) <= 4.0
    assert epsilon(noise_multiplier=sigma * 0.99, sample_rate=0.3, steps=200, delta=1e-5, extra=((5.0, 1.0, 1),)) > 4.0
    with pytest.raises(ValueError, match="spent by the extra"):
        calibrate_noise(target_epsilon=0.1, delta=1e-5, sample_rate=0.3, steps=10, extra=((1.0, 1.0, 1),))


def test_popularity_prior_tracks_popularity_and_has_unit_sensitivity():
    import numpy as np
    import scipy.sparse as sp

    from fedrec.privacy.prior import popularity_prior

    rng = np.random.default_rng(0)
    pop = np.sort(rng.pareto(1.0, size=50))[::-1] + 0.1
    x = sp.csr_matrix((rng.random((400, 50)) < pop / pop.max() * 0.5).astype(np.float32))
    from fedrec.privacy.randomness import DPRandomness

    counts = np.asarray(x.sum(axis=0)).ravel()
    # over 40 fixed draws of the noise (the correlation of one draw ranges 0.87-0.96)
    corr = [np.corrcoef(popularity_prior(x, noise=1.0, randomness=DPRandomness.from_seed(s, 21)),
                        np.log1p(counts))[0, 1] for s in range(40)]
    assert np.mean(corr) > 0.9 and min(corr) > 0.85
    # one user's contribution (its row, scaled to unit norm) has L2 norm 1
    n = np.asarray(x.sum(axis=1)).ravel()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel()) / np.sqrt(np.maximum(n, 1))
    assert np.allclose(norms[n > 0], 1.0)


def test_mechanism_objects_account_with_opacus_and_compose_the_prior():
    """The mechanisms as data: each unit's epsilon is Opacus's RDP over its releases,
    the prior's one Gaussian release included; the config names which ones run."""
    from opacus.accountants import RDPAccountant

    from fedrec.config import FedConfig
    from fedrec.privacy import InteractionLevel, UserLevel, mechanisms_of

    def rdp(history):
        acc = RDPAccountant()
        acc.history = list(history)
        return acc.get_epsilon(delta=1e-5)

    il = InteractionLevel(noise_multiplier=1.1, sample_rate=0.3, max_grad_norm=1.0, delta=1e-5, prior_noise=4.0)
    assert il.epsilon(20) == pytest.approx(rdp([(4.0, 1.0, 1), (1.1, 0.3, 20)]), rel=1e-12)
    assert list(il.epsilons([0, 20])) == [pytest.approx(rdp([(4.0, 1.0, 1)])), pytest.approx(il.epsilon(20))]
    ul = UserLevel(noise_multiplier=0.9, sample_rate=0.5, clip=0.1, delta=1e-5)
    assert ul.epsilon(7) == pytest.approx(rdp([(0.9, 0.5, 7)]), rel=1e-12)
    cfg = FedConfig(noise_multiplier=1.1, sample_rate=0.3, prior_noise=4.0, user_dp="client",
                    user_noise_multiplier=0.9, user_sample_rate=0.5)
    assert [m.unit for m in mechanisms_of(cfg)] == ["interaction-level", "user-level"]
    assert mechanisms_of(cfg)[0] == il and mechanisms_of(FedConfig()) == []


def test_train_head_is_chosen_by_the_prior_release_and_costs_no_epsilon():
    """DP-FEST's items are post-processing of the prior's one release: the largest noisy
    scores, never a held-out item; the accountant's history is the prior's and training's,
    nothing more; without a prior the config refuses.  Every call of the release draws
    new secret noise (so a run derives the head and the prior from one release)."""
    import scipy.sparse as sp

    from fedrec.config import ConfigError
    from fedrec.privacy.mechanisms import mechanisms_of
    from fedrec.privacy.prior import head_from_release, noisy_popularity, prior_head
    from fedrec.privacy.randomness import DPRandomness

    train = sp.csr_matrix((np.random.default_rng(0).random((30, 20)) < 0.3).astype(np.float32))
    noisy = noisy_popularity(train, noise=2.0)
    head = head_from_release(noisy, 0.25)
    assert head.sum() == 5 and set(np.flatnonzero(head)) == set(np.argsort(-noisy)[:5])
    top = int(np.argmax(noisy))
    assert not head_from_release(noisy, 0.25, exclude=np.array([top]))[top]
    assert not np.array_equal(noisy, noisy_popularity(train, noise=2.0))  # secret: a new draw each time
    same = DPRandomness.from_seed(4, 21)  # reproducible noise: the same release from the same seed
    np.testing.assert_array_equal(prior_head(train, noise=2.0, fraction=0.25, randomness=same),
                                  head_from_release(noisy_popularity(train, noise=2.0, randomness=same), 0.25))
    with_head = FedConfig(noise_multiplier=1.1, sample_rate=0.3, prior_noise=4.0, train_head=0.1)
    without = FedConfig(noise_multiplier=1.1, sample_rate=0.3, prior_noise=4.0)
    assert mechanisms_of(with_head) == mechanisms_of(without)
    with pytest.raises(ConfigError, match="train-head.*prior-noise > 0"):
        FedConfig(noise_multiplier=1.1, train_head=0.1)
    with pytest.raises(ConfigError, match="train-head.*must be in"):
        FedConfig(prior_noise=1.0, train_head=1.5)


def test_user_level_epsilon_composes_earlier_segments_of_other_noise():
    """A run that continues others (a stream's windows) composes their rounds at the noise
    they ran with, the prior once: Opacus's RDP accountant over the same history; segments
    of the same noise compose to the homogeneous figure."""
    from opacus.accountants import RDPAccountant

    from fedrec.privacy.mechanisms import UserLevel

    mech = UserLevel(noise_multiplier=0.9, sample_rate=0.5, clip=0.1, delta=1e-5, prior_noise=4.0)
    earlier = ((1.4, 0.5, 30), (1.1, 0.5, 10))
    acc = RDPAccountant()
    acc.history = [(4.0, 1.0, 1), (1.4, 0.5, 30), (1.1, 0.5, 10), (0.9, 0.5, 25)]
    assert mech.epsilon(65, earlier) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert mech.epsilon(40, ((0.9, 0.5, 40),)) == pytest.approx(mech.epsilon(40), rel=1e-9)
    assert mech.segments(65, earlier) == [[1.4, 0.5, 30], [1.1, 0.5, 10], [0.9, 0.5, 25]]
    with pytest.raises(ValueError, match="inside the earlier segments"):
        mech.epsilon(20, earlier)
