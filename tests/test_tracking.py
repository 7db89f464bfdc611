"""Experiment tracking: rounds.csv lines up with its header, and a run logged to a real
local MLflow store (SQLite) holds the same metrics as rounds.csv."""

import csv
import json
import math

import pytest

from fedrec.results import append_round


def test_rounds_csv_header_grows_with_the_first_evaluation(tmp_path):
    rows = [{"round": 1, "loss": 0.5}, {"round": 2, "loss": 0.4, "valid/ndcg@10": 0.1},
            {"round": 3, "loss": 0.3}, {"round": 4, "loss": 0.2, "valid/ndcg@10": 0.2, "epsilon": [1.0]}]
    for r in rows:
        append_round(tmp_path, r)
    with (tmp_path / "rounds.csv").open(newline="") as f:
        got = list(csv.reader(f))
    assert got[0] == ["round", "loss", "valid/ndcg@10", "epsilon"]
    assert all(len(r) == 4 for r in got)  # every row lines up with the header
    assert [r[2] for r in got[1:]] == ["", "0.1", "", "0.2"]
    assert [json.loads(x)["round"] for x in (tmp_path / "rounds.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_tracking_refuses_what_is_not_a_run(tmp_path):
    from fedrec.tracking import log_run
    from fedrec_app.simulations.cli.main import main

    with pytest.raises(ValueError, match="no config.json"):
        log_run(tmp_path, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    assert main(["track", str(tmp_path), "--mlflow", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert main(["track", str(tmp_path), "--tensorboard", str(tmp_path / "tb")]) == 2
    from fedrec.config import ConfigError, FedConfig

    with pytest.raises(ConfigError, match="give --out"):
        FedConfig(tensorboard=str(tmp_path / "tb"))


def _numeric_columns(rows: list[dict]) -> dict[str, dict[int, float]]:
    """``column -> {round: value}`` of every numeric column of rounds.csv's rows."""
    out = {}
    for col in rows[0]:
        want = {int(r["round"]): float(r[col]) for r in rows if col != "round" and r[col] not in ("", None)
                and not r[col].startswith("[")}
        if want:
            out[col] = want
    return out


@pytest.mark.slow
def test_a_run_logged_to_mlflow_holds_what_rounds_csv_holds(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # artifacts go beside the database, not into the working directory
    from fedrec.config import FedConfig
    from fedrec.tracking import metric_key
    from fedrec_app.simulations.cli.main import main
    from fedrec_app.simulations.simulate import simulate

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "run"
    cfg = FedConfig(data="synthetic:20x40:1", num_server_rounds=3, users_per_node=10, dim=4, eval_every=2,
                    user_dp="client", user_noise_multiplier=1.0, out=str(out), mlflow=uri, mlflow_experiment="t",
                    tensorboard=str(tmp_path / "tb"))
    summary = simulate(cfg, num_cpus=2)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    with (out / "rounds.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[1]["valid/ndcg@10"] != ""
    columns = _numeric_columns(rows)
    assert len(columns) >= 10
    for col, want in columns.items():
        hist = {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric_key(col))}
        assert hist == pytest.approx(want), col
    assert run.data.params["model.model"] == "mf" and run.data.params["user-level.user-dp"] == "client"
    doc = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["selected/test/ndcg_at_10"] == pytest.approx(doc["test"]["ndcg@10"])
    assert math.isclose(run.data.metrics["privacy/epsilon"], doc["privacy"]["epsilon"])
    assert run.data.tags["fedrec.privacy.unit"] == "user-level"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.json", "rounds.csv"} <= arts and not any("client-state" in a for a in arts)
    # the command line logs finished runs too (a run directory, or a sweep's runs/)
    assert main(["track", str(out), "--mlflow", uri, "--experiment", "t"]) == 0
    assert len(client.search_runs([client.get_experiment_by_name("t").experiment_id])) == 2
    assert not list(elsewhere.iterdir()) and (tmp_path / "mlartifacts").is_dir()
    # the same run as TensorBoard scalars: every rounds.csv value at its round, under tb/<run name>
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert summary["tensorboard_dir"] == str(tmp_path / "tb" / "run")
    acc = EventAccumulator(summary["tensorboard_dir"])
    acc.Reload()
    for col, want in columns.items():
        assert {e.step: e.value for e in acc.Scalars(col)} == pytest.approx(want, rel=1e-6), col
    assert acc.Scalars("selected/test/ndcg@10")[0].value == pytest.approx(doc["test"]["ndcg@10"], rel=1e-6)
    assert acc.Scalars("privacy/epsilon")[0].value == pytest.approx(doc["privacy"]["epsilon"], rel=1e-6)
    assert main(["track", str(out), "--tensorboard", str(tmp_path / "tb2")]) == 0
    assert EventAccumulator(str(tmp_path / "tb2" / "run")).Reload().Scalars("valid/ndcg@10")
