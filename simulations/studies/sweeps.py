"""Named sweeps: `fedrec sweep NAME --out DIR`."""

from __future__ import annotations

from dataclasses import replace

from fedrec.config import FedConfig
from fedrec.presets import preset_fields
from fedrec_app.simulations.studies.runner import Cell

__all__ = ["SWEEPS", "dp_preset", "dp_levels"]

#: The `dp-sgd` preset (``fedrec/presets/presets.toml``: tuned on ML-100K validation)
#: without its DP popularity prior, for 100 rounds: DP-SGD alone at each epsilon.
DP_PRESET = {**{k: v for k, v in preset_fields("dp-sgd").items() if k != "prior_noise"}, "num_server_rounds": 100}


def dp_preset(base: FedConfig, target_epsilon: float) -> FedConfig:
    return replace(base, **DP_PRESET, target_epsilon=target_epsilon, noise_multiplier=0.0)


def dp_levels(*, data: str = "ml-latest-small", epsilons=(8, 4, 2, 1), users_per_node: int = 472,
              rounds: int | None = None) -> list[Cell]:
    """Non-private federated MF and interaction-level DP at several target epsilons."""
    base = FedConfig(data=data, users_per_node=users_per_node)
    if rounds:
        base = replace(base, num_server_rounds=rounds)
    cells = [Cell("non-private", base, {"privacy": "none", "target_epsilon": "inf"})]
    for e in epsilons:
        cfg = dp_preset(base, float(e))
        if rounds:
            cfg = replace(cfg, num_server_rounds=rounds)
        cells.append(Cell(f"interaction-eps{e:g}", cfg, {"privacy": "interaction-level", "target_epsilon": e}))
    return cells


SWEEPS = {"dp-levels": dp_levels}
