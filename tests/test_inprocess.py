"""Rounds in process (fedrec.federated.inprocess) against the same run through Flower's engine."""

import numpy as np
import pytest

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec.federated.inprocess import in_process_problem, mean_of_releases, run_rounds


def test_mean_of_releases_weights_nodes_by_their_users():
    a, b = {"x": np.array([1.0, 3.0])}, {"x": np.array([4.0, 0.0])}
    np.testing.assert_allclose(mean_of_releases([(a, 1), (b, 3)])["x"], [13 / 4, 3 / 4])
    assert mean_of_releases([(a, 0)]) is None
    np.testing.assert_allclose(mean_of_releases([({"x": np.zeros(2)}, 0), (b, 2)])["x"], b["x"])


@pytest.mark.parametrize("settings, word", [
    (dict(user_dp="client", user_noise_multiplier=1.0), "user-level"),
    (dict(aggregation="itemwise"), "itemwise"),
    (dict(fraction_train=0.5), "fraction-train"),
    (dict(train_head=0.2, target_epsilon=4.0, prior_noise=5.0), "train-head"),
    (dict(prior_noise=5.0, target_epsilon=4.0), "prior-noise"),
])
def test_what_only_the_server_application_does_is_refused_in_one_line(settings, word):
    cfg = FedConfig(data="synthetic:20x30:0", users_per_node=10, **settings)
    assert word in in_process_problem(cfg) and "\n" not in in_process_problem(cfg)
    with pytest.raises(ValueError, match=word):
        run_rounds(cfg, load_federation(cfg), rounds=1)


def test_continuing_a_run_equals_running_it_at_once():
    cfg = FedConfig(data="synthetic:30x40:2", users_per_node=10, dim=4, server_opt="adam", server_lr=0.05)
    fed = load_federation(cfg)
    once = run_rounds(cfg, fed, rounds=3)
    twice = run_rounds(cfg, fed, rounds=2, start=run_rounds(cfg, fed, rounds=1))
    assert twice.server_round == 3
    for k in once.params:
        np.testing.assert_array_equal(once.params[k], twice.params[k])
    np.testing.assert_array_equal(once.local("user", 30), twice.local("user", 30))


@pytest.mark.slow
def test_rounds_in_process_equal_the_run_through_flower(tmp_path):
    """Interaction-level DP with the noise reproducible from the seed (so both paths draw
    the same noise), three nodes, Adam on the server: the same parameters."""
    from fedrec_app.simulations.simulate import simulate

    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:60x40:3", users_per_node=20, dim=8, num_server_rounds=3, eval_every=3,
                    server_opt="adam", server_lr=0.05, target_epsilon=8.0, sample_rate=0.5,
                    reproducible_noise=True, out=str(out))
    simulate(cfg, num_cpus=2)
    run = run_rounds(cfg, load_federation(cfg), rounds=3)
    with np.load(out / "checkpoint" / "checkpoint.npz") as z:
        for k, v in run.params.items():
            np.testing.assert_allclose(z[f"param/{k}"], v, rtol=1e-5, atol=1e-6)
    assert np.abs(run.params["item_bias"]).max() > 0
