"""Experiment tracking: a run directory logged to MLflow.

A fedrec run directory (``config.json``, ``rounds.jsonl``/``rounds.csv``, ``metrics.json``, plots
and reports) is the record of a run; :func:`log_run` copies it into an MLflow
tracking store, where researchers compare runs:

- **parameters**: the run config, one ``section.key`` parameter per option (as in
  ``config.json``);
- **metrics per round**: every numeric value of each round's row (``rounds.jsonl``,
  the same rows as ``rounds.csv``) at ``step = round``
  (``valid/ndcg@10`` is logged as ``valid/ndcg_at_10``: MLflow names cannot hold
  ``@``; :func:`metric_key`);
- **summary metrics**: ``metrics.json``'s validation and test metrics at the round
  picked on validation (``selected/valid/...``, ``selected/test/...``) and the
  privacy spent (``privacy/epsilon``; its unit in the tag ``fedrec.privacy.unit``);
- **artefacts**: the run's server-side files (config, metrics, rounds, reports,
  plots).  Never ``client-state/`` (the users' local state lives on the nodes) nor
  checkpoints.

Any MLflow backend works; a local SQLite file needs no server
(``sqlite:///runs/mlflow.db``).  MLflow is optional (``pip install
mlflow-skinny``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from fedrec.config import sectioned_run_config

__all__ = ["log_run", "metric_key", "ARTEFACTS"]

#: Files of a run directory copied as artefacts (if present): everything the server wrote for
#: the researcher, nothing of the nodes' state.
ARTEFACTS = ("config.json", "metrics.json", "rounds.csv", "rounds.jsonl", "report.md", "summary.md")


def metric_key(name: str) -> str:
    """An MLflow metric name for a fedrec metric name (``@`` -> ``_at_``)."""
    return name.replace("@", "_at_")


def _number(x: str) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (``mlartifacts/``), as under
    ``mlflow server``; MLflow's own default, ``./mlruns``, would write into whatever
    directory the run was started from. Other stores keep their server's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts").as_uri()


def log_run(run_dir: str | Path, *, tracking_uri: str, experiment: str = "fedrec", run_name: str | None = None) -> str:
    """Log a finished run directory to MLflow; returns the MLflow run id.

    Parameters
    ----------
    run_dir
        A directory written by a fedrec run (``config.json``, ``rounds.jsonl`` and
        ``metrics.json`` at least).
    tracking_uri
        MLflow tracking URI (``sqlite:///path/mlflow.db``, ``http://...``).
    experiment
        MLflow experiment name (created if missing).
    run_name
        Name of the MLflow run (default: the directory's name).
    """
    run_dir = Path(run_dir)
    needed = {n: run_dir / n for n in ("config.json", "rounds.jsonl", "metrics.json")}
    for name, path in needed.items():
        if not path.is_file():
            raise ValueError(f"{run_dir}: no {name} (not a finished fedrec run directory)")
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:
        raise ValueError("MLflow tracking needs mlflow: pip install mlflow-skinny") from None
    config = json.loads(needed["config.json"].read_text())
    metrics = json.loads(needed["metrics.json"].read_text())
    rounds = [json.loads(x) for x in needed["rounds.jsonl"].read_text().splitlines() if x.strip()]

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        experiment, artifact_location=_artifact_location(tracking_uri))
    privacy = metrics.get("privacy") or {}
    tags = {"fedrec.run_dir": str(run_dir.resolve()), "fedrec.privacy.unit": str(privacy.get("unit", "none"))}
    run = client.create_run(exp_id, run_name=run_name or run_dir.name, tags=tags)
    rid = run.info.run_id
    now = int(time.time() * 1000)

    params = [Param(k, str(v)[:6000]) for k, v in sectioned_run_config(config.get("run_config", {})).items()]
    values: list[Metric] = []
    for row in rounds:
        step = int(row["round"])
        for col, x in row.items():
            v = _number(x) if col != "round" and not isinstance(x, (list, dict, bool)) else None
            if v is not None:
                values.append(Metric(metric_key(col), v, now, step))
    selected = (metrics.get("selected") or {}).get("round") or 0
    for stage, key in (("validation", "valid"), ("test", "test")):
        for name, x in (metrics.get(stage) or {}).items():
            if isinstance(x, (int, float)) and math.isfinite(x):
                values.append(Metric(metric_key(f"selected/{key}/{name}"), float(x), now, int(selected)))
    eps = privacy.get("epsilon")
    if isinstance(eps, (int, float)) and math.isfinite(eps):
        values.append(Metric("privacy/epsilon", float(eps), now, int(metrics.get("rounds") or 0)))
    client.set_tag(rid, "fedrec.selected_round", str(selected))
    for j in range(0, max(len(params), len(values)), 100):  # within MLflow's batch limits (100 params)
        client.log_batch(rid, params=params[j:j + 100], metrics=values[j:j + 100])
    for name in ARTEFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(rid, str(run_dir / name))
    for plot in sorted(run_dir.glob("*.png")):
        client.log_artifact(rid, str(plot), artifact_path="plots")
    client.set_terminated(rid)
    return rid
