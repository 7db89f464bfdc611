"""`fedrec sweep headline` on tiny data: every row of the README's headline table, over the
same seeds, the private rows naming the mechanism chosen, and a second run that keeps
what the first finished."""

import json

import pytest


@pytest.mark.slow
@pytest.mark.heavy  # about 2 minutes on 2 cores: `make test-heavy` and CI
def test_the_headline_sweep_writes_every_row_and_resumes(tmp_path, capsys):
    from fedrec_app.simulations.cli.main import main

    argv = ["sweep", "headline", "--data", "synthetic:120x60:0", "--seeds", "1", "--rounds", "2",
            "--out", str(tmp_path / "h")]
    assert main(argv) == 0
    table = [line for line in (tmp_path / "h" / "headline.md").read_text().splitlines() if line.startswith("| ")]
    names = [line.split(" | ")[0][2:] for line in table[1:]]
    assert names[:5] == ["MostPop", "EASE", "centralized SASRec", "centralized GRU4Rec", "federated MF, no DP"]
    assert names[5].startswith("`--privacy user-level --epsilon 8` (") and names[6].startswith(
        "`--privacy interaction-level --epsilon 8` (")
    assert names[7:] == ["federated SASRec, no DP", "federated GRU4Rec, no DP", "private MostPop, epsilon 8"]
    rows = json.loads((tmp_path / "h" / "results.json").read_text())
    assert all(0 <= float(r["test_ndcg@10"]) <= 1 for r in rows) and len(rows) == 10
    capsys.readouterr()
    assert main(argv) == 0  # everything finished is kept
    assert capsys.readouterr().out.count("done before, kept") == 5
