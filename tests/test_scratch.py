"""Users' data in scratch directories: private, and removed however the process ends."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedrec.scratch import remove_stale, scratch_dir


def test_a_scratch_directory_is_private_and_removed_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with scratch_dir("fedrec-nodes-") as d:
        assert Path(d).parent == tmp_path and Path(d).name.startswith(f"fedrec-nodes-{os.getpid()}-")
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        (Path(d) / "node-0.npz").write_bytes(b"users' data")
    assert not Path(d).exists()


@pytest.mark.parametrize("how", ["sigkill", "orphaned", "normal"])
def test_a_killed_process_leaves_no_scratch_directory_and_no_process(tmp_path, how):
    """SIGKILL gives the process no chance to clean up: its watcher removes the directory
    and stops what the process started (here a shell and, below it, a ``sleep`` whose
    environment holds no token, as Ray's agents overwrite theirs with their titles).
    ``orphaned``: the shell dies first, so nothing but the watcher's snapshot ties the
    ``sleep`` to the run (as Ray's agents once their raylet is gone).  A process that
    ends normally has its directory removed and its children left alone."""
    code = ("import subprocess, sys, time\nfrom fedrec.scratch import scratch_dir\n"
            "with scratch_dir('fedrec-nodes-') as d:\n"
            "    child = subprocess.Popen(['sh', '-c', 'env -i sleep 120 & echo $!; wait'], stdout=subprocess.PIPE,\n"
            "                             text=True, start_new_session=True)\n"
            "    print(d, child.pid, child.stdout.readline().strip(), flush=True)\n"
            "    time.sleep(0 if sys.argv[1] == 'normal' else 120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, how], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, TMPDIR=str(tmp_path)))
    started: list[int] = []
    try:
        d, *pids = p.stdout.readline().split()
        d, started = Path(d), [int(x) for x in pids]
        if how != "normal":
            time.sleep(2.5)  # the watcher has seen them
        if how == "orphaned":
            os.kill(started[0], signal.SIGKILL)
            while _alive(started[0]):
                time.sleep(0.05)
        if how != "normal":
            p.send_signal(signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 10
        while (d.exists() or (how != "normal" and any(map(_alive, started)))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not d.exists()
        assert [_alive(x) for x in started] == [how == "normal"] * 2
    finally:
        if p.poll() is None:
            p.kill()
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_directories_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"fedrec-nodes-{int(dead.stdout)}-abc"
    live = tmp_path / f"fedrec-nodes-{os.getpid()}-abc"
    other = tmp_path / "fedrec-nodes-notapid"
    for d in (gone, live, other):
        d.mkdir()
    assert remove_stale("fedrec-nodes-", tmp_path) == [gone]
    assert live.exists() and other.exists() and not gone.exists()
