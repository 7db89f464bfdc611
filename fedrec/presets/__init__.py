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

__all__ = ["CALIBRATED", "Choice", "PRESETS_FILE", "UNITS", "als_preset_name", "apply_choice", "choose",
           "load_preset", "mechanism_preset", "preset", "preset_fields", "preset_names", "with_preset"]

PRESETS_FILE = Path(__file__).with_name("presets.toml")
#: The privacy units a choice is made for.
UNITS = ("user-level", "interaction-level")
#: Each mechanism's target-epsilon key, by the preset that runs it and the unit.
_TARGET = {"als": "als-target-epsilon", "user-level": "user-target-epsilon", "interaction-level": "target-epsilon"}
#: Each target epsilon (field name) and the noise multiplier calibrated from it: a config sets one of the two.
CALIBRATED = {"target_epsilon": "noise_multiplier", "user_target_epsilon": "user_noise_multiplier",
              "als_target_epsilon": "als_noise_multiplier"}


@lru_cache(maxsize=1)
def _table() -> dict:
    return tomllib.loads(PRESETS_FILE.read_text())


def preset_fields(name: str) -> dict:
    """The settings of preset ``name`` as :class:`fedrec.config.FedConfig` field names
    (``dataclasses.replace(cfg, **preset_fields(name))``)."""
    return {k.replace("-", "_"): v for k, v in preset(name).items()}


def preset_names() -> tuple[str, ...]:
    return tuple(_table()["presets"])


def preset(name: str) -> dict:
    """The settings of preset ``name`` (run-config keys without their section)."""
    try:
        return dict(_table()["presets"][name])
    except KeyError:
        raise ValueError(f"no preset {name!r}; presets: {', '.join(preset_names())}") from None


def load_preset(spec: str) -> tuple[str, dict]:
    """``(name, settings)`` of a shipped preset's name, or of a preset file (a TOML file with
    one ``[presets.NAME]`` table, as ``fedrec tune`` writes it); a bad file or an unknown
    setting is a ``ValueError`` in one line naming ``--preset`` and the value."""
    from fedrec.config import parse_overrides

    path = Path(spec)
    if not (spec.endswith(".toml") or path.exists()):
        try:
            return spec, preset(spec)
        except ValueError as e:
            raise ValueError(f"--preset {spec}: {e}; or give a preset file (.toml)") from None
    try:
        presets = tomllib.loads(path.read_text()).get("presets") or {}
    except FileNotFoundError:
        raise ValueError(f"--preset {spec}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"--preset {spec}: not a preset file ({e})") from None
    if len(presets) != 1 or not isinstance(next(iter(presets.values())), dict):
        raise ValueError(f"--preset {spec}: expected one [presets.NAME] table, found {len(presets)}")
    (name, settings), = presets.items()
    for key, value in settings.items():  # each a setting of the run config, of its type
        try:
            parse_overrides([f"{key}={str(value).lower() if isinstance(value, bool) else value}"])
        except ValueError as e:
            raise ValueError(f"--preset {spec}: {str(e).partition(': ')[2] or e} ({key} = {value!r})") from None
    return name, dict(settings)


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
        return "private ALS" if self.settings.get("als") else self.preset.replace("sequential-", "")

    def line(self) -> str:
        """The one line a run prints about its choice."""
        return (f"{self.unit} epsilon {self.epsilon:g} on {self.dataset}: {self.mechanism}, preset {self.preset!r} "
                f"(row {self.matched}: {self.evidence}); flags given override it")


def choose(unit: str, epsilon: float, dataset: str, n_users: int, *, model: str | None = None,
           sequential: bool = False) -> Choice:
    """The table's choice for ``unit`` and ``epsilon`` on a dataset called ``dataset`` with
    ``n_users`` users: the first row for its name, else the first ``*`` row whose
    ``min-users`` it reaches; within those, the first whose least ``epsilon`` is met.

    ``model`` (a model the user chose, not MF): the mechanism that trains it, DP-FedAvg
    (DP-FedAdam for a ``sequential`` one) at user level, DP-SGD at interaction level."""
    if unit not in UNITS:
        raise ValueError(f"privacy unit {unit!r}: choose one of {', '.join(UNITS)}")
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon {epsilon}: must be a positive number")
    if model and model != "mf":
        name = ("sequential-dp-fedadam" if sequential else "dp-fedavg") if unit == "user-level" else "dp-sgd"
        settings = {**preset(name), _TARGET[unit]: float(epsilon)}
        settings.pop("model", None)
        return Choice(unit, float(epsilon), dataset, name, settings, f"the mechanism that trains --model {model}; "
                      "on MF-shaped data private ALS is the stronger choice (leave --model out)", f"--model {model}")
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


def apply_choice(cfg, dataset: str, n_users: int, given: set[str] | frozenset[str] | None = None):
    """``(cfg, choice)``: for a config with ``privacy-unit`` and ``epsilon``, the mechanism
    :func:`choose` picks for the data, its preset applied under the fields in ``given``
    (``None``: every field that differs from its default counts as given), and
    ``privacy-unit``/``epsilon`` cleared (the mechanism's own target carries the epsilon);
    any other config: ``(cfg, None)``."""
    import dataclasses

    from fedrec.config import DEFAULTS
    from fedrec.models import federated_model_class, is_sequential

    if not cfg.privacy_unit:
        return cfg, None
    if given is None:
        given = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(DEFAULTS, f.name)}
    model = cfg.model if "model" in given else None
    sequential = bool(model) and is_sequential(federated_model_class(model))
    choice = choose(cfg.privacy_unit, cfg.epsilon, dataset, n_users, model=model, sequential=sequential)
    free = dataclasses.replace(cfg, privacy_unit="", epsilon=0.0)
    return with_preset(free, choice.settings, set(given) - {"privacy_unit", "epsilon"}), choice


def als_preset_name(epsilon: float, unit: str = "user-level") -> str:
    """The private-ALS preset for a target epsilon (``inf``: non-private) in ``unit``: fewer
    releases below user-level 8; an interaction-level 16 is about the noise of a user-level 8."""
    if unit == "user-level":
        return "private-als" if epsilon >= 8 else "private-als-low"
    return "private-als" if epsilon >= 16 else "private-als-interaction"


def mechanism_preset(cfg) -> str | None:
    """The preset of the mechanism a config turns on by its own target epsilon or noise
    (``--target-epsilon``: DP-SGD; ``--user-dp`` with a user-level target or noise:
    DP-FedAvg (distributed DP-FedAvg for ``--user-dp distributed``), DP-FedAdam for a
    sequential model; ``--als`` with its target or noise:
    private ALS for its unit and epsilon); ``None`` for a non-private run or a mechanism
    without a preset (DP-SGD on a sequential model)."""
    from fedrec.models import federated_model_class, is_sequential

    sequential = is_sequential(federated_model_class(cfg.model))
    if cfg.als_private:
        return als_preset_name(cfg.als_target_epsilon or math.inf, cfg.als_unit)
    if cfg.user_level:
        if sequential:
            return "sequential-dp-fedadam"
        return "distributed-dp-fedavg" if cfg.user_dp == "distributed" else "dp-fedavg"
    if cfg.dp and not sequential:
        return "dp-sgd"
    return None


def with_preset(cfg, settings: dict, given: set[str] | frozenset[str] = frozenset()):
    """``cfg`` with a preset's ``settings`` applied, except the fields in ``given`` (the
    settings a user gave explicitly, field names), which keep their value."""
    import dataclasses

    changes = {k.replace("-", "_"): v for k, v in settings.items() if k.replace("-", "_") not in given}
    # a calibrated noise and its target cannot both be set: a preset's target replaces a default noise
    for target, noise in CALIBRATED.items():
        if target in changes and noise not in given:
            changes[noise] = 0.0
    return dataclasses.replace(cfg, **changes)
