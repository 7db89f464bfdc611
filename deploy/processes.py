"""Process supervision for a local deployment: start, track and stop Flower's processes.

Every process is started in its own session (through ``fedrec_app.deploy.guard``,
so that it dies with ``fedrec deploy``), with a unique tag (:data:`TAG_ENV`) in its
environment that Flower's own children (``flower-superexec``, ``flwr-serverapp``,
``flwr-clientapp``) inherit, even those started in a new session.
:class:`Supervisor` finds them again in ``/proc`` (by tag and by parent pid) and
stops them all: SIGTERM to every started process group and every tracked
process, then SIGKILL after a grace period.  Linux only (``/proc``, ``prctl``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import DeployError

__all__ = ["TAG_ENV", "HOST", "FLOWER_PROGRAMS", "free_ports", "flower_processes", "Supervisor"]

#: Environment variable whose value tags every process of one deployment.
TAG_ENV = "FEDREC_DEPLOY_ID"
#: Flower's programs, as their command lines name them.
FLOWER_PROGRAMS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp")
#: Every process of a deployment listens on this address.
HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` right now.

    Parameters
    ----------
    n
        How many ports.
    host
        The address they are free on.

    Returns
    -------
    list of int
        The ports (bound together, then released: distinct, but free only until someone binds them).
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, comm) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    lpar, rpar = raw.find("("), raw.rfind(")")
    rest = raw[rpar + 2:].split()
    return int(rest[1]), rest[0], raw[lpar + 1:rpar]


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' if gone or unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _environ(pid: int) -> bytes:
    """The raw environment of ``pid`` (b'' if gone or not ours to read)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is neither a zombie nor dead."""
    st = _proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _all_pids() -> list[int]:
    """Every pid in /proc."""
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:  # pragma: no cover - not Linux
        return []


def _program(cmd: str) -> str | None:
    """Which Flower program a command line runs (or None)."""
    for part in cmd.split()[:3]:
        base = os.path.basename(part)
        if base in FLOWER_PROGRAMS:
            return base
    for name in FLOWER_PROGRAMS:  # e.g. "[flwr-serverapp]" or a renamed process title
        if name in cmd.split(" ", 1)[0]:
            return name
    return None


def flower_processes(env_marker: str | None = None) -> dict[int, str]:
    """Live (non-zombie) Flower processes on this machine.

    Parameters
    ----------
    env_marker
        If given, only processes whose environment contains this string.

    Returns
    -------
    dict
        ``{pid: command line}``.
    """
    out = {}
    for pid in _all_pids():
        cmd = _cmdline(pid)
        if not cmd or _program(cmd) is None or not _alive(pid):
            continue
        if env_marker is not None and env_marker.encode() not in _environ(pid):
            continue
        out[pid] = cmd
    return out


def _flower_bin(name: str) -> str:
    """The path of Flower's program ``name``: next to this Python first, else on PATH.

    Raises
    ------
    DeployError
        If it is in neither place.
    """
    p = Path(sys.executable).parent / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found next to {sys.executable} nor on PATH (is flwr installed?)")
    return found


# --------------------------------------------------------------------------
# the supervisor
# --------------------------------------------------------------------------


@dataclass
class _Started:
    """A process started by a :class:`Supervisor`, with its log."""

    name: str
    popen: subprocess.Popen
    log: Path
    logfile: IO[bytes]


class Supervisor:
    """Starts processes, records every descendant it sees, and stops them all again.

    Each process runs in its own session, tagged through the environment.

    Parameters
    ----------
    env
        The environment of every started process; must hold ``TAG_ENV=tag``.
    tag
        This deployment's tag (the value of :data:`TAG_ENV`).
    guard
        Start each process under ``fedrec_app.deploy.guard`` (Linux only), so that it
        and its descendants die with this process.
    grace
        The guard's seconds between SIGTERM and SIGKILL.
    """

    def __init__(self, env: dict[str, str], tag: str, *, guard: bool = True, grace: float = 5.0):
        self.env = env
        self.tag = tag
        # each process runs under fedrec_app.deploy.guard: it dies with this process, with its descendants
        self.guard = guard and sys.platform.startswith("linux")
        self.grace = grace
        self.marker = f"{TAG_ENV}={tag}".encode()
        self.started: list[_Started] = []
        self.seen: dict[int, str] = {}  # every tagged/descendant process observed: pid -> command
        self._lock = threading.Lock()

    # -- starting --------------------------------------------------------
    def start(self, name: str, cmd: list[str], log: Path, *, cwd: str | Path | None = None,
              stdout_pipe: bool = False) -> subprocess.Popen:
        """Start ``cmd`` (its output appended to ``log``, or piped with ``stdout_pipe``) and track it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(log, "ab")  # noqa: SIM115 - closed in shutdown()
        logfile.write(("$ " + " ".join(cmd) + "\n").encode())
        logfile.flush()
        guarded = [sys.executable, "-m", "fedrec_app.deploy.guard", str(os.getpid()), str(self.grace), "--",
                   *cmd] if self.guard else cmd
        popen = subprocess.Popen(
            guarded,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: no terminal signals, killpg-able
        )
        with self._lock:
            self.started.append(_Started(name, popen, log, logfile))
            self.seen[popen.pid] = " ".join(cmd)
        return popen

    def run_quick(self, name: str, cmd: list[str], log: Path, *, timeout: float,
                  cwd: str | Path | None = None) -> tuple[int, str]:
        """Run a short command (tracked like the others) and return (exit code, output)."""
        p = self.start(name, cmd, log, cwd=cwd, stdout_pipe=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_tree(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)
            raise DeployError(f"{name} did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None
        text = out.decode(errors="replace")
        with open(log, "a") as f:
            f.write(text)
        return p.returncode, text

    # -- bookkeeping -----------------------------------------------------
    def tracked(self) -> dict[int, str]:
        """Live processes that belong to this deployment: the started ones, their
        descendants (by parent pid) and every process carrying the tag."""
        table: dict[int, tuple[int, str]] = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is not None and st[1] not in ("Z", "X"):
                table[pid] = (st[0], st[1])
        roots = {s.popen.pid for s in self.started if s.popen.returncode is None}
        ours = {pid for pid in roots if pid in table}
        for pid in table:
            if pid not in ours and self.marker in _environ(pid):
                ours.add(pid)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(ours)
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in ours:
                    ours.add(c)
                    stack.append(c)
        me = os.getpid()
        ours.discard(me)
        out = {pid: _cmdline(pid) for pid in ours}
        with self._lock:
            self.seen.update({p: c for p, c in out.items() if c})
        return out

    def check_alive(self, names: tuple[str, ...] = ("superlink", "supernode")) -> None:
        """Raise if a long-running process (SuperLink, SuperNode) has exited."""
        for s in self.started:
            if s.name.split("-")[0] in names and s.popen.poll() is not None:
                killed = _signal_name(s.popen.returncode)
                if killed:  # stopped from outside: its log says nothing of why
                    raise DeployError(f"{s.name} was killed ({killed}); log {s.log}")
                raise DeployError(f"{s.name} exited with status {s.popen.returncode}; log {s.log}:\n{_tail(s.log)}")

    # -- stopping --------------------------------------------------------
    def _signal_tree(self, pid: int, sig: int) -> None:
        """Send ``sig`` to the process group ``pid`` leads, and to ``pid`` itself."""
        for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
            try:
                target()
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def shutdown(self, grace: float = 15.0) -> dict[int, str]:
        """Stop everything: SIGTERM (process groups first, newest first: the CLI,
        the SuperNodes, then the SuperLink), SIGKILL after ``grace`` seconds.
        Returns the processes still alive afterwards (should be empty)."""
        victims = self.tracked()
        for s in reversed(self.started):
            if s.popen.poll() is None:
                self._signal_tree(s.popen.pid, signal.SIGTERM)
        for pid in victims:
            _kill(pid, signal.SIGTERM)
        left = self._wait_gone(grace)
        if left:
            for s in self.started:
                if s.popen.poll() is None:
                    self._signal_tree(s.popen.pid, signal.SIGKILL)
            for pid in left:
                _kill(pid, signal.SIGKILL)
            left = self._wait_gone(10.0)
        for s in self.started:
            if s.popen.poll() is None:
                try:
                    s.popen.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            if s.popen.stdout is not None:
                s.popen.stdout.close()
            try:
                s.logfile.close()
            except OSError:
                pass
        return left

    def reap(self) -> None:
        """Reap our own children: the started processes and adopted orphans
        (zombies whose parent is this process, seen as part of the deployment)."""
        for s in self.started:
            s.popen.poll()
        own = {s.popen.pid for s in self.started}
        for pid in self.adopted_zombies():
            if pid not in own:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def adopted_zombies(self) -> list[int]:
        """Exited Flower processes of this deployment re-parented to us, not yet reaped."""
        me = os.getpid()
        out = []
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is None or st[0] != me or st[1] != "Z":
                continue
            if pid in self.seen or any(name[:15] == st[2] for name in FLOWER_PROGRAMS):
                out.append(pid)
        return out

    def _wait_gone(self, timeout: float) -> dict[int, str]:
        """Reap and re-scan until nothing is tracked or ``timeout`` passes; the processes left."""
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            left = self.tracked()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)


def _child_subreaper(on: bool | None = None) -> bool | None:
    """Linux ``PR_{GET,SET}_CHILD_SUBREAPER``: with it on, orphaned descendants
    (a SuperNode's ``flower-superexec`` once the SuperNode has exited) are
    re-parented to this process, which reaps them, instead of to init.  Returns
    the previous setting (None where unsupported)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        old = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(old), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return None
        if on is not None and libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return None
        return bool(old.value)
    except (OSError, AttributeError):
        return None


def _kill(pid: int, sig: int) -> None:
    """``os.kill``, silent if the process is gone or not ours."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(code: int | None) -> str:
    """The signal that ended a process with exit status ``code`` (negative from Popen;
    ``128 + signal`` from the guard that starts it), or ''."""
    if code is None or code == 0:
        return ""
    for n in (-code, code - 128):
        if n in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSEGV, signal.SIGABRT):
            return signal.Signals(n).name
    return ""


def _tail(path: Path, n: int = 30) -> str:
    """The last ``n`` lines of a log, indented (or '(no log)')."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + ln for ln in lines[-n:])


def _wait_for(what: str, cond: Callable[[], bool], timeout: float, sup: Supervisor, *,
              names: tuple[str, ...] = ("superlink", "supernode"), poll: float = 0.2) -> None:
    """Poll ``cond`` until it holds; raise :class:`DeployError` on timeout or if a process of ``names`` exits."""
    deadline = time.monotonic() + timeout
    while not cond():
        sup.check_alive(names)
        if time.monotonic() >= deadline:
            raise DeployError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
