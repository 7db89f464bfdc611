"""The watcher :func:`fedrec.scratch.scratch_dir` starts: run as a script (it imports
nothing of fedrec, so that it starts in milliseconds).

Usage: ``python _watcher.py DIRECTORY TOKEN TOKEN_ENV``.  It blocks until its creator's end
of the pipe on its stdin closes, then removes DIRECTORY.  If the creator did not write
``done`` first, it was killed: the watcher then stops (SIGKILL) every process it started,
known as

- a process whose environment holds ``TOKEN_ENV=TOKEN`` (inherited by all the creator
  starts), or a descendant of one, in scans of ``/proc`` repeated until three in a row
  find nothing (a process started while the others were being stopped goes too);
- a process seen as such while the creator was alive (a snapshot every second): Ray's
  agents overwrite their environment with their titles, and once their parent (the
  raylet) is gone nothing else ties them to the run.  A process is recognised by its pid
  and its start time, so that a pid the system reused is left alone.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import time

SNAPSHOT_EVERY = 1.0  # seconds between snapshots while the creator lives


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), fields[19]) if fields[0] != "Z" else None


def ours(mark: bytes) -> dict[int, str]:
    """{pid: start time} of the processes carrying ``mark`` and their descendants."""
    me = os.getpid()
    parent, start, hit = {}, {}, set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        pid = int(d)
        st = _stat(pid)
        if st is None:
            continue
        parent[pid], start[pid] = st
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    hit.add(pid)
        except OSError:
            continue
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in hit} - hit
        hit |= more
        grew = bool(more)
    return {p: start[p] for p in hit}


def stop(known: dict[int, str], mark: bytes) -> None:
    """SIGKILL the processes in ``known`` that are still the same processes, then scan for
    marked ones until three scans in a row find nothing."""
    for pid, started in known.items():
        st = _stat(pid)
        if st is not None and st[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    quiet = 0
    for _ in range(60):
        found = ours(mark)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        quiet = 0 if found else quiet + 1
        if quiet == 3:
            return
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    directory, token, env = argv[:3]
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    mark = f"{env}={token}".encode()
    known: dict[int, str] = {}
    said = b""
    fd = sys.stdin.buffer.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], SNAPSHOT_EVERY)
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            said += chunk
            continue
        if token:
            known.update(ours(mark))
            known = {p: s for p, s in known.items() if (st := _stat(p)) is not None and st[1] == s}
    shutil.rmtree(directory, ignore_errors=True)
    if said != b"done" and token:
        stop(known, mark)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
