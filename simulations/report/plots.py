"""PNG plots of a study: privacy-utility curves (log epsilon axis, spread over
seeds, non-private and baseline lines), user cold-start curves, activity-group
gaps, beyond-accuracy, item cold-start and population size."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["make_plots", "mean_sd", "epsilon_of", "run_documents", "heldout_item_count", "random_ranking_reference",
           "mostpop_rows", "catalogue_size"]

UNIT_STYLE = {"interaction-level": ("tab:blue", "o"), "user-level": ("tab:red", "s")}


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the non-missing values; ``nan`` if none."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def run_documents(out: Path | None, rows: list[dict]) -> dict[tuple[str, int], dict]:
    """The run directories' records of each row's run, where present.

    Parameters
    ----------
    out
        The study directory (run directories under ``out/runs/<cell>-seed<seed>/``); ``None``: none.
    rows
        Result rows (``cell`` and ``seed``).

    Returns
    -------
    dict
        ``(cell, seed) -> {"config": ..., "metrics": ...}``: the parsed ``config.json`` (run
        config, dataset and split sizes, calibrated noise) and ``metrics.json`` (its
        ``privacy`` section and the number of rounds run); runs without either are left out.
    """
    import json

    docs: dict[tuple[str, int], dict] = {}
    if out is None:
        return docs
    for r in rows:
        d = Path(out) / "runs" / f"{r['cell']}-seed{r['seed']}"
        doc = {}
        for name in ("config", "metrics"):
            try:
                doc[name] = json.loads((d / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
        if doc:
            docs[(r["cell"], int(r["seed"]))] = doc
    return docs


def _same_value(values) -> int | None:
    vals = {int(v) for v in values if v is not None}
    return vals.pop() if len(vals) == 1 else None


def heldout_item_count(docs: dict[tuple[str, int], dict], cell: str) -> int | None:
    """Number of items held out of training in ``cell``'s runs (``split.cold_items`` of
    their ``config.json``); ``None`` if not recorded or not the same in every seed."""
    return _same_value(doc.get("config", {}).get("split", {}).get("cold_items")
                       for (c, _), doc in docs.items() if c == cell)


def catalogue_size(docs: dict[tuple[str, int], dict], cell: str) -> int | None:
    """Number of items of ``cell``'s dataset (``dataset.items`` of its runs' ``config.json``)."""
    return _same_value(doc.get("config", {}).get("dataset", {}).get("items")
                       for (c, _), doc in docs.items() if c == cell)


def random_ranking_reference(n_candidates: int) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of ``n_candidates`` items.

    Parameters
    ----------
    n_candidates
        Items ranked (a user's history excluded).

    Returns
    -------
    dict
        ``recall@20``: ``min(20, n) / n``, exact for any number of targets per user
        (recall is hits / targets).  ``hr@10`` (``min(10, n) / n``) and ``ndcg@10``
        (``sum_{r <= 10} 1 / log2(r + 1) / n``): exact for one target per user, a lower
        bound for users with several targets (any hit counts; the ideal DCG grows
        more slowly than the expected DCG).
    """
    n = int(n_candidates)
    if n <= 0:
        raise ValueError(f"n_candidates must be > 0; got {n}")
    return {"hr@10": min(10, n) / n, "ndcg@10": sum(1 / math.log2(r + 1) for r in range(1, min(10, n) + 1)) / n,
            "recall@20": min(20, n) / n}


def mostpop_rows(rows: list[dict]) -> list[dict]:
    """The non-private MostPop baseline's rows (``baseline`` set, no mechanism, no DP)."""
    return [r for r in rows if r.get("baseline") and not r.get("mechanism") and r.get("unit", "none") == "none"
            and "mostpop" in str(r["cell"]).lower()]


def _save(fig, path: Path, rect=None) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _by_cell(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["cell"], []).append(r)
    return out


def epsilon_of(r: dict) -> float:
    """The epsilon actually reached (computed by the accountant), per unit."""
    if r.get("unit") == "user-level":
        return float(r.get("user_epsilon") or r["target_epsilon"])
    if r.get("unit") == "interaction-level":  # DP-SGD: the most any user reached; private ALS: its one epsilon
        return float(r.get("epsilon_max") or r.get("interaction_epsilon") or r["target_epsilon"])
    return math.inf


#: A private cell's series in the privacy plot: its unit and its mechanism's family (``als``
#: for private ALS; the trained MF mechanisms have none).
FAMILY_LABEL = {"als": "private ALS (chosen)"}
#: The trained-MF mechanism of each unit (the label of a series without a family).
MF_LABEL = {"interaction-level": "MF, DP-SGD", "user-level": "MF, DP-FedAvg"}


def _series(rs: list[dict]) -> tuple[str, str]:
    return rs[0].get("unit"), (rs[0].get("family") if rs[0].get("family") in FAMILY_LABEL else "")


def plot_privacy_utility(rows: list[dict], path: Path) -> Path | None:
    cells = _by_cell([r for r in rows if r.get("experiment") == "privacy"])
    if not cells:
        return None
    metrics = [("test_ndcg@10", "NDCG@10"), ("test_hr@10", "HR@10"), ("test_recall@20", "Recall@20")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, label) in zip(axes, metrics):
        series = sorted({_series(rs) for rs in cells.values() if rs[0].get("unit") in UNIT_STYLE
                         and not rs[0].get("baseline")}, key=lambda u: (u[1], u[0]))
        for unit, family in series:
            color, marker = UNIT_STYLE[unit]
            pts = []
            for name, rs in cells.items():
                if rs[0].get("baseline") or _series(rs) != (unit, family):
                    continue
                eps = statistics.fmean(epsilon_of(r) for r in rs)
                m, sd = mean_sd(r.get(key) for r in rs)
                pts.append((eps, m, sd))
            what = FAMILY_LABEL[family] if family else MF_LABEL[unit]
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                        marker="D" if family else marker, ls="--" if family else "-", capsize=3,
                        label=f"{unit}: {what}")
        pm = sorted((epsilon_of(rs[0]), *mean_sd(r.get(key) for r in rs)) for rs in cells.values()
                    if rs[0].get("mechanism") == "private-mostpop")
        if pm:
            ax.errorbar([p[0] for p in pm], [p[1] for p in pm], yerr=[p[2] for p in pm], color="tab:gray",
                        marker="x", ls=":", capsize=3, label="private MostPop (user-level)")
        for name, rs in cells.items():  # each private preset's non-private twin, in its unit's colour
            if rs[0].get("twin"):
                color = UNIT_STYLE.get(f"{rs[0]['twin']}-level", ("tab:purple",))[0]
                ax.axhline(mean_sd(r.get(key) for r in rs)[0], color=color, linestyle="-.", lw=1,
                           label=f"{name} (no DP)")
        for name, style in (("non-private", ("k", "-")), ("MostPop", ("tab:gray", "--")),
                            ("EASE (centralized)", ("tab:green", ":"))):
            if name in cells:
                m, sd = mean_sd(r.get(key) for r in cells[name])
                ax.axhline(m, color=style[0], linestyle=style[1], label=name)
                if sd and name == "non-private":
                    ax.axhspan(m - sd, m + sd, color="k", alpha=0.08)
        ax.set_xscale("log")
        # two significant digits: 1.99 (computed) and 2.0 (targeted) share one tick
        ticks = sorted({float(f"{epsilon_of(r):.2g}") for rs in cells.values() for r in rs
                        if math.isfinite(epsilon_of(r))})
        if ticks:
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("epsilon at delta = 1e-5 (log scale; per unit, as computed)")
        ax.set_ylabel(f"test {label} (full ranking)")
        ax.set_title(f"{label} vs privacy")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle("Privacy vs accuracy: interaction-level and user-level epsilon; private cells: mean ± sd over "
                 "seeds (non-private: line with ± sd band; dash-dot: each preset's non-private twin)", fontsize=11)
    return _save(fig, path, rect=(0, 0.07 + 0.03 * math.ceil(len(labels) / 4), 1, 1))


def plot_user_coldstart(cold: list[dict], rows: list[dict], path: Path) -> Path | None:
    """User cold-start curves: multi-target NDCG@10 of new users against ``k``."""
    if not cold:
        return None
    series: dict[str, dict[int, list[float]]] = {}
    for r in cold:
        # one series per cell (the non-private twins are cells of their own) and fit
        label = f"model: {r['cell']}" + (f" ({r['unit']})" if r["unit"] != "none" else " (no DP)")
        fit = str(r["fit"])
        label += f"; fit: {fit}" + (" (interaction-level)" if fit.startswith("DP fit") else "")
        series.setdefault(label, {}).setdefault(int(r["k"]), []).append(float(r["ndcg@10"]))
    kmax = max(int(r["k"]) for r in cold)
    fig, ax = plt.subplots(figsize=(9, 6.2))
    for label, pts in series.items():
        ks = sorted(pts)
        ms = [mean_sd(pts[k]) for k in ks]
        ax.errorbar([k + 0.0 for k in ks], [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                    label=label, linestyle="--" if "DP fit" in label else "-")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted({int(r["k"]) for r in cold}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel("k: interactions the new user folds in (0 = non-personal ranking)")
    ax.set_ylabel(f"multi-target NDCG@10 (all interactions after the first {kmax})")
    ax.set_title("User cold-start: new users fit only their own embedding\n"
                 f"(NDCG@10 over all of a user's interactions after its first {kmax}: "
                 "another scale than the test NDCG@10 of the other plots)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ncol = 2 if len(series) > 4 else 1
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    rows_ = math.ceil(len(series) / ncol)
    return _save(fig, path, rect=(0, min(0.45, 0.032 * rows_ + 0.015), 1, 1))


def _privacy_cells(rows):
    cells = _by_cell([r for r in rows if r.get("experiment") == "privacy" and not r.get("baseline")])
    return sorted(cells.items(),
                  key=lambda kv: (kv[1][0]["unit"] != "none", kv[1][0]["unit"], -float(kv[1][0]["target_epsilon"])))


def plot_groups(rows: list[dict], path: Path) -> Path | None:
    cells = _privacy_cells(rows)
    groups = ["light", "medium", "heavy"]
    if not cells or not any("test@light_ndcg@10" in r for _, rs in cells for r in rs):
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(groups)
    for gi, g in enumerate(groups):
        ms = [mean_sd(r.get(f"test@{g}_ndcg@10") for r in rs) for _, rs in cells]
        ax.bar([i + gi * width for i in range(len(cells))], [m for m, _ in ms], width, yerr=[s for _, s in ms],
               capsize=2, label=f"{g} users")
    mp = mostpop_rows(rows)
    if mp:
        per_group = [mean_sd(r.get(f"test@{g}_ndcg@10") for r in mp)[0] for g in groups]
        if all(m == m for m in per_group):
            for g, m, c in zip(groups, per_group, ("tab:blue", "tab:orange", "tab:green")):
                ax.axhline(m, color=c, linestyle="--", lw=1, label=f"MostPop, {g} users")
        else:
            ax.axhline(mean_sd(r.get("test_ndcg@10") for r in mp)[0], color="tab:gray", linestyle="--",
                       label="MostPop, all users (per group: not in the results)")
    ax.set_xticks([i + width for i in range(len(cells))])
    ax.set_xticklabels([name for name, _ in cells], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title("Activity groups (terciles of training interactions): does privacy hurt light users more?")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_beyond(rows: list[dict], path: Path) -> Path | None:
    cells = _privacy_cells(rows)
    keys = [("test_coverage@10", "catalogue coverage@10"), ("test_novelty@10", "novelty@10 (bits)"),
            ("test_arp@10", "avg. recommended popularity@10"), ("test_diversity@10", "intra-list diversity@10")]
    if not cells:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    for ax, (key, label) in zip(axes, keys):
        ms = [mean_sd(r.get(key) for r in rs) for _, rs in cells]
        ax.bar(range(len(cells)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=2, color="tab:purple")
        mp, _ = mean_sd(r.get(key) for r in mostpop_rows(rows))
        if mp == mp:
            ax.axhline(mp, color="tab:gray", linestyle="--", label="MostPop")
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([name for name, _ in cells], rotation=35, ha="right", fontsize=7)
        ax.set_title(label + ("" if mp == mp else "\n(MostPop: not in the results)"), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Beyond accuracy at each privacy level (test, top-10 lists; dashed: MostPop)", fontsize=11)
    return _save(fig, path)


def plot_item_coldstart(rows: list[dict], path: Path, heldout: int | None = None) -> Path | None:
    """Item cold-start bars, each labelled with what it ranks, and the random ranking
    among the ``heldout`` held-out items (``None``: not known, not drawn)."""
    rs = [r for r in rows if r.get("experiment") == "item-coldstart"]
    if not rs:
        return None
    n_txt = f"{heldout}" if heldout else "n (not recorded)"
    fig, ax = plt.subplots(figsize=(10, 5.2))
    labels, ms = [], []
    for key in ("test@cold-items", "test@cold-among-cold", "test@warm-items"):
        name = {"test@cold-items": "held-out items\namong all items",
                "test@cold-among-cold": f"held-out items\namong the {n_txt}\nheld-out items",
                "test@warm-items": "warm items\namong all items"}[key]
        for metric in ("ndcg@10", "hr@10", "recall@20"):
            labels.append(f"{name}\n{metric}")
            ms.append(mean_sd(r.get(f"{key}_{metric}") for r in rs))
    ax.bar(range(len(ms)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3,
           color=["tab:orange"] * 3 + ["tab:red"] * 3 + ["tab:blue"] * 3)
    if heldout:
        ref = random_ranking_reference(heldout)
        for j, metric in enumerate(("ndcg@10", "hr@10", "recall@20")):
            ax.hlines(ref[metric], 3 + j - 0.45, 3 + j + 0.45, colors="k", linestyles="--",
                      label=(f"random ranking of the {heldout} held-out items (Recall@20 = 20/{heldout}, exact; "
                             "NDCG@10, HR@10: one target per user, a lower bound)") if j == 0 else None)
        ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(range(len(ms)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("test metric (multi-target: all of a user's test targets in the view)")
    ax.set_title("Item cold-start: items never seen in training, ranked through genres and year\n"
                 + (f"{heldout} held-out items" if heldout else "number of held-out items not recorded"), fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_population(rows: list[dict], path: Path) -> Path | None:
    cells = _by_cell([r for r in rows if r.get("experiment") == "population"])
    if not cells:
        return None
    pts = sorted((int(rs[0]["population"]), mean_sd(r.get("test_ndcg@10") for r in rs)) for rs in cells.values())
    eps = next(iter(cells.values()))[0]["target_epsilon"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar([p for p, _ in pts], [m for _, (m, _) in pts], yerr=[s for _, (_, s) in pts], marker="s",
                color="tab:red", capsize=3, label=f"user-level DP, epsilon {float(eps):g}")
    ax.set_xscale("log")
    ax.set_xlabel("users in the federation (synthetic), log scale")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title("Population size at fixed user-level epsilon")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _heldout_of(out: Path, rows: list[dict]) -> int | None:
    cells = {r["cell"] for r in rows if r.get("experiment") == "item-coldstart"}
    docs = run_documents(out, [r for r in rows if r["cell"] in cells])
    counts = {heldout_item_count(docs, c) for c in cells}
    return counts.pop() if len(counts) == 1 else None


def make_plots(out: Path, rows: list[dict], cold: list[dict]) -> dict[str, str]:
    """Write every plot the data allows; returns ``{name: file name}``."""
    out = Path(out)
    made = {
        "privacy_utility": plot_privacy_utility(rows, out / "privacy_utility.png"),
        "user_coldstart": plot_user_coldstart(cold, rows, out / "user_coldstart.png"),
        "groups": plot_groups(rows, out / "groups.png"),
        "beyond": plot_beyond(rows, out / "beyond_accuracy.png"),
        "item_coldstart": plot_item_coldstart(rows, out / "item_coldstart.png", _heldout_of(out, rows)),
        "population": plot_population(rows, out / "population.png"),
    }
    return {k: Path(v).name for k, v in made.items() if v is not None}
