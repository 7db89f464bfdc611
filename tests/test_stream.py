"""The stream: time windows, no device sees its future, users and items enter when
they first occur, local state carried by user, drift measures, and a tiny stream
end to end through Flower."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrec.config import ConfigError, FedConfig
from fedrec.data import Dataset, make_split, time_window
from fedrec.federated.optim import OptState, server_step

# (user, item, time): user 2 first appears at t=25, item 4 first at t=22
EVENTS = [(0, 0, 1), (0, 1, 5), (1, 1, 3), (1, 2, 12), (0, 3, 18), (1, 0, 21), (0, 4, 22), (2, 4, 25), (2, 0, 27),
          (1, 3, 31), (0, 2, 33), (2, 1, 35), (1, 4, 38), (0, 4, 39)]


def tiny() -> Dataset:
    u, i, t = (np.array(x, dtype=np.int64) for x in zip(*EVENTS))
    return Dataset(user=u, item=i, timestamp=t, n_users=3, n_items=5, user_ids=np.arange(3), item_ids=np.arange(5))


def pairs(m) -> set:
    m = m.tocoo()
    return set(zip(m.row.tolist(), m.col.tolist()))


@pytest.mark.parametrize("start,end", [(10, 20), (20, 30), (25, 40), (30, 40)])
def test_a_window_trains_on_the_past_and_tests_on_the_window_only(start, end):
    sp_ = time_window(tiny(), start, end)
    assert pairs(sp_.train) == {(u, i) for u, i, t in EVENTS if t < start}  # the oracle: nothing from the future
    known = {u for u, _, t in EVENTS if t < start}
    assert pairs(sp_.test) == {(u, i) for u, i, t in EVENTS if start <= t < end and u in known} - pairs(sp_.train)
    assert sp_.valid.nnz == 0 and sp_.kind == f"window:{start}:{end}"
    assert make_split(tiny(), kind=f"window:{start}:{end}").test.nnz == sp_.test.nnz


def test_users_and_items_enter_exactly_when_they_first_occur():
    ds = tiny()
    for start in range(2, 40):
        sp_ = time_window(ds, start, start + 5)
        users = set(np.flatnonzero(np.diff(sp_.train.indptr) > 0).tolist())
        assert users == {u for u, _, t in EVENTS if t < start}
        trained_items = set(sp_.train.indices.tolist())
        assert trained_items == {i for _, i, t in EVENTS if t < start}
    # user 2 (first at t=25) is in the window starting at 26, not in the one starting at 25
    assert time_window(ds, 25, 40).train[2].nnz == 0 and time_window(ds, 26, 40).train[2].nnz == 1
    # a repeat of a training pair (user 0, item 4 at t=39) is not a test target
    assert (0, 4) not in pairs(time_window(ds, 23, 40).test)


def test_a_node_file_of_a_window_holds_nothing_from_the_future(tmp_path):
    from fedrec.federated.federation import Federation, load_node_data, write_node_data
    from fedrec.data import partition_users

    ds = tiny()
    sp_ = time_window(ds, 26, 40)
    users = np.flatnonzero(np.diff(sp_.train.indptr) > 0)
    fed = Federation(ds, sp_, tuple(partition_users(users, users_per_node=2)))
    paths = write_node_data(fed, tmp_path)
    seen = set()
    for path in paths:
        node, p = load_node_data(str(path))
        seen |= pairs(node.split.train)
    assert seen == {(u, i) for u, i, t in EVENTS if t < 26}


def test_window_split_config_errors_are_one_line():
    assert FedConfig(split="window:10:20", patience=0).split == "window:10:20"
    for bad, why in (("window:20:10", "START must be before END"), ("window:a:b", "expected window:START:END"),
                     ("window:1:2:3", "expected window:START:END"), ("random", "choose")):
        with pytest.raises(ConfigError, match=why) as e:
            FedConfig(split=bad, patience=0)
        assert "\n" not in str(e.value) and "split" in str(e.value)
    with pytest.raises(ConfigError, match="no validation to stop on: pass --patience 0"):
        FedConfig(split="window:10:20")


def test_cutoffs_are_increasing_and_refuse_too_many_windows():
    from fedrec_app.simulations.studies.stream import stream_cutoffs

    ts = np.arange(100)
    cuts = stream_cutoffs(ts, windows=5, warmup=0.5)
    assert cuts.tolist() == [50, 60, 70, 80, 90, 100]
    with pytest.raises(ValueError, match="distinct timestamps"):
        stream_cutoffs(np.array([1, 1, 1, 1, 2]), windows=4, warmup=0.5)


def test_local_state_is_carried_by_user_and_new_users_start_fresh(tmp_path):
    from fedrec.data import partition_users
    from fedrec.device import LocalState, load_local_state, save_local_state
    from fedrec.federated.federation import Federation, init_local_state
    from fedrec_app.simulations.studies.stream import carry_local_state

    ds = tiny()
    cfg = FedConfig(data="synthetic:3x5", dim=4, users_per_node=1)
    before = time_window(ds, 20, 30)  # users 0 and 1
    after = time_window(ds, 30, 40)  # users 0, 1 and 2
    fed0 = Federation(ds, before, tuple(partition_users(np.array([0, 1]), users_per_node=1)))
    fed1 = Federation(ds, after, tuple(partition_users(np.array([0, 1, 2]), users_per_node=2)))
    prev = tmp_path / "prev"
    for p, users in enumerate(fed0.cohorts):
        local = {"user": np.full((len(users), 4), 10.0 + users[0], dtype=np.float32)}
        save_local_state(prev / f"node-{p}", LocalState(users, local, np.array([7 + p]), np.array([3])), server_round=9)
    got = carry_local_state(prev, fed1, cfg, tmp_path / "next")
    assert got == {"returning": 2, "new": 1}
    st0, r0 = load_local_state(tmp_path / "next" / "node-0")
    st1, _ = load_local_state(tmp_path / "next" / "node-1")
    assert r0 == 0 and st0.users.tolist() == [0, 1] and st1.users.tolist() == [2]
    assert np.all(st0.local["user"][0] == 10.0) and np.all(st0.local["user"][1] == 11.0)
    assert st0.dp_steps.tolist() == [7, 8] and st1.dp_steps.tolist() == [0]
    fresh = init_local_state(np.array([2]), cfg, fed1)["user"]
    np.testing.assert_array_equal(st1.local["user"], fresh)


def test_js_divergence_against_scipy():
    from scipy.spatial.distance import jensenshannon

    from fedrec_app.simulations.studies.stream import js_divergence

    rng = np.random.default_rng(0)
    p, q = rng.random(20), rng.random(20)
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-10)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0) and js_divergence(p, 3 * p) == pytest.approx(0.0)
    assert js_divergence([-1.0, 2.0], [0.0, 5.0]) == pytest.approx(0.0)  # negative noisy counts count as 0
    assert math.isnan(js_divergence([0, 0], [1, 1]))


def test_a_frozen_server_leaves_the_global_parameters():
    params = {"item_embedding": np.ones((3, 2), dtype=np.float32)}
    st = OptState(m={}, v={}, t=4)
    new, st2 = server_step(params, {"item_embedding": np.full((3, 2), 9.0, np.float32)}, st, opt="none", lr=1.0)
    np.testing.assert_array_equal(new["item_embedding"], params["item_embedding"])
    assert st2 is st


@pytest.mark.slow
@pytest.mark.heavy  # `make test-heavy`
def test_a_tiny_stream_through_flower(tmp_path):
    from fedrec.privacy.mechanisms import UserLevel
    from fedrec_app.simulations.studies.stream import _checkpoint_params, run_stream

    report = run_stream(tmp_path, data="synthetic:24x40:3", windows=2, warmup=0.5, warmup_rounds=3, rounds=2,
                        seeds=1, privacy=("user-level", "user-level-window"), say=lambda *_: None)
    doc = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["privacy"], r["model"], r["stage"]): r for r in doc["rows"]}
    assert len(rows) == 8 and all(r["ndcg@10"] is not None for r in rows.values())
    runs = tmp_path / "runs" / "user-level-seed0"
    stage0 = _checkpoint_params(runs / "continuing-stage0")
    frozen = _checkpoint_params(runs / "frozen-stage1")
    cont = _checkpoint_params(runs / "continuing-stage1")
    # the frozen model keeps stage 0's global parameters (DP noise and all); the continuing one moves on
    for k in stage0:
        np.testing.assert_array_equal(frozen[k], stage0[k])
    assert any(not np.array_equal(cont[k], stage0[k]) for k in stage0)
    cfg1 = FedConfig.from_run_config(json.loads((runs / "continuing-stage1" / "stream-stage.json").read_text())["cfg"])
    assert cfg1.split == f"window:{doc['cutoffs'][1]}:{doc['cutoffs'][2]}" and cfg1.warm_start.endswith(
        "continuing-stage0/checkpoint")
    # privacy over time: calibrated for 8 over every round of the stream, spent stage by stage
    e0, e1 = rows[("user-level", "continuing", 0)]["epsilon"], rows[("user-level", "continuing", 1)]["epsilon"]
    ucfg = cfg1
    assert e0 < e1 == pytest.approx(8.0, rel=1e-3) == UserLevel.from_config(ucfg).epsilon(5)
    assert rows[("user-level", "continuing", 1)]["epsilon_with_drift"] > e1
    ran = json.loads((tmp_path / "runs" / "user-level-seed0" / "continuing-stage1" / "metrics.json").read_text())
    assert ran["privacy"]["epsilon"] == pytest.approx(e1)
    logged = (tmp_path / "runs" / "user-level-seed0" / "continuing-stage1" / "rounds.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in logged] == [4, 5]  # the stage counted on from stage 0's round 3
    assert (tmp_path / "stream.png").stat().st_size > 0 and "Prequential" in report.read_text()
    # a budget per window: each stage's noise spends 8 on its own rounds (the first with the prior); a user
    # present since the start has spent the composition of both stages at their different noise, which the
    # stage's own run reports too (the warm start carries stage 0's rounds as they ran)
    win = {w: rows[("user-level-window", "continuing", w)] for w in (0, 1)}
    z0, z1 = win[0]["noise_multiplier"], win[1]["noise_multiplier"]
    assert z1 < z0 and win[0]["epsilon"] == pytest.approx(8.0, rel=1e-3)  # 2 rounds need less noise than 3 + prior
    acc = RDPAccountant()
    acc.history = [(cfg1.prior_noise, 1.0, 1), (z0, cfg1.user_sample_rate, 3), (z1, cfg1.user_sample_rate, 2)]
    assert win[1]["epsilon"] == pytest.approx(acc.get_epsilon(cfg1.delta), rel=1e-9)
    assert 8.0 < win[1]["epsilon"] < 16.0
    ran = json.loads((runs.parent / "user-level-window-seed0" / "continuing-stage1" / "metrics.json").read_text())
    assert ran["privacy"]["epsilon"] == pytest.approx(win[1]["epsilon"], rel=1e-9)
    assert ran["privacy"]["earlier_segments"] == [[z0, cfg1.user_sample_rate, 3]]
    # a second call keeps the finished stages (runs nothing again)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/*/metrics.json")}
    run_stream(tmp_path, data="synthetic:24x40:3", windows=2, warmup=0.5, warmup_rounds=3, rounds=2, seeds=1,
               privacy=("user-level", "user-level-window"), say=lambda *_: None)
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == doc["rows"]
    assert len(stamps) == 6 and stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_genre_profile_by_hand():
    import scipy.sparse as sp

    from fedrec_app.simulations.studies.stream import genre_profile

    window = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float64))
    genres = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float64)
    # user 0: genre counts (2, 1) -> (2, 1)/sqrt(5); user 1: (0, 1); user 2: nothing
    np.testing.assert_allclose(genre_profile(window, genres), [2 / np.sqrt(5), 1 / np.sqrt(5) + 1])
    noisy = genre_profile(window, genres, noise=5.0)
    assert not np.allclose(noisy, genre_profile(window, genres, noise=5.0))  # secret noise: a new draw each time
    assert not np.allclose(noisy, genre_profile(window, genres))


def test_bad_stream_input_is_one_line_and_starts_nothing(tmp_path, capsys):
    from fedrec_app.simulations.cli.main import main

    out = tmp_path / "s"
    assert main(["sweep", "stream", "--data", "synthetic:24x40:3", "--windows", "0", "--out", str(out)]) == 2
    assert main(["sweep", "stream", "--data", "synthetic:24x40:3", "--warmup", "1.5", "--out", str(out)]) == 2
    assert main(["simulate", "--data", "synthetic:24x40:3", "--split", "window:5:9", "--patience", "0",
                 "--warm-start", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [e for e in err if e.startswith("fedrec: error:")] == [
        "fedrec: error: --windows 0: must be >= 1", "fedrec: error: --warmup 1.5: must be in (0, 1)",
        f"fedrec: error: --warm-start {tmp_path / 'none'}: no checkpoint.npz there (a run directory's checkpoint/)"]
    assert not (tmp_path / "r").exists()
