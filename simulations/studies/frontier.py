"""`fedrec sweep frontier`: every privacy mechanism x unit x epsilon x seed (and
population size), each beside its non-private twin at the same preset, MostPop
and private MostPop at the same epsilon; a table, a plot and a report section.

Mechanisms (``MECHANISMS``):

* ``private-als``: private alternating least squares (:mod:`fedrec.als`), user-level;
* ``dp-sgd``: DP-SGD on each device with a DP popularity prior, interaction-level;
* ``dp-fedavg``: DP-FedAvg (users' updates clipped on the node, noise on the sum), user-level;
* ``dp-fest``: both of the above trained on the items the DP popularity prior's release ranks
  highest only (``train_head``, :data:`FEST_PRESET`; sparsity-preserving DP training, Ghazi et al.
  2023): the other rows stay zero, get no noise and are ranked by the prior; both units;
* ``sasrec-dp-fedavg``: the same mechanism on the sequential SASRec (the history stays on the
  device), user-level only (see :mod:`fedrec.engine.sequence`); not in the default set;
* ``sasrec-dp-fedadam``: the same clipped and noised sum, the server's step Adam instead of SGD
  (DP-FedAdam, :data:`SASREC_FEDADAM_PRESET`); user-level only, not in the default set.

A user-level epsilon is not an interaction-level epsilon of the same value: one
interaction can change a user's whole clipped contribution.  Private ALS's
interaction-level epsilon is computed (``PrivateALS.interaction_epsilon``) and
reported beside its user-level one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import replace
from pathlib import Path

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec.presets import als_preset_name, preset_fields
from fedrec_app.simulations.studies.runner import Cell, run_cells, write_rows

__all__ = [
    "ALS_PRESET", "ALS_PRESET_LOW", "ALS_PRESET_INTERACTION", "ALS_PRESETS", "als_preset", "FEST_PRESET",
    "SASREC_FEDADAM_PRESET", "MECHANISMS", "DEFAULT_MECHANISMS", "frontier_cells", "run_frontier",
    "FRONTIER_COLUMNS",
]

#: Private ALS, chosen on ML-100K validation NDCG@10 at user-level epsilon 8; the ridge is in
#: units of clip^2 x users, so the preset carries across datasets.  In each pass a user's vector
#: goes to at most 20 of its items among the trained head (``als_pass_cap``; before, to 50 of all
#: its items, most outside the head, where the rows are never trained): mean validation NDCG@10 of
#: seeds 0-7 (the same math in one process, ``docs/design/private-als.md``), pass caps 10 / 20 /
#: 40: 0.0568 / 0.0602 / 0.0592 (3 passes, top 5%; the old release 0.0533); top 3% / 8%: 0.0555 /
#: 0.0582; 2 passes 0.0566; alpha 0.1 / 0.3, ridge 0.1 / 1, clip 0.1, count caps 20 / 100, 4
#: passes: 0.0578-0.0603, none better.
ALS_PRESET = preset_fields("private-als")
#: Below epsilon 8 fewer releases: 2 passes over the top 3% (user-level epsilon 2, seeds 0-7:
#: 0.0477 against 0.0445 for the top 2%, 0.0471 for 5%, 0.0460 with 3 passes; pass caps 10 / 40:
#: 0.0474 / 0.0448; the previous release, top 2%: 0.0378).
ALS_PRESET_LOW = preset_fields("private-als-low")
#: Interaction-level, below epsilon 16: 2 passes over the top 5% (interaction-level epsilon 8,
#: seeds 0-7: 0.0544 against 0.0519 for 3% and 0.0539 for 8%; 3 passes 0.0545).  One interaction
#: moves a pass twice as far as a whole user does but the counts only by sqrt(2)
#: (``PrivateALS.interaction_epsilon``), so more items can be afforded than at user level.
ALS_PRESET_INTERACTION = preset_fields("private-als-interaction")
ALS_PRESETS = {"high": ALS_PRESET, "low": ALS_PRESET_LOW, "interaction": ALS_PRESET_INTERACTION}


def als_preset(epsilon: float, unit: str = "user-level") -> tuple[str, dict]:
    """The private-ALS preset (name, settings) for a target epsilon (``inf``: non-private),
    as :func:`fedrec.presets.als_preset_name` picks it."""
    name = {"private-als": "high", "private-als-low": "low",
            "private-als-interaction": "interaction"}[als_preset_name(epsilon, unit)]
    return name, ALS_PRESETS[name]

#: DP-FEST (``train_head``): DP-SGD (interaction-level) and DP-FedAvg (user-level) training only
#: the items the DP popularity prior's release ranks highest; the others keep a zero row and are
#: ranked by the prior.  Settings over the study's presets, chosen on ML-100K validation NDCG@10 at
#: epsilon 8 (README, DP-FEST): interaction-level, the head among 2/5/10/20% of items (0.0354 /
#: 0.0355 / 0.0361 / 0.0357, seed 0; user lr 0.5-1 with server lr 20 or Adam: 0.0324-0.0334);
#: user-level, 5 exact-ish user steps (lr 1) and server lr 20 over 150 rounds (mean of seeds 0
#: and 1: 0.0524, against 0.0475 with lr 50 over 60 rounds and 0.0463 with Adam 0.01 over 100).
FEST_PRESET = {
    "interaction-level": dict(train_head=0.1),
    "user-level": dict(train_head=0.1, user_steps=5, user_lr=1.0, server_lr=20.0, num_server_rounds=150),
}

#: DP-FedAdam on SASRec: the users' clipped updates summed and noised as in DP-FedAvg, the server's
#: step Adam (post-processing of the noised mean).  Chosen on ML-100K validation NDCG@10 at
#: user-level epsilon 8 (seed 0, dimension 16, clip 0.1, 100 rounds): Adam 5e-3 0.0362 (test
#: 0.0460, above MostPop's 0.0432), Adam 2e-3 0.0351; the DP-FedAvg preset (server SGD 5 over 60
#: rounds) stays near MostPop on ML-100K and below it on ML-1M.
SASREC_FEDADAM_PRESET = preset_fields("sequential-dp-fedadam")

#: Each mechanism and the units its epsilon is calibrated in.
MECHANISMS = {
    "private-als": ("user-level", "interaction-level"),
    "dp-fest": ("interaction-level", "user-level"),
    "dp-sgd": ("interaction-level",),
    "dp-fedavg": ("user-level",),
    "sasrec-dp-fedavg": ("user-level",),
    "sasrec-dp-fedadam": ("user-level",),
}
#: What `fedrec sweep frontier` runs without --mechanisms (the MF mechanisms).
DEFAULT_MECHANISMS = ("private-als", "dp-sgd", "dp-fedavg")

FRONTIER_COLUMNS = ("mechanism", "unit", "epsilon", "seed", "users", "ndcg@10", "hr@10", "coverage@10")


def frontier_cells(data: str, *, mechanisms=DEFAULT_MECHANISMS, epsilons=(1.0, 2.0, 4.0, 8.0),
                   populations=(0,), rounds: int | None = None) -> list[Cell]:
    """Each mechanism's non-private twin and its private cells, for each population
    (``0``: every user)."""
    from fedrec_app.simulations.studies.study import (DP_PRESET, NOISE_FREE_PRIOR, USER_PRESET, _users_per_node,
                                                      prior_noise_for)

    cells = []
    for pop in populations:
        fed = load_federation(FedConfig(data=data, max_users=pop))
        base = FedConfig(data=data, max_users=pop, users_per_node=_users_per_node(fed.n_users), patience=0,
                         num_server_rounds=rounds or 60)
        tag = f"-u{pop}" if pop else ""
        for mech in mechanisms:
            if mech not in MECHANISMS:
                raise ValueError(f"unknown mechanism {mech!r}; choose from {sorted(MECHANISMS)}")
            unit = MECHANISMS[mech][0]
            labels = {"mechanism": mech, "users": fed.n_users}
            if mech == "private-als":  # one twin per preset the epsilons use; both units
                units = MECHANISMS[mech]
                for name in dict.fromkeys(als_preset(e, u)[0] for u in units for e in epsilons):
                    preset = ALS_PRESETS[name]
                    cells.append(Cell(f"{mech}-non-private{'' if name == 'high' else '-' + name}{tag}",
                                      replace(base, **preset), {**labels, "unit": "none", "epsilon": math.inf,
                                                                "preset": name}))
                for u in units:
                    short = "" if u == "user-level" else "i"
                    cells += [Cell(f"{mech}-{short}eps{e:g}{tag}",
                                   replace(base, **als_preset(e, u)[1], als_target_epsilon=e, als_unit=u),
                                   {**labels, "unit": u, "epsilon": float(e), "preset": als_preset(e, u)[0]})
                              for e in epsilons]
                continue
            if mech == "dp-fest":  # DP-SGD and DP-FedAvg on the prior's head only; one twin per unit
                for u in MECHANISMS[mech]:
                    preset = {**(DP_PRESET if u == "interaction-level" else USER_PRESET), **FEST_PRESET[u]}
                    if rounds:
                        preset["num_server_rounds"] = rounds
                    quiet = {k: v for k, v in preset.items() if k != "user_dp"}
                    cells.append(Cell(f"{mech}-non-private-{u}{tag}",
                                      replace(base, **{**quiet, "prior_noise": NOISE_FREE_PRIOR}),
                                      {**labels, "unit": "none", "epsilon": math.inf, "preset": u}))
                    target = "target_epsilon" if u == "interaction-level" else "user_target_epsilon"
                    for e in epsilons:
                        c = replace(base, **preset, **{target: e})
                        c = replace(c, prior_noise=prior_noise_for(e, c.prior_noise))
                        cells.append(Cell(f"{mech}-{'i' if u == 'interaction-level' else ''}eps{e:g}{tag}", c,
                                          {**labels, "unit": u, "epsilon": float(e), "preset": u}))
                continue
            if mech == "dp-sgd":
                twin = replace(base, **{**DP_PRESET, "prior_noise": NOISE_FREE_PRIOR})
                private = [(e, replace(base, **DP_PRESET, target_epsilon=e)) for e in epsilons]
                private = [(e, replace(c, prior_noise=prior_noise_for(e, c.prior_noise))) for e, c in private]
            elif mech in ("sasrec-dp-fedavg", "sasrec-dp-fedadam"):  # no item bias, hence no popularity prior
                from fedrec_app.simulations.studies.sequential import SEQUENTIAL_USER_PRESET

                full = SEQUENTIAL_USER_PRESET if mech == "sasrec-dp-fedavg" else SASREC_FEDADAM_PRESET
                if rounds:
                    full = {**full, "num_server_rounds": rounds}
                preset = {k: v for k, v in full.items() if k != "user_dp"}
                twin = replace(base, model="sasrec", **preset)
                private = [(e, replace(base, model="sasrec", **full, user_target_epsilon=e)) for e in epsilons]
            else:
                preset = {k: v for k, v in USER_PRESET.items() if k != "user_dp"}
                twin = replace(base, **{**preset, "prior_noise": NOISE_FREE_PRIOR})
                private = [(e, replace(base, **USER_PRESET, user_target_epsilon=e)) for e in epsilons]
                private = [(e, replace(c, prior_noise=prior_noise_for(e, c.prior_noise))) for e, c in private]
            cells.append(Cell(f"{mech}-non-private{tag}", twin, {**labels, "unit": "none", "epsilon": math.inf}))
            cells += [Cell(f"{mech}-eps{e:g}{tag}", c, {**labels, "unit": unit, "epsilon": float(e)})
                      for e, c in private]
    return cells


def _baselines(data: str, populations, epsilons, seeds: list[int]) -> list[dict]:
    """MostPop and private MostPop (user-level, at each epsilon) on each population's
    split of each seed (the seed draws the order inside ties in time, and the noise)."""
    from fedrec.baselines import fit_most_popular, fit_private_most_popular

    rows = []
    for pop in populations:
        for s in seeds:
            fed = load_federation(FedConfig(data=data, max_users=pop, seed=s))
            rows.append(_baseline_row("MostPop", "none", math.inf, s, fed.n_users,
                                      fit_most_popular(fed.split, sampled_negatives=0)))
        for e in epsilons:
            for s in seeds:
                fed = load_federation(FedConfig(data=data, max_users=pop, seed=s))
                res = fit_private_most_popular(fed.split, epsilon=e, seed=s, sampled_negatives=0)
                rows.append(_baseline_row("private-mostpop", "user-level", float(e), s, fed.n_users, res))
    return rows


def _baseline_row(mech: str, unit: str, eps: float, seed: int, users: int, res) -> dict:
    return {"mechanism": mech, "unit": unit, "epsilon": eps, "seed": seed, "users": users,
            **{m: res.test.metrics.get(m) for m in ("ndcg@10", "hr@10", "coverage@10")},
            "valid_ndcg@10": res.valid.metrics.get("ndcg@10"), "cell": mech, "baseline": True}


def _frontier_row(r: dict) -> dict:
    ie = r.get("epsilon_max") if r["unit"] == "interaction-level" else None
    if r["mechanism"] == "private-als" and r["unit"] != "none":
        from fedrec.privacy.mechanisms import PrivateALS

        p = als_preset(r["epsilon"], r["unit"])[1]
        ie = PrivateALS(r["user_noise_multiplier"], p["als_cap"], p["als_pass_cap"], p["als_clip"], p["als_passes"],
                        r.get("delta") or 1e-5).interaction_epsilon()
    return {"interaction_epsilon": ie, "preset": r.get("preset", ""), "user_epsilon": r.get("user_epsilon"),
            "mechanism": r["mechanism"], "unit": r["unit"], "epsilon": r["epsilon"], "seed": r["seed"],
            "users": r["users"], "ndcg@10": r.get("test_ndcg@10"), "hr@10": r.get("test_hr@10"),
            "coverage@10": r.get("test_coverage@10"), "valid_ndcg@10": r.get("valid_ndcg@10"), "cell": r["cell"],
            "epsilon_max": r.get("epsilon_max"),
            "selected_round": r.get("selected_round"), "seconds": r.get("seconds")}


def run_frontier(out: Path, *, data: str, mechanisms=DEFAULT_MECHANISMS, epsilons=(1.0, 2.0, 4.0, 8.0),
                 populations=(0,), seeds: int = 3, rounds: int | None = None, command: str = "",
                 overrides: dict | None = None, say=print) -> Path:
    """Run (or resume) the frontier; write ``results.csv`` (one row per run and baseline,
    :data:`FRONTIER_COLUMNS` first), ``frontier.png`` and ``report.md``."""
    t0 = time.perf_counter()
    out = Path(out)
    seed_list = list(range(seeds))
    cells = frontier_cells(data, mechanisms=mechanisms, epsilons=epsilons, populations=populations, rounds=rounds)
    say(f"frontier on {data}: {len(cells)} cells x {len(seed_list)} seeds (finished runs are kept)")
    runs = run_cells(cells, seed_list, out, overrides=overrides, say=say)
    write_rows(out, runs)  # the runs' full rows (results.json)
    rows = [_frontier_row(r) for r in runs] + _baselines(data, populations, epsilons, seed_list)
    keys = list(FRONTIER_COLUMNS) + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in FRONTIER_COLUMNS]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    (out / "frontier.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    plot = plot_frontier(out, rows)
    report = write_frontier_report(out, rows, data=data, command=command, plot=plot,
                                   seconds=time.perf_counter() - t0)
    return report


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = {}
    for r in rows:
        g.setdefault((r["users"], r["mechanism"], r["unit"], r["epsilon"]), []).append(r)
    return g


def _twin(rows: list[dict], users, mech: str, eps: float | None = None, unit: str | None = None) -> list[list[dict]]:
    """The non-private twin rows of ``mech`` (of the preset its cell at ``eps`` in ``unit``
    used; ``eps`` ``None``: every twin, one list per preset)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        if r["users"] == users and r["mechanism"] == mech and r["unit"] == "none":
            by.setdefault(r.get("preset", ""), []).append(r)
    if eps is None:
        return list(by.values())
    want = [r.get("preset", "") for r in rows if r["users"] == users and r["mechanism"] == mech
            and r["epsilon"] == eps and (unit is None or r["unit"] == unit)]
    return [by[want[0]]] if want and want[0] in by else []


def plot_frontier(out: Path, rows: list[dict]) -> list[Path]:
    """One plot per population: test NDCG@10 against epsilon (log axis), mean and
    standard deviation over seeds, per mechanism; its non-private twin dashed in the
    same colour, MostPop black, private MostPop grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedrec_app.simulations.report.plots import mean_sd

    paths = []
    groups = _groups(rows)
    for users in sorted({r["users"] for r in rows}):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        colours = iter(("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"))
        mechs = [m for m in dict.fromkeys(r["mechanism"] for r in rows) if m not in ("MostPop", "private-mostpop")]
        for mech in mechs + ["private-mostpop"]:
            c = "grey" if mech == "private-mostpop" else next(colours)
            for unit, marker in (("user-level", "o"), ("interaction-level", "s")):
                pts = sorted((k[3], v) for k, v in groups.items()
                             if k[0] == users and k[1] == mech and k[2] == unit and math.isfinite(k[3]))
                if not pts:
                    continue
                ms = [mean_sd(r["ndcg@10"] for r in v) for _, v in pts]
                ax.errorbar([e for e, _ in pts], [m for m, _ in ms], yerr=[s for _, s in ms], color=c, marker=marker,
                            ls="-" if unit == "user-level" else "-.", capsize=3, label=f"{mech} ({unit})")
            for twin, ls in zip(_twin(rows, users, mech), ("--", (0, (1, 1)), "-.")):
                ax.axhline(mean_sd(r["ndcg@10"] for r in twin)[0], color=c, ls=ls, lw=1,
                           label=f"{mech}, non-private twin" + (f" ({twin[0]['preset']} preset)"
                                                                if twin[0].get("preset") else ""))
        mp = groups.get((users, "MostPop", "none", math.inf))
        if mp:
            ax.axhline(mean_sd(r["ndcg@10"] for r in mp)[0], color="black", ls=":", label="MostPop")
        ax.set_xscale("log")
        eps = sorted({r["epsilon"] for r in rows if r["users"] == users and math.isfinite(r["epsilon"])})
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.minorticks_off()
        ax.set_xlabel("target epsilon of the mechanism's unit (delta 1e-5)")
        ax.set_ylabel("test NDCG@10 (full ranking)")
        ax.set_title(f"privacy frontier, {users} users")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"frontier-{users}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if len({r["users"] for r in rows}) > 1:
        paths.append(_plot_population(out, rows))
    return paths


def _plot_population(out: Path, rows: list[dict]) -> Path:
    """Fraction of the non-private twin's NDCG@10 kept, against the number of users."""
    import matplotlib.pyplot as plt

    from fedrec_app.simulations.report.plots import mean_sd

    groups = _groups(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    keys = sorted({(k[1], k[2], k[3]) for k in groups if math.isfinite(k[3]) and k[1] not in ("MostPop",)})
    for mech, unit, eps in keys:
        xs, ys = [], []
        for users in sorted({k[0] for k in groups}):
            v = groups.get((users, mech, unit, eps))
            twin = _twin(rows, users, mech, eps, unit) if mech != "private-mostpop" else \
                _twin(rows, users, "private-als", max(k[3] for k in groups if math.isfinite(k[3])), "user-level")
            if v and twin:
                xs.append(users)
                ys.append(mean_sd(r["ndcg@10"] for r in v)[0] / mean_sd(r["ndcg@10"] for r in twin[0])[0])
        if xs:
            ax.plot(xs, ys, marker="o", ls="-" if mech != "private-mostpop" else ":",
                    label=f"{mech}, {unit} eps {eps:g}")
    ax.set_xscale("log")
    sizes = sorted({r["users"] for r in rows})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("users in the federation")
    ax.set_ylabel("fraction of the non-private NDCG@10 kept")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "population.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_frontier_report(out: Path, rows: list[dict], *, data: str, command: str, plot: list[Path],
                          seconds: float) -> Path:
    """``report.md``: per population, a table of every mechanism and epsilon with its
    twin, MostPop and private MostPop at the same epsilon, and what privacy costs."""
    from fedrec_app.simulations.report.plots import mean_sd

    groups = _groups(rows)
    lines = [f"# Privacy frontier on {data}", "", f"Command: `{command}` ({seconds:.0f} s)", "",
             "Test NDCG@10, full ranking over all items, at the round (pass) picked on validation; mean ± "
             "standard deviation over seeds. Each mechanism's **non-private twin** runs the same preset without "
             "noise, so `twin - private` is what privacy costs and `twin - MostPop` what the preset itself adds. "
             "Epsilons at delta 1e-5, Opacus RDP, over every release of the run, in the unit named. A user-level "
             "epsilon is not an interaction-level one of the same value (one interaction can change a user's "
             "whole clipped contribution): for private ALS the interaction-level epsilon of the same run is "
             "computed from the sensitivities and shown beside it. Private MostPop: one release of the users' "
             "unit-norm item vectors at the same epsilon (a sum that one user, or one interaction, moves by "
             "at most 1: user- and interaction-level).", ""]
    for users in sorted({r["users"] for r in rows}):
        mp = mean_sd(r["ndcg@10"] for r in groups.get((users, "MostPop", "none", math.inf), []))
        lines += [f"## {users} users", "", f"MostPop: {mp[0]:.4f}", "",
                  "| mechanism | unit | epsilon | interaction-level epsilon of the run | test NDCG@10 | HR@10 | "
                  "coverage@10 | non-private twin | kept | private MostPop (same epsilon) | beats MostPop by | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for (u, mech, unit, eps), v in sorted(groups.items(), key=lambda kv: (kv[0][1], -kv[0][3])):
            if u != users or mech in ("MostPop", "private-mostpop") or not math.isfinite(eps):
                continue
            m, s = mean_sd(r["ndcg@10"] for r in v)
            twin = mean_sd(r["ndcg@10"] for t in _twin(rows, users, mech, eps, unit) for r in t)[0]
            pmp = mean_sd(r["ndcg@10"] for r in groups.get((users, "private-mostpop", "user-level", eps), []))
            hr, cov = mean_sd(r["hr@10"] for r in v)[0], mean_sd(r["coverage@10"] for r in v)[0]
            margin = f"{(m - mp[0]) / s:.1f} sd" if s > 0 else ("one seed: no sd" if len(v) < 2 else "inf sd")
            ie = mean_sd(r.get("interaction_epsilon") for r in v)[0]
            ie = "–" if math.isnan(ie) else f"{ie:.2f}"
            lines.append(f"| {mech} | {unit} | {eps:g} | {ie} | {m:.4f} ± {s:.4f} | {hr:.4f} | {cov:.3f} | "
                         f"{twin:.4f} | {100 * m / twin:.0f}% | {pmp[0]:.4f} ± {pmp[1]:.4f} | {m - mp[0]:+.4f} "
                         f"({margin}) | {len(v)} |")
        lines.append("")
    lines += [f"![frontier]({p.name})" for p in plot]
    lines += ["", "Rows: `results.csv` (columns " + ", ".join(FRONTIER_COLUMNS) + ", then more); run directories "
              "under `runs/`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
