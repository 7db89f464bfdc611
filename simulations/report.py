"""Sweep reports: a markdown table (mean and spread over seeds) of what the results files hold."""

from __future__ import annotations

import statistics
from pathlib import Path

from fedrec.results import package_versions

__all__ = ["write_report", "summarize_rows", "write_study_report"]


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


#: What no epsilon covers in a simulation report (said in every report).
EVALUATION_NOTE = ("Evaluation replies (each node's exact metric sums on its users' held-out items, every "
                   "eval-every rounds) are not covered by any epsilon: a simulation's measurement, not a release of "
                   "a deployment.")


def write_report(out: Path, name: str, rows: list[dict], *, command: str, data: str) -> Path:
    out = Path(out)
    summary = summarize_rows(rows)
    lines = [f"# fedrec sweep `{name}` on {data}", "", f"Command: `{command}`", "",
             "Full ranking over all items, test metrics at the round picked on validation NDCG@10; "
             "mean ± standard deviation over seeds. Epsilon: interaction-level, per user (median / max), "
             "after all rounds, Opacus RDP accountant. " + EVALUATION_NOTE, "",
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


def _cell_table(rows: list[dict], pred) -> list[tuple[str, list[dict]]]:
    cells: dict[str, list[dict]] = {}
    for r in rows:
        if pred(r):
            cells.setdefault(r["cell"], []).append(r)
    return list(cells.items())


def _ms(rs: list[dict], key: str, nd: int = 4) -> str:
    from fedrec_app.simulations.plots import mean_sd

    m, sd = mean_sd(r.get(key) for r in rs)
    if m != m:  # nan
        return "–"
    return f"{m:.{nd}f} ± {sd:.{nd}f}" if len(rs) > 1 else f"{m:.{nd}f}"


def _eps_cell(rs: list[dict]) -> str:
    from fedrec_app.simulations.plots import mean_sd

    unit = rs[0].get("unit")
    if unit == "interaction-level":
        med, _ = mean_sd(r.get("epsilon_median") for r in rs)
        mx, _ = mean_sd(r.get("epsilon_max") for r in rs)
        return f"{med:.2f} / {mx:.2f} (interaction-level, median / max user)"
    if unit == "user-level":
        e, _ = mean_sd(r.get("user_epsilon") for r in rs)
        return f"{e:.2f} (user-level)"
    return "∞ (no DP)"


def write_study_report(out: Path, study, rows: list[dict], cold: list[dict], plots: dict[str, str], *, data: str,
                       seeds: list[int], cells, seconds: float, command: str | None = None) -> Path:
    """``report.md`` of a study: tables (mean ± sd over seeds) built from the same
    rows as ``results.csv``/``coldstart.csv``, the plots, and how to reproduce it."""
    import json
    import sys

    from fedrec_app.simulations.plots import mean_sd

    out = Path(out)
    command = command or "fedrec " + " ".join(sys.argv[1:]) if sys.argv and "fedrec" in sys.argv[0] else (
        command or f"fedrec sweep {study.name} --data {data} --out {out}")
    L = [f"# fedrec study `{study.name}` on {data}", "",
         f"Reproduce: `{command}` (seeds {seeds}; {seconds / 60:.1f} min on this machine). "
         "Every number below is the mean ± standard deviation over seeds of the rows in `results.csv` / "
         "`coldstart.csv`. Metrics are full-ranking over all items on the test split, at the round selected on "
         "validation NDCG@10 (never on test); `sampled` metrics (99 negatives) are for comparison with papers only. "
         "Epsilons are computed by the Opacus RDP accountant at delta = 1e-5 and name their unit: "
         "*interaction-level* (DP-SGD on each user's device: protects each single interaction) or *user-level* "
         "(each user's whole update clipped, Gaussian noise on the sum: protects everything a user contributes). "
         + EVALUATION_NOTE, ""]
    # 1. privacy vs accuracy
    priv = _cell_table(rows, lambda r: r.get("experiment") == "privacy")
    if priv:
        L += ["## 1. Privacy vs accuracy", ""]
        if "privacy_utility" in plots:
            L += [f"![privacy vs accuracy]({plots['privacy_utility']})", ""]
        L += ["| cell | epsilon | test NDCG@10 | test HR@10 | test Recall@20 | sampled NDCG@10 (99 neg.) | round | seeds |",
              "|---|---|---|---|---|---|---|---|"]
        for name, rs in priv:
            rnd = mean_sd(r.get("selected_round") for r in rs)[0]
            L.append(f"| {name} | {_eps_cell(rs)} | {_ms(rs, 'test_ndcg@10')} | {_ms(rs, 'test_hr@10')} | "
                     f"{_ms(rs, 'test_recall@20')} | {_ms(rs, 'test_sampled_ndcg@10')} | "
                     f"{'–' if rnd != rnd else f'{rnd:.0f}'} | {len(rs)} |")
        L.append("")
        words = []
        if any(rs[0].get("twin") for _, rs in priv):
            words.append("Each private preset has a non-private twin (`non-private @... preset`: the same dimension, "
                         "optimiser, rounds and popularity prior, without noise). A private cell against its twin is "
                         "what privacy costs; the twin against `non-private` is what the preset costs.")
        if any(rs[0].get("mechanism") == "private-mostpop" for _, rs in priv):
            words.append("`private MostPop` ranks items by one user-level DP release of the users' unit-norm item "
                         "vectors at the same epsilon (it covers every single interaction too): the floor a private "
                         "model must beat.")
        if words:
            L += [" ".join(words), ""]
    # 2. user cold-start
    if cold:
        ks = sorted({int(r["k"]) for r in cold})
        series: dict[str, list[dict]] = {}
        for r in cold:
            series.setdefault(f"{r['cell']} | {r['fit']}", []).append(r)
        users = cold[0]["users"]
        L += ["## 2. User cold-start", "",
              f"{users} held-out users (never in training) fold in their first k interactions against the frozen "
              "global item parameters and are evaluated on the rest (NDCG@10, full ranking). k = 0: non-personal "
              "ranking. `DP fit` rows fit the new user's embedding with DP-SGD at the stated interaction-level epsilon.", ""]
        if "user_coldstart" in plots:
            L += [f"![user cold-start]({plots['user_coldstart']})", ""]
        L += ["| model | fit | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
        for label, rs in series.items():
            cells_ = [_ms([r for r in rs if int(r["k"]) == k], "ndcg@10") for k in ks]
            model, fit = label.split(" | ")
            L.append(f"| {model} | {fit} | " + " | ".join(cells_) + " |")
        L.append("")
    # 3. item cold-start
    item = _cell_table(rows, lambda r: r.get("experiment") == "item-coldstart")
    if item:
        L += ["## 3. Item cold-start", "",
              "10% of items are held out of training (all their interactions moved to test). The feature-aware model "
              "(item embedding = free row + shared layer over genres and release decade, the shared layer trained "
              "federatedly through the aggregated item gradients) ranks them through their features; a held-out item "
              "has no free row. Test targets are split into held-out and other (warm) items. Held-out items are ranked "
              "among all items (strict: they compete with trained items) and among the held-out items only (the "
              "cold-start task: which new item to show); a random ranking of the held-out items gives HR@10 of about "
              "10 / number of held-out items for a single target.", ""]
        if "item_coldstart" in plots:
            L += [f"![item cold-start]({plots['item_coldstart']})", ""]
        L += ["| cell | items | NDCG@10 | HR@10 | Recall@20 | users evaluated | seeds |", "|---|---|---|---|---|---|---|"]
        for name, rs in item:
            for label, key in (("held-out, among all items", "test@cold-items"),
                               ("held-out, among held-out items", "test@cold-among-cold"),
                               ("warm, among all items", "test@warm-items")):
                L.append(f"| {name} | {label} | {_ms(rs, key + '_ndcg@10')} | {_ms(rs, key + '_hr@10')} | "
                         f"{_ms(rs, key + '_recall@20')} | {_ms(rs, key + '_users', 0)} | {len(rs)} |")
        L.append("")
    # 4. beyond accuracy and groups
    fed = [(n, rs) for n, rs in priv if not rs[0].get("baseline")] if priv else []
    if fed:
        L += ["## 4. Beyond accuracy and user groups", ""]
        for key in ("beyond", "groups"):
            if key in plots:
                L += [f"![{key}]({plots[key]})", ""]
        L += ["| cell | epsilon | coverage@10 | diversity@10 | novelty@10 | ARP@10 | NDCG@10 light | medium | heavy | gap heavy − light |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for name, rs in fed:
            gap = [(r.get("test@heavy_ndcg@10") or 0) - (r.get("test@light_ndcg@10") or 0) for r in rs]
            gm, gsd = mean_sd(gap)
            L.append(f"| {name} | {_eps_cell(rs)} | {_ms(rs, 'test_coverage@10')} | {_ms(rs, 'test_diversity@10')} | "
                     f"{_ms(rs, 'test_novelty@10', 3)} | {_ms(rs, 'test_arp@10', 1)} | {_ms(rs, 'test@light_ndcg@10')} | "
                     f"{_ms(rs, 'test@medium_ndcg@10')} | {_ms(rs, 'test@heavy_ndcg@10')} | "
                     + (f"{gm:.4f} ± {gsd:.4f}" if len(rs) > 1 else f"{gm:.4f}") + " |")
        L += ["", "Activity groups: terciles of users by number of training interactions.", ""]
    # 5. population
    pop = _cell_table(rows, lambda r: r.get("experiment") == "population")
    if pop:
        L += ["## 5. Population size", "", "Synthetic populations (1,000 items, ~20 interactions per user), "
              "user-level DP at a fixed epsilon: the noise is on the sum, so more users mean relatively less noise.", ""]
        if "population" in plots:
            L += [f"![population]({plots['population']})", ""]
        L += ["| users | epsilon | test NDCG@10 | test HR@10 | seeds |", "|---|---|---|---|---|"]
        for name, rs in sorted(pop, key=lambda kv: int(kv[1][0]["population"])):
            L.append(f"| {rs[0]['population']} | {_eps_cell(rs)} | {_ms(rs, 'test_ndcg@10')} | {_ms(rs, 'test_hr@10')} | {len(rs)} |")
        L.append("")
    # reproduce
    L += ["## Configuration", "", "Each cell's full run configuration (the run directories under `runs/` also hold "
          "`config.json`, `rounds.csv` and `metrics.json`):", "", "```json"]
    L += [json.dumps({c.name: {k: v for k, v in c.cfg.to_run_config().items() if k != "out"} for c in cells}, indent=1)]
    L += ["```", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path
