"""A run's privacy ledger: what its rounds released, under which mechanism and unit.

Every checkpoint carries the ledger of the rounds before it (``extra["ledger"]``), so a
run that continues another (a warm start, the next window of a stream) composes those
releases instead of starting its accounting from zero.  One entry per mechanism:

- ``{"unit": "user-level", "mechanism": "dp-fedavg", "segments": [[noise, rate, rounds], ...]}``
- ``{"unit": "interaction-level", "mechanism": "dp-sgd", "segments": [[noise, rate, steps]]}``
  (steps: the most any user took, an upper bound on every user's)
- ``{"unit": "user-level", "mechanism": "private-als", "rounds": n}``
- ``{"unit": "user-level", "mechanism": "distributed-dp", "rounds": n}`` (distributed DP,
  Skellam or discrete Gaussian shares; not continued by a warm start)
- ``{"unit": "none", "rounds": n}``: rounds trained on private data without DP: every
  later epsilon is infinite.

:func:`warm_start_problem` says why a checkpoint cannot be continued with a finite epsilon.
"""

from __future__ import annotations

__all__ = ["ledger_entries", "warm_start_problem", "units_of"]


def units_of(cfg) -> list[str]:
    """The mechanisms a config runs, by ledger name (empty: none)."""
    out = []
    if cfg.dp:
        out.append("dp-sgd")
    if cfg.user_dp == "distributed":
        out.append("distributed-dp")
    elif cfg.user_level:
        out.append("dp-fedavg")
    if cfg.als_private:
        out.append("private-als")
    return out


def ledger_entries(cfg, rounds: int, *, earlier: list | None = None, max_steps: int = 0,
                   user_segments: list | None = None) -> list[dict]:
    """The ledger after round ``rounds`` of a run of ``cfg`` that continued ``earlier`` (a
    checkpoint's ledger).  ``max_steps``: the most DP-SGD steps any user took;
    ``user_segments``: the user-level segments so far (earlier ones included)."""
    out = [dict(e) for e in (earlier or []) if e.get("mechanism") != "dp-fedavg"]
    units = units_of(cfg)
    if not units:
        out.append({"unit": "none", "rounds": int(rounds)})
    if "dp-sgd" in units:
        out.append({"unit": "interaction-level", "mechanism": "dp-sgd", "prior_noise": float(cfg.prior_noise),
                    "segments": [[float(cfg.noise_multiplier), float(cfg.sample_rate), int(max_steps)]]})
    if "dp-fedavg" in units:
        out.append({"unit": "user-level", "mechanism": "dp-fedavg", "prior_noise": float(cfg.prior_noise),
                    "segments": [list(s) for s in (user_segments or [])]})
    if "distributed-dp" in units:
        out.append({"unit": "user-level", "mechanism": "distributed-dp", "rounds": int(rounds)})
    if "private-als" in units:
        out.append({"unit": "user-level", "mechanism": "private-als", "rounds": int(rounds)})
    return out


def warm_start_problem(ledger: list | None, cfg) -> str | None:
    """Why a run of ``cfg`` cannot continue a checkpoint whose ledger is ``ledger`` with a
    finite, computed epsilon; ``None`` when it can (a non-private run always can)."""
    units = units_of(cfg)
    if not units:
        return None
    if ledger is None:
        return "it carries no privacy ledger, so what its rounds released cannot be accounted"
    if any(e.get("unit") == "none" for e in ledger):
        return "its rounds trained on the users' data without DP, so every later epsilon is infinite"
    priors = {float(e.get("prior_noise", 0.0)) for e in ledger if "prior_noise" in e}
    if priors and priors != {float(cfg.prior_noise)}:
        return (f"its popularity prior had noise {sorted(priors)}, this run's accountant composes prior-noise="
                f"{cfg.prior_noise} (the prior is released once, by the first run)")
    theirs = sorted({e.get("mechanism", "") for e in ledger})
    if theirs != sorted(units) or units != ["dp-fedavg"]:
        return (f"it was accounted under {', '.join(theirs) or 'nothing'}; fedrec composes a warm start only from "
                f"user-level DP-FedAvg into user-level DP-FedAvg (this run: {', '.join(units)})")
    return None
