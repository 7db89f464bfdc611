"""The one exception of ``fedrec deploy``: bad input, or a deployment that could not start or finish."""

from __future__ import annotations

__all__ = ["DeployError"]


class DeployError(RuntimeError):
    """The deployment could not be started or did not finish."""
