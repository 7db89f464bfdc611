"""Fault tolerance through Flower's simulation engine: a server killed mid-run
resumes to the same result, simulated dropouts, client budgets, bad checkpoints."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.federated.federation import load_federation
from fedrec_app.simulations.simulate import simulate
from fedrec_app.server.checkpoint import CheckpointError

pytestmark = pytest.mark.slow

BASE = dict(data="synthetic:60x40:0", dim=4, users_per_node=20, num_server_rounds=4, eval_every=2,
            noise_multiplier=1.0, sample_rate=0.5)


def _params(out):
    with np.load(out / "checkpoint" / "checkpoint.npz") as z:
        return {k: z[k] for k in z.files if k != "meta"}


#: The same run through the command line (the DP-SGD preset fills what is not given).
FLAGS = ["--data", "synthetic:60x40:0", "--dim", "4", "--users-per-node", "20", "--rounds", "4", "--eval-every", "2",
         "--noise-multiplier", "1.0", "--sample-rate", "0.5", "--reproducible-noise"]


@pytest.mark.heavy  # about 2 minutes: `make test-heavy` and CI
def test_server_killed_mid_round_resumes_to_the_same_result(tmp_path):
    """``fedrec simulate`` killed when round 3's replies arrive, then ``fedrec simulate
    --resume --out DIR`` and nothing else: the recorded configuration (4 rounds, its DP),
    not the defaults (500 rounds, no DP). The nodes answer the repeated round 3 with the
    release they kept (their round-3 files are untouched; with secret noise too,
    tests/test_privacy_adversary.py), and the run ends exactly where an uninterrupted run
    does (noise reproducible from the seed, so that the two runs can be compared). The
    directory records both invocations, the console of both, and the ids."""
    from fedrec_app.simulations.cli.main import main

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    # killed when round 3's replies arrive: nodes have trained and saved round 3,
    # the server's last checkpoint is round 2
    env = dict(os.environ, FEDREC_CRASH_AT_ROUND="3")
    r = subprocess.run([sys.executable, "-m", "fedrec_app.simulations.cli.main", "simulate", *FLAGS, "--cpus", "2",
                        "--out", str(cut)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 70, r.stderr[-2000:]
    meta = json.loads(bytes(np.load(cut / "checkpoint" / "checkpoint.npz")["meta"]).decode())
    kept = cut / "client-state" / "node-0" / "round-00000003.npz"
    assert meta["round"] == 2 and kept.exists()
    before = dict(np.load(kept))
    assert any(k.startswith("release/") for k in before)
    assert main(["simulate", "--resume", "--out", str(cut), "--cpus", "2"]) == 0
    after = dict(np.load(kept))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert main(["simulate", *FLAGS, "--cpus", "2", "--out", str(whole)]) == 0
    a, b = _params(whole), _params(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, cut))
    assert ma["test"]["ndcg@10"] == pytest.approx(mb["test"]["ndcg@10"], abs=1e-9)
    assert mb["privacy"]["unit"] == "interaction-level" and mb["privacy"]["epsilon_max"] > 0
    rounds = [json.loads(x)["round"] for x in (cut / "rounds.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    runs = json.loads((cut / "run.json").read_text())["invocations"]
    assert [x["argv"][1:3] for x in runs] == [["simulate", "--data"], ["simulate", "--resume"]]
    assert runs[0]["data"] == {"given": "synthetic:60x40:0", "generated": True}
    log = (cut / "log.txt").read_text()
    assert "round 2/4" in log and "resuming after round 2" in log and "Manually terminating" not in log
    assert len(json.loads((cut / "id_map.json").read_text())["users"]) == 60


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        simulate(FedConfig(**BASE, out=str(tmp_path), resume=True))


def test_simulated_dropouts_complete_and_are_counted(tmp_path):
    cfg = FedConfig(**{**BASE, "users_per_node": 10, "num_server_rounds": 3}, dropout_rate=0.4, min_replies=2,
                    out=str(tmp_path), budget_epsilon=7.5)
    simulate(cfg, num_cpus=2)
    rows = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    expected_failures = sum(
        np.random.default_rng([cfg.seed, r, p, 11]).random() < cfg.dropout_rate for r in (1, 2, 3) for p in range(6))
    assert expected_failures > 0
    assert sum(r.get("failed", 0) for r in rows) == expected_failures
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["failed_replies"] == expected_failures
    # the budget: epsilon after 2 rounds is 7.41 and after 3 rounds 8.98 > 7.5, so users who trained in
    # rounds 1 and 2 decline round 3; users whose node dropped out earlier still have budget
    assert rows[-1]["declined"] > 0 and m["declined_user_rounds"] == sum(r["declined"] for r in rows)
    assert all(r["epsilon-max"] <= 7.5 for r in rows)


def test_budget_declines_exactly_the_users_that_would_exceed_it():
    cfg = resolved(FedConfig(**{**BASE, "budget_epsilon": 7.5}))
    fed = load_federation(cfg)
    st = node.load_state({}, fed, 0, cfg)
    st.dp_steps[:] = 1 * steps_per_round(cfg)  # one round: epsilon 5.38 -> next 7.41 <= 7.5
    st.dp_steps[:5] = 2 * steps_per_round(cfg)  # two rounds: epsilon 7.41 -> next 8.98 > 7.5
    active, declined = node.active_users(cfg, st, 5)
    assert declined == 5 and not active[:5].any() and active[5:].all()


def test_a_second_process_on_one_run_directory_is_refused(tmp_path):
    """While one process holds a run directory, another fedrec process is refused in one line
    naming its PID, before it starts anything; the lock goes with the process."""
    import subprocess
    import sys

    from fedrec.results import RunDirError, lock_run_dir

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fedrec.results import lock_run_dir\n"
                               f"with lock_run_dir({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"another fedrec process \\(PID {holder.pid}\\)"):
            with lock_run_dir(out):
                pass
        from fedrec_app.simulations.simulate import simulate

        with pytest.raises(RunDirError, match=str(holder.pid)):
            simulate(FedConfig(data="synthetic:20x30:1", num_server_rounds=1, out=str(out)), num_cpus=1)
    finally:
        holder.kill()
        holder.wait()
    with lock_run_dir(out):  # free again once the holder is gone
        pass
