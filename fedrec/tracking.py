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

:func:`log_tensorboard` writes the same per-round and summary metrics as TensorBoard
scalars (``tensorboard --logdir DIR``; tags keep fedrec's names, ``@`` included) and
the config as text.  TensorBoard is optional too (``pip install tensorboard``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from fedrec.config import sectioned_run_config

__all__ = ["log_run", "log_tensorboard", "run_scalars", "metric_key", "ARTEFACTS"]

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


def _finished_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    """``config.json``, ``metrics.json`` and the rows of ``rounds.jsonl`` of a finished run
    (a one-line error naming the directory and the missing file otherwise)."""
    needed = {n: run_dir / n for n in ("config.json", "rounds.jsonl", "metrics.json")}
    for name, path in needed.items():
        if not path.is_file():
            raise ValueError(f"{run_dir}: no {name} (not a finished fedrec run directory)")
    config = json.loads(needed["config.json"].read_text())
    metrics = json.loads(needed["metrics.json"].read_text())
    rounds = [json.loads(x) for x in needed["rounds.jsonl"].read_text().splitlines() if x.strip()]
    return config, metrics, rounds


def run_scalars(metrics: dict, rounds: list[dict]) -> list[tuple[str, float, int]]:
    """``(name, value, step)`` of a run: every numeric value of each round's row at
    ``step = round``, the validation and test metrics of the round picked on validation
    (``selected/valid/...``, ``selected/test/...`` at that round) and the privacy spent
    (``privacy/epsilon`` at the last round).  What both trackers log."""
    out = []
    for row in rounds:
        step = int(row["round"])
        for col, x in row.items():
            v = _number(x) if col != "round" and not isinstance(x, (list, dict, bool)) else None
            if v is not None:
                out.append((col, v, step))
    selected = int((metrics.get("selected") or {}).get("round") or 0)
    for stage, key in (("validation", "valid"), ("test", "test")):
        for name, x in (metrics.get(stage) or {}).items():
            if isinstance(x, (int, float)) and math.isfinite(x):
                out.append((f"selected/{key}/{name}", float(x), selected))
    eps = (metrics.get("privacy") or {}).get("epsilon")
    if isinstance(eps, (int, float)) and math.isfinite(eps):
        out.append(("privacy/epsilon", float(eps), int(metrics.get("rounds") or 0)))
    return out


def log_tensorboard(run_dir: str | Path, logdir: str | Path, *, run_name: str | None = None) -> Path:
    """Write a finished run directory's metrics as TensorBoard scalars under
    ``logdir/<run name>`` (:func:`run_scalars`; the config and the privacy unit as text);
    returns that directory.  Nothing of the nodes' state is read."""
    run_dir = Path(run_dir)
    config, metrics, rounds = _finished_run(run_dir)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("TensorBoard logging needs tensorboard: pip install tensorboard") from None
    target = Path(logdir) / (run_name or run_dir.name)
    writer = SummaryWriter(log_dir=str(target))
    try:
        for name, value, step in run_scalars(metrics, rounds):
            writer.add_scalar(name, value, step)
        params = sectioned_run_config(config.get("run_config", {}))
        writer.add_text("config", "\n".join(f"{k} = {v}" for k, v in params.items()))
        writer.add_text("privacy/unit", str((metrics.get("privacy") or {}).get("unit", "none")))
    finally:
        writer.close()
    return target


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
    config, metrics, rounds = _finished_run(run_dir)
    try:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param
    except ImportError:
        raise ValueError("MLflow tracking needs mlflow: pip install mlflow-skinny") from None

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
    values = [Metric(metric_key(name), v, now, step) for name, v, step in run_scalars(metrics, rounds)]
    selected = (metrics.get("selected") or {}).get("round") or 0
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
