"""A run directory is a record: a resume continues the recorded run (changes refused unless
asked, and recorded), and the directory holds the command line, versions, the data's
checksum, the console's log and the id maps (a killed run resumed with ``--resume`` alone:
tests/test_fault_tolerance.py)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
from pathlib import Path

import pytest

from fedrec.config import FedConfig, nested_run_config
from fedrec.privacy.calibration import resolved
from fedrec_app.simulations.cli.main import UsageError, build_parser, main, simulate_config
from fedrec_app.simulations.cli.console import console_log

DATA = "synthetic:60x40:0"
FLAGS = ["--data", DATA, "--dim", "4", "--users-per-node", "20", "--rounds", "4", "--eval-every", "2",
         "--target-epsilon", "8", "--sample-rate", "0.5"]


def _record(out: Path, **kw) -> FedConfig:
    """A run directory as a run leaves it: config.json with the resolved configuration."""
    cfg = resolved(FedConfig(data=DATA, dim=4, users_per_node=20, num_server_rounds=4, eval_every=2, target_epsilon=8.0,
                    sample_rate=0.5, out=str(out), **kw))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"run_config": nested_run_config(cfg.to_run_config())}))
    return cfg


def _args(*argv) -> argparse.Namespace:
    return build_parser().parse_args(["simulate", *argv])


def test_a_resume_reads_the_recorded_configuration(tmp_path):
    out = tmp_path / "run"
    recorded = _record(out)
    cfg, changed = simulate_config(_args("--out", str(out), "--resume"))
    assert changed == {}
    assert cfg.num_server_rounds == 4 and cfg.dim == 4 and cfg.resume
    assert cfg.noise_multiplier == recorded.noise_multiplier > 0  # the privacy of the recorded run, not the defaults'
    cfg, changed = simulate_config(_args(*FLAGS, "--out", str(out), "--resume"))  # the same flags again: agree
    assert changed == {} and cfg.noise_multiplier == recorded.noise_multiplier


def test_a_resume_that_changes_the_record_is_refused_unless_asked(tmp_path):
    out = tmp_path / "run"
    _record(out)
    with pytest.raises(UsageError, match=f"--rounds 6: the run in {out} was recorded with 4; leave the flag out"):
        simulate_config(_args("--out", str(out), "--resume", "--rounds", "6"))
    with pytest.raises(UsageError, match="--noise-multiplier .* was recorded with"):  # another epsilon, another noise
        simulate_config(_args("--out", str(out), "--resume", "--target-epsilon", "4"))
    cfg, changed = simulate_config(_args("--out", str(out), "--resume", "--rounds", "6", "--resume-with-changes"))
    assert cfg.num_server_rounds == 6 and changed["num-server-rounds"] == [4, 6]
    assert "noise-multiplier" not in changed  # the rounds run keep their noise; the accountant composes all 6


def test_without_resume_the_flags_and_defaults_make_the_configuration(tmp_path):
    cfg, changed = simulate_config(_args("--out", str(tmp_path / "new"), "--rounds", "7"))
    assert cfg.num_server_rounds == 7 and not cfg.resume and changed == {}
    data = tmp_path / "ratings.csv"
    data.write_text("user,item\n1,1\n")
    cfg, _ = simulate_config(_args("--out", str(tmp_path / "new"), "--data", os.path.relpath(data)))
    assert cfg.data == str(data.resolve())  # recorded absolute: a resume from elsewhere finds it


def test_the_console_is_kept_in_the_run_directory_and_engine_chatter_dropped(tmp_path, monkeypatch):
    shown = io.StringIO()
    monkeypatch.setattr(sys, "stdout", shown)
    out = tmp_path / "run"
    with console_log(out, drop=("chatter",)):
        print("before the directory exists")
        out.mkdir()
        print("a first line")
        (out / "run.json").write_text("{}")
        print("(Actor pid=1) some chatter")
        print("a second line")
    assert shown.getvalue() == "before the directory exists\na first line\na second line\n"
    assert (out / "log.txt").read_text() == "before the directory exists\na first line\na second line\n"


def test_a_refused_command_leaves_no_log_and_no_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out), "--data", str(tmp_path / "missing.csv")]) == 2
    assert not out.exists()


BASELINES = ["mostpop", "private-mostpop", "ease", "bpr-mf", "mf", "gmf", "mlp", "neumf", "two-tower", "sasrec",
             "gru4rec"]


def _tiny_movielens(tmp_path: Path) -> Path:
    """24 users x 8 ratings of 30 films, with the films' genres and years (the two-tower's features)."""
    data = tmp_path / "ratings.csv"
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{(u * 7 + k) % 30 + 1},4.0,{100 * k + u}"
                                                   for u in range(1, 25) for k in range(8)]
    data.write_text("\n".join(lines) + "\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i},Film {i} ({1990 + i}),{'Drama|Comedy' if i % 2 else 'Action'}\n" for i in range(1, 31)))
    return data


def _offered(command: str) -> str:
    from fedrec_app.simulations.cli.main import build_parser as parser_of

    return " ".join(parser_of()._subparsers._group_actions[0].choices[command].format_help().split())


@pytest.mark.parametrize("model", BASELINES)
def test_every_baseline_model_runs_one_epoch_and_records_its_run(tmp_path, model):
    assert model in _offered("baseline")  # every model tried here is one the help offers
    data = _tiny_movielens(tmp_path)
    out = tmp_path / model
    argv = ["baseline", "--data", str(data), "--model", model, "--epochs", "1", "--dim", "4", "--seq-len", "4",
            "--out", str(out)] + (["--epsilon", "1"] if model == "private-mostpop" else [])
    assert main(argv) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert 0 <= doc["test"]["ndcg@10"] <= doc["test"]["hr@10"] <= 1
    run = json.loads((out / "run.json").read_text())["invocations"]
    assert len(run) == 1 and run[0]["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert run[0]["data"]["file"] == str(data.resolve()) and run[0]["versions"]["fedrec"]
    assert "wrote" in (out / "log.txt").read_text() and (out / "id_map.json").is_file()


SIMULATED = ["mf", "gmf", "mlp", "neumf", "two-tower", "sasrec", "gru4rec"]


@pytest.mark.heavy
@pytest.mark.slow
def test_every_simulate_model_runs_one_round_through_flower(tmp_path):
    """Each model ``fedrec simulate --model`` offers trains one round through Flower's engine
    (one Ray for all, as a session would reuse it) and is evaluated on the test split."""
    import re

    offered = _offered("simulate")
    listed = re.search(r"--model MODEL (.*?) or your own", offered).group(1)
    assert set(re.findall(r"[a-z0-9-]+", listed)) - {"and", "the", "sequential"} == set(SIMULATED)
    data = _tiny_movielens(tmp_path)
    for model in SIMULATED:
        out = tmp_path / model
        argv = ["simulate", "--data", str(data), "--model", model, "--rounds", "1", "--dim", "4", "--seq-len", "4",
                "--users-per-node", "24", "--eval-every", "1", "--out", str(out)]
        assert main(argv) == 0, model
        doc = json.loads((out / "metrics.json").read_text())
        assert doc["rounds"] == 1 and 0 <= doc["test"]["ndcg@10"] <= doc["test"]["hr@10"] <= 1, model
