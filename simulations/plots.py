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

__all__ = ["make_plots", "mean_sd"]

UNIT_STYLE = {"interaction-level": ("tab:blue", "o"), "user-level": ("tab:red", "s")}


def mean_sd(values) -> tuple[float, float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


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


def _epsilon_of(r: dict) -> float:
    """The epsilon actually reached (computed by the accountant), per unit."""
    if r.get("unit") == "user-level":
        return float(r.get("user_epsilon") or r["target_epsilon"])
    if r.get("unit") == "interaction-level":
        return float(r.get("epsilon_max") or r["target_epsilon"])
    return math.inf


def plot_privacy_utility(rows: list[dict], path: Path) -> Path | None:
    cells = _by_cell([r for r in rows if r.get("experiment") == "privacy"])
    if not cells:
        return None
    metrics = [("test_ndcg@10", "NDCG@10"), ("test_hr@10", "HR@10"), ("test_recall@20", "Recall@20")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (key, label) in zip(axes, metrics):
        for unit, (color, marker) in UNIT_STYLE.items():
            pts = []
            for name, rs in cells.items():
                if rs[0].get("unit") != unit or rs[0].get("baseline"):
                    continue
                eps = statistics.fmean(_epsilon_of(r) for r in rs)
                m, sd = mean_sd(r.get(key) for r in rs)
                pts.append((eps, m, sd))
            if pts:
                pts.sort()
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                            marker=marker, capsize=3, label=f"{unit} DP (mean ± sd over seeds)")
        pm = sorted((_epsilon_of(rs[0]), *mean_sd(r.get(key) for r in rs)) for rs in cells.values()
                    if rs[0].get("mechanism") == "private-mostpop")
        if pm:
            ax.errorbar([p[0] for p in pm], [p[1] for p in pm], yerr=[p[2] for p in pm], color="tab:gray",
                        marker="x", ls=":", capsize=3, label="private MostPop (user-level)")
        for name, style in (("non-private", ("k", "-")), ("MostPop", ("tab:gray", "--")),
                            ("EASE (centralized)", ("tab:green", ":"))):
            if name in cells:
                m, sd = mean_sd(r.get(key) for r in cells[name])
                ax.axhline(m, color=style[0], linestyle=style[1], label=name)
                if sd and name == "non-private":
                    ax.axhspan(m - sd, m + sd, color="k", alpha=0.08)
        ax.set_xscale("log")
        # two significant digits: 1.99 (computed) and 2.0 (targeted) share one tick
        ticks = sorted({float(f"{_epsilon_of(r):.2g}") for rs in cells.values() for r in rs
                        if math.isfinite(_epsilon_of(r))})
        if ticks:
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("epsilon at delta = 1e-5 (log scale; per unit, as computed)")
        ax.set_ylabel(f"test {label} (full ranking)")
        ax.set_title(f"{label} vs privacy")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Privacy vs accuracy: interaction-level and user-level epsilon "
                 "(non-private: line with ± sd band)", fontsize=11)
    return _save(fig, path, rect=(0, 0.07, 1, 1))


def plot_user_coldstart(cold: list[dict], rows: list[dict], path: Path) -> Path | None:
    if not cold:
        return None
    series: dict[str, dict[int, list[float]]] = {}
    for r in cold:
        eps = "∞" if r["target_epsilon"] in (math.inf, "inf", None) or r["unit"] == "none" else f"{float(r['target_epsilon']):g}"
        label = f"model: {r['unit'] if r['unit'] != 'none' else 'non-private'}" + (f" eps {eps}" if r["unit"] != "none" else "")
        label += f"; fit: {r['fit']}"
        series.setdefault(label, {}).setdefault(int(r["k"]), []).append(float(r["ndcg@10"]))
    fig, ax = plt.subplots(figsize=(8.5, 5))
    for label, pts in series.items():
        ks = sorted(pts)
        ms = [mean_sd(pts[k]) for k in ks]
        ax.errorbar([k + 0.0 for k in ks], [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", capsize=3,
                    label=label, linestyle="--" if "DP fit" in label else "-")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(sorted({int(r["k"]) for r in cold}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("k: interactions the new user folds in (0 = non-personal ranking)")
    ax.set_ylabel("NDCG@10 on the interactions after its first 20")
    ax.set_title("User cold-start: new users fit only their own embedding")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _privacy_cells(rows):
    cells = _by_cell([r for r in rows if r.get("experiment") == "privacy" and not r.get("baseline")])
    return sorted(cells.items(), key=lambda kv: (kv[1][0]["unit"] != "none", kv[1][0]["unit"], -float(kv[1][0]["target_epsilon"])))


def plot_groups(rows: list[dict], path: Path) -> Path | None:
    cells = _privacy_cells(rows)
    groups = ["light", "medium", "heavy"]
    if not cells or not any(f"test@light_ndcg@10" in r for _, rs in cells for r in rs):
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width = 0.8 / len(groups)
    for gi, g in enumerate(groups):
        ms = [mean_sd(r.get(f"test@{g}_ndcg@10") for r in rs) for _, rs in cells]
        ax.bar([i + gi * width for i in range(len(cells))], [m for m, _ in ms], width, yerr=[s for _, s in ms],
               capsize=2, label=f"{g} users")
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
        ax.set_xticks(range(len(cells)))
        ax.set_xticklabels([name for name, _ in cells], rotation=35, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Beyond accuracy at each privacy level (test, top-10 lists)", fontsize=11)
    return _save(fig, path)


def plot_item_coldstart(rows: list[dict], path: Path) -> Path | None:
    rs = [r for r in rows if r.get("experiment") == "item-coldstart"]
    if not rs:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.4))
    labels, ms = [], []
    for name, key in (("held-out\namong all", "test@cold-items"), ("held-out\namong held-out", "test@cold-among-cold"),
                      ("warm\namong all", "test@warm-items")):
        for metric in ("ndcg@10", "hr@10", "recall@20"):
            labels.append(f"{name}\n{metric}")
            ms.append(mean_sd(r.get(f"{key}_{metric}") for r in rs))
    ax.bar(range(len(ms)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3,
           color=["tab:orange"] * 3 + ["tab:red"] * 3 + ["tab:blue"] * 3)
    ax.set_xticks(range(len(ms)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("test metric")
    ax.set_title("Item cold-start: items never seen in training,\nranked through genres and year", fontsize=10)
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


def make_plots(out: Path, rows: list[dict], cold: list[dict]) -> dict[str, str]:
    """Write every plot the data allows; returns ``{name: file name}``."""
    out = Path(out)
    made = {
        "privacy_utility": plot_privacy_utility(rows, out / "privacy_utility.png"),
        "user_coldstart": plot_user_coldstart(cold, rows, out / "user_coldstart.png"),
        "groups": plot_groups(rows, out / "groups.png"),
        "beyond": plot_beyond(rows, out / "beyond_accuracy.png"),
        "item_coldstart": plot_item_coldstart(rows, out / "item_coldstart.png"),
        "population": plot_population(rows, out / "population.png"),
    }
    return {k: Path(v).name for k, v in made.items() if v is not None}
