"""Private scratch directories for users' data that leave nothing behind, however the
process ends.

A simulation's driver writes one file per node with that node's users' interactions.
:func:`scratch_dir` creates them in a directory only this user can read (mode 0700),
removes it when the block ends (normally, on an error or on a signal the process
handles), and also when the process is killed outright (SIGKILL, the OOM killer): a
small watcher process in its own session waits on a pipe from the creator and removes
the directory when the pipe closes.  Directories of processes that died before the
watcher existed are removed by the next :func:`scratch_dir` of the same prefix.

When the creator dies without closing the block, the watcher also stops the processes it
left (Ray's agents outlive a driver killed with SIGKILL): every process whose environment
holds the creator's :data:`TOKEN_ENV` (:func:`driver_token`, inherited by everything the
driver starts), their descendants, and every process seen as one of these while the
creator lived (Ray's agents overwrite their environment with their titles, and their
parent may die first); ``fedrec/_watcher.py`` says how.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["scratch_dir", "remove_stale", "driver_token", "TOKEN_ENV"]

#: The environment variable that marks every process a fedrec driver starts.
TOKEN_ENV = "FEDREC_DRIVER_TOKEN"

#: The watcher, run as a script: it imports nothing of fedrec (it starts in milliseconds).
_WATCHER = Path(__file__).with_name("_watcher.py")


def driver_token() -> str:
    """This process's token (set in its environment once, so that every process it
    starts afterwards, Ray's included, carries it; a token inherited from the process
    that started this one is replaced, so that a watcher never stops its parent)."""
    import uuid

    token = os.environ.get(TOKEN_ENV, "")
    if not token.startswith(f"{os.getpid()}-"):
        token = os.environ[TOKEN_ENV] = f"{os.getpid()}-{uuid.uuid4().hex}"
    return token


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str, root: str | Path | None = None) -> list[Path]:
    """Remove ``<root>/<prefix><pid>-*`` directories whose process is gone; returns them."""
    root = Path(root or tempfile.gettempdir())
    gone = []
    for d in root.glob(f"{prefix}*"):
        pid = d.name[len(prefix):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


@contextlib.contextmanager
def scratch_dir(prefix: str = "fedrec-nodes-"):
    """A private temporary directory (``<tmp>/<prefix><pid>-XXXX``, mode 0700) that is
    removed when the block ends and, through a watcher process, when this process is
    killed (the watcher then also stops the processes this one started); yields its
    path as a string."""
    remove_stale(prefix)
    token = driver_token()
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")  # mkdtemp: mode 0700
    watcher = subprocess.Popen([sys.executable, str(_WATCHER), path, token, TOKEN_ENV], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               close_fds=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            watcher.stdin.write(b"done")  # ended here, not killed: the watcher stops nothing
            watcher.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watcher.wait(timeout=5)
