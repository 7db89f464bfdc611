"""Training algorithms as plug-ins (fedrec/federated/algorithms): the registry, the choice
`auto` makes, refusals in one line, and a toy algorithm of a user's own run through Flower
with a hand-computed result."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedrec.config import ConfigError, FedConfig
from fedrec.federated.algorithms import ALGORITHMS, CohortSGD, algorithm_for, algorithm_name, check_algorithm
from fedrec.federated.algorithms.als import ALS
from fedrec.federated.algorithms.sequential import Sequential

TOY = "fedrec_app.examples.my_algorithm:PopularityPull"


def test_the_registry_holds_the_shipped_algorithms_by_name():
    assert ALGORITHMS == {"cohort-sgd": CohortSGD, "sequential": Sequential, "als": ALS}


@pytest.mark.parametrize("settings, name", [
    ({}, "cohort-sgd"),
    ({"model": "two-tower"}, "cohort-sgd"),
    ({"model": "sasrec"}, "sequential"),
    ({"model": "gru4rec", "user_dp": "client", "user_noise_multiplier": 1.0}, "sequential"),
    ({"als": True}, "als"),
])
def test_auto_picks_the_algorithm_each_mode_ran_with(settings, name):
    cfg = FedConfig(data="synthetic:20x30:0", **settings)
    assert algorithm_name(cfg) == name and algorithm_for(cfg).name == name
    check_algorithm(cfg)


@pytest.mark.parametrize("settings, says", [
    ({"algorithm": "sequential"}, "sequential cannot run this: it trains sequential models"),
    ({"algorithm": "cohort-sgd", "model": "sasrec"}, "cohort-sgd cannot run this"),
    ({"algorithm": "als"}, "private ALS is turned on by --als"),
    ({"algorithm": "cohort-sgd", "als": True}, "--als trains by private ALS"),
    ({"algorithm": "nope"}, "choose one of ['als', 'cohort-sgd', 'sequential']"),
    ({"algorithm": "fedrec.models:FedMF"}, "has no TrainingAlgorithm subclass named 'FedMF'"),
    ({"algorithm": TOY, "target_epsilon": 8.0}, "implements no interaction-level mechanism"),
    ({"algorithm": TOY, "user_dp": "client", "user_noise_multiplier": 1.0}, "implements no user-level mechanism"),
    ({"algorithm": TOY, "model": "gmf"}, "it pulls MF's item biases"),
])
def test_an_algorithm_that_cannot_run_the_configuration_is_refused_in_one_line(settings, says):
    with pytest.raises(ConfigError) as e:
        check_algorithm(FedConfig(data="synthetic:20x30:0", **settings))
    assert says in str(e.value) and "local.algorithm" in str(e.value) and "\n" not in str(e.value)


def test_the_node_round_of_the_shipped_algorithms_is_unchanged_by_naming_them():
    from fedrec.federated import node
    from fedrec.federated.federation import init_global_params, load_federation

    for cfg in (FedConfig(data="synthetic:40x30:0", users_per_node=20, dim=8),
                FedConfig(data="synthetic:40x30:0", users_per_node=20, dim=8, model="sasrec", seq_len=5)):
        fed = load_federation(cfg)
        params = init_global_params(cfg, fed)
        named = replace(cfg, algorithm=algorithm_name(cfg))
        a, _, _ = node.train_round(cfg, fed, 0, node.load_state({}, fed, 0, cfg), global_params=params, server_round=1)
        b, _, _ = node.train_round(named, fed, 0, node.load_state({}, fed, 0, named), global_params=params,
                                   server_round=1)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_users_algorithm_runs_through_flower(tmp_path, capsys):
    """The shipped example, named by its module path (Flower's actors import it): with the
    server's SGD at rate 1 each round adds every item's share of users to its bias."""
    from fedrec.federated.federation import load_federation
    from fedrec_app.simulations.simulate import simulate

    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:60x40:3", algorithm=TOY, server_opt="sgd", server_lr=1.0, num_server_rounds=3,
                    users_per_node=20, dim=8, eval_every=3, out=str(out))
    simulate(cfg, num_cpus=2)
    train = load_federation(cfg).split.train
    share = np.asarray((train > 0).sum(axis=0)).ravel() / train.shape[0]
    bias = np.load(out / "checkpoint" / "checkpoint.npz")["param/item_bias"]
    np.testing.assert_allclose(bias, 3 * share, rtol=1e-5, atol=1e-6)
    assert f"algorithm {TOY}" in capsys.readouterr().out  # the run says which algorithm trained


def test_fedrec_simulate_refuses_an_algorithm_in_one_line_before_it_starts(tmp_path, capsys):
    from fedrec_app.simulations.cli.main import main

    code = main(["simulate", "--algorithm", TOY, "--target-epsilon", "8", "--data", "synthetic:20x30:0",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f"fedrec: error: --algorithm {TOY}: popularity-pull implements no")
    assert not (tmp_path / "run" / "rounds.csv").exists()
