"""The console of a run, kept in its directory: what ``fedrec`` prints also goes to
``OUT/log.txt`` (appended, so a resumed run's log follows the first part)."""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

__all__ = ["console_log", "LOG_FILE", "ENGINE_CHATTER"]

LOG_FILE = "log.txt"


class _Sink:
    """``OUT/log.txt``, opened once the run has written something into ``OUT`` (a command
    refused before that leaves no directory behind); what came before is kept until then."""

    def __init__(self, out: Path):
        self.out, self.fh, self.pending, self.lock = out, None, [], threading.Lock()

    def _ready(self) -> bool:
        from fedrec.results import LOCK_FILE

        try:
            return self.out.is_dir() and any(p.name != LOCK_FILE for p in self.out.iterdir())
        except OSError:
            return False

    def write(self, text: str) -> None:
        with self.lock:
            if self.fh is None:
                self.pending.append(text)
                if not self._ready():
                    return
                try:
                    self.fh = open(self.out / LOG_FILE, "a", encoding="utf-8")
                except OSError:
                    return
                text, self.pending = "".join(self.pending), []
            self.fh.write(text)
            self.fh.flush()

    def close(self) -> None:
        with self.lock:
            if self.fh is None and self.pending and self._ready():
                self.fh = open(self.out / LOG_FILE, "a", encoding="utf-8")
                self.fh.write("".join(self.pending))
            if self.fh is not None:
                self.fh.close()
                self.fh = None


class _Tee:
    """A text stream that writes to the console and to the run's log."""

    def __init__(self, stream, sink: _Sink | None, drop: tuple[str, ...]):
        self._stream, self._sink, self._drop, self._dropped = stream, sink, drop, False

    def write(self, text: str) -> int:
        if any(d in text for d in self._drop) or (self._dropped and text == "\n"):  # print() ends its line apart
            self._dropped = text != "\n"
            return len(text)
        self._dropped = False
        n = self._stream.write(text)
        if self._sink is not None:
            self._sink.write(text)
        return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...: the console's
        return getattr(self._stream, name)


#: Lines of the simulation engine that carry nothing for the user (``--verbose`` shows them):
#: Flower's actors say at every run's end that they are stopped, as they should be.
ENGINE_CHATTER = ("Manually terminating ClientAppActor",
                  "A worker died or was killed while executing a task")  # the run says which node failed


@contextlib.contextmanager
def console_log(out: str | Path | None, *, drop: tuple[str, ...] = ()):
    """Within the block, ``sys.stdout`` and ``sys.stderr`` are also written to
    ``OUT/log.txt`` (not when ``out`` is None); writes that contain one of ``drop`` are
    neither shown nor kept."""
    if not out and not drop:
        yield
        return
    sink = _Sink(Path(out)) if out else None
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, sink, drop), _Tee(sys.stderr, sink, drop)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        if sink is not None:
            sink.close()
