"""The study report and plots from synthetic result rows (no training): the findings
follow the numbers, the DP parameters show the calibrated noise, the selected round
is labelled, and every plot is written with its references and labels."""

import json
import math
import re

import pytest

from fedrec.config import FedConfig
from fedrec_app.simulations.report import plots
from fedrec_app.simulations.report.plots import make_plots, random_ranking_reference
from fedrec_app.simulations.report.markdown import dp_parameters, findings, seed_comparison, write_study_report
from fedrec_app.simulations.studies.runner import Cell
from fedrec_app.simulations.studies.study import STUDIES

INTERACTION_NOISE = 2.298828125  # calibrated noise in the rows; the config holds 0.0
USER_NOISE = 4.98046875


def _metrics(ndcg: float) -> dict:
    m = {"test_ndcg@10": ndcg, "test_hr@10": 2 * ndcg, "test_recall@20": 3 * ndcg, "test_sampled_ndcg@10": 5 * ndcg,
         "test_coverage@10": 0.05, "test_diversity@10": 0.7, "test_novelty@10": 1.5, "test_arp@10": 300.0}
    for g, f in (("light", 1.1), ("medium", 0.9), ("heavy", 1.0)):
        m[f"test@{g}_ndcg@10"] = f * ndcg
    return m


def make_rows(private_ndcg=(0.020, 0.021), twin_ndcg=(0.040, 0.041)) -> list[dict]:
    """Two seeds of: non-private, an interaction-level and a user-level cell with their twins,
    MostPop, private MostPop and item cold-start (the structure of ``results.json``)."""
    rows = []
    for seed in (0, 1):
        def row(cell, ndcg, **labels):
            rows.append({"cell": cell, "seed": seed, "experiment": "privacy", "unit": "none",
                         "target_epsilon": math.inf, "privacy_unit": labels.get("unit", "none"),
                         "selected_round": 10 * (seed + 2), **labels, **_metrics(ndcg)})

        row("non-private", (0.060, 0.062)[seed])
        row("interaction-eps8", private_ndcg[seed], unit="interaction-level", target_epsilon=8.0,
            epsilon_median=7.99, epsilon_max=7.995, noise_multiplier=INTERACTION_NOISE, delta=1e-5)
        row("user-eps8", (0.038, 0.039)[seed], unit="user-level", target_epsilon=8.0, user_epsilon=7.999,
            user_noise_multiplier=USER_NOISE, delta=1e-5)
        row("non-private @interaction preset", twin_ndcg[seed], twin="interaction")
        row("non-private @user preset", (0.0385, 0.0395)[seed], twin="user")
        rows.append({"cell": "MostPop", "seed": seed, "experiment": "privacy", "unit": "none",
                     "target_epsilon": math.inf, "baseline": True, "test_ndcg@10": 0.030, "test_hr@10": 0.06,
                     "test_recall@20": 0.1, "test_sampled_ndcg@10": 0.2, "test_coverage@10": 0.052})
        rows.append({"cell": "private MostPop eps 8", "seed": seed, "experiment": "privacy", "unit": "user-level",
                     "target_epsilon": 8.0, "baseline": True, "user_epsilon": 7.998, "mechanism": "private-mostpop",
                     "test_ndcg@10": (0.029, 0.030)[seed], "test_hr@10": 0.06, "test_recall@20": 0.1,
                     "test_sampled_ndcg@10": 0.2, "test_coverage@10": 0.045})
        rows.append({"cell": "item-coldstart", "seed": seed, "experiment": "item-coldstart", "unit": "none",
                     "target_epsilon": math.inf, "selected_round": 100, **_metrics(0.05),
                     "test@cold-items_ndcg@10": 0.0004, "test@cold-items_hr@10": 0.003,
                     "test@cold-items_recall@20": 0.001, "test@cold-items_users": 90,
                     "test@cold-among-cold_ndcg@10": 0.2, "test@cold-among-cold_hr@10": 0.7,
                     "test@cold-among-cold_recall@20": (0.60, 0.62)[seed], "test@cold-among-cold_users": 90,
                     "test@warm-items_ndcg@10": 0.07, "test@warm-items_hr@10": 0.14,
                     "test@warm-items_recall@20": 0.23, "test@warm-items_users": 85})
    return rows


def make_cold() -> list[dict]:
    out = []
    for seed in (0, 1):
        for k, base, dp in ((0, 0.26, 0.26), (20, 0.35, 0.10)):
            out.append({"cell": "non-private", "seed": seed, "unit": "none", "target_epsilon": math.inf,
                        "fit": "no DP", "k": k, "users": 30, "ndcg@10": base + 0.002 * seed})
            out.append({"cell": "non-private", "seed": seed, "unit": "none", "target_epsilon": math.inf,
                        "fit": "DP fit eps 1", "k": k, "users": 30, "ndcg@10": dp + 0.002 * seed})
            out.append({"cell": "interaction-eps8", "seed": seed, "unit": "interaction-level", "target_epsilon": 8.0,
                        "fit": "no DP", "k": k, "users": 30, "ndcg@10": 0.31 + 0.001 * k / 20 + 0.003 * seed})
    return out


@pytest.fixture(scope="module")
def cells() -> list[Cell]:
    base = FedConfig(num_server_rounds=60, eval_every=10)
    pre = dict(dim=8, user_lr=0.1, server_opt="sgd", server_lr=5.0, prior_noise=5.0)
    return [
        Cell("non-private", base, {"experiment": "privacy", "unit": "none"}),
        Cell("interaction-eps8", FedConfig(**pre, num_server_rounds=60, sample_rate=0.3, max_grad_norm=0.5,
                                           target_epsilon=8.0), {"experiment": "privacy", "unit": "interaction-level"}),
        Cell("user-eps8", FedConfig(**pre, num_server_rounds=60, user_dp="client", user_clip=0.1,
                                    user_target_epsilon=8.0), {"experiment": "privacy", "unit": "user-level"}),
        Cell("non-private @interaction preset", FedConfig(**pre, num_server_rounds=60), {"twin": "interaction"}),
        Cell("non-private @user preset", FedConfig(**pre, num_server_rounds=60), {"twin": "user"}),
        Cell("item-coldstart", FedConfig(model="two-tower", cold_items=0.1, cold_users=0.0, num_server_rounds=100),
             {"experiment": "item-coldstart"}),
    ]


def write_run_dirs(out, rows):
    """The run directories' records the report reads: split sizes, rounds run, privacy section."""
    for r in rows:
        d = out / "runs" / f"{r['cell']}-seed{r['seed']}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"dataset": {"items": 500}, "split": {"cold_items": 50}}))
        if r["cell"] == "interaction-eps8":  # stopped after 50 of 60 rounds: 100 steps accounted
            (d / "metrics.json").write_text(json.dumps({"rounds": 50, "privacy": {
                "unit": "interaction-level", "sample_rate": 0.3, "max_grad_norm": 0.5,
                "popularity_prior_noise": 5.0}}))


def report(tmp_path, cells, rows, cold=None, run_dirs=False) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if run_dirs:
        write_run_dirs(tmp_path, rows)
    path = write_study_report(tmp_path, STUDIES["tiny"], rows, make_cold() if cold is None else cold, {},
                              data="synthetic", seeds=[0, 1], cells=cells, seconds=1.0, command="fedrec sweep tiny")
    return path.read_text()


def bullet(text: str, cell: str) -> str:
    return next(l for l in text.splitlines() if l.startswith(f"- `{cell}`"))


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_seed_comparison_uses_the_sum_of_the_spreads():
    assert seed_comparison([1.0, 3.0], [1.5, 1.5]).verdict == "within the seed spread of"  # 0.5 < 1.41
    assert seed_comparison([1.0, 3.0], [0.0, 0.0]).verdict == "above"  # 2 > 1.41
    assert seed_comparison([1.0, 1.2], [2.0, 2.2]).verdict == "below"
    assert seed_comparison([2.0, 2.2], [1.0, 1.2]).verdict == "above"
    c = seed_comparison([1.0, 1.2], [1.1, 1.3])  # diff -0.1 < 0.14 + 0.14
    assert c.verdict == "within the seed spread of" and c.diff == pytest.approx(-0.1)


def test_findings_follow_the_numbers(tmp_path, cells):
    text = report(tmp_path, cells, make_rows(private_ndcg=(0.020, 0.021), twin_ndcg=(0.040, 0.041)))
    assert text.index("## Findings") < text.index("## 1. Privacy vs accuracy")
    line = bullet(section(text, "## Findings"), "interaction-eps8")
    assert "below its twin `non-private @interaction preset` beyond the seed spread" in line
    assert "interaction-level" in line and "below `non-private` beyond the seed spread" in line
    assert "below `MostPop` (no DP) beyond the seed spread" in line and "does not beat `MostPop`" in line

    swapped = report(tmp_path, cells, make_rows(private_ndcg=(0.070, 0.071), twin_ndcg=(0.040, 0.041)))
    line = bullet(section(swapped, "## Findings"), "interaction-eps8")
    assert "above its twin `non-private @interaction preset` beyond the seed spread" in line
    assert "above `non-private` beyond the seed spread" in line
    assert "beats `MostPop` and `private MostPop eps 8` beyond the seed spread" in line

    close = report(tmp_path, cells, make_rows(private_ndcg=(0.038, 0.042), twin_ndcg=(0.040, 0.041)))
    assert "within the seed spread of its twin" in bullet(section(close, "## Findings"), "interaction-eps8")


def test_findings_cover_units_preset_coldstart_and_what_no_epsilon_covers(tmp_path, cells):
    text = section(report(tmp_path, cells, make_rows(), run_dirs=True), "## Findings")
    user = bullet(text, "user-eps8")
    assert "user-level" in user and "its twin `non-private @user preset`" in user
    preset = bullet(text.split("**What the preset costs**")[1], "non-private @interaction preset")
    assert "below `non-private` beyond the seed spread" in preset
    cold = text.split("**What cold-start costs**")[1]
    assert re.search(r"k = 20 above k = 0 beyond the seed spread: `non-private` \(fold-in without DP", cold)
    assert re.search(r"k = 20 below k = 0 beyond the seed spread: `non-private` \(DP fold-in at ε = 1, "
                     r"interaction-level", cold)
    assert "k = 20 within the seed spread of k = 0: `interaction-eps8`" in cold
    assert "below warm items ranked among all items beyond the seed spread" in cold
    assert "is above a random ranking's (20 / 50 = 0.4000" in cold  # 0.61 ± 0.014 vs 0.4
    assert "multi-target" in cold
    covered = text.split("**Not covered by any epsilon**")[1]
    for what in ("Round selection on validation", "Evaluation replies", "User-level DP trusts the server"):
        assert what in covered


def test_dp_parameters_show_the_calibrated_noise_not_the_config_zero(tmp_path, cells):
    text = report(tmp_path, cells, make_rows())
    assert '"noise-multiplier": 0.0' in text and "calibrated from the target epsilon" in text
    table = section(text, "### DP parameters")
    inter = next(l for l in table.splitlines() if l.startswith("| interaction-eps8 |")).split(" | ")
    assert inter[1:3] == ["interaction-level", "8"] and inter[4] == "1e-05"
    assert inter[5] == f"{INTERACTION_NOISE:.8g}" and inter[6:8] == ["0.3", "0.5"]
    assert inter[8] == "≤ 120 DP-SGD steps per user (planned)" and inter[9] == "5 |"  # 60 rounds x 2 steps
    user = next(l for l in table.splitlines() if l.startswith("| user-eps8 |")).split(" | ")
    assert user[1] == "user-level" and user[5] == f"{USER_NOISE:.8g}" and user[6:8] == ["1", "0.1"]
    pm = next(l for l in table.splitlines() if l.startswith("| private MostPop eps 8 |")).split(" | ")
    assert pm[5] == "–" and pm[8] == "1 release"  # its noise is not in the rows: not guessed
    assert "| non-private |" not in table


def test_dp_parameters_prefer_the_run_records(tmp_path, cells):
    rows = make_rows()
    write_run_dirs(tmp_path, rows)
    params = {e["cell"]: e for e in dp_parameters(rows, {c.name: c.cfg for c in cells},
                                                  plots.run_documents(tmp_path, rows))}
    assert params["interaction-eps8"]["steps"] == [100, 100] and not params["interaction-eps8"]["planned"]
    assert params["interaction-eps8"]["noise_multiplier"] == [INTERACTION_NOISE] * 2
    assert params["user-eps8"]["steps"] == [60, 60] and params["user-eps8"]["planned"]
    assert set(params) == {"interaction-eps8", "user-eps8", "private MostPop eps 8"}


def test_round_column_is_labelled_with_per_seed_values(tmp_path, cells):
    text = report(tmp_path, cells, make_rows())
    assert "selected round: mean over seeds (per seed)" in text
    line = next(l for l in text.splitlines() if l.startswith("| non-private |") and "±" in l)
    assert "| 25 (20, 30) |" in line


def test_item_coldstart_names_the_heldout_items_and_the_random_reference(tmp_path, cells):
    text = section(report(tmp_path, cells, make_rows(), run_dirs=True), "## 3. Item cold-start")
    assert "10% of items (50 items)" in text
    assert "| item-coldstart | held-out, among the 50 held-out items |" in text
    ref = random_ranking_reference(50)
    assert ref["hr@10"] == pytest.approx(0.2) and ref["recall@20"] == pytest.approx(0.4)
    assert ref["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 11)) / 50)
    assert f"| random ranking | held-out, among the 50 held-out items | ≥ {ref['ndcg@10']:.4f}" in text
    no_dirs = section(report(tmp_path / "bare", cells, make_rows()), "## 3. Item cold-start")
    assert "number of held-out items is not recorded" in no_dirs


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save (kept open for inspection)."""
    saved = {}

    def keep(fig, path, rect=None):
        saved[path.name] = fig
        fig.tight_layout(rect=rect)
        fig.savefig(path, dpi=40)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield saved
    for fig in saved.values():
        plots.plt.close(fig)


def _labels(fig) -> list[str]:
    out = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for ax in fig.axes:
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return out


def test_plots_are_written_with_references_and_labels(tmp_path, figures):
    rows = make_rows()
    write_run_dirs(tmp_path, rows)
    made = make_plots(tmp_path, rows, make_cold())
    assert set(made) == {"privacy_utility", "user_coldstart", "groups", "beyond", "item_coldstart"}
    for name in made.values():
        assert (tmp_path / name).stat().st_size > 1000

    privacy = figures["privacy_utility.png"]
    twins = [t for t in _labels(privacy) if t.startswith("non-private @") and "(no DP" in t]
    assert len(twins) == 2  # each preset's twin is drawn beside its private cells
    twin_lines = [ln for ln in privacy.axes[0].get_lines() if ln.get_linestyle() == "-."]
    assert sorted(round(ln.get_ydata()[0], 5) for ln in twin_lines) == [0.039, 0.0405]

    user = figures["user_coldstart.png"]
    ax = user.axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_legend() is None and user.legends  # legend off the axes
    assert any("DP fit eps 1 (interaction-level)" in t for t in _labels(user))
    assert "multi-target NDCG@10" in ax.get_ylabel()

    item = figures["item_coldstart.png"]
    ticks = [t.get_text() for t in item.axes[0].get_xticklabels()]
    assert sum("among the 50\nheld-out items" in t for t in ticks) == 3
    assert sum("held-out items\namong all items" in t for t in ticks) == 3
    assert any("random ranking of the 50 held-out items" in t for t in _labels(item))
    assert "50 held-out items" in item.axes[0].get_title()

    assert any("MostPop" in t for t in _labels(figures["groups.png"]))
    beyond = figures["beyond_accuracy.png"]
    assert "MostPop" in _labels(beyond)  # coverage@10 is in the MostPop rows
    assert any("MostPop: not in the results" in ax.get_title() for ax in beyond.axes)  # novelty is not


def test_findings_without_run_directories_or_cold_start(cells):
    lines = findings(make_rows(), [], configs={c.name: c.cfg for c in cells})
    text = "\n".join(lines)
    assert "New users" not in text and "number of held-out items is not recorded" in text
    assert "secure aggregation is off" in text


def _with_als(rows: list[dict]) -> list[dict]:
    """``rows`` with the study's chosen private-ALS cells, their twin and EASE (seeds 0, 1)."""
    out = list(rows)
    for seed in (0, 1):
        def row(cell, ndcg, **labels):
            out.append({"cell": cell, "seed": seed, "experiment": "privacy", "unit": "none",
                        "target_epsilon": math.inf, "selected_round": 3, **labels, **_metrics(ndcg)})

        als = dict(mechanism="private-als", family="als", chosen=True, delta=1e-5, user_noise_multiplier=1.28)
        row("private-als user-eps8", (0.050, 0.052)[seed], unit="user-level", target_epsilon=8.0,
            user_epsilon=7.998, preset="private-als", **als)
        row("private-als-interaction interaction-eps8", (0.044, 0.045)[seed], unit="interaction-level",
            target_epsilon=8.0, user_epsilon=2.7, interaction_epsilon=7.996, preset="private-als-interaction", **als)
        row("non-private @private-als preset", (0.055, 0.056)[seed], twin="als")
        out.append({"cell": "EASE (centralized)", "seed": seed, "experiment": "privacy", "unit": "none",
                    "target_epsilon": math.inf, "baseline": True, **_metrics(0.065)})
    return out


def test_findings_name_the_best_of_each_family_and_compare_private_als_with_its_twin(tmp_path, cells):
    text = section(report(tmp_path, cells, _with_als(make_rows())), "## Findings")
    best = text.split("**The best of each family**")[1].split("**What privacy costs**")[0]
    fed = next(l for l in best.splitlines() if l.startswith("- Best federated without DP"))
    # non-private 0.061 is the best non-private cell (above the ALS twin's 0.0555)
    assert "`non-private`, 0.0610" in fed and "above `MostPop` beyond the seed spread" in fed
    assert "below `EASE (centralized)` beyond the seed spread" in fed
    user = next(l for l in best.splitlines() if l.startswith("- Best private at user-level ε = 8"))
    assert "`private-als user-eps8`, 0.0510" in user  # above DP-FedAvg's 0.0385
    assert "above `private MostPop eps 8` beyond the seed spread" in user
    inter = next(l for l in best.splitlines() if l.startswith("- Best private at interaction-level ε = 8"))
    assert "`private-als-interaction interaction-eps8`" in inter  # 0.0445 against DP-SGD's 0.0205
    als = bullet(text, "private-als-interaction interaction-eps8")
    assert "its twin `non-private @private-als preset`" in als
    assert "ε = 8.00; interaction-level" in als and "max over users" not in als  # its own epsilon, not a user's max
    dpsgd = bullet(text, "interaction-eps8")
    assert "its twin `non-private @interaction preset`" in dpsgd and "max over users" in dpsgd


def test_dp_parameters_and_plot_of_private_als(tmp_path, cells, figures):
    rows = _with_als(make_rows())
    params = {e["cell"]: e for e in dp_parameters(rows)}
    inter = params["private-als-interaction interaction-eps8"]
    assert inter["epsilon"] == [7.996, 7.996] and inter["sample_rate"] == [1.0, 1.0]
    assert inter["noise_multiplier"] == [1.28, 1.28] and inter["steps_unit"] == "passes after the count release"
    assert params["private-als user-eps8"]["epsilon"] == [7.998, 7.998]
    write_run_dirs(tmp_path, rows)
    make_plots(tmp_path, rows, make_cold())
    labels = _labels(figures["privacy_utility.png"])
    assert "interaction-level: private ALS (chosen)" in labels and "interaction-level: MF, DP-SGD" in labels
    assert "user-level: private ALS (chosen)" in labels and "user-level: MF, DP-FedAvg" in labels
    assert sum(t.startswith("non-private @") for t in labels) == 3
