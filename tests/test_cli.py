"""The command line: --help everywhere, baselines on MovieLens CSV and generic CSV, clear errors."""

import json

import pytest

from fedrec_app.simulations.cli.main import main
from fedrec.privacy.calibration import resolved


@pytest.mark.parametrize("cmd", [[], ["baseline"], ["simulate"], ["privacy"], ["run-default"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: fedrec" in capsys.readouterr().out


def test_version(capsys):
    from fedrec import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"fedrec {__version__}")


def _write_interactions(path, header, sep=","):
    from fedrec.data import synthetic_dataset

    ds = synthetic_dataset(n_users=40, n_items=50, interactions_per_user=10, seed=2)
    lines = [sep.join(header)]
    for u, i, t in zip(ds.user, ds.item, ds.timestamp):
        lines.append(sep.join([str(u + 1), str(i + 1), "4.0", str(t)]))
    path.write_text("\n".join(lines) + "\n")
    return ds


def test_baseline_on_movielens_csv(tmp_path):
    _write_interactions(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    out = tmp_path / "out"
    assert main(["baseline", "--data", str(tmp_path / "ratings.csv"), "--model", "mostpop", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert {"validation", "test", "config", "seed", "versions"} <= set(doc)
    assert "hr@10" in doc["test"] and "ndcg@10" in doc["validation"] and "sampled_hr@10" in doc["test"]
    ids = json.loads((out / "id_map.json").read_text())
    assert len(ids["users"]) == 40


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_baseline_of_a_sequential_model_trains_and_reports(tmp_path, model):
    """The centralized counterpart of a sequential model through the command line."""
    _write_interactions(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    out = tmp_path / model
    assert main(["baseline", "--data", str(tmp_path / "ratings.csv"), "--model", model, "--epochs", "1", "--dim", "8",
                 "--seq-len", "5", "--seed", "3", "--out", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["seed"] == 3 and 0 <= doc["test"]["ndcg@10"] <= 1 and doc["test"]["ndcg@10"] <= doc["test"]["hr@10"]


def test_rank_consumed_reaches_baselines_and_nodes(tmp_path):
    """--rank-consumed: MostPop ranks its users' own (popular) consumed items too, so its
    hit rate can only fall; the federated evaluation takes the same switch."""
    from dataclasses import replace

    from fedrec.federated import node
    from fedrec.config import FedConfig
    from fedrec.federated.federation import init_global_params, load_federation

    _write_interactions(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    docs = {}
    for flag in ([], ["--rank-consumed"]):
        out = tmp_path / f"out{len(flag)}"
        assert main(["baseline", "--data", str(tmp_path / "ratings.csv"), "--model", "mostpop", "--out", str(out),
                     "--sampled-negatives", "0"] + flag) == 0
        docs[len(flag)] = json.loads((out / "metrics.json").read_text())["test"]
    assert docs[1]["hr@10"] < docs[0]["hr@10"]
    cfg = resolved(FedConfig(data="synthetic:20x30:1", users_per_node=20, dim=4))
    fed = load_federation(cfg)
    params = init_global_params(cfg, fed)
    hits = {}
    for rank in (False, True):
        c = replace(cfg, rank_consumed=rank)
        ev = node.evaluate_round(c, fed, 0, node.load_state({}, fed, 0, c), global_params=params)
        hits[rank] = ev["test/mrr"]
    assert hits[True] < hits[False]


def test_baseline_on_generic_csv_with_named_columns(tmp_path):
    _write_interactions(tmp_path / "clicks.tsv", ["uid", "iid", "score", "ts"], sep="\t")
    out = tmp_path / "out"
    code = main(["baseline", "--data", str(tmp_path / "clicks.tsv"), "--user-col", "uid", "--item-col", "iid",
                 "--rating-col", "score", "--timestamp-col", "ts", "--model", "ease", "--ease-lambdas", "10,50",
                 "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["selected"]["lambda"] in (10, 50)


def test_malformed_file_gives_clear_error(tmp_path, capsys):
    bad = tmp_path / "ratings.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4.0,100\nx,3,4.0,101\n")
    assert main(["baseline", "--data", str(bad), "--model", "mostpop", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ratings.csv" in err and "line 3" in err


def test_privacy_command(capsys):
    assert main(["privacy", "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "1000",
                 "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert "epsilon = 2.10" in out and "interaction-level" in out
    assert main(["privacy", "--target-epsilon", "2.1014", "--sample-rate", "0.01", "--steps", "1000"]) == 0
    sigma = float(capsys.readouterr().out.split("=")[1].split()[0])
    assert sigma == pytest.approx(1.0, abs=0.01)


def test_bad_config_names_key_and_value():
    from fedrec.config import FedConfig

    with pytest.raises(ValueError, match="sample-rate=1.5"):
        FedConfig(sample_rate=1.5)
    with pytest.raises(ValueError, match="unknown config key 'sample-rat'"):
        FedConfig.from_run_config({"sample-rat": 0.5})
    with pytest.raises(ValueError, match="num-server-rounds='ten'"):
        FedConfig.from_run_config({"num-server-rounds": "ten"})
    with pytest.raises(ValueError, match="not valid with DP"):
        FedConfig(aggregation="itemwise", noise_multiplier=1.0)
    rc = FedConfig(users_per_node=3).to_run_config()
    assert FedConfig.from_run_config(rc) == FedConfig(users_per_node=3)


def test_run_config_sections():
    """The run config is nested in sections (``<table>.<key>``, as Flower flattens
    ``[tool.flwr.app.config]``); nested tables and keys without their section (records
    written before sections) read the same; a key under another section, or twice, is an error."""
    from fedrec.config import (ConfigError, FedConfig, flat_run_config, nested_run_config, run_key,
                               sectioned_run_config)

    cfg = FedConfig(users_per_node=3, noise_multiplier=1.5, user_clip=0.2)
    rc = cfg.to_run_config()
    assert rc["interaction-level.noise-multiplier"] == 1.5 and rc["federation.users-per-node"] == 3
    assert rc["user-level.user-clip"] == 0.2 and rc["outputs.out"] == ""
    nested = nested_run_config(rc)
    assert nested["interaction-level"]["noise-multiplier"] == 1.5 and "noise-multiplier" not in nested["model"]
    flat = flat_run_config(rc)
    assert flat["noise-multiplier"] == 1.5 and len(flat) == len(rc)
    for form in (rc, nested, flat, {**flat_run_config(nested)}):
        assert FedConfig.from_run_config(form) == cfg
    assert sectioned_run_config(flat) == rc == sectioned_run_config(nested)
    assert sectioned_run_config({"not-ours": 1, "model.noise-multiplier": 2}) == {"not-ours": 1,
                                                                                "model.noise-multiplier": 2}
    assert run_key("noise_multiplier") == run_key("noise-multiplier") == "interaction-level.noise-multiplier"
    with pytest.raises(ConfigError, match="'model.noise-multiplier': 'noise-multiplier' is in section "
                                          "'interaction-level'") as e:
        FedConfig.from_run_config({"model.noise-multiplier": 1.0})
    assert e.value.key == "noise-multiplier"  # the CLI names the flag from it
    with pytest.raises(ConfigError, match="'interaction-level.noise-multiplier' is given twice"):
        FedConfig.from_run_config({"noise-multiplier": 1.0, "interaction-level": {"noise-multiplier": 2.0}})
    with pytest.raises(ConfigError, match=r"config interaction-level.sample-rate=1.5: must be in \(0, 1\]"):
        FedConfig.from_run_config({"interaction-level.sample-rate": 1.5})


def test_flower_app_config_matches_fedconfig_defaults():
    """`flwr run .` and `fedrec simulate` share one set of defaults."""
    import tomllib
    from pathlib import Path

    from fedrec.config import FedConfig

    from fedrec.config import SECTION_TABLES, nested_run_config

    app_cfg = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = nested_run_config(FedConfig().to_run_config())
    assert list(app_cfg) == list(SECTION_TABLES.values()) == list(expected)  # one table per section, in order
    app_cfg["outputs"].pop("out"), expected["outputs"].pop("out")
    assert app_cfg == expected
