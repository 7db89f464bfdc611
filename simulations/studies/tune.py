"""``fedrec tune``: a search over a preset's settings on validation, its cost on private
data accounted or stated as not covered.

Each trial is one ``fedrec simulate`` run of the base configuration with the settings an
Optuna sampler suggests (Flower's engine, one Ray start for the whole search); the score
is the validation NDCG@10.  The best trial's settings are written as a preset file that
``fedrec simulate --preset FILE`` reads (flags given still override it).

Two kinds of selection:

``accounted`` (the default for a private base run)
    Papernot & Steinke's private selection (:mod:`fedrec.privacy.selection`): the number
    of trials is drawn from secret randomness (logarithmic by default, mean
    ``--trials-mean``), the settings are drawn independently (Optuna's random sampler),
    each trial is evaluated once, on its last round's model, and its score is released
    with Gaussian noise (``--score-noise`` times the sensitivity 1 of a sum of per-user
    NDCG@10, over the public number of validation users).  The preset file carries the
    selection's epsilon, which composes every trial's training, its score and the random
    number of trials; it holds against whoever sees the preset and the models trained with
    it, not against the server of the trials (it saw their exact evaluation replies).  The
    number of trials and the other trials' scores are not covered: ``trials.jsonl`` and
    the progress lines are for the data's holder only.  A search may vary only settings
    that leave the mechanism unchanged (learning rates, dimension, clipping norms): a trial
    whose releases differ from the base run's is refused.

``not-covered`` (the default for a non-private base run)
    A fixed number of trials (``--trials``) with Optuna's TPE sampler, exact validation
    scores, each run's best round on validation.  The preset file says that its selection
    is covered by no epsilon.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrec.config import FedConfig, parse_overrides
from fedrec.federated.federation import load_federation
from fedrec.presets import apply_choice, with_preset
from fedrec.privacy.calibration import resolved
from fedrec.privacy.randomness import DPRandomness
from fedrec.privacy.selection import SCORE_SENSITIVITY, Trials, selection_epsilon, single_epsilon, trial_releases
from fedrec.results import read_metrics, write_json
from fedrec_app.simulations.cli.flags import config_flag

__all__ = ["SPACES", "SELECTIONS", "Dimension", "Plan", "parse_dimension", "plan_search", "preset_text",
           "space_for", "trial_config", "tune"]

SELECTIONS = ("accounted", "not-covered")


@dataclass(frozen=True)
class Dimension:
    """One setting searched: ``kind`` is ``log`` or ``float`` (``low``..``high``), ``int``
    (``low``..``high``, inclusive) or ``choice`` (``values``)."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    values: tuple = ()

    def suggest(self, trial, name: str):
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high, log=self.kind == "log")


def parse_dimension(text: str) -> tuple[str, Dimension]:
    """``KEY=log:LOW:HIGH``, ``KEY=float:LOW:HIGH``, ``KEY=int:LOW:HIGH`` or
    ``KEY=choice:A,B,C`` (a run-config key as ``fedrec simulate`` spells it)."""
    key, sep, spec = text.partition("=")
    kind, _, rest = spec.partition(":")
    if not sep or not key or kind not in ("log", "float", "int", "choice") or not rest:
        raise ValueError(f"--vary {text!r}: expected KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, KEY=int:LOW:HIGH "
                         "or KEY=choice:A,B,C")
    if kind == "choice":
        values = tuple(_typed(key, v) for v in rest.split(","))
        return key, Dimension("choice", values=values)
    try:
        low, high = (float(x) for x in rest.split(":"))
    except ValueError:
        raise ValueError(f"--vary {text!r}: LOW:HIGH must be two numbers") from None
    if not low < high or (kind == "log" and low <= 0):
        raise ValueError(f"--vary {text!r}: need LOW < HIGH{' and LOW > 0' if kind == 'log' else ''}")
    _typed(key, str(int(low) if kind == "int" else low))  # the key exists and takes a number
    return key, Dimension(kind, low, high)


def _typed(key: str, value: str):
    try:
        return next(iter(parse_overrides([f"{key}={value}"]).values()))
    except ValueError as e:
        raise ValueError(str(e).replace("--set ", "--vary ", 1)) from None


#: What each search varies, by the mechanism of its base run (run-config keys).  None of these
#: changes a mechanism's noise, sampling or steps, so every trial has the base run's epsilon.
SPACES: dict[str, dict[str, Dimension]] = {
    "non-private": {
        "user-lr": Dimension("log", 0.05, 5.0),
        "server-lr": Dimension("log", 5e-4, 5e-2),
        "dim": Dimension("choice", values=(16, 32, 64, 128)),
        "negatives": Dimension("choice", values=(1, 2, 4, 8)),
        "weighting": Dimension("choice", values=("user", "interaction")),
    },
    "interaction-level": {
        "user-lr": Dimension("log", 0.02, 1.0),
        "server-lr": Dimension("log", 0.5, 20.0),
        "dim": Dimension("choice", values=(4, 8, 16)),
        "max-grad-norm": Dimension("log", 0.1, 2.0),
    },
    "user-level": {
        "user-lr": Dimension("log", 0.02, 1.0),
        "server-lr": Dimension("log", 0.5, 20.0),
        "dim": Dimension("choice", values=(4, 8, 16)),
        "user-clip": Dimension("log", 0.02, 0.5),
    },
    "private-als": {
        "dim": Dimension("choice", values=(4, 8, 16)),
        "als-alpha": Dimension("log", 0.05, 1.0),
        "als-reg": Dimension("log", 0.05, 2.0),
        "als-user-reg": Dimension("log", 0.1, 5.0),
    },
}


def space_for(cfg: FedConfig) -> str:
    """The name of the search space for the mechanism ``cfg`` runs."""
    if cfg.als_private:
        return "private-als"
    if cfg.user_level:
        return "user-level"
    if cfg.dp:
        return "interaction-level"
    return "non-private"


def _field(key: str) -> str:
    return key.replace("-", "_")


def preset_text(name: str, settings: dict, notes: list[str]) -> str:
    """A preset file: ``notes`` as comments, then ``[presets.NAME]`` with ``settings``."""
    lines = [f"# {n}" for n in notes] + ["", f"[presets.{name}]"]
    for k, v in settings.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


@dataclass
class Plan:
    """What a search runs, decided before its first trial: the base run (resolved), its
    mechanism's releases, the selection and what it costs, the number of trials."""

    base: FedConfig
    space: dict[str, Dimension]
    selection: str
    releases: tuple
    n_trials: int
    unit: str
    epsilon_per_trial: float
    epsilon_selection: float
    validation_users: int
    score_noise: float | None = None
    trials: Trials | None = None
    choice: str | None = None

    @property
    def accounted(self) -> bool:
        return self.selection == "accounted"

    def announce(self) -> str:
        if not self.accounted:
            return (f"selection not covered by any epsilon: {self.n_trials} trials (TPE), exact validation scores")
        return (f"accounted selection: a secret number of trials (mean {self.trials.mean:g}, shape "
                f"{self.trials.shape:g}), each {self.unit} epsilon {self.epsilon_per_trial:.3g} with its noisy "
                f"score; the selected preset is {self.unit} epsilon {self.epsilon_selection:.3g} "
                f"(delta {self.base.delta:g})")


def plan_search(base: FedConfig, *, space: dict[str, Dimension] | None = None, selection: str | None = None,
                trials: int = 20, trials_mean: float = 10.0, trials_shape: float = 0.0,
                score_noise: float = 2.0) -> Plan:
    """The :class:`Plan` of a search around ``base`` (see :func:`tune`); a setting that cannot
    be searched is a ``ValueError`` in one line.  An accounted plan draws its number of trials
    here, from secret randomness."""
    fed = load_federation(base)
    base, choice = apply_choice(base, fed.dataset.name, fed.dataset.n_users)
    base = resolved(base)
    releases = trial_releases(base)
    selection = selection or ("accounted" if releases else "not-covered")
    if selection not in SELECTIONS:
        raise ValueError(f"--selection {selection}: choose one of {', '.join(SELECTIONS)}")
    space = dict(space if space is not None else SPACES[space_for(base)])
    for key in space:
        if not hasattr(base, _field(key)):
            raise ValueError(f"--vary {key}: no such setting")
    n_valid = int((np.diff(fed.split.valid.tocsr().indptr) > 0).sum())
    common = dict(base=base, space=space, selection=selection, releases=releases, validation_users=n_valid,
                  choice=choice.line() if choice else None)
    if selection == "not-covered":
        if trials < 1:
            raise ValueError(f"--trials {trials}: must be >= 1")
        eps = single_epsilon(releases, delta=base.delta) if releases else math.inf
        return Plan(**common, n_trials=trials, unit=space_for(base) if releases else "none", epsilon_per_trial=eps,
                    epsilon_selection=math.inf)
    if not releases:
        raise ValueError("--selection accounted: the base run is not private (give its mechanism and epsilon, or "
                         "--selection not-covered)")
    if not score_noise > 0:
        raise ValueError(f"--score-noise {score_noise}: an accounted score needs noise > 0")
    dist = Trials(trials_mean, trials_shape)
    user = base.user_level or (base.als_private and base.als_unit == "user-level")
    return Plan(**common, n_trials=dist.draw(DPRandomness.secret().numpy()),  # secret: the guarantee rests on it
                unit="user-level" if user else "interaction-level",
                epsilon_per_trial=single_epsilon(releases, delta=base.delta, score_noise=score_noise),
                epsilon_selection=selection_epsilon(releases, dist, delta=base.delta, score_noise=score_noise),
                score_noise=score_noise, trials=dist)


def trial_config(plan: Plan, params: dict, out: Path) -> FedConfig:
    """The run of one trial: the base run with ``params``; an accounted trial is evaluated
    once, on its last round (no selection inside it), and keeps the base run's releases."""
    cfg = replace(with_preset(plan.base, params), out=str(out))
    if not plan.accounted:
        return cfg
    cfg = replace(cfg, eval_every=cfg.num_server_rounds, patience=0)
    if trial_releases(resolved(cfg)) != plan.releases:
        raise ValueError(f"{params} changes the mechanism's releases; an accounted search may vary only settings "
                         "that leave them as the base run's")
    return cfg


def tune(
    base: FedConfig,
    *,
    out: Path,
    space: dict[str, Dimension] | None = None,
    selection: str | None = None,
    trials: int = 20,
    trials_mean: float = 10.0,
    trials_shape: float = 0.0,
    score_noise: float = 2.0,
    num_cpus: int | None = None,
    run: Callable[[FedConfig], dict] | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """Search ``space`` around ``base``; write ``preset.toml``, ``tune.json`` and
    ``trials.jsonl`` under ``out`` and return the summary.

    Parameters
    ----------
    base
        The run every trial starts from (its data, model, rounds and mechanism).
    out
        A new directory (a non-empty one is refused).
    space
        Settings searched (run-config keys); default :data:`SPACES` for ``base``'s mechanism.
    selection
        ``accounted`` or ``not-covered``; default: ``accounted`` for a private ``base``.
    trials
        Number of trials of a ``not-covered`` search.
    trials_mean, trials_shape
        The random number of trials of an ``accounted`` search
        (:class:`fedrec.privacy.selection.Trials`).
    score_noise
        Noise multiplier of an accounted trial's validation score.
    num_cpus
        CPUs of the simulation engine (default: all).
    run
        Runs one trial (default: ``fedrec simulate`` on ``num_cpus``, Ray kept up between trials).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: the directory is not empty; give a new one")
    plan = plan_search(base, space=space, selection=selection, trials=trials, trials_mean=trials_mean,
                       trials_shape=trials_shape, score_noise=score_noise)
    say(plan.announce())
    t0 = time.perf_counter()
    best = _run_trials(plan, out, run or (lambda c: _simulate(c, num_cpus)), say)
    return _write_results(plan, out, best, time.perf_counter() - t0, say)


def _run_trials(plan: Plan, out: Path, run: Callable[[FedConfig], dict], say) -> dict | None:
    """Every trial of ``plan``, logged to ``trials.jsonl``; the best trial's row."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.RandomSampler(seed=plan.base.seed) if plan.accounted  # independent draws
               else optuna.samplers.TPESampler(seed=plan.base.seed))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out.mkdir(parents=True, exist_ok=True)
    noise = DPRandomness.secret().numpy()
    score_std = plan.score_noise * SCORE_SENSITIVITY / plan.validation_users if plan.accounted else 0.0
    best, t0 = None, time.perf_counter()
    with (out / "trials.jsonl").open("w") as log:
        for k in range(1, plan.n_trials + 1):
            trial = study.ask()
            params = {key: dim.suggest(trial, key) for key, dim in plan.space.items()}
            cfg = trial_config(plan, params, out / "trials" / f"trial-{k:03d}")
            summary = run(cfg)
            score = float(read_metrics(Path(cfg.out))["validation"]["ndcg@10"])
            if plan.accounted:
                score += float(noise.normal(0.0, score_std))
            study.tell(trial, score)
            row = {"trial": k, "settings": params, "score": score, "seconds": summary.get("seconds")}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if best is None or score > best["score"]:
                best = row
            say(f"trial {k}{'' if plan.accounted else f'/{plan.n_trials}'}: validation NDCG@10 {score:.4f}"
                f"{' (noisy)' if plan.accounted else ''} with {_flags(params)} ({time.perf_counter() - t0:.0f}s)")
    return best


def _write_results(plan: Plan, out: Path, best: dict | None, seconds: float, say) -> dict:
    base = plan.base
    summary = {
        "selection": plan.selection, "unit": plan.unit, "data": base.data, "model": base.model,
        "base_mechanism": space_for(base), "space": {k: vars(v) for k, v in plan.space.items()},
        "epsilon_per_trial": plan.epsilon_per_trial, "epsilon_selection": plan.epsilon_selection,
        "delta": base.delta, "trials_distribution": vars(plan.trials) if plan.trials else None,
        "score_noise": plan.score_noise, "validation_users": plan.validation_users, "selected": best,
        "choice": plan.choice, "seconds": seconds,
        "not_covered": (["the number of trials and the other trials' scores (trials.jsonl, progress lines)",
                         "the trials' evaluation replies, seen by their server"] if plan.accounted else
                        ["the selection: validation scores are exact and chosen by an adaptive sampler"]),
    }
    if best is None:  # a Poisson number of trials can be 0
        notes = ["no trial ran (the random number of trials was 0): the base run's settings stand"]
        settings: dict = {}
    else:
        settings = dict(best["settings"])
        cost = (f"{plan.unit} epsilon {plan.epsilon_selection:.3g} at delta {base.delta:g} (the selection, every "
                "trial's training and noisy score composed)" if plan.accounted else "covered by no epsilon")
        notes = [f"tuned by `fedrec tune` on {base.data} ({base.model}, {space_for(base)} base run)",
                 f"selection {plan.selection}: {cost}",
                 f"selected validation NDCG@10 {best['score']:.4f}{' (noisy)' if plan.accounted else ''}"]
    (out / "preset.toml").write_text(preset_text("tuned", settings, notes))
    write_json(out / "tune.json", summary)
    say(f"wrote {out / 'preset.toml'}: {_flags(settings) or 'no change'}; use it with "
        f"`fedrec simulate --preset {out / 'preset.toml'}`")
    return summary


def _flags(params: dict) -> str:
    return ", ".join(f"{config_flag(_field(p))} {_fmt(v)}" for p, v in params.items())


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _simulate(cfg: FedConfig, num_cpus: int | None) -> dict:
    from fedrec.flower_compat import reuse_ray
    from fedrec_app.simulations.simulate import simulate

    with reuse_ray():
        return simulate(cfg, num_cpus=num_cpus)
