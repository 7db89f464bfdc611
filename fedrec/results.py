"""The run directory: resolved config, metrics.json, per-round logs."""

from __future__ import annotations

import csv
import json
import math
import platform
from importlib import metadata
from pathlib import Path

__all__ = ["check_run_dir", "lock_run_dir", "record_invocation", "data_record", "source_commit", "file_sha256",
           "RunDirError", "RUN_FILES", "LOCK_FILE", "package_versions", "write_json", "write_metrics", "append_round",
           "read_metrics"]

_PACKAGES = ("fedrec", "torch", "flwr", "opacus", "numpy", "scipy", "pandas")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[name] = "not installed"
    return out


def source_commit() -> str:
    """The git commit of fedrec's source tree when it is a checkout (with ``+dirty`` for
    uncommitted changes), else ``""``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=here, capture_output=True, text=True, timeout=5)  # noqa: E731
        commit = run("rev-parse", "HEAD").stdout.strip()
        if commit and run("status", "--porcelain", "--untracked-files=no").stdout.strip():
            commit += "+dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return ""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_record(data: str) -> dict:
    """What a run record says of its data: as given, the interactions file read (absolute)
    and its SHA-256 (a generated dataset: its spec)."""
    from fedrec.data import interactions_file

    if data.startswith("synthetic"):
        return {"given": data, "generated": True}
    path = interactions_file(data)
    return {"given": data, "file": str(path), "sha256": file_sha256(path)}


def record_invocation(out: str | Path, *, argv: list[str], data: dict | None = None,
                      changed: dict | None = None, choice: dict | None = None) -> Path:
    """Append this process's invocation to ``OUT/run.json``: the command line, the working
    directory, the time, fedrec's version and git commit, the package versions, the data
    (``{"given": ..., "file": absolute path, "sha256": ...}``) and the recorded settings a
    resume changed (``changed``: key -> ``[recorded, now]``) and the mechanism chosen for
    ``--privacy`` (``choice``).  Every start and resume of a run adds one entry, so the
    directory says what ran."""
    import os
    import time

    path = Path(out) / "run.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"invocations": []}
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(argv), "cwd": os.getcwd(),
             "commit": source_commit(), "versions": package_versions(), "pid": os.getpid()}
    if data:
        entry["data"] = data
    if changed:
        entry["changed"] = changed
    if choice:
        entry["privacy_choice"] = choice
    doc["invocations"].append(entry)
    return write_json(path, doc)


def _clean(x):
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (write then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def write_metrics(
    out_dir: str | Path,
    *,
    validation: dict,
    test: dict,
    config: dict,
    seed: int,
    privacy: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``metrics.json``: ``validation`` and ``test`` keyed by lowercase metric
    names, plus config, seed, package versions and (for private runs) ``privacy``."""
    doc = {
        "validation": validation,
        "test": test,
        "config": config,
        "seed": seed,
        "versions": package_versions(),
    }
    if privacy is not None:
        doc["privacy"] = privacy
    if extra:
        doc.update(extra)
    return write_json(Path(out_dir) / "metrics.json", doc)


def read_metrics(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())


def append_round(out_dir: str | Path, row: dict, *, name: str = "rounds") -> None:
    """Append one row to ``rounds.csv`` and ``rounds.jsonl``.

    The CSV's header is the union of every row's keys in order of first use: a row
    with new columns (the first evaluation round's metrics) rewrites the file with
    the wider header, earlier rows left empty there, so every row lines up with it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    row = _clean(row)
    path = out_dir / f"{name}.csv"
    header: list[str] = []
    if path.exists():
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
    if not header or any(k not in header for k in row):
        rows = []
        if header:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        header = header + [k for k in row if k not in header]
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, restval="")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=header, restval="").writerow(row)
    with (out_dir / f"{name}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


#: Files whose presence means a directory holds a run (finished or partial).
RUN_FILES = ("metrics.json", "rounds.csv", "checkpoint/checkpoint.npz")


class RunDirError(ValueError):
    """A run directory that would be overwritten."""


def check_run_dir(out: str | Path, *, resume: bool = False, overwrite: bool = False, flag: str = "--out",
                  resumable: bool = True) -> None:
    """Refuse to start a run in a directory that holds one, unless ``resume``
    (continue it) or ``overwrite`` (replace it) says so: nothing is lost silently.
    ``resumable``: whether the command can continue a run (the message offers ``--resume``
    only then)."""
    if not out or resume or overwrite:
        return
    if Path(out).exists() and not Path(out).is_dir():
        raise RunDirError(f"{flag} {out}: a file, not a directory")
    found = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if found:
        how = ("pass --resume to continue it, --overwrite to replace it" if resumable
               else "pass --overwrite to replace it")
        raise RunDirError(f"{flag} {out} already holds a run ({', '.join(found)}): {how}, or another directory")


LOCK_FILE = ".fedrec.lock"


class _RunDirLock:
    """An exclusive lock on a run directory (``OUT/.fedrec.lock``, holding the PID): released
    when the process ends, however it ends (the kernel drops ``flock`` locks)."""

    def __init__(self, out: Path, flag: str):
        self.out, self.flag, self.fh, self.made = Path(out), flag, None, False

    def __enter__(self):
        import fcntl
        import os

        self.made = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fh = open(self.out / LOCK_FILE, "a+")
        except OSError as e:  # before anything is loaded: a directory that cannot be written is said at once
            raise RunDirError(f"{self.flag} {self.out}: cannot write the run directory there ({e.strerror})") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise RunDirError(f"{self.flag} {self.out}: another fedrec process (PID {holder}) is running in this "
                              "directory; wait for it or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # closing releases the lock
            self.fh = None
            lock = self.out / LOCK_FILE
            if self.made and [p.name for p in self.out.iterdir()] == [LOCK_FILE]:
                lock.unlink(missing_ok=True)  # a run that wrote nothing leaves no directory behind
                self.out.rmdir()
        return False


def lock_run_dir(out: str | Path | None, *, flag: str = "--out"):
    """A context manager that holds ``out`` for this process: a second fedrec process on
    the same run directory is refused in one line naming the first one's PID.  ``None``
    (no run directory): nothing to lock."""
    import contextlib

    return contextlib.nullcontext() if not out else _RunDirLock(Path(out), flag)
