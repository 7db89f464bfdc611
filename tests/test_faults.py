"""Fault injection through ``fedrec simulate``: the driver killed outright, a disk that fills
while a checkpoint is written. Each loses no finished round (a resume ends where an
uninterrupted run ends), and leaves no process and no users' data behind. (A server killed
between rounds: tests/test_fault_tolerance.py; Ctrl-C and SIGTERM: tests/test_signals.py; a
SuperNode or the deployment killed: tests/test_deploy.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

FLAGS = ["--data", "synthetic:200x100:0", "--eval-every", "5", "--users-per-node", "100", "--cpus", "2"]


def _start(out: Path, tmp: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    cmd = [str(Path(sys.executable).parent / "fedrec"), "simulate", *FLAGS, *extra, "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         env=dict(os.environ, TMPDIR=str(tmp), FEDREC_TEST_MARKER=tmp.name, **(env or {})))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()
    return p, lines


def _gone(tmp: Path, processes_marked, within: float = 15.0) -> tuple[list, list]:
    """(processes, scratch directories) of the run still there after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left, data = processes_marked(tmp.name), list(tmp.glob("fedrec-nodes-*"))
        if not left and not data:
            break
        time.sleep(0.2)
    return processes_marked(tmp.name), list(tmp.glob("fedrec-nodes-*"))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return f"{pid} (gone)"


def _rounds(out: Path) -> list[int]:
    return [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.fixture
def tmp():
    """A short TMPDIR of the run's own (Ray's socket paths must stay under 108 characters)."""
    d = Path(tempfile.mkdtemp(prefix="fr-flt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.heavy  # about 2 minutes: `make test-heavy` and CI
def test_a_driver_killed_outright_leaves_nothing_and_resumes(tmp_path, tmp, processes_marked, processes_killed):
    """SIGKILL of ``fedrec simulate`` itself (no handler runs): Ray's processes die with it
    and the watcher removes the users' node files; ``--resume`` then ends the run at its
    recorded last round with every round logged once."""
    from fedrec_app.simulations.cli.main import main

    out = tmp_path / "run"
    p, lines = _start(out, tmp, "--rounds", "12", "--patience", "0")
    try:
        deadline = time.monotonic() + 240
        while not any("round 6/12" in x for x in list(lines)) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.poll() is None and list(tmp.glob("fedrec-nodes-*")), "".join(lines)[-3000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(30)
        left, data = _gone(tmp, processes_marked)
        assert not left and not data, ([_cmdline(x) for x in left], data)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        processes_killed(tmp.name)
    assert main(["simulate", "--resume", "--out", str(out), "--cpus", "2"]) == 0
    assert _rounds(out) == list(range(1, 13))
    assert json.loads((out / "metrics.json").read_text())["rounds"] == 12


@pytest.mark.heavy  # about 2 minutes: `make test-heavy` and CI
def test_a_full_disk_while_checkpointing_stops_in_one_line_and_resumes(tmp_path, tmp, processes_marked):
    """Round 3's checkpoint cannot be written (``ENOSPC``, injected by
    ``FEDREC_FULL_DISK_AT_ROUND``): the run stops with one line naming the file and the
    reason, the round-2 checkpoint stays complete (no partial file left), nothing of the run
    is left running or on disk, and ``--resume`` finishes it."""
    from fedrec_app.simulations.cli.main import main

    out = tmp_path / "run"
    p, lines = _start(out, tmp, "--rounds", "6", env={"FEDREC_FULL_DISK_AT_ROUND": "3"})
    try:
        code = p.wait(240)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    time.sleep(0.5)
    log = "".join(lines)
    assert code == 2, log[-3000:]
    errors = [x for x in lines if x.startswith("fedrec: error:")]
    assert len(errors) == 1 and "checkpoint of round 3" in errors[0] and "No space left on device" in errors[0]
    assert "Traceback" not in log
    ck = out / "checkpoint"
    assert sorted(x.name for x in ck.iterdir()) == ["checkpoint.npz"]
    with np.load(ck / "checkpoint.npz") as z:
        assert json.loads(bytes(z["meta"]).decode())["round"] == 2
    left, data = _gone(tmp, processes_marked)
    assert not left and not data, (left, data)
    assert main(["simulate", "--resume", "--out", str(out), "--cpus", "2"]) == 0
    assert _rounds(out) == list(range(1, 7))


def test_a_corrupted_node_file_stops_in_one_line_and_resumes(tmp_path, tmp, processes_marked, monkeypatch, capsys):
    """A node that cannot read its users' data would fail every round: the run stops at the
    nodes' start, before round 1, in one line naming the file (not the engine's tracebacks), and
    leaves nothing behind; ``--resume`` writes the node files again and finishes."""
    import fedrec_app.simulations.simulate as sim
    from fedrec_app.simulations.cli.main import main

    written = sim.write_node_data

    def corrupt(fed, directory, **kw):
        paths = written(fed, directory, **kw)
        Path(paths[1]).write_bytes(b"not an npz file" * 8)
        return paths

    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(sim, "write_node_data", corrupt)
    out = tmp_path / "run"
    argv = ["simulate", *FLAGS, "--rounds", "3", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("fedrec: error:"))
    assert line.startswith("fedrec: error: the nodes' start: a node failed (node data file ") and \
        "node-1.npz: not readable" in line
    assert not (out / "rounds.jsonl").exists() or not (out / "rounds.jsonl").read_text().strip()
    assert not list(tmp.glob("fedrec-nodes-*"))
    monkeypatch.setattr(sim, "write_node_data", written)
    assert main(["simulate", "--resume", "--out", str(out)]) == 0
    assert _rounds(out) == [1, 2, 3]


@pytest.mark.heavy
def test_an_actor_killed_mid_run_stops_in_one_line_and_resumes(tmp_path, tmp, processes_marked, processes_killed):
    """SIGKILL of one of Ray's ClientApp actors (the OOM killer would do the same): Flower
    keeps sending to the dead actor, so every later round would miss its nodes; the run
    stops before aggregating the round in one line, leaves nothing behind, and
    ``--resume`` ends at the recorded last round with every round logged once."""
    from fedrec_app.simulations.cli.main import main

    out = tmp_path / "run"
    p, lines = _start(out, tmp, "--rounds", "12", "--patience", "0", "--users-per-node", "50")
    try:
        deadline = time.monotonic() + 240
        while not any("round 3/12" in x for x in list(lines)) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        actors = [x for x in processes_marked(tmp.name) if _cmdline(x).startswith("ray::ClientAppActor")]
        assert p.poll() is None and actors, "".join(lines)[-3000:]
        os.kill(actors[0], signal.SIGKILL)
        code = p.wait(120)
        log = "".join(lines)
        assert code == 2, log[-3000:]
        errors = [x for x in lines if x.startswith("fedrec: error:")]
        assert (len(errors) == 1 and "a node failed (ActorDiedError" in errors[0]
                and "--resume" in errors[0]), log[-3000:]
        assert "Traceback" not in log and "A worker died" not in log
        left, data = _gone(tmp, processes_marked)
        assert not left and not data, ([_cmdline(x) for x in left], data)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        processes_killed(tmp.name)
    done = _rounds(out)
    assert done == list(range(1, len(done) + 1)) and len(done) >= 3
    assert main(["simulate", "--resume", "--out", str(out), "--cpus", "2"]) == 0
    assert _rounds(out) == list(range(1, 13))
