"""Presets as data: named settings, and which mechanism a private run of a unit and an
epsilon runs on a dataset (``presets.toml`` beside this module).

``fedrec simulate --privacy user-level --epsilon 8`` asks :func:`choose` for the dataset's
row and runs its preset; a setting given explicitly overrides the preset's.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Choice", "PRESETS_FILE", "UNITS", "choose", "preset", "preset_names", "with_preset"]

PRESETS_FILE = Path(__file__).with_name("presets.toml")
#: The privacy units a choice is made for.
UNITS = ("user-level", "interaction-level")
#: Each mechanism's target-epsilon key, by the preset that runs it and the unit.
_TARGET = {"als": "als-target-epsilon", "user-level": "user-target-epsilon", "interaction-level": "target-epsilon"}


@lru_cache(maxsize=1)
def _table() -> dict:
    return tomllib.loads(PRESETS_FILE.read_text())


def preset_names() -> tuple[str, ...]:
    return tuple(_table()["presets"])


def preset(name: str) -> dict:
    """The settings of preset ``name`` (run-config keys without their section)."""
    try:
        return dict(_table()["presets"][name])
    except KeyError:
        raise ValueError(f"no preset {name!r}; presets: {', '.join(preset_names())}") from None


@dataclass(frozen=True)
class Choice:
    """What a private run of ``unit`` at ``epsilon`` runs on a dataset, and why."""

    unit: str
    epsilon: float
    dataset: str
    preset: str
    settings: dict
    evidence: str
    matched: str  # the row's dataset: the name, or "* (>= N users)"

    @property
    def mechanism(self) -> str:
        if self.preset == "private-mostpop":
            return "private MostPop (noisy item counts)"
        return "private ALS" if self.settings.get("als") else self.preset

    def line(self) -> str:
        """The one line a run prints about its choice."""
        return (f"{self.unit} epsilon {self.epsilon:g} on {self.dataset}: {self.mechanism}, preset {self.preset!r} "
                f"(row {self.matched}: {self.evidence}); flags given override it")


def choose(unit: str, epsilon: float, dataset: str, n_users: int) -> Choice:
    """The table's choice for ``unit`` and ``epsilon`` on a dataset called ``dataset`` with
    ``n_users`` users: the first row for its name, else the first ``*`` row whose
    ``min-users`` it reaches; within those, the first whose least ``epsilon`` is met."""
    if unit not in UNITS:
        raise ValueError(f"privacy unit {unit!r}: choose one of {', '.join(UNITS)}")
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon {epsilon}: must be a positive number")
    rows = _table()["choices"]
    named = [r for r in rows if r["dataset"] == dataset and r["unit"] == unit]
    fallback = [r for r in rows if r["dataset"] == "*" and r["unit"] == unit and n_users >= r.get("min-users", 0)]
    for row in named or fallback:
        if epsilon >= row["epsilon"]:
            settings = preset(row["preset"])
            target = _TARGET["als"] if settings.get("als") else _TARGET[unit]
            settings[target] = float(epsilon)
            if settings.get("als"):
                settings["als-unit"] = unit
            matched = dataset if row["dataset"] != "*" else f"* (>= {row.get('min-users', 0)} users)"
            return Choice(unit, float(epsilon), dataset, row["preset"], settings, row["evidence"], matched)
    raise ValueError(f"{PRESETS_FILE}: no row for {unit} epsilon {epsilon} on {dataset}")  # pragma: no cover


def with_preset(cfg, settings: dict, given: set[str] | frozenset[str] = frozenset()):
    """``cfg`` with a preset's ``settings`` applied, except the fields in ``given`` (the
    settings a user gave explicitly, field names), which keep their value."""
    import dataclasses

    changes = {k.replace("-", "_"): v for k, v in settings.items() if k.replace("-", "_") not in given}
    # a calibrated noise and its target cannot both be set: a preset's target replaces a default noise
    for target, noise in (("target_epsilon", "noise_multiplier"), ("user_target_epsilon", "user_noise_multiplier"),
                          ("als_target_epsilon", "als_noise_multiplier")):
        if target in changes and noise not in given:
            changes[noise] = 0.0
    return dataclasses.replace(cfg, **changes)
