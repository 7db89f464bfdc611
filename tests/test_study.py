"""The study (``fedrec sweep``) on a tiny synthetic dataset through Flower's engine:
every experiment runs, the report has its sections and plots, its numbers are the
ones in the results files, and a re-run resumes instead of recomputing."""

import json
import math
import re

import pytest

from fedrec_app.simulations.studies.coldstart import FoldIn, user_coldstart
from fedrec_app.simulations.report.plots import mean_sd
from fedrec_app.simulations.studies.study import run_study

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # `make test-heavy`

DATA = "synthetic:150x60:0:24"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run_study("tiny", out, data=DATA, say=lambda m: None)


def test_every_experiment_has_rows_plots_and_a_report(study):
    out, res = study
    cells = {r["cell"] for r in res["rows"]}
    assert {"non-private", "interaction-eps8", "user-eps8", "item-coldstart", "population-120", "MostPop",
            "private MostPop eps 8", "non-private @interaction preset", "non-private @user preset"} <= cells
    assert len([r for r in res["rows"] if r["cell"] == "non-private"]) == 2  # seeds
    for name in ("privacy_utility", "user_coldstart", "groups", "beyond", "item_coldstart", "population"):
        assert (out / res["plots"][name]).stat().st_size > 10_000, name
    text = (out / "report.md").read_text()
    for heading in ("## 1. Privacy vs accuracy", "## 2. User cold-start", "## 3. Item cold-start",
                    "## 4. Beyond accuracy", "## 5. Population size", "## Configuration", "Versions:"):
        assert heading in text
    assert "interaction-level" in text and "user-level" in text
    assert "what privacy costs" in text and "the floor a private model must beat" in text
    twin = next(r for r in res["rows"] if r["cell"] == "non-private @user preset")
    private = next(r for r in res["rows"] if r["cell"] == "user-eps8")
    assert twin["test_ndcg@10"] is not None and "user_epsilon" not in twin and private["user_epsilon"] <= 8.01
    assert {int(r["k"]) for r in res["coldstart"]} == {0, 1, 2, 5, 10, 20}


def test_report_numbers_are_the_results_files_numbers(study):
    out, _ = study
    rows = json.loads((out / "results.json").read_text())
    text = (out / "report.md").read_text()
    for cell in ("non-private", "interaction-eps8", "user-eps8", "MostPop", "private MostPop eps 8"):
        line = next(l for l in text.splitlines() if l.startswith(f"| {cell} |") and "±" in l)
        got = [float(x) for x in re.findall(r"(-?\d+\.\d+) ± ", line)]
        rs = [r for r in rows if r["cell"] == cell]
        want = [mean_sd(r["test_ndcg@10"] for r in rs)[0], mean_sd(r["test_hr@10"] for r in rs)[0]]
        assert got[-4:-2] == pytest.approx([round(w, 4) for w in want], abs=1e-4), cell
    cold = json.loads((out / "coldstart.json").read_text())
    line = next(l for l in text.splitlines() if l.startswith("| non-private | no DP |"))
    k0 = [r["ndcg@10"] for r in cold if r["cell"] == "non-private" and r["fit"] == "no DP" and r["k"] == 0]
    assert float(line.split("|")[3].split("±")[0]) == pytest.approx(mean_sd(k0)[0], abs=1e-4)


def test_epsilons_reported_per_unit_within_their_targets(study):
    _, res = study
    for r in res["rows"]:
        if r.get("unit") == "interaction-level":
            assert r["epsilon_max"] <= r["target_epsilon"] + 0.01
        if r.get("unit") == "user-level":
            assert r["user_epsilon"] <= r["target_epsilon"] + 0.01


def test_rerun_resumes_without_training_again(study, monkeypatch):
    out, res = study
    import fedrec_app.simulations.studies.runner as runner

    def boom(cfg):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(runner, "_default_run", boom, raising=False)
    again = run_study("tiny", out, data=DATA, say=lambda m: None)
    assert len(again["rows"]) == len(res["rows"])


def test_coldstart_k0_is_the_bias_ranking_and_fold_in_helps():
    import numpy as np

    rng = np.random.default_rng(0)
    q = rng.normal(size=(80, 6)).astype(np.float32)
    b = rng.normal(size=80).astype(np.float32) * 0.1
    taste = {u: rng.normal(size=6) for u in range(30)}
    items = {u: np.argsort(-(q @ taste[u]))[:30] for u in range(30)}
    for u in items:
        rng.shuffle(items[u])
    rows = user_coldstart({"item_embedding": q, "item_bias": b}, items, ks=(0, 5, 20), fit=FoldIn(steps=50))
    by_k = {r["k"]: r for r in rows}
    assert by_k[20]["ndcg@10"] > by_k[0]["ndcg@10"] + 0.1
    assert by_k[0]["fit_epsilon"] == 0.0 and math.isinf(by_k[5]["fit_epsilon"])
    dp = user_coldstart({"item_embedding": q, "item_bias": b}, items, ks=(5,), fit=FoldIn(target_epsilon=1.0))
    assert dp[0]["fit_epsilon"] <= 1.0 + 0.01
