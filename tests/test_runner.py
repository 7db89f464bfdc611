"""Sweeps keep finished runs: a rerun skips them, a changed configuration moves them aside."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved
from fedrec_app.simulations.studies.runner import Cell, config_differences, is_replaced, run_cells


def _fake_run(calls):
    def run(cfg: FedConfig) -> dict:
        calls.append(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"config": resolved(cfg).to_run_config(), "test": {"ndcg@10": 0.1 * len(calls)}}
        (out / "metrics.json").write_text(json.dumps(doc))
        return doc

    return run


def test_a_changed_configuration_moves_the_finished_run_aside(tmp_path):
    calls, msgs = [], []
    cell = Cell("mf", FedConfig(data="synthetic:30x20:0", dim=4))
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert len(calls) == 1 and "done before, kept" in msgs[-1]

    changed = Cell("mf", FedConfig(data="synthetic:30x20:0", dim=8))
    rows = run_cells([changed], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert len(calls) == 2 and rows[0]["test_ndcg@10"] == 0.2
    aside = [p for p in (tmp_path / "runs").iterdir() if is_replaced(p)]
    assert len(aside) == 1 and aside[0].name.startswith("mf-seed0.replaced-")
    old = json.loads((aside[0] / "metrics.json").read_text())
    assert (old["test"]["ndcg@10"] == 0.1
            and config_differences(aside[0], FedConfig(data="synthetic:30x20:0", dim=4, seed=0)) == [])  # nothing lost
    assert "(dim differ)" in next(m for m in msgs if "another configuration" in m)


def test_an_interrupted_cell_resumes_from_its_checkpoint_and_another_configuration_starts_over(tmp_path):
    from dataclasses import replace

    import numpy as np

    from fedrec.federated.optim import OptState
    from fedrec_app.server.checkpoint import save_checkpoint

    cell = Cell("mf", FedConfig(data="synthetic:30x20:0", dim=4, num_server_rounds=50))
    d = tmp_path / "runs" / "mf-seed0"

    def interrupted(cfg: FedConfig, server_round: int) -> None:  # what a killed run leaves: a checkpoint, no metrics
        save_checkpoint(d / "checkpoint", cfg=resolved(cfg), server_round=server_round, params={"w": np.zeros(2)},
                        opt_state=OptState(), best=None)

    calls, msgs = [], []
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)  # nothing there: a fresh run
    assert calls[-1].resume is False and "running" in msgs[-1]
    (d / "metrics.json").unlink()
    # the same configuration, only more rounds asked for (as when a sweep is continued with --rounds)
    interrupted(replace(cell.cfg, seed=0, out=str(d), num_server_rounds=30), 17)
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert calls[-1].resume is True and "resuming after round 17" in msgs[-1]
    assert (calls[-1].out, calls[-1].seed, calls[-1].num_server_rounds) == (str(d), 0, 50)

    (d / "metrics.json").unlink()
    interrupted(replace(cell.cfg, seed=0, out=str(d), dim=8), 17)  # another configuration's checkpoint
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert calls[-1].resume is False and "running" in msgs[-1]
    (d / "metrics.json").unlink()
    (d / "checkpoint" / "checkpoint.npz").write_bytes(b"not a checkpoint")  # unreadable: start over
    run_cells([cell], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert len(calls) == 4 and calls[-1].resume is False


def test_two_spellings_of_one_data_path_are_one_configuration(tmp_path, monkeypatch):
    data = tmp_path / "data" / "ratings.csv"
    data.parent.mkdir()
    data.write_text("user,item\n1,1\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    calls = []
    run_cells([Cell("mf", FedConfig(data="../data/ratings.csv"))], [0], tmp_path / "sweep", run=_fake_run(calls),
              say=lambda m: None)
    d = tmp_path / "sweep" / "runs" / "mf-seed0"
    assert config_differences(d, FedConfig(data=str(data), seed=0)) == []
    assert config_differences(d, FedConfig(data=os.path.relpath(data), seed=0)) == []
    other = tmp_path / "data" / "other.csv"
    other.write_text("user,item\n1,1\n")
    assert config_differences(d, FedConfig(data=str(other), seed=0)) == ["data"]
    assert config_differences(d, FedConfig(data="../data/ratings.csv", seed=0, dim=7)) == ["dim"]


def test_overrides_reach_every_cell_and_a_bad_one_runs_nothing(tmp_path):
    from fedrec.config import parse_overrides

    calls, msgs = [], []
    cells = [Cell("mf", FedConfig(data="synthetic:30x20:0", dim=4)),
             Cell("gmf", FedConfig(data="synthetic:30x20:0", model="gmf"))]
    overrides = parse_overrides(["server-lr=1e-3", "federation.num-server-rounds=7", "user-sample-rate=0.5"])
    assert overrides == {"server_lr": 1e-3, "num_server_rounds": 7, "user_sample_rate": 0.5}
    run_cells(cells, [0], tmp_path, run=_fake_run(calls), overrides=overrides, say=msgs.append)
    assert [(c.model, c.dim, c.server_lr, c.num_server_rounds, c.user_sample_rate) for c in calls] == [
        ("mf", 4, 1e-3, 7, 0.5), ("gmf", FedConfig().dim, 1e-3, 7, 0.5)]
    # the same sweep without the overrides is another configuration: rerun, the overridden run kept aside
    run_cells(cells[:1], [0], tmp_path, run=_fake_run(calls), say=msgs.append)
    assert len(calls) == 3 and "server-lr" in next(m for m in msgs if "another configuration" in m)

    bad = parse_overrides(["user-sample-rate=1", "user-clip=-1"])
    with pytest.raises(ValueError, match="cell 'mf' invalid: .*user-clip"):
        run_cells(cells, [1], tmp_path, run=_fake_run(calls), overrides=bad, say=msgs.append)
    assert len(calls) == 3 and not (tmp_path / "runs" / "mf-seed1").exists()


@pytest.mark.parametrize("pair, words", [("x", "expected KEY=VALUE"), ("server-lr=abc", "expected float"),
                                         ("nope=1", "unknown key"), ("seed=3", "sets 'seed' itself"),
                                         ("als.dim=3", "'dim' is in section 'model'"), ("dim=1.5", "expected int")])
def test_a_bad_set_is_one_line_naming_it(capsys, tmp_path, pair, words):
    from fedrec_app.simulations.cli.main import main

    rc = main(["sweep", "tiny", "--out", str(tmp_path / "s"), "--set", pair])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [err[0]] and err[0].startswith(f"fedrec: error: --set {pair}: ") and words in err[0]
    assert not (tmp_path / "s").exists()


def test_a_finished_run_of_a_privacy_choice_is_the_same_configuration(tmp_path):
    """A cell given only `--privacy UNIT --epsilon E` records the mechanism chosen for its
    data: run again, the sweep compares the record with that choice and keeps the run."""
    from fedrec.federated.federation import load_federation
    from fedrec.presets import apply_choice

    asked = FedConfig(data="synthetic:30x20:0", privacy_unit="user-level", epsilon=8.0, seed=0)
    fed = load_federation(asked)
    chosen, _ = apply_choice(asked, fed.dataset.name, fed.dataset.n_users)
    d = tmp_path / "run"
    _fake_run([])(replace(chosen, out=str(d)))
    assert config_differences(d, asked) == []
    assert config_differences(d, replace(asked, epsilon=2.0)) != []
