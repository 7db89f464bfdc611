"""Presets as data: the table's rows, the choice for a unit and an epsilon, flags that
override it, and private MostPop (noisy counts) through Flower against MostPop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrec.config import DEFAULTS, FedConfig
from fedrec.privacy.calibration import resolved
from fedrec.presets import (UNITS, apply_choice, choose, mechanism_preset, preset, preset_fields, preset_names,
                            with_preset)


def test_every_preset_is_a_valid_configuration_and_every_row_names_one():
    import tomllib

    from fedrec.presets import PRESETS_FILE

    for name in preset_names():
        settings = preset(name)
        target = ("als-target-epsilon" if settings.get("als") else
                  "user-target-epsilon" if settings.get("user-dp") else "target-epsilon")
        cfg = resolved(with_preset(FedConfig(), {**settings, target: 8.0}))  # valid, and private
        assert cfg.als_private or cfg.user_level or cfg.dp, name
    rows = tomllib.loads(PRESETS_FILE.read_text())["choices"]
    assert {r["preset"] for r in rows} <= set(preset_names())
    for unit in UNITS:  # every dataset of any size gets an answer at any epsilon
        assert any(r["dataset"] == "*" and r["unit"] == unit and r["epsilon"] == 0 and "min-users" not in r
                   for r in rows)


@pytest.mark.parametrize("unit, eps, data, users, want", [
    ("user-level", 8, "ml-100k", 943, "private-als"),
    ("user-level", 4, "ml-100k", 943, "private-als-low"),
    ("user-level", 1, "ml-100k", 943, "private-mostpop"),
    ("interaction-level", 8, "ml-100k", 943, "private-als-interaction"),
    ("interaction-level", 16, "ml-100k", 943, "private-als"),
    ("interaction-level", 1, "ml-100k", 943, "private-mostpop"),
    ("user-level", 1, "ml-1m", 6040, "private-als-low"),
    ("interaction-level", 1, "ml-1m", 6040, "private-als-interaction"),
    ("user-level", 8, "some-new-data", 700, "private-als"),
    ("user-level", 8, "some-new-data", 50, "private-mostpop"),
])
def test_the_choice_for_a_unit_and_an_epsilon(unit, eps, data, users, want):
    c = choose(unit, eps, data, users)
    assert c.preset == want
    target = "als-target-epsilon" if c.settings.get("als") else {"user-level": "user-target-epsilon",
                                                                  "interaction-level": "target-epsilon"}[unit]
    assert c.settings[target] == eps
    if c.settings.get("als"):
        assert c.settings["als-unit"] == unit
    cfg = resolved(with_preset(FedConfig(), c.settings))  # a runnable private configuration
    assert cfg.als_private or cfg.dp or cfg.user_level
    assert c.line().startswith(f"{unit} epsilon {eps:g} on {data}: ")


def test_a_chosen_model_gets_the_mechanism_that_trains_it():
    assert choose("user-level", 8, "ml-100k", 943, model="sasrec", sequential=True).preset == "sequential-dp-fedadam"
    assert choose("user-level", 8, "ml-100k", 943, model="neumf").preset == "dp-fedavg"
    assert choose("interaction-level", 8, "ml-100k", 943, model="neumf").preset == "dp-sgd"


@pytest.mark.parametrize("unit, eps", [("item-level", 8), ("user-level", 0), ("user-level", float("inf"))])
def test_a_bad_unit_or_epsilon_is_refused(unit, eps):
    with pytest.raises(ValueError):
        choose(unit, eps, "ml-100k", 943)


def test_flags_given_override_the_chosen_preset():
    cfg = FedConfig(privacy_unit="user-level", epsilon=8.0, dim=16, als_passes=4)
    chosen, choice = apply_choice(cfg, "ml-100k", 943, given={"privacy_unit", "epsilon", "dim"})
    assert choice.preset == "private-als"
    assert chosen.dim == 16  # given
    assert chosen.als_passes == 3  # not given: the preset's
    assert chosen.als and chosen.als_target_epsilon == 8.0 and chosen.als_unit == "user-level"
    assert not chosen.privacy_unit and chosen.epsilon == 0  # the mechanism's own target carries the epsilon
    chosen, _ = apply_choice(cfg, "ml-100k", 943)  # given=None: what differs from the defaults counts as given
    assert chosen.dim == 16 and chosen.als_passes == 4
    assert apply_choice(FedConfig(), "ml-100k", 943) == (FedConfig(), None)


def test_privacy_and_a_mechanisms_own_target_are_not_both_given():
    from fedrec.config import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        FedConfig(privacy_unit="user-level", epsilon=8.0, target_epsilon=8.0)
    with pytest.raises(ConfigError):
        FedConfig(privacy_unit="user-level")
    with pytest.raises(ConfigError):
        FedConfig(epsilon=8.0)


def test_a_mechanism_turned_on_by_its_own_flags_names_its_preset():
    assert mechanism_preset(FedConfig(target_epsilon=8.0)) == "dp-sgd"
    assert mechanism_preset(FedConfig(user_dp="client", user_target_epsilon=8.0)) == "dp-fedavg"
    assert mechanism_preset(FedConfig(model="sasrec", user_dp="client", user_target_epsilon=8.0)) == \
        "sequential-dp-fedadam"
    ddp = FedConfig(user_dp="distributed", secure_aggregation=True, user_target_epsilon=8.0)
    assert mechanism_preset(ddp) == "distributed-dp-fedavg"
    # its settings make a valid run: no DP prior, which distributed DP refuses
    from fedrec.presets import with_preset

    assert with_preset(ddp, preset("distributed-dp-fedavg"), given={"user_target_epsilon"}).prior_noise == 0.0
    assert mechanism_preset(FedConfig(als=True, als_target_epsilon=4.0)) == "private-als-low"
    assert mechanism_preset(FedConfig(als=True, als_target_epsilon=8.0, als_unit="interaction-level")) == \
        "private-als-interaction"
    assert mechanism_preset(FedConfig()) is None and mechanism_preset(DEFAULTS) is None


@pytest.mark.slow
def test_private_mostpop_through_flower_ranks_by_the_counts(tmp_path):
    """``als-passes 0``, ``als-head 0``: the federation releases its capped item counts and
    nothing is trained; without noise (and with no user above the cap) the ranking is
    MostPop's, so the test metrics are the MostPop baseline's on the same split."""
    from fedrec import baselines
    from fedrec.federated.federation import load_federation
    from fedrec_app.simulations.simulate import simulate

    cfg = FedConfig(data="synthetic:40x30:3", users_per_node=20, als=True, als_passes=0, als_head=0.0,
                    als_cap=30, out=str(tmp_path / "run"))
    simulate(cfg, num_cpus=2)
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]
    fed = load_federation(cfg)
    counts = np.asarray(fed.split.train.sum(0)).ravel()
    with np.load(tmp_path / "run" / "best_params.npz") as z:
        bias, table = z["item_bias"].ravel(), z["item_embedding"]
    assert not table.any()  # nothing trained: the scores are the biases
    more = counts[:, None] > counts[None, :]
    assert (bias[:, None] > bias[None, :])[more].all()  # every item above every less counted one
    pop = baselines.fit_most_popular(fed.split, ties="pessimistic")
    assert doc["test"]["hr@20"] >= pop.test.metrics["hr@20"] - 1e-9  # MostPop's ties count against it, not here


def test_the_default_study_runs_the_mechanism_a_private_run_chooses():
    """Each chosen cell of the main job is what ``fedrec simulate --privacy UNIT --epsilon E``
    runs on the bundled data (private ALS at 610 users), beside the study's own settings."""
    from dataclasses import replace

    from fedrec.federated.federation import load_federation
    from fedrec_app.simulations.studies.study import STUDIES, study_cells

    cells = {c.name: c for c in study_cells(STUDIES["default"])}
    fed = load_federation(FedConfig(data="ml-latest-small"))
    base = replace(cells["non-private"].cfg, num_server_rounds=DEFAULTS.num_server_rounds)  # the study's base
    want = {"private-als user-eps8": ("user-level", 8.0), "private-als-low user-eps2": ("user-level", 2.0),
            "private-als-interaction interaction-eps8": ("interaction-level", 8.0),
            "private-als-interaction interaction-eps2": ("interaction-level", 2.0)}
    assert {n for n, c in cells.items() if c.labels.get("chosen")} == set(want)
    for name, (unit, eps) in want.items():
        ran, choice = apply_choice(replace(base, privacy_unit=unit, epsilon=eps), fed.dataset.name, fed.dataset.n_users)
        assert cells[name].cfg == ran and choice.preset == cells[name].labels["preset"]
        assert cells[name].labels["unit"] == unit and cells[name].cfg.als_unit == unit
    twin = cells["non-private @private-als preset"].cfg
    assert twin.als and not twin.als_private and twin.als_passes == cells["private-als user-eps8"].cfg.als_passes
    # the trained-MF mechanisms stay at epsilon 8, beside their twins
    assert {"interaction-eps8", "user-eps8", "non-private @interaction preset",
            "non-private @user preset"} <= set(cells)
    assert not any(n in cells for n in ("interaction-eps2", "user-eps2"))


def test_the_dp_levels_sweep_runs_the_dp_sgd_preset_without_its_prior():
    from fedrec_app.simulations.studies.sweeps import dp_levels

    cells = {c.name: c.cfg for c in dp_levels(data="synthetic:60x40:0", epsilons=(8,), users_per_node=30)}
    cfg, want = cells["interaction-eps8"], preset_fields("dp-sgd")
    assert ({k: getattr(cfg, k) for k in want if k != "prior_noise"}
            == {k: v for k, v in want.items() if k != "prior_noise"})
    assert cfg.prior_noise == DEFAULTS.prior_noise and cfg.target_epsilon == 8.0 and cfg.num_server_rounds == 100
