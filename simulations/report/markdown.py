"""Sweep reports: a markdown table (mean and spread over seeds) of what the results files hold."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from fedrec.config import flat_run_config, nested_run_config
from fedrec.results import package_versions

__all__ = ["write_report", "summarize_rows", "write_study_report", "Comparison", "seed_comparison", "findings",
           "dp_parameters", "dp_parameters_table", "NOT_COVERED", "UNIT_PROTECTS"]


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
             "| cell | privacy unit | epsilon median / max | test NDCG@10 | test HR@10 | test Recall@20 "
             "| selected round (mean over seeds) | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        eps = "∞" if s["epsilon_max"] is None else f"{s['epsilon_median']:.2f} / {s['epsilon_max']:.2f}"
        lines.append(f"| {s['cell']} | {s['privacy_unit']} | {eps} | {_fmt(s['test_ndcg@10'], s['test_ndcg@10_sd'])} | "
                     f"{_fmt(s['test_hr@10'], s['test_hr@10_sd'])} | "
                     f"{_fmt(s['test_recall@20'], s['test_recall@20_sd'])} | "
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
    from fedrec_app.simulations.report.plots import mean_sd

    m, sd = mean_sd(r.get(key) for r in rs)
    if m != m:  # nan
        return "–"
    return f"{m:.{nd}f} ± {sd:.{nd}f}" if len(rs) > 1 else f"{m:.{nd}f}"


def _rounds_cell(rs: list[dict]) -> str:
    """``"97 (90, 100, 100)"``: mean selected round over seeds and each seed's; ``–`` for none."""
    got = [int(r["selected_round"]) for r in rs if r.get("selected_round") not in (None, "")]
    if not got:
        return "–"
    return f"{statistics.fmean(got):.0f}" + (f" ({', '.join(map(str, got))})" if len(got) > 1 else "")


def _eps_cell(rs: list[dict]) -> str:
    from fedrec_app.simulations.report.plots import mean_sd

    unit = rs[0].get("unit")
    if unit == "interaction-level" and rs[0].get("interaction_epsilon") is not None:  # private ALS: one epsilon
        e, _ = mean_sd(r.get("interaction_epsilon") for r in rs)
        return f"{e:.2f} (interaction-level; user-level {mean_sd(r.get('user_epsilon') for r in rs)[0]:.2f})"
    if unit == "interaction-level":
        med, _ = mean_sd(r.get("epsilon_median") for r in rs)
        mx, _ = mean_sd(r.get("epsilon_max") for r in rs)
        return f"{med:.2f} / {mx:.2f} (interaction-level, median / max user)"
    if unit == "user-level":
        e, _ = mean_sd(r.get("user_epsilon") for r in rs)
        return f"{e:.2f} (user-level)"
    return "∞ (no DP)"


#: What each privacy unit protects (said next to every epsilon of the findings).
UNIT_PROTECTS = {"interaction-level": "interaction-level: protects each single interaction",
                 "user-level": "user-level: protects everything a user contributes"}

#: What no epsilon of a study covers (the findings list them).
NOT_COVERED = (
    "**Round selection on validation**: the reported round (and early stopping) is chosen with exact, un-noised "
    "validation metrics of every node's users; no epsilon accounts for that choice.",
    "**Evaluation replies**: each node's exact metric sums on its users' validation and test items, every "
    "eval-every rounds (a simulation's measurement, not a release of a deployment).",
)


class Comparison(NamedTuple):
    """Mean ± sd over seeds of two sets of values and how they compare."""

    mean: float
    sd: float
    ref_mean: float
    ref_sd: float
    diff: float  # mean - ref_mean
    verdict: str  # "above", "below", "within the seed spread of", "equal to" or "not comparable to"


def seed_comparison(values: Iterable, ref: Iterable) -> Comparison:
    """Compare two sets of per-seed values beyond their seed spread.

    Parameters
    ----------
    values, ref
        Per-seed values (``None``/``nan`` ignored).

    Returns
    -------
    Comparison
        ``verdict`` is ``"within the seed spread of"`` when ``|mean - ref_mean|`` is less than
        the sum of the two standard deviations, else ``"above"`` or ``"below"`` (``"equal to"``
        for equal means, ``"not comparable to"`` when either side has no value).
    """
    from fedrec_app.simulations.report.plots import mean_sd

    m, sd = mean_sd(values)
    rm, rsd = mean_sd(ref)
    diff = m - rm
    if diff != diff:
        verdict = "not comparable to"
    elif diff == 0:
        verdict = "equal to"
    elif abs(diff) < sd + rsd:
        verdict = "within the seed spread of"
    else:
        verdict = "above" if diff > 0 else "below"
    return Comparison(m, sd, rm, rsd, diff, verdict)


def _num(m: float, sd: float | None = None, nd: int = 4) -> str:
    return f"{m:.{nd}f}" + (f" ± {sd:.{nd}f}" if sd else "")


def _versus(c: Comparison, name: str, nd: int = 4) -> str:
    """``"below `name` beyond the seed spread (0.0579 ± 0.0062; difference -0.0187, -32%)"``."""
    pct = 100 * c.diff / c.ref_mean if c.ref_mean else math.nan
    rel = "" if pct != pct else ", 0%" if abs(pct) < 0.5 else f", {pct:+.0f}%"
    ref = f"({_num(c.ref_mean, c.ref_sd, nd)}; difference {c.diff:+.{nd}f}{rel})"
    if c.verdict in ("above", "below"):
        return f"{c.verdict} {name} beyond the seed spread {ref}"
    return f"{c.verdict} {name} {ref}"


def _computed_epsilon(rs: list[dict]) -> float:
    """The mean over seeds of the epsilon each run reached in its unit (the plot's)."""
    from fedrec_app.simulations.report.plots import epsilon_of, mean_sd

    return mean_sd(epsilon_of(r) for r in rs)[0]


def _eps_words(rs: list[dict]) -> str:
    unit = rs[0].get("unit")
    worst = ", max over users" if unit == "interaction-level" and rs[0].get("epsilon_max") is not None else ""
    return f"ε = {_computed_epsilon(rs):.2f}{worst}; {UNIT_PROTECTS.get(unit, unit)}"


def _privacy_groups(rows: list[dict]) -> dict[str, Any]:
    from fedrec_app.simulations.report.plots import mostpop_rows

    cells = _cell_table(rows, lambda r: r.get("experiment") == "privacy")
    plain = [(n, rs) for n, rs in cells if rs[0].get("unit", "none") == "none" and not rs[0].get("baseline")
             and not rs[0].get("twin")]
    return {
        "private": [(n, rs) for n, rs in cells if rs[0].get("unit") in UNIT_PROTECTS and not rs[0].get("baseline")],
        "twins": {rs[0]["twin"]: (n, rs) for n, rs in cells if rs[0].get("twin")},
        "non_private": plain[0] if plain else None,
        "mostpop": next(((n, rs) for n, rs in cells if mostpop_rows(rs[:1])), None),
        "private_mostpop": [(n, rs) for n, rs in cells if rs[0].get("mechanism") == "private-mostpop"],
    }


def _privacy_findings(rows: list[dict], key: str = "test_ndcg@10") -> list[str]:
    g = _privacy_groups(rows)
    out = []
    for name, rs in g["private"]:
        vals = [r.get(key) for r in rs]
        parts = []
        twin = g["twins"].get(rs[0].get("family") or str(rs[0]["unit"]).split("-")[0])
        if twin:
            parts.append(_versus(seed_comparison(vals, [r.get(key) for r in twin[1]]), f"its twin `{twin[0]}`"))
        if g["non_private"]:
            n, nrs = g["non_private"]
            parts.append(_versus(seed_comparison(vals, [r.get(key) for r in nrs]), f"`{n}`"))
        floors = []
        if g["mostpop"]:
            n, mrs = g["mostpop"]
            floors.append((f"`{n}`", "no DP", seed_comparison(vals, [r.get(key) for r in mrs])))
        same = [(n, prs) for n, prs in g["private_mostpop"]
                if float(prs[0].get("target_epsilon", math.nan)) == float(rs[0].get("target_epsilon", math.nan))]
        for n, prs in same:
            floors.append((f"`{n}`", f"{prs[0].get('unit')}, ε = {_computed_epsilon(prs):.2f}",
                           seed_comparison(vals, [r.get(key) for r in prs])))
        parts += [_versus(c, f"{n} ({what})") for n, what, c in floors]
        if floors:
            beaten = [n for n, _, c in floors if c.verdict == "above"]
            missed = [n for n, _, c in floors if c.verdict != "above"]
            parts.append("**" + ("beats " + " and ".join(beaten) if not missed
                                 else "does not beat " + " or ".join(missed))
                         + " beyond the seed spread**")
        m, sd = seed_comparison(vals, vals)[:2]
        out.append(f"- `{name}` ({_eps_words(rs)}): {_num(m, sd)}; " + "; ".join(parts) + ".")
    return out


def _best_findings(rows: list[dict], key: str = "test_ndcg@10") -> list[str]:
    """The best federated cell without DP, and the best private cell at each unit and
    epsilon, each against MostPop, centralized EASE and (a private cell) private MostPop at
    its epsilon."""
    from fedrec_app.simulations.report.plots import mean_sd

    g = _privacy_groups(rows)
    cells = _cell_table(rows, lambda r: r.get("experiment") == "privacy")
    refs = [(f"`{n}`", rs) for n, rs in cells if rs[0].get("baseline") and "ease" in n.lower()]
    if g["mostpop"]:
        refs.insert(0, (f"`{g['mostpop'][0]}`", g["mostpop"][1]))

    def mean(rs: list[dict]) -> float:
        m = mean_sd(r.get(key) for r in rs)[0]
        return m if m == m else -math.inf

    def line(what: str, n: str, rs: list[dict], against: list[tuple[str, list[dict]]]) -> str:
        vals = [r.get(key) for r in rs]
        m, sd = mean_sd(vals)
        return (f"- {what}: `{n}`, {_num(m, sd)}; "
                + "; ".join(_versus(seed_comparison(vals, [r.get(key) for r in ref]), name)
                            for name, ref in against) + ".")

    out = []
    fed = [(n, rs) for n, rs in cells if rs[0].get("unit", "none") == "none" and not rs[0].get("baseline")]
    if fed:
        out.append(line("Best federated without DP", *max(fed, key=lambda c: mean(c[1])), refs))
    for unit in UNIT_PROTECTS:
        at_unit = [(n, rs) for n, rs in g["private"] if rs[0].get("unit") == unit]
        for eps in sorted({float(rs[0].get("target_epsilon", math.nan)) for _, rs in at_unit}, reverse=True):
            at = [(n, rs) for n, rs in at_unit if float(rs[0].get("target_epsilon", math.nan)) == eps]
            floor = [(f"`{n}`", prs) for n, prs in g["private_mostpop"]
                     if float(prs[0].get("target_epsilon", math.nan)) == eps]
            out.append(line(f"Best private at {unit} ε = {eps:g}", *max(at, key=lambda c: mean(c[1])), floor + refs))
    return out


def _preset_findings(rows: list[dict], key: str = "test_ndcg@10") -> list[str]:
    g = _privacy_groups(rows)
    if not g["non_private"]:
        return []
    n, nrs = g["non_private"]
    out = []
    for _, (tname, trs) in g["twins"].items():
        c = seed_comparison([r.get(key) for r in trs], [r.get(key) for r in nrs])
        out.append(f"- `{tname}` (no DP): {_num(c.mean, c.sd)}; {_versus(c, f'`{n}`')}.")
    return out


def _user_coldstart_findings(cold: list[dict]) -> list[str]:
    if not cold:
        return []
    ks = sorted({int(r["k"]) for r in cold})
    k0, k1 = ks[0], ks[-1]
    series: dict[tuple[str, str], list[dict]] = {}
    for r in cold:
        series.setdefault((r["cell"], str(r["fit"])), []).append(r)
    by: dict[str, list[str]] = {}
    for (cell, fit), rs in series.items():
        c = seed_comparison([r["ndcg@10"] for r in rs if int(r["k"]) == k1],
                            [r["ndcg@10"] for r in rs if int(r["k"]) == k0])
        what = "fold-in without DP" if fit == "no DP" else (
            f"DP fold-in at ε = {fit.rsplit(' ', 1)[-1]}, interaction-level" if fit.startswith("DP fit") else fit)
        by.setdefault(c.verdict, []).append(f"`{cell}` ({what}: {_num(c.mean, c.sd)} vs {_num(c.ref_mean, c.ref_sd)})")
    words = {"above": f"k = {k1} above k = {k0} beyond the seed spread",
             "below": f"k = {k1} below k = {k0} beyond the seed spread",
             "within the seed spread of": f"k = {k1} within the seed spread of k = {k0}",
             "equal to": f"k = {k1} equal to k = {k0}"}
    out = [f"- New users (section 2; multi-target NDCG@10 over all of a new user's interactions after its first "
           f"{k1}: several targets per user, another scale than the test NDCG@10 above, not comparable to it), "
           f"k = {k1} folded-in "
           f"interactions against k = {k0} (non-personal ranking):"]
    for verdict in ("above", "below", "within the seed spread of", "equal to", "not comparable to"):
        if by.get(verdict):
            out.append(f"  - {words.get(verdict, verdict)}: " + "; ".join(by[verdict]) + ".")
    return out


def _item_coldstart_findings(rows: list[dict], docs: Mapping | None = None) -> list[str]:
    from fedrec_app.simulations.report.plots import (catalogue_size, heldout_item_count, mean_sd,
                                                     random_ranking_reference)

    out = []
    for name, rs in _cell_table(rows, lambda r: r.get("experiment") == "item-coldstart"):
        cold = [r.get("test@cold-items_ndcg@10") for r in rs]
        c = seed_comparison(cold, [r.get("test@warm-items_ndcg@10") for r in rs])
        line = (f"- Held-out items (`{name}`, section 3), ranked among all items: NDCG@10 {_num(c.mean, c.sd)}; "
                + _versus(c, "warm items ranked among all items"))
        n_all = catalogue_size(docs or {}, name)
        m, sd = mean_sd(r.get("test@cold-items_recall@20") for r in rs)
        if n_all and m == m:
            ref = random_ranking_reference(n_all)["recall@20"]
            rel = "below" if m + sd < ref else "not below"
            line += (f"; Recall@20 {_num(m, sd)} is {rel} a random ranking's (at least 20 / {n_all} = {ref:.4f}: "
                     "fewer candidates once a user's history is masked raise it)")
        out.append(line + ".")
        n = heldout_item_count(docs or {}, name)
        m, sd = mean_sd(r.get("test@cold-among-cold_recall@20") for r in rs)
        if n and m == m:
            ref = random_ranking_reference(n)
            verdict = ("above" if m - sd > ref["recall@20"] else "below" if m + sd < ref["recall@20"]
                       else "within the seed spread of")
            hr, _ = mean_sd(r.get("test@cold-among-cold_hr@10") for r in rs)
            out.append(f"- Ranked among the {n} held-out items only (the cold-start task): Recall@20 {_num(m, sd)} is "
                       f"{verdict} a random ranking's (20 / {n} = {ref['recall@20']:.4f}, exact for any number of "
                       f"targets); HR@10 {hr:.4f} against a random ranking's {ref['hr@10']:.4f} for one target per "
                       "user, a lower bound only (users have several held-out targets), so no verdict on HR@10.")
        else:
            out.append("- Ranked among the held-out items only: the number of held-out items is not recorded "
                       "(no run directory), so no random reference.")
    return out


def _trust_notes(configs: Mapping | None, rows: list[dict]) -> list[str]:
    user_cells = [n for n, rs in _privacy_groups(rows)["private"] if rs[0].get("unit") == "user-level"]
    if not user_cells:
        return []
    secagg = {bool(getattr((configs or {}).get(n), "secure_aggregation", False)) for n in user_cells}
    seen = ("with secure aggregation: the un-noised sum of the clipped updates" if secagg == {True} else
            "secure aggregation is off: each node's un-noised sum of its users' clipped updates")
    return [f"**User-level DP trusts the server** to add the noise: the Gaussian noise goes on the sum of clipped "
            f"updates at the server, so the user-level epsilon covers what the server releases, not what it "
            f"receives ({seen})."]


def findings(rows: list[dict], cold: list[dict], *, configs: Mapping | None = None,
             docs: Mapping | None = None) -> list[str]:
    """The findings section of a study report, generated from its rows.

    Parameters
    ----------
    rows
        Result rows (``results.json``).
    cold
        User cold-start rows (``coldstart.json``).
    configs
        Cell name -> its ``FedConfig`` (for what the server sees under user-level DP).
    docs
        Run records from :func:`fedrec_app.simulations.report.plots.run_documents` (held-out item
        and catalogue sizes for the random references).

    Returns
    -------
    list of str
        Markdown lines: what privacy, the preset and cold-start cost (each comparison
        "above"/"below" beyond, or "within", the seed spread: the sum of the two standard
        deviations over seeds), and what no epsilon covers.
    """
    L = ["## Findings", "",
         "Generated from the rows below (test NDCG@10, full ranking, mean ± sd over seeds, unless stated). "
         "*Within the seed spread*: the difference of the means is smaller than the sum of the two standard "
         "deviations; *above* / *below*: beyond it.", ""]
    best = _best_findings(rows)
    if best:
        L += ["**The best of each family** (the highest mean over seeds; against the floors and the centralized "
              "reference):", ""] + best + [""]
    priv = _privacy_findings(rows)
    if priv:
        L += ["**What privacy costs** (a private cell against its non-private twin, against `non-private`, and "
              "against the non-private and private MostPop floors at the same epsilon):", ""] + priv + [""]
    preset = _preset_findings(rows)
    if preset:
        L += ["**What the preset costs** (the non-private twin against `non-private`):", ""] + preset + [""]
    cs = _user_coldstart_findings(cold) + _item_coldstart_findings(rows, docs)
    if cs:
        L += ["**What cold-start costs**:", ""] + cs + [""]
    L += (["**Not covered by any epsilon**:", ""] + [f"- {x}" for x in NOT_COVERED + tuple(_trust_notes(configs, rows))]
          + [""])
    return L


def _first(*values):
    return next((v for v in values if v not in (None, "")), None)


def dp_parameters(rows: list[dict], configs: Mapping | None = None, docs: Mapping | None = None) -> list[dict]:
    """What the accountant was given for each private cell, per seed.

    Parameters
    ----------
    rows
        Result rows: their calibrated ``noise_multiplier`` (interaction-level) or
        ``user_noise_multiplier`` (user-level), computed epsilons and ``delta``.
    configs
        Cell name -> its ``FedConfig`` (sampling rate, clip, prior noise, steps per round).
    docs
        Run records (:func:`fedrec_app.simulations.report.plots.run_documents`): the ``privacy``
        section of ``metrics.json`` and the rounds run take precedence over ``configs``.

    Returns
    -------
    list of dict
        One entry per private cell (in row order): ``cell``, ``unit``, ``mechanism`` and, as
        lists over seeds (``None``: not recorded), ``target_epsilon``, ``epsilon``
        (interaction-level: ``(median, max)`` over users), ``delta``, ``noise_multiplier``,
        ``sample_rate``, ``clip``, ``steps``, ``prior_noise``; ``steps_unit`` says what is counted
        and ``planned`` whether ``steps`` are the planned ones (no record of the rounds run).
    """
    from fedrec.privacy.calibration import steps_per_round

    configs, docs = configs or {}, docs or {}
    out = []
    for name, rs in _cell_table(rows, lambda r: r.get("unit") in UNIT_PROTECTS):
        unit = rs[0]["unit"]
        cfg = configs.get(name)
        e = {"cell": name, "unit": unit, "mechanism": rs[0].get("mechanism") or "", "planned": False,
             **{k: [] for k in ("target_epsilon", "epsilon", "delta", "noise_multiplier", "sample_rate", "clip",
                                "steps", "prior_noise")}}
        for r in rs:
            doc = docs.get((name, int(r["seed"])), {})
            priv = (doc.get("metrics") or {}).get("privacy") or {}
            priv = next((u for u in priv.get("units", [priv]) if u.get("unit") == unit), {})
            run_cfg = flat_run_config((doc.get("config") or {}).get("run_config") or {})
            e["target_epsilon"].append(r.get("target_epsilon"))
            e["delta"].append(_first(r.get("delta"), priv.get("delta"), getattr(cfg, "delta", None)))
            if e["mechanism"] == "private-mostpop":  # one release of unit-norm vectors to every user
                e["epsilon"].append(r.get("user_epsilon"))
                e["noise_multiplier"].append(_first(r.get("user_noise_multiplier"), r.get("noise_multiplier")))
                e["sample_rate"].append(1.0)
                e["clip"].append(1.0)
                e["steps"].append(1)
                e["prior_noise"].append(None)
                continue
            if e["mechanism"] == "private-als":  # every user in every release, noise added by the server
                e["epsilon"].append(r.get("interaction_epsilon") if unit == "interaction-level"
                                    else r.get("user_epsilon"))
                e["noise_multiplier"].append(_first(r.get("user_noise_multiplier"), priv.get("noise_multiplier")))
                e["sample_rate"].append(1.0)
                e["clip"].append(_first(priv.get("clip"), getattr(cfg, "als_clip", None)))
                e["steps"].append(_first(priv.get("passes"), getattr(cfg, "als_passes", None)))
                e["prior_noise"].append(None)
                continue
            rounds = _first(priv.get("rounds"), (doc.get("metrics") or {}).get("rounds"))
            if rounds is None and cfg is not None:
                rounds, e["planned"] = getattr(cfg, "num_server_rounds", None), True
            e["prior_noise"].append(_first(priv.get("popularity_prior_noise"), getattr(cfg, "prior_noise", None)))
            if unit == "interaction-level":
                e["epsilon"].append((r.get("epsilon_median"), r.get("epsilon_max")))
                e["noise_multiplier"].append(_first(r.get("noise_multiplier"), priv.get("noise_multiplier"),
                                                    run_cfg.get("noise-multiplier") or None))
                e["sample_rate"].append(_first(priv.get("sample_rate"), getattr(cfg, "sample_rate", None)))
                e["clip"].append(_first(priv.get("max_grad_norm"), getattr(cfg, "max_grad_norm", None)))
                per_round = steps_per_round(cfg) if cfg is not None else None
                e["steps"].append(int(rounds) * int(per_round) if rounds is not None and per_round else None)
            else:
                e["epsilon"].append(r.get("user_epsilon"))
                e["noise_multiplier"].append(_first(r.get("user_noise_multiplier"), priv.get("noise_multiplier"),
                                                    run_cfg.get("user-noise-multiplier") or None))
                e["sample_rate"].append(_first(priv.get("sample_rate"), getattr(cfg, "user_sample_rate", None)))
                e["clip"].append(_first(priv.get("clip"), getattr(cfg, "user_clip", None)))
                e["steps"].append(int(rounds) if rounds is not None else None)
        e["steps_unit"] = ("release" if e["mechanism"] == "private-mostpop" else
                           "passes after the count release" if e["mechanism"] == "private-als" else
                           "DP-SGD steps per user" if unit == "interaction-level" else "rounds")
        out.append(e)
    return out


def _vals(values: list, fmt) -> str:
    """The distinct per-seed values, formatted (``–`` for none recorded)."""
    got = list(dict.fromkeys(fmt(v) for v in values if v is not None))
    return ", ".join(got) if got else "–"


def dp_parameters_table(params: list[dict]) -> list[str]:
    """Markdown table of :func:`dp_parameters` (distinct per-seed values, ``–`` where not recorded)."""
    g = lambda v: f"{float(v):.8g}"  # noqa: E731
    L = ["| cell | unit | target ε | computed ε | δ | noise multiplier (calibrated) | sampling rate | clip | "
         "steps accounted | prior noise (1 release, q = 1) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in params:
        if e["unit"] == "interaction-level" and e["mechanism"] != "private-als":
            eps = _vals(e["epsilon"], lambda v: "–" if v[1] is None else f"{v[0]:.3f} / {v[1]:.3f} (median / max user)")
        else:
            eps = _vals(e["epsilon"], lambda v: f"{v:.3f}")
        if e["mechanism"] == "private-mostpop":
            sample, clip, prior = "1 (every user, once)", "1 (unit-norm vectors)", "none (is the release)"
        elif e["mechanism"] == "private-als":
            sample, clip = "1 (every user, every release)", _vals(e["clip"], g)
            prior = "none (the capped counts are its first release)"
        else:
            sample, clip = _vals(e["sample_rate"], g), _vals(e["clip"], g)
            prior = _vals(e["prior_noise"], lambda v: g(v) if v else "none")
        steps = _vals(e["steps"], str)
        if steps != "–":
            steps = (("≤ " if e["planned"] else "") + f"{steps} {e['steps_unit']}"
                     + (" (planned)" if e["planned"] else ""))
        L.append(f"| {e['cell']} | {e['unit']} | {_vals(e['target_epsilon'], g)} | {eps} | {_vals(e['delta'], g)} | "
                 f"{_vals(e['noise_multiplier'], g)} | {sample} | {clip} | {steps} | {prior} |")
    return L



def write_study_report(out: Path, study, rows: list[dict], cold: list[dict], plots: dict[str, str], *, data: str,
                       seeds: list[int], cells, seconds: float, command: str | None = None) -> Path:
    """``report.md`` of a study: tables (mean ± sd over seeds) built from the same
    rows as ``results.csv``/``coldstart.csv``, the plots, and how to reproduce it."""
    import json
    import sys

    from fedrec_app.simulations.report.plots import (heldout_item_count, mean_sd, mostpop_rows,
                                                     random_ranking_reference, run_documents)

    out = Path(out)
    configs = {c.name: c.cfg for c in cells}
    docs = run_documents(out, rows)
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
    L += findings(rows, cold, configs=configs, docs=docs)
    # 1. privacy vs accuracy
    priv = _cell_table(rows, lambda r: r.get("experiment") == "privacy")
    if priv:
        L += ["## 1. Privacy vs accuracy", ""]
        if "privacy_utility" in plots:
            L += [f"![privacy vs accuracy]({plots['privacy_utility']})", ""]
        L += ["| cell | epsilon | test NDCG@10 | test HR@10 | test Recall@20 | sampled NDCG@10 (99 neg.) | "
              "selected round: mean over seeds (per seed) | seeds |",
              "|---|---|---|---|---|---|---|---|"]
        for name, rs in priv:
            L.append(f"| {name} | {_eps_cell(rs)} | {_ms(rs, 'test_ndcg@10')} | {_ms(rs, 'test_hr@10')} | "
                     f"{_ms(rs, 'test_recall@20')} | {_ms(rs, 'test_sampled_ndcg@10')} | {_rounds_cell(rs)} "
                     f"| {len(rs)} |")
        L += ["", "Selected round: the round whose model is reported, chosen on validation NDCG@10 every eval-every "
              "rounds (baselines: none).", ""]
        words = []
        if any(rs[0].get("twin") for _, rs in priv):
            words.append("Each private preset has a non-private twin (`non-private @... preset`: the same dimension, "
                         "optimiser, rounds and popularity prior, without noise). A private cell against its twin is "
                         "what privacy costs; the twin against `non-private` is what the preset costs.")
        if any(rs[0].get("chosen") for _, rs in priv):
            words.append("Cells named after a preset (`private-als ...`) run the mechanism `fedrec simulate --privacy "
                         "UNIT --epsilon E` chooses for this data and epsilon (`fedrec/presets/presets.toml`), with "
                         "nothing else given; the other private cells train MF with DP-SGD (interaction-level) or "
                         "DP-FedAvg (user-level). Private ALS counts every user in every release (q = 1): its "
                         "capped item counts once, then per pass the noised sums of clipped user vectors; its "
                         "interaction-level epsilon is computed from its sensitivities to one interaction.")
        if any(rs[0].get("mechanism") == "private-mostpop" for _, rs in priv):
            words.append("`private MostPop` ranks items by one user-level DP release of the users' unit-norm item "
                         "vectors at the same epsilon (it covers every single interaction too): the floor a private "
                         "model must beat.")
        if words:
            L += [" ".join(words), ""]
        params = dp_parameters(rows, configs, docs)
        if params:
            L += ["### DP parameters", "",
                  "What the accountant (Opacus RDP) was given, per private cell (distinct values over seeds; `–`: "
                  "not recorded). Each cell's epsilon composes `steps accounted` Poisson-subsampled Gaussian "
                  "mechanisms (noise multiplier σ, sampling rate q; noise std σ × clip) with one release of the "
                  "popularity prior (noise std `prior noise`, q = 1, sensitivity 1). Interaction-level: DP-SGD steps "
                  "of a user taking part in every round (rounds × (user-steps + item-steps)), q the probability that "
                  "an interaction is in a step, clip the per-interaction gradient norm. User-level: one step per "
                  "round, q the probability that a user is in a round, clip the norm of a user's whole update.", ""]
            L += dp_parameters_table(params) + [""]
    if cold:
        ks = sorted({int(r["k"]) for r in cold})
        series: dict[str, list[dict]] = {}
        for r in cold:
            series.setdefault(f"{r['cell']} | {r['fit']}", []).append(r)
        users = cold[0]["users"]
        L += ["## 2. User cold-start", "",
              f"{users} held-out users (never in training) fold in their first k interactions against the frozen "
              f"global item parameters and are evaluated on all of their interactions after the first {max(ks)} "
              "(multi-target NDCG@10, full ranking: several targets per user, so another scale than the test "
              "NDCG@10 of sections 1 and 4; compare rows of this table only). k = 0: non-personal ranking. `DP fit` "
              "rows fit the new user's embedding with DP-SGD at the stated interaction-level epsilon; the models' "
              "own epsilons are those of section 1.", ""]
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
        fracs = {getattr(configs.get(n), "cold_items", None) for n, _ in item}
        frac = fracs.pop() if len(fracs) == 1 else None
        counts = {heldout_item_count(docs, n) for n, _ in item}
        n_cold = counts.pop() if len(counts) == 1 else None
        share = f"{100 * frac:g}% of items" if frac else "A share of the items"
        held = f" ({n_cold} items)" if n_cold else " (the number of held-out items is not recorded: no run directory)"
        L += ["## 3. Item cold-start", "",
              f"{share}{held} are held out of training (all their interactions moved to test). The feature-aware model "
              "(item embedding = free row + shared layer over genres and release decade, the shared layer trained "
              "federatedly through the aggregated item gradients) ranks them through their features; a held-out item "
              "has no free row. Test targets are split into held-out and other (warm) items; every metric counts all "
              "of a user's targets in the view (multi-target). Held-out items are ranked among all items (strict: "
              "they compete with trained items) and among the held-out items only (the cold-start task: which new "
              "item to show). The random ranking row: Recall@20 of a random ranking is exact for any number of "
              "targets; its NDCG@10 and HR@10 are for one target per user, a lower bound (several held-out "
              "targets per user raise them).", ""]
        if "item_coldstart" in plots:
            L += [f"![item cold-start]({plots['item_coldstart']})", ""]
        L += ["| cell | items | NDCG@10 | HR@10 | Recall@20 | users evaluated | seeds |",
              "|---|---|---|---|---|---|---|"]
        among = f"among the {n_cold} held-out items" if n_cold else "among held-out items"
        for name, rs in item:
            for label, key in (("held-out, among all items", "test@cold-items"),
                               (f"held-out, {among}", "test@cold-among-cold"),
                               ("warm, among all items", "test@warm-items")):
                L.append(f"| {name} | {label} | {_ms(rs, key + '_ndcg@10')} | {_ms(rs, key + '_hr@10')} | "
                         f"{_ms(rs, key + '_recall@20')} | {_ms(rs, key + '_users', 0)} | {len(rs)} |")
        if n_cold:
            ref = random_ranking_reference(n_cold)
            L.append(f"| random ranking | held-out, {among} | ≥ {ref['ndcg@10']:.4f} (one target) | "
                     f"≥ {ref['hr@10']:.4f} (one target) | {ref['recall@20']:.4f} (exact) | – | – |")
        L.append("")
    # 4. beyond accuracy and groups
    fed = [(n, rs) for n, rs in priv if not rs[0].get("baseline")] if priv else []
    if fed:
        L += ["## 4. Beyond accuracy and user groups", ""]
        for key in ("beyond", "groups"):
            if key in plots:
                L += [f"![{key}]({plots[key]})", ""]
        L += ["| cell | epsilon | coverage@10 | diversity@10 | novelty@10 | ARP@10 | NDCG@10 light | medium | heavy "
              "| gap heavy − light |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for name, rs in fed:
            gap = [(r.get("test@heavy_ndcg@10") or 0) - (r.get("test@light_ndcg@10") or 0) for r in rs]
            gm, gsd = mean_sd(gap)
            L.append(f"| {name} | {_eps_cell(rs)} | {_ms(rs, 'test_coverage@10')} | {_ms(rs, 'test_diversity@10')} | "
                     f"{_ms(rs, 'test_novelty@10', 3)} | {_ms(rs, 'test_arp@10', 1)} | "
                     f"{_ms(rs, 'test@light_ndcg@10')} | "
                     f"{_ms(rs, 'test@medium_ndcg@10')} | {_ms(rs, 'test@heavy_ndcg@10')} | "
                     + (f"{gm:.4f} ± {gsd:.4f}" if len(rs) > 1 else f"{gm:.4f}") + " |")
        mp = mostpop_rows(rows)
        if mp:
            L.append(f"| {mp[0]['cell']} (reference) | {_eps_cell(mp)} | {_ms(mp, 'test_coverage@10')} | "
                     f"{_ms(mp, 'test_diversity@10')} | {_ms(mp, 'test_novelty@10', 3)} | "
                     f"{_ms(mp, 'test_arp@10', 1)} | "
                     f"{_ms(mp, 'test@light_ndcg@10')} | {_ms(mp, 'test@medium_ndcg@10')} | "
                     f"{_ms(mp, 'test@heavy_ndcg@10')} | – |")
        L += ["", "Activity groups: terciles of users by number of training interactions."
              + (" MostPop: the non-private popularity ranking; `–` where its rows do not record the metric "
                 "(the groups plot then shows its all-user NDCG@10)." if mp else ""), ""]
    # 5. population
    pop = _cell_table(rows, lambda r: r.get("experiment") == "population")
    if pop:
        L += ["## 5. Population size", "", "Synthetic populations (1,000 items, ~20 interactions per user), "
              "user-level DP at a fixed epsilon: the noise is on the sum, "
              "so more users mean relatively less noise.", ""]
        if "population" in plots:
            L += [f"![population]({plots['population']})", ""]
        L += ["| users | epsilon | test NDCG@10 | test HR@10 | seeds |", "|---|---|---|---|---|"]
        for name, rs in sorted(pop, key=lambda kv: int(kv[1][0]["population"])):
            L.append(f"| {rs[0]['population']} | {_eps_cell(rs)} | {_ms(rs, 'test_ndcg@10')} | {_ms(rs, 'test_hr@10')} "
                     f"| {len(rs)} |")
        L.append("")
    # reproduce
    L += ["## Configuration", "", "Each cell's full run configuration (the run directories under `runs/` also hold "
          "`config.json`, `rounds.csv` and `metrics.json`):", ""]
    if any(getattr(c.cfg, "target_epsilon", 0) > 0 or getattr(c.cfg, "user_target_epsilon", 0) > 0 for c in cells):
        L += ["`noise-multiplier: 0.0` with `target-epsilon` > 0 (`user-noise-multiplier: 0.0` with "
              "`user-target-epsilon` > 0) means the noise is calibrated from the target epsilon when the run starts: "
              "the calibrated values are in the DP parameters table (section 1) and in each run directory's "
              "`config.json`.", ""]
    L += ["```json"]
    L += [json.dumps({c.name: {t: v for t, v in nested_run_config(c.cfg.to_run_config()).items() if t != "outputs"}
                      for c in cells}, indent=1)]
    L += ["```", "", "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path
