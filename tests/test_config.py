"""The configuration is plain data in sections: each section is validated by its own check,
which reads only that section's fields; rules that join sections are listed apart; building
a configuration imports nothing of the engine or the models; what a model cannot run is
refused where the run starts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from fedrec.config import (DEFAULTS, SECTION_CHECKS, SECTIONS, ConfigError, FedConfig, _check_across_sections,
                           options, run_key)
from fedrec.federated.algorithms import check_run, model_problem

SECTION_OF = {f.name: f.metadata["section"] for f in options()}

#: Valid configurations that take the checks down their branches.
VARIANTS = [
    {},
    {"noise_multiplier": 1.0, "budget_epsilon": 5.0, "prior_noise": 2.0, "train_head": 0.5},
    {"target_epsilon": 8.0, "sample_rate": 0.5},
    {"user_dp": "client", "user_target_epsilon": 8.0, "user_sample_rate": 0.1},
    {"user_dp": "server", "user_noise_multiplier": 1.0, "users_per_node": 1},
    {"als": True, "als_target_epsilon": 8.0, "als_unit": "interaction-level"},
    {"privacy_unit": "user-level", "epsilon": 2.0},
    {"split": "window:10:20", "patience": 0, "exposure_items": "1,2"},
    {"aggregation": "krum", "row_norm": 1.0, "max_rows": 3, "weighting": "user"},
    {"secure_aggregation": True, "mlflow": "sqlite:///x.db", "tensorboard": "tb", "out": "o"},
]


class Recorder:
    """Stands for a configuration and records the fields read (through properties too)."""

    def __init__(self, cfg: FedConfig):
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        prop = getattr(FedConfig, name, None)
        if isinstance(prop, property):
            return prop.fget(self)
        self.read.add(name)
        return getattr(self._cfg, name)


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_check_reads_only_its_own_fields(section):
    check = SECTION_CHECKS[section]
    read = set()
    for variant in VARIANTS:
        rec = Recorder(FedConfig(**variant))
        check(rec)
        read |= rec.read
    assert read, f"the {section} check reads nothing"
    assert {SECTION_OF[name] for name in read} == {section}, {n: SECTION_OF[n] for n in read}


def test_the_recorder_sees_a_check_that_reads_another_section():
    """The check above can fail: the rules across sections read several."""
    rec = Recorder(FedConfig(**VARIANTS[4]))
    _check_across_sections(rec)
    assert len({SECTION_OF[name] for name in rec.read}) > 1


def test_every_section_has_one_check_in_the_order_of_help():
    assert tuple(SECTION_CHECKS) == SECTIONS


@pytest.mark.parametrize("field, value, words", [
    ("kcore", -1, "must be >= 0"),                             # data
    ("cold_users", 1.0, "must be in [0, 1)"),
    ("split", "window:5:1", "split"),
    ("dim", 0, "must be >= 1"),                                # model
    ("device", "tpu", "choose 'cpu', 'cuda' or 'cuda:N'"),
    ("fraction_train", 0.0, "must be in (0, 1]"),              # federation
    ("epsilon", 8.0, "needs --privacy"),                       # privacy
    ("user_lr", 0.0, "must be > 0"),                           # local training
    ("delta", 1.0, "must be in (0, 1)"),                       # interaction-level DP
    ("train_head", 2.0, "must be in [0, 1] (0: every item trained)"),
    ("budget_epsilon", 3.0, "needs interaction-level DP"),
    ("user_dp", "adaptive", "adaptive clipping is refused"),   # user-level DP
    ("user_sample_rate", 0.0, "must be in (0, 1]"),
    ("als_head", 1.5, "must be in [0, 1]"),                    # private ALS
    ("trim_beta", 0.5, "must be in [0, 0.5)"),                 # server
    ("secagg_quantization", -1, "must be >= 0 (0: automatic)"),
    ("dropout_rate", 1.0, "must be in [0, 1)"),                # fault tolerance
    ("exposure_items", "a,b", "comma-separated item indices"),  # evaluation
    ("mlflow", "sqlite:///x.db", "give --out too"),             # outputs
])
def test_a_bad_value_is_refused_naming_its_key(field, value, words):
    with pytest.raises(ConfigError) as e:
        FedConfig(**{field: value})
    assert e.value.key == run_key(field).split(".")[-1] and words in str(e.value)
    assert str(e.value).startswith(f"config {run_key(field)}=")


def test_building_a_configuration_imports_no_engine_model_or_accountant():
    code = ("import sys\nfrom fedrec.config import FedConfig\n"
            "FedConfig(model='sasrec', noise_multiplier=1.0, device='cuda', cold_items=0.1)\n"
            "loaded = [m for m in ('torch', 'opacus', 'flwr', 'fedrec.models', 'fedrec.engine', 'fedrec.privacy')"
            " if m in sys.modules]\nprint(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("settings, field, words", [
    ({"model": "sasrec", "noise_multiplier": 1.0}, "model", "interaction-level DP is not available"),
    ({"model": "gru4rec", "user_dp": "client", "user_noise_multiplier": 1.0, "budget_epsilon": 1.0,
      "noise_multiplier": 1.0}, "model", "interaction-level DP is not available"),
    ({"model": "sasrec", "device": "cuda"}, "device", "sequential models train on the CPU only"),
    ({"model": "sasrec", "prior_noise": 1.0}, "prior_noise", "no item bias"),
    ({"model": "mf", "cold_items": 0.2}, "cold_items", "feature-aware model"),
    ({"model": "no-such-model"}, "model", "no-such-model"),
])
def test_what_a_model_cannot_run_is_refused_where_the_run_starts(settings, field, words):
    cfg = FedConfig(**settings)  # settings alone are valid
    assert model_problem(cfg)[0] == field
    with pytest.raises(ConfigError) as e:
        check_run(cfg)
    assert e.value.key == run_key(field).split(".")[-1] and words in str(e.value)


@pytest.mark.parametrize("settings", [{}, {"model": "two-tower", "cold_items": 0.2},
                                      {"model": "sasrec", "user_dp": "client", "user_noise_multiplier": 1.0}])
def test_what_a_model_can_run_passes(settings):
    cfg = FedConfig(**settings)
    assert model_problem(cfg) is None
    check_run(cfg)


def test_the_defaults_are_a_frozen_configuration():
    assert DEFAULTS == FedConfig() and dataclasses.is_dataclass(DEFAULTS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.dim = 3
