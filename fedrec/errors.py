"""Errors every layer of the library raises (a leaf module: it imports nothing of fedrec)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad configuration value; the message names the key as given, and ``key`` is the
    dashed key without its section (the CLI names its flag)."""

    def __init__(self, key: str, value, why: str, *, message: str | None = None):
        super().__init__(message or f"config {key}={value!r}: {why}")
        self.key, self.value, self.why = key.split(".")[-1], value, why
