"""Flower's own command line runs fedrec's apps: `flwr run .` starts a local SuperLink, whose
simulation runtime (`flwr-simulation`) runs the ServerApp and the ClientApps declared in
pyproject.toml, the way Flower 1.41 recommends running a simulation.  A failing test kills
the SuperLink and everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_runs_the_apps_through_a_superlink(tmp_path, processes_marked, processes_killed):
    _ours = processes_marked
    tmp = Path(tempfile.mkdtemp(prefix="fr-run-", dir="/tmp"))  # Ray's socket paths stay short
    marker = tmp.name
    env = dict(os.environ, HOME=str(tmp), FLWR_HOME=str(tmp / ".flwr"), TMPDIR=str(tmp), FEDREC_TEST_MARKER=marker,
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    config = ('data.data="synthetic:200x100:0" federation.num-server-rounds=2 federation.users-per-node=100 '
              f'model.dim=8 evaluation.eval-every=1 outputs.out="{tmp / "run"}"')
    try:
        p = subprocess.run([str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), "--run-config", config,
                            "--stream"], env=env, cwd=tmp, capture_output=True, text=True, timeout=400)
        log = p.stdout + p.stderr
        assert p.returncode == 0, log[-3000:]
        assert "2 simulated SuperNodes" in log, log[-3000:]  # Flower's default local federation
        assert "round 2/2" in log and "best round on validation:" in log, log[-3000:]
        assert (tmp / "run" / "metrics.json").is_file() and (tmp / "run" / "checkpoint").is_dir()
        assert "DEPRECATED" not in log and "Traceback" not in log, log[-3000:]
        superlink = [pid for pid in _ours(marker) if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert superlink, "flwr run starts a local SuperLink that outlives the run (Flower's design)"
        for pid in superlink:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _ours(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _ours(marker)  # the SuperLink took its runtime processes with it
    finally:
        processes_killed(marker)
        shutil.rmtree(tmp, ignore_errors=True)
