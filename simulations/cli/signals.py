"""Signals: Ctrl-C (SIGINT, also when inherited as ignored) and SIGTERM stop a fedrec
command cleanly; a second signal exits at once."""

from __future__ import annotations

__all__ = ["Interrupted", "interruptible"]


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread (:func:`interruptible`)."""

    def __init__(self, signum: int):
        import signal

        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interruptible() -> dict:
    """Make SIGINT (also when inherited as ignored, as in a background job) and SIGTERM raise
    :class:`Interrupted` in the main thread, so that a run stops cleanly; a second signal
    exits at once.  Returns the previous handlers."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    seen = []

    def handler(signum, frame):
        if seen:  # the second signal: no more waiting
            os._exit(128 + signum)
        seen.append(signum)
        import logging

        # what the engine's threads say while they are torn down (a message that lost its actor) is the
        # stop itself, not an error of the run
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        raise Interrupted(signum)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
