"""Sweeps of federated runs: cells x seeds, each a `fedrec simulate` run in its own
directory.  Finished cells (a ``metrics.json`` exists) are kept and skipped when a
sweep is run again after an interruption; an unfinished cell resumes from its last
checkpoint where that checkpoint was made with the cell's configuration (else it
starts over); a finished cell whose configuration has changed since is moved aside
(``<cell>-seed<N>.replaced-<UTC time>``) and run again."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedrec.config import FedConfig, flat_run_config
from fedrec.results import read_metrics

__all__ = ["Cell", "run_cells", "with_overrides", "load_rows", "config_differences", "checkpoint_round", "is_replaced",
           "ROW_METRICS"]

ROW_METRICS = ("ndcg@10", "hr@10", "recall@20", "mrr", "sampled_ndcg@10", "sampled_hr@10",
               "coverage@10", "diversity@10", "novelty@10", "arp@10", "er@5", "er@10")
SLICE_METRICS = ("ndcg@10", "hr@10", "recall@20")


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: a name, labels for the table, and the run's config."""

    name: str
    cfg: FedConfig
    labels: dict = field(default_factory=dict)


def _row(cell: Cell, seed: int, doc: dict) -> dict:
    row = {"cell": cell.name, "seed": seed, **cell.labels}
    for stage, key in (("test", "test"), ("valid", "validation")):
        for m in ROW_METRICS:
            row[f"{stage}_{m}"] = doc.get(key, {}).get(m)
    for name, sl in (doc.get("test_slices") or {}).items():
        for m in SLICE_METRICS:
            row[f"test@{name}_{m}"] = sl.get(m)
        row[f"test@{name}_users"] = sl.get("users")
    priv = doc.get("privacy") or {}
    units = priv.get("units", [priv] if priv else [])
    row["privacy_unit"] = " + ".join(u["unit"] for u in units) or "none"
    for u in units:
        if u["unit"] == "interaction-level":
            row["epsilon_median"] = u.get("epsilon_median")
            row["epsilon_max"] = u.get("epsilon_max")
            row["noise_multiplier"] = u.get("noise_multiplier")
        else:
            row["user_epsilon"] = u.get("epsilon")
            row["user_noise_multiplier"] = u.get("noise_multiplier")
            if u.get("interaction_epsilon") is not None:  # private ALS: its interaction-level epsilon too
                row["interaction_epsilon"] = u["interaction_epsilon"]
        row["delta"] = u.get("delta")
    row["selected_round"] = (doc.get("selected") or {}).get("round")
    row["seconds"] = doc.get("seconds")
    return row


def run_cells(
    cells: list[Cell],
    seeds: list[int],
    out: Path,
    *,
    run: Callable[[FedConfig], dict] | None = None,
    overrides: dict | None = None,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Run every (cell, seed) not yet finished; write ``results.csv``/``results.json``.

    ``run`` defaults to :func:`fedrec_app.simulations.simulate.simulate` (Flower's simulation engine).
    ``overrides`` (``{field: value}``, a sweep's ``--set``: :func:`fedrec.config.parse_overrides`)
    replace those fields of every cell's config; every cell is checked before any runs.
    """
    run = run or _default_run
    cells = with_overrides(cells, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    todo = [(c, s) for c in cells for s in seeds]
    t0 = time.perf_counter()
    for k, (cell, seed) in enumerate(todo, 1):
        d = out / "runs" / f"{cell.name}-seed{seed}"
        differ = (d / "metrics.json").exists() and config_differences(d, replace(cell.cfg, seed=seed, out=str(d)))
        if differ:  # the finished run is kept aside, never deleted
            aside = d.with_name(f"{d.name}{_REPLACED}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
            d.rename(aside)
            say(f"[{k}/{len(todo)}] {cell.name} seed {seed}: finished with another configuration "
                f"({', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} differ); kept as {aside.name}, "
                f"running again")
        if (d / "metrics.json").exists():
            say(f"[{k}/{len(todo)}] {cell.name} seed {seed}: done before, kept")
        else:
            cfg = replace(cell.cfg, seed=seed, out=str(d))
            last = checkpoint_round(d, cfg)
            doing = "running" if last is None else f"resuming after round {last}"
            say(f"[{k}/{len(todo)}] {cell.name} seed {seed}: {doing} ({time.perf_counter() - t0:.0f}s elapsed)")
            run(replace(cfg, resume=last is not None))
        rows.append(_row(cell, seed, read_metrics(d)))
        write_rows(out, rows)
    return rows


def with_overrides(cells: list[Cell], overrides: dict | None) -> list[Cell]:
    """``cells`` with ``overrides`` in every config; a cell whose config the overrides make
    invalid is a ``ValueError`` naming the cell (before anything runs)."""
    if not overrides:
        return list(cells)
    out = []
    for cell in cells:
        try:
            out.append(replace(cell, cfg=replace(cell.cfg, **overrides)))
        except ValueError as e:
            raise ValueError(f"--set makes cell {cell.name!r} invalid: {e}") from None
    return out


_PATH_KEYS = ("data", "warm-start")
_REPLACED = ".replaced-"  # the name a finished run gets when a changed configuration reruns its cell


def is_replaced(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a finished run that a changed configuration moved aside."""
    return _REPLACED in Path(run_dir).name


def _same_path(a, b) -> bool:
    """Two spellings of one file or directory (``../data/x`` and ``/work/data/x``) are the same."""
    if a == b:
        return True
    try:
        return bool(a) and bool(b) and Path(a).exists() and Path(b).exists() and Path(a).samefile(Path(b))
    except (OSError, TypeError):
        return False


def config_differences(d: Path, cfg: FedConfig) -> list[str]:
    """The config keys on which the finished run in ``d`` differs from ``cfg`` (as resolved);
    empty when the run was made with ``cfg``."""
    from fedrec.config import DEFAULTS
    from fedrec.privacy.calibration import resolved

    if cfg.privacy_unit:  # `--privacy UNIT --epsilon E`: the run recorded the mechanism chosen for its data
        from fedrec.federated.federation import load_federation
        from fedrec.presets import apply_choice

        fed = load_federation(cfg)
        cfg, _ = apply_choice(cfg, fed.dataset.name, fed.dataset.n_users)
    # keys added later: their defaults; records written before sections: keys without them
    done = {**flat_run_config(DEFAULTS.to_run_config()), **flat_run_config(read_metrics(d).get("config", {}))}
    want = flat_run_config(resolved(cfg).to_run_config())
    keys = set(want) - {"out", "resume", "round-timeout", "state-dir", "mlflow", "mlflow-experiment", "tensorboard"}

    def same(k) -> bool:
        if done.get(k) == want[k]:
            return True
        if k in _PATH_KEYS:
            return _same_path(done.get(k), want[k])
        return (isinstance(want[k], float) and isinstance(done.get(k), (int, float))
                and abs(done[k] - want[k]) <= 1e-9 * max(1.0, abs(want[k])))

    return sorted(k for k in keys if not same(k))


def checkpoint_round(d: Path, cfg: FedConfig) -> int | None:
    """The round of the checkpoint an interrupted run left in ``d``, where it was made
    with ``cfg`` (rounds, evaluation and patience aside); ``None``: none there, or one
    of another configuration or unreadable (the cell starts over)."""
    from fedrec.privacy.calibration import resolved
    from fedrec_app.server.checkpoint import CheckpointError, load_checkpoint

    if not (Path(d) / "checkpoint" / "checkpoint.npz").is_file():
        return None
    try:
        return int(load_checkpoint(Path(d) / "checkpoint", resolved(cfg))["round"])
    except CheckpointError:
        return None


def _default_run(cfg: FedConfig) -> dict:
    from fedrec.flower_compat import reuse_ray
    from fedrec_app.simulations.simulate import simulate

    with reuse_ray():
        return simulate(cfg, overwrite=True)  # without resume, a partial run is started over


def write_rows(out: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")


def load_rows(out: Path) -> list[dict]:
    return json.loads((Path(out) / "results.json").read_text())
