"""The sequential axis: `fedrec sweep sequential --data D --out DIR`.

Sequential models (SASRec, GRU4Rec: the history stays on the device, no user
vector) federated through Flower beside federated MF, on one split with 10% of
the users held out of training:

- test NDCG@10 (full ranking) of each model non-private and (``private``) at
  user-level epsilon 8, with MostPop and EASE on the same split;
- **user cold-start**: a held-out user is served from its first ``k`` items;
  MF folds its vector in from them (30 SGD steps against the frozen items), a
  sequential model reads them with **no training at all**; same users, same
  targets (their items after the first 20), same mask;
- NDCG@10 by history length (the activity groups light / medium / heavy).

Writes ``results.csv``, ``coldstart.csv``, ``sequential.png`` and ``report.md``;
finished runs are kept when run again.  The all-users comparison with each
model's centralized counterpart is `fedrec sweep models --models sasrec gru4rec`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec_app.simulations.studies.models import MODEL_PRESETS, SEQUENTIAL
from fedrec_app.simulations.report.plots import mean_sd
from fedrec_app.simulations.report.markdown import EVALUATION_NOTE
from fedrec_app.simulations.studies.runner import Cell, run_cells, write_rows
from fedrec_app.simulations.studies.study import STUDIES, _users_per_node, _write_csv, baseline_rows, coldstart_rows

__all__ = ["SEQUENTIAL_USER_PRESET", "sequential_cells", "run_sequential", "COLD_USERS"]

#: Fraction of users held out of training (the user cold-start curve), as in the default study.
COLD_USERS = 0.1

#: User-level DP (DP-FedAvg) of a sequential model: each user's whole update (item rows it read or
#: ranked, every encoder weight) clipped on its node, Gaussian noise on the sum, SGD on the noised mean.
SEQUENTIAL_USER_PRESET = dict(dim=16, negatives=8, user_dp="client", user_clip=0.1, server_opt="sgd", server_lr=5.0)


def sequential_cells(data: str, *, models=SEQUENTIAL, rounds: int | None = None, epsilon: float = 8.0,
                     private: bool = True, cold_users: float = COLD_USERS) -> list[Cell]:
    """MF and each sequential model non-private, and each sequential model at user-level ``epsilon``."""
    fed = load_federation(FedConfig(data=data, cold_users=cold_users))
    base = FedConfig(data=data, users_per_node=_users_per_node(fed.n_users), cold_users=cold_users, patience=5,
                     num_server_rounds=rounds or 500)

    def labels(model: str, unit: str, eps: float) -> dict:
        return {"experiment": "privacy", "model": model, "unit": unit, "target_epsilon": eps}

    cells = [Cell("mf-non-private", base, labels("mf", "none", math.inf))]
    for m in models:
        cells.append(Cell(f"{m}-non-private", replace(base, model=m, **MODEL_PRESETS.get(m, {})),
                          labels(m, "none", math.inf)))
        if private:
            cfg = replace(base, model=m, **SEQUENTIAL_USER_PRESET, user_target_epsilon=epsilon,
                          num_server_rounds=rounds or 60, patience=0)
            cells.append(Cell(f"{m}-user-eps{epsilon:g}", cfg, labels(m, "user-level", epsilon)))
    return cells


def _plot(cold: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for cell in sorted({r["cell"] for r in cold}):
        rs = [r for r in cold if r["cell"] == cell and r["fit"] in ("no DP", "no training")]
        ks = sorted({r["k"] for r in rs})
        stats = [mean_sd([r["ndcg@10"] for r in rs if r["k"] == k]) for k in ks]
        label = f"{cell} ({rs[0]['fit'] if rs else ''})"
        ax.errorbar(ks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=label)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("items of the new user's history used (k)")
    ax.set_ylabel("NDCG@10 on the user's later items")
    ax.set_title("User cold-start: MF fold-in against sequential models with no training", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_sequential_report(out: Path, rows: list[dict], cold: list[dict], *, data: str, seeds: list[int],
                            seconds: float, command: str) -> Path:
    plot = _plot(cold, out / "sequential.png")

    def f(vals) -> str:
        m, s = mean_sd(vals)
        return "–" if math.isnan(m) else (f"{m:.4f} ± {s:.4f}" if len(seeds) > 1 else f"{m:.4f}")

    lines = [f"# Sequential models on {data}", "", f"Command: `{command}` ({seconds / 60:.1f} min; seeds {seeds}).",
             "", f"{int(COLD_USERS * 100)}% of the users are held out of training (the cold-start curve below); "
             "test NDCG@10 and HR@10, full ranking over all items, at the round picked on validation NDCG@10 "
             "(private cells: the last round). User-level epsilon at delta 1e-5 (everything a user contributes: "
             "its whole history). " + EVALUATION_NOTE, "",
             "| cell | unit | test NDCG@10 | test HR@10 | light | medium | heavy | round |",
             "|---|---|---|---|---|---|---|---|"]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    for c in cells:
        rs = [r for r in rows if r["cell"] == c]
        rnd = mean_sd([r.get("selected_round") for r in rs])[0]
        lines.append(f"| {c} | {rs[0].get('unit', 'none')} | {f([r.get('test_ndcg@10') for r in rs])} | "
                     f"{f([r.get('test_hr@10') for r in rs])} | "
                     + " | ".join(f([r.get(f'test@{g}_ndcg@10') for r in rs]) for g in ("light", "medium", "heavy"))
                     + f" | {'–' if math.isnan(rnd) else f'{rnd:.0f}'} |")
    lines += ["", "Light / medium / heavy: NDCG@10 of the users in the bottom, middle and top third by training "
              "history length.", "", "## User cold-start", "",
              "A held-out user's first k items: MF folds its vector in (30 SGD steps, items frozen); a sequential "
              "model reads them with no training. Targets: the user's items after its first 20, ranked among all "
              "items but those 20.", ""]
    ks = sorted({r["k"] for r in cold})
    lines += ["| cell | fit | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for c in dict.fromkeys(r["cell"] for r in cold):
        for fit in dict.fromkeys(r["fit"] for r in cold if r["cell"] == c):
            rs = [r for r in cold if r["cell"] == c and r["fit"] == fit]
            lines.append(f"| {c} | {fit} | " + " | ".join(f"{mean_sd([r['ndcg@10'] for r in rs if r['k'] == k])[0]:.4f}"
                                                         for k in ks) + " |")
    users = next((r["users"] for r in cold), 0)
    lines += ["", f"({users} held-out users with more than 20 items.)", "", f"![cold start]({plot.name})", "",
              "Sequential models have no interaction-level cell: one interaction is the target of one position "
              "and an input of up to seq-len later ones, so a per-sample clip does not bound it; fedrec refuses "
              "that unit for them.", "", "Per-run results: `results.csv`, `coldstart.csv`; runs under `runs/`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_sequential(out: Path, *, data: str = "ml-latest-small", seeds: int = 3, rounds: int | None = None,
                   models=SEQUENTIAL, private: bool = True, command: str = "", overrides: dict | None = None,
                   say=print) -> Path:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    cells = sequential_cells(data, models=models, rounds=rounds, private=private)
    say(f"sequential on {data}: {len(cells)} federated cells x {len(seed_list)} seeds")
    rows = run_cells(cells, seed_list, out, overrides=overrides, say=say)
    rows += baseline_rows(data, COLD_USERS, seed_list)
    write_rows(out, rows)
    cold = coldstart_rows(out, cells, seed_list, STUDIES["default"], say=say)
    (out / "coldstart.json").write_text(json.dumps(cold, indent=1, default=str) + "\n")
    _write_csv(out / "coldstart.csv", cold)
    return write_sequential_report(out, rows, cold, data=data, seeds=seed_list, seconds=time.perf_counter() - t0,
                                   command=command)
