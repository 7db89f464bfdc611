"""Ctrl-C and SIGTERM stop `fedrec simulate` (and a sweep) within seconds: the round in flight is
abandoned (no round is logged for it), the last checkpoint is kept, one line says how to
resume, the exit code is 128 + the signal, Ray and the temporary node files (users' data)
are gone.  A failing test kills what it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


# sigterm in the default run; the other two ways in `make test-heavy` (CI runs both)
@pytest.mark.parametrize("how", [pytest.param("sigint-inherited-ignored", marks=pytest.mark.heavy), "sigterm",
                                 pytest.param("sweep-sigint", marks=pytest.mark.heavy)])
def test_a_signal_stops_a_simulation_cleanly(tmp_path, how, processes_marked, processes_killed):
    _ours = processes_marked
    import shutil
    import tempfile
    import threading

    # a short TMPDIR of the run's own (Ray's socket paths must stay under 108 characters)
    tmp = Path(tempfile.mkdtemp(prefix="fr-sig-", dir="/tmp"))
    marker = tmp.name
    out = tmp_path / "run"
    env = dict(os.environ, TMPDIR=str(tmp), FEDREC_TEST_MARKER=marker)
    cmd = [str(Path(sys.executable).parent / "fedrec"), "simulate", "--data", "synthetic:200x100:0", "--rounds", "200",
           "--eval-every", "5", "--patience", "0", "--users-per-node", "100", "--out", str(out)]
    if how.startswith("sweep"):  # a sweep: the same stop, and its cells keep what they finished
        cmd = [str(Path(sys.executable).parent / "fedrec"), "sweep", "models", "--data", "synthetic:200x100:0",
               "--models", "mf", "--seeds", "1", "--rounds", "200", "--no-private", "--out", str(out)]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if how.startswith("sigint") else None
    sig = signal.SIGINT if "sigint" in how else signal.SIGTERM
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         start_new_session=True, preexec_fn=ignore)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any("round 3/200" in x for x in list(lines)) and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert p.poll() is None and any("round 3/200" in x for x in lines), "".join(lines)[-3000:]
        sent = time.monotonic()
        p.send_signal(sig)
        code = p.wait(timeout=60)
        took = time.monotonic() - sent
        reader.join(10)
        log = "".join(lines)
        assert code == 128 + sig, log[-2000:]
        assert took < 30, took
        last = [x for x in lines if x.startswith("fedrec: interrupted")]
        assert last and signal.Signals(sig).name in last[0]
        assert ("run the same command to continue" if how.startswith("sweep") else "--resume") in last[0]
        assert "Traceback" not in log
        if how.startswith("sweep"):
            (out,) = [d for d in (out / "runs").iterdir() if (d / "rounds.jsonl").is_file()]
        rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
        assert rows and all(r["round"] == i + 1 for i, r in enumerate(rows))  # no bogus round
        assert all("users" not in r or r["users"] == 200 for r in rows)
        assert (out / "checkpoint" / "checkpoint.npz").is_file()
        assert not [d for d in tmp.iterdir() if d.name.startswith("fedrec-nodes-")]  # users' data removed
        deadline = time.monotonic() + 10
        while _ours(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ours(marker)  # Ray and every child are gone
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        processes_killed(marker)
        shutil.rmtree(tmp, ignore_errors=True)
