"""Run one command so that it, and everything it starts, dies with ``fedrec deploy``.

``fedrec deploy`` starts every Flower process through this guard::

    python -m fedrec_app.deploy.guard PARENT_PID GRACE -- COMMAND ...

The guard (Linux) asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), even if the parent was killed with SIGKILL, and
adopts its orphaned descendants (``PR_SET_CHILD_SUBREAPER``): a SuperNode's
SuperExec and ClientApps, started in their own sessions, cannot outlive it.
On SIGTERM, SIGINT or SIGHUP, and when the command exits, it sends SIGTERM to
every descendant, then SIGKILL to those left after GRACE seconds.  It imports
nothing but the standard library (it starts in milliseconds).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

__all__ = ["descendants", "main"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                out[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first-level first)."""
    ppids = _ppids()
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in ppids.items() if pp in frontier and p not in found]
        found += kids
        frontier = kids
    return found


def _stop_all(grace: float) -> None:
    me = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in descendants(me):
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:  # reap (we adopt orphans)
                    pass
            except ChildProcessError:
                pass
            if not descendants(me):
                return
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parent, grace, sep, cmd = int(argv[0]), float(argv[1]), argv[2], argv[3:]
    assert sep == "--" and cmd, "usage: guard PARENT_PID GRACE -- COMMAND ..."
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG took effect
        return 143
    stopping = []

    def _on_signal(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    try:
        child = subprocess.Popen(cmd)
        rc = child.wait()
        rc = 128 - rc if rc < 0 else rc  # killed by signal N: 128 + N, as a shell says it
    except KeyboardInterrupt:
        rc = 128 + (stopping[0] if stopping else signal.SIGINT)
    except OSError as e:
        print(f"guard: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # shut down once, completely
    _stop_all(grace)
    return rc


if __name__ == "__main__":
    sys.exit(main())
