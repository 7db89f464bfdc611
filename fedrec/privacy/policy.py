"""A device's own privacy policy: what its user accepts, whatever the server asks.

The server sends the mechanism of every round (its configuration); a device checks it
against the policy it holds before it trains, and refuses in one line a configuration
that breaks it (:meth:`PrivacyPolicy.check`).  The budget is the policy's, never the
server's: a round that would take the user's epsilon past ``max_epsilon`` is declined.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["PrivacyPolicy", "PolicyError", "UNITS"]

UNITS = ("interaction-level", "user-level")


class PolicyError(ValueError):
    """A server configuration that the device's privacy policy refuses."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """What a device's user accepts.

    Attributes
    ----------
    unit : str
        ``interaction-level``: the device adds the noise itself (DP-SGD), so the
        guarantee holds against the server too; ``user-level``: the device clips its
        whole update and the server adds the noise (DP-FedAvg), so it holds against
        other users and the public, not the server.
    max_epsilon : float
        The most epsilon (in ``unit``) the device spends; a round that would pass it is
        declined.  ``inf``: no budget.
    min_noise_multiplier : float
        The least noise multiplier the device accepts (DP-SGD's, or DP-FedAvg's).
    allow_non_private : bool
        Whether the device may train and release without DP at all (its epsilon is then
        reported as infinite).
    """

    unit: str = "interaction-level"
    max_epsilon: float = 8.0
    min_noise_multiplier: float = 0.0
    allow_non_private: bool = False

    def __post_init__(self):
        if self.unit not in UNITS:
            raise PolicyError(f"privacy policy unit={self.unit!r}: choose {' or '.join(UNITS)}")
        if not self.max_epsilon > 0:
            raise PolicyError(f"privacy policy max_epsilon={self.max_epsilon}: must be > 0")
        if self.min_noise_multiplier < 0:
            raise PolicyError(f"privacy policy min_noise_multiplier={self.min_noise_multiplier}: must be >= 0")

    def check(self, cfg) -> None:
        """Raise :class:`PolicyError` (one line) if the resolved run config ``cfg`` breaks
        the policy: noise derived from a public seed, no DP where DP is required, another
        unit, or less noise than the policy's minimum."""
        if cfg.reproducible_noise:
            raise PolicyError("the server asks for reproducible-noise (noise derived from the run's seed): the device "
                              "draws its noise from its own secret randomness only")
        if not (cfg.dp or cfg.user_level):
            if not self.allow_non_private:
                raise PolicyError("the server's configuration trains without DP; this device's policy does not allow "
                                  "a non-private release (allow_non_private=False)")
            return
        unit = "interaction-level" if cfg.dp else "user-level"
        if unit != self.unit:
            raise PolicyError(f"the server's configuration runs {unit} DP; this device's policy requires {self.unit}")
        noise = cfg.noise_multiplier if cfg.dp else cfg.user_noise_multiplier
        if noise < self.min_noise_multiplier:
            raise PolicyError(f"the server's noise multiplier {noise:g} is below this device's minimum "
                              f"{self.min_noise_multiplier:g}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["max_epsilon"] = "inf" if math.isinf(self.max_epsilon) else self.max_epsilon
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyPolicy":
        d = dict(d)
        d["max_epsilon"] = float(d.get("max_epsilon", 8.0))
        return cls(**d)
