"""`fedrec tune`: the search's two kinds of selection with a stand-in for the trials'
runs, its refusals, the preset file it writes and `fedrec simulate --preset` reading it;
one search through Flower's engine."""

import json
import math
import tomllib
from pathlib import Path

import pytest

from fedrec.config import FedConfig
from fedrec.presets import load_preset
from fedrec.privacy.selection import Trials, selection_epsilon, trial_releases
from fedrec.privacy.calibration import resolved
from fedrec_app.simulations.studies.tune import Dimension, parse_dimension, tune

DATA = "synthetic:40x30:1"


def fake_run(seen: list):
    """A trial's run that scores 1 - |log10(user-lr)| on validation (best at user-lr 1)."""
    def run(cfg: FedConfig) -> dict:
        seen.append(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps({"validation": {"ndcg@10": 1 - abs(math.log10(cfg.user_lr))}}))
        return {"seconds": 0.0}
    return run


def test_parse_dimension():
    assert parse_dimension("user-lr=log:0.01:1") == ("user-lr", Dimension("log", 0.01, 1.0))
    assert parse_dimension("dim=choice:8,16") == ("dim", Dimension("choice", values=(8, 16)))
    assert parse_dimension("negatives=int:1:4") == ("negatives", Dimension("int", 1.0, 4.0))
    for bad, why in (("user-lr", "expected"), ("user-lr=log:1:0.1", "LOW < HIGH"), ("user-lr=log:0:1", "LOW > 0"),
                     ("nope=float:0:1", "--vary nope"), ("dim=choice:8,x", "--vary dim=x"),
                     ("user-lr=cube:0:1", "expected")):
        with pytest.raises(ValueError, match=why) as e:
            parse_dimension(bad)
        assert "\n" not in str(e.value)


def test_a_not_covered_search_runs_its_trials_and_writes_the_best(tmp_path):
    seen = []
    summary = tune(FedConfig(data=DATA), out=tmp_path / "t", space={"user-lr": Dimension("log", 0.01, 10.0)},
                   trials=12, run=fake_run(seen), say=lambda s: None)
    assert len(seen) == 12 and summary["selection"] == "not-covered" and summary["epsilon_selection"] == math.inf
    scores = [json.loads(x)["score"] for x in (tmp_path / "t" / "trials.jsonl").read_text().splitlines()]
    assert summary["selected"]["score"] == max(scores)
    name, settings = load_preset(str(tmp_path / "t" / "preset.toml"))
    assert name == "tuned" and settings["user-lr"] == summary["selected"]["settings"]["user-lr"]
    assert "covered by no epsilon" in (tmp_path / "t" / "preset.toml").read_text()
    assert all(c.patience == FedConfig().patience for c in seen)  # each run's own best round


def test_an_accounted_search_draws_its_trials_evaluates_once_and_states_its_epsilon(tmp_path):
    seen = []
    base = FedConfig(data=DATA, target_epsilon=8.0, sample_rate=0.3, num_server_rounds=20)
    summary = tune(base, out=tmp_path / "t", space={"user-lr": Dimension("log", 0.01, 10.0)}, trials_mean=4,
                   score_noise=2.0, run=fake_run(seen), say=lambda s: None)
    assert summary["selection"] == "accounted" and summary["unit"] == "interaction-level"
    assert len(seen) == len((tmp_path / "t" / "trials.jsonl").read_text().splitlines()) >= 1
    assert all(c.eval_every == 20 and c.patience == 0 for c in seen)  # the last round's model, no selection inside
    releases = trial_releases(resolved(base))
    assert all(trial_releases(resolved(c)) == releases for c in seen)  # every trial: the base run's mechanism
    expected = selection_epsilon(releases, Trials(4), delta=base.delta, score_noise=2.0)
    assert summary["epsilon_selection"] == pytest.approx(expected)
    assert summary["epsilon_selection"] > summary["epsilon_per_trial"] > 8.0  # the score is released too
    text = (tmp_path / "t" / "preset.toml").read_text()
    assert f"interaction-level epsilon {expected:.3g}" in text
    assert tomllib.loads(text)["presets"]["tuned"]["user-lr"] == summary["selected"]["settings"]["user-lr"]


def test_the_number_of_accounted_trials_is_random(tmp_path):
    counts = set()
    for k in range(6):
        seen = []
        tune(FedConfig(data=DATA, target_epsilon=8.0), out=tmp_path / f"t{k}",
             space={"user-lr": Dimension("log", 0.1, 1.0)}, trials_mean=10, run=fake_run(seen), say=lambda s: None)
        counts.add(len(seen))
    assert len(counts) > 1  # P(six equal draws) = sum_k P(K = k)^6 = 3.9e-4 at mean 10


@pytest.mark.parametrize("settings, space, why", [
    (dict(), None, "not private"),
    (dict(target_epsilon=8.0), {"sample-rate": Dimension("float", 0.1, 0.5)}, "changes the mechanism"),
    (dict(target_epsilon=8.0), {"nope": Dimension("float", 0.1, 0.5)}, "no such setting"),
])
def test_an_accounted_search_refuses_what_its_epsilon_would_not_cover(tmp_path, settings, space, why):
    with pytest.raises(ValueError, match=why) as e:
        tune(FedConfig(data=DATA, **settings), out=tmp_path / "t", space=space, selection="accounted",
             run=fake_run([]), say=lambda s: None)
    assert "\n" not in str(e.value)


def test_a_used_directory_is_refused_and_kept(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        tune(FedConfig(data=DATA), out=tmp_path / "t", run=fake_run([]), say=lambda s: None)
    assert (tmp_path / "t" / "keep").read_text() == "x"


def test_load_preset_refuses_a_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, why in (("[presets.a]\nnope = 1\n", "unknown key"), ("[presets.a]\ndim = 'x'\n", "dim"),
                      ("x = [", "not a preset file"), ("[presets.a]\n[presets.b]\n", "found 2")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=why) as e:
            load_preset(str(bad))
        assert str(e.value).startswith(f"--preset {bad}") and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no such file"):
        load_preset(str(tmp_path / "missing.toml"))
    assert load_preset("dp-sgd")[1]["sample-rate"] == 0.3


@pytest.mark.slow
def test_tune_through_flower_then_simulate_with_its_preset(tmp_path, capsys):
    from fedrec_app.simulations.cli.main import main

    common = ["--data", "synthetic:40x30:2", "--rounds", "3", "--users-per-node", "20", "--eval-every", "3"]
    assert main(["tune", *common, "--trials", "2", "--vary", "dim=choice:4,8", "--vary", "user-lr=log:0.1:1",
                 "--cpus", "2", "--out", str(tmp_path / "t")]) == 0
    chosen = tomllib.loads((tmp_path / "t" / "preset.toml").read_text())["presets"]["tuned"]
    assert main(["simulate", *common, "--preset", str(tmp_path / "t" / "preset.toml"), "--dim", "16",
                 "--cpus", "2", "--out", str(tmp_path / "run")]) == 0
    run_config = json.loads((tmp_path / "run" / "config.json").read_text())["run_config"]
    flat = {k: v for section in run_config.values() if isinstance(section, dict) for k, v in section.items()}
    assert flat["user-lr"] == pytest.approx(chosen["user-lr"]) and flat["dim"] == 16  # the flag given wins
    assert "preset 'tuned'" in capsys.readouterr().out
