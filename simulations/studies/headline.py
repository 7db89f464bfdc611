"""``fedrec sweep headline``: the README's headline table for one dataset, in one command.

The rows, each over the same seeds (each seed also draws the order inside ties in time):
MostPop and EASE (centralized), federated MF without DP, the mechanism fedrec chooses for
``--privacy UNIT --epsilon 8`` in each unit beside private MostPop at that epsilon, and
federated SASRec and GRU4Rec without DP beside their centralized fits.  Every run is a
``fedrec simulate`` (Flower's engine) or a centralized fit on the same split; finished runs
are kept when the command is run again.  The report is ``OUT/headline.md`` with the time
the whole table took.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec_app.simulations.studies.models import MODEL_PRESETS, _ms, centralized_rows
from fedrec_app.simulations.studies.runner import Cell, run_cells, write_rows
from fedrec_app.simulations.studies.study import _users_per_node

__all__ = ["HEADLINE_EPSILON", "SEQUENTIAL_MODELS", "headline_cells", "headline_table", "run_headline"]

#: The epsilon of the private rows (each unit).
HEADLINE_EPSILON = 8.0
SEQUENTIAL_MODELS = ("sasrec", "gru4rec")


def headline_cells(data: str, *, rounds: int | None = None, epsilon: float = HEADLINE_EPSILON) -> list[Cell]:
    """The federated rows: MF without DP, the chosen mechanism in each unit, the sequential models."""
    fed = load_federation(FedConfig(data=data))
    base = FedConfig(data=data, users_per_node=_users_per_node(fed.n_users), patience=5,
                     num_server_rounds=rounds or 500)
    cells = [Cell("mf-non-private", base, {"row": "federated MF, no DP"})]
    for unit in ("user-level", "interaction-level"):  # only the unit and the epsilon: the choice is fedrec's
        cfg = FedConfig(data=data, privacy_unit=unit, epsilon=epsilon)
        cells.append(Cell(f"{unit.split('-')[0]}-eps{epsilon:g}", replace(cfg, num_server_rounds=rounds)
                          if rounds else cfg, {"row": f"`--privacy {unit} --epsilon {epsilon:g}`"}))
    for m in SEQUENTIAL_MODELS:
        cells.append(Cell(f"{m}-non-private", replace(base, model=m, **MODEL_PRESETS.get(m, {})),
                          {"row": f"federated {_display_name(m)}, no DP", "model": m}))
    return cells


def _display_name(model: str) -> str:
    return {"sasrec": "SASRec", "gru4rec": "GRU4Rec"}.get(model, model)


def private_mostpop_rows(data: str, seeds: list[int], out: Path, epsilon: float) -> list[dict]:
    """Private MostPop at ``epsilon`` on each seed's split: the floor of the private rows."""
    from fedrec.baselines import fit_private_most_popular

    rows = []
    for s in seeds:
        path = out / "centralized" / f"private-mostpop-eps{epsilon:g}-seed{s}.json"
        if not path.exists():
            res = fit_private_most_popular(load_federation(FedConfig(data=data, seed=s)).split, epsilon=epsilon,
                                           seed=s)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"test": res.test.metrics}))
        rows.append({"cell": f"private-mostpop-eps{epsilon:g}", "seed": s,
                     "row": f"private MostPop, epsilon {epsilon:g}",
                     "test_ndcg@10": json.loads(path.read_text())["test"]["ndcg@10"]})
    return rows


def headline_table(rows: list[dict]) -> list[tuple[str, float, float, int]]:
    """``(row, mean, sd, seeds)`` of test NDCG@10, in the order the rows were run."""
    names = list(dict.fromkeys(_label(r) for r in rows))
    out = []
    for name in names:
        rs = [r for r in rows if _label(r) == name]
        mean, sd = _ms(rs, "test_ndcg@10")
        out.append((name, mean, sd, len(rs)))
    return out


def _label(r: dict) -> str:
    if r.get("row"):
        return r["row"]
    if r.get("setting") == "centralized":
        return f"centralized {_display_name(r['model'])}"
    return r["model"]  # MostPop, EASE


def run_headline(out: Path, *, data: str, seeds: int = 3, rounds: int | None = None, command: str = "",
                 overrides: dict | None = None, say=print) -> Path:
    """Run (or resume) every row on ``data``; write ``results.csv``/``.json`` and ``headline.md``."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_list = list(range(seeds))
    cells = headline_cells(data, rounds=rounds)
    say(f"headline on {data}: {len(cells)} federated rows x {len(seed_list)} seeds, and the centralized ones")
    rows = run_cells(cells, seed_list, out, overrides=overrides, say=say)  # each row carries its cell's labels
    for r in rows:  # the private rows name the mechanism fedrec chose
        record = out / "runs" / f"{r['cell']}-seed{r['seed']}" / "run.json"
        choice = json.loads(record.read_text())["invocations"][-1].get("privacy_choice") if record.exists() else None
        if choice:
            r["row"] = f"{r['row']} ({choice['preset']})"
    rows = centralized_rows(data, SEQUENTIAL_MODELS, seed_list, out, say=say) + rows
    rows += private_mostpop_rows(data, seed_list, out, HEADLINE_EPSILON)
    write_rows(out, rows)
    seconds = time.perf_counter() - t0
    lines = [f"# Headline on {data}", "",
             f"Test NDCG@10, full ranking over all items, leave-last-out, model and round chosen on "
             f"validation; mean ± sd over {len(seed_list)} seed(s) (each seed also draws the order inside ties "
             f"in time). `{command or 'fedrec sweep headline'}`; {seconds / 60:.1f} minutes.", "",
             "| model | test NDCG@10 | seeds |", "|---|---|---|"]
    for name, mean, sd, n in headline_table(rows):
        cell = "–" if math.isnan(mean) else f"{mean:.4f} ± {sd:.4f}" if n > 1 else f"{mean:.4f} (one seed)"
        lines.append(f"| {name} | {cell} | {n} |")
    path = out / "headline.md"
    path.write_text("\n".join(lines) + "\n")
    return path
