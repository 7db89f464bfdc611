"""Sweep reports: a markdown table (mean and spread over seeds) of what the results files hold."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedrec.results import package_versions

__all__ = ["write_report", "summarize_rows"]


def summarize_rows(rows: list[dict], metrics=("test_ndcg@10", "test_hr@10", "test_recall@20")) -> list[dict]:
    """Mean and standard deviation over seeds, per cell (in first-seen order)."""
    cells: dict[str, list[dict]] = {}
    for r in rows:
        cells.setdefault(r["cell"], []).append(r)
    out = []
    for name, rs in cells.items():
        s = {"cell": name, "seeds": len(rs)}
        for m in metrics + ("epsilon_median", "epsilon_max", "selected_round"):
            vals = [float(r[m]) for r in rs if r.get(m) not in (None, "")]
            s[m] = statistics.fmean(vals) if vals else None
            s[m + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        s["privacy_unit"] = rs[0].get("privacy_unit", "none")
        out.append(s)
    return out


def _fmt(x, sd=None, nd=4):
    if x is None:
        return "–"
    return f"{x:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd else "")


def write_report(out: Path, name: str, rows: list[dict], *, command: str, data: str) -> Path:
    out = Path(out)
    summary = summarize_rows(rows)
    lines = [f"# fedrec sweep `{name}` on {data}", "", f"Command: `{command}`", "",
             "Full ranking over all items, test metrics at the round picked on validation NDCG@10; "
             "mean ± standard deviation over seeds. Epsilon: interaction-level, per user (median / max), "
             "after all rounds, Opacus RDP accountant.", "",
             "| cell | privacy unit | epsilon median / max | test NDCG@10 | test HR@10 | test Recall@20 | round | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        eps = "∞" if s["epsilon_max"] is None else f"{s['epsilon_median']:.2f} / {s['epsilon_max']:.2f}"
        lines.append(f"| {s['cell']} | {s['privacy_unit']} | {eps} | {_fmt(s['test_ndcg@10'], s['test_ndcg@10_sd'])} | "
                     f"{_fmt(s['test_hr@10'], s['test_hr@10_sd'])} | {_fmt(s['test_recall@20'], s['test_recall@20_sd'])} | "
                     f"{_fmt(s['selected_round'], nd=0)} | {s['seeds']} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
              "", "Per-run results: `results.csv`, `results.json`; run directories under `runs/`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
