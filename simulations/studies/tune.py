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
from fedrec.results import read_metrics
from fedrec_app.simulations.cli.flags import config_flag

__all__ = ["SPACES", "Dimension", "parse_dimension", "space_for", "tune", "preset_text", "SELECTIONS"]

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
    import optuna

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: the directory is not empty; give a new one")
    fed = load_federation(base)
    base, choice = apply_choice(base, fed.dataset.name, fed.dataset.n_users)
    base = resolved(base)
    releases = trial_releases(base)
    private = bool(releases)
    selection = selection or ("accounted" if private else "not-covered")
    if selection not in SELECTIONS:
        raise ValueError(f"--selection {selection}: choose one of {', '.join(SELECTIONS)}")
    if selection == "accounted" and not private:
        raise ValueError("--selection accounted: the base run is not private (give its mechanism and epsilon, or "
                         "--selection not-covered)")
    if selection == "not-covered" and trials < 1:
        raise ValueError(f"--trials {trials}: must be >= 1")
    space = dict(space if space is not None else SPACES[space_for(base)])
    for key in space:
        if not hasattr(base, _field(key)):
            raise ValueError(f"--vary {key}: no such setting")
    n_valid = int((np.diff(fed.split.valid.tocsr().indptr) > 0).sum())
    run = run or (lambda c: _simulate(c, num_cpus))
    accounted = selection == "accounted"
    if accounted:
        dist = Trials(trials_mean, trials_shape)
        if not score_noise > 0:
            raise ValueError(f"--score-noise {score_noise}: an accounted score needs noise > 0")
        n_trials = dist.draw(DPRandomness.secret().numpy())  # secret: the guarantee rests on it
        sampler = optuna.samplers.RandomSampler(seed=base.seed)
        eps_one = single_epsilon(releases, delta=base.delta, score_noise=score_noise)
        eps_selection = selection_epsilon(releases, dist, delta=base.delta, score_noise=score_noise)
        unit = "user-level" if base.user_level or (base.als_private and base.als_unit == "user-level") \
            else "interaction-level"
        say(f"accounted selection: a secret number of trials (mean {dist.mean:g}, shape {dist.shape:g}), each "
            f"{unit} epsilon {eps_one:.3g} with its noisy score; the selected preset is {unit} epsilon "
            f"{eps_selection:.3g} (delta {base.delta:g})")
    else:
        n_trials, dist = trials, None
        sampler = optuna.samplers.TPESampler(seed=base.seed)
        eps_one = single_epsilon(releases, delta=base.delta) if private else math.inf
        eps_selection, unit = math.inf, ("none" if not private else space_for(base))
        say(f"selection not covered by any epsilon: {trials} trials (TPE), exact validation scores")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "trials.jsonl").open("w")
    noise_rng = DPRandomness.secret().numpy()
    best: dict | None = None
    t0 = time.perf_counter()
    try:
        for k in range(1, n_trials + 1):
            trial = study.ask()
            params = {key: dim.suggest(trial, key) for key, dim in space.items()}
            cfg = with_preset(base, params)
            cfg = replace(cfg, out=str(out / "trials" / f"trial-{k:03d}"))
            if accounted:  # one evaluation, of the last round: no selection inside a trial
                cfg = replace(cfg, eval_every=cfg.num_server_rounds, patience=0)
                if trial_releases(resolved(cfg)) != releases:
                    raise ValueError(f"trial {k}: {params} changes the mechanism's releases; an accounted search "
                                     "may vary only settings that leave them as the base run's")
            summary = run(cfg)
            exact = float(read_metrics(Path(cfg.out))["validation"]["ndcg@10"])
            score = exact + (float(noise_rng.normal(0.0, score_noise * SCORE_SENSITIVITY / n_valid))
                             if accounted else 0.0)
            study.tell(trial, score)
            row = {"trial": k, "settings": params, "score": score, "seconds": summary.get("seconds")}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if best is None or score > best["score"]:
                best = row
            say(f"trial {k}{'' if accounted else f'/{n_trials}'}: validation NDCG@10 "
                f"{score:.4f}{' (noisy)' if accounted else ''} with "
                + ", ".join(f"{config_flag(_field(p))} {_fmt(v)}" for p, v in params.items())
                + f" ({time.perf_counter() - t0:.0f}s)")
    finally:
        log.close()
    summary = {
        "selection": selection, "unit": unit, "data": base.data, "model": base.model,
        "base_mechanism": space_for(base), "space": {k: vars(v) for k, v in space.items()},
        "epsilon_per_trial": eps_one, "epsilon_selection": eps_selection, "delta": base.delta,
        "trials_distribution": None if dist is None else {"mean": dist.mean, "shape": dist.shape},
        "score_noise": score_noise if accounted else None, "validation_users": n_valid,
        "selected": best, "choice": choice.line() if choice else None,
        "seconds": time.perf_counter() - t0,
        "not_covered": (["the number of trials and the other trials' scores (trials.jsonl, progress lines)",
                         "the trials' evaluation replies, seen by their server"] if accounted else
                        ["the selection: validation scores are exact and chosen by an adaptive sampler"]),
    }
    if best is None:  # a Poisson number of trials can be 0
        notes = ["no trial ran (the random number of trials was 0): the base run's settings stand"]
        settings: dict = {}
    else:
        settings = dict(best["settings"])
        eps_text = (f"{unit} epsilon {eps_selection:.3g} at delta {base.delta:g} (the selection, every trial's "
                    f"training and noisy score composed)" if accounted else "covered by no epsilon")
        notes = [f"tuned by `fedrec tune` on {base.data} ({base.model}, {space_for(base)} base run)",
                 f"selection {selection}: {eps_text}",
                 f"selected validation NDCG@10 {best['score']:.4f}{' (noisy)' if accounted else ''}"]
    (out / "preset.toml").write_text(preset_text("tuned", settings, notes))
    (out / "tune.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
    say(f"wrote {out / 'preset.toml'}: " + (", ".join(f"{config_flag(_field(p))} {_fmt(v)}"
                                                     for p, v in settings.items()) or "no change")
        + f"; use it with `fedrec simulate --preset {out / 'preset.toml'}`")
    return summary


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _simulate(cfg: FedConfig, num_cpus: int | None) -> dict:
    from fedrec.flower_compat import reuse_ray
    from fedrec_app.simulations.simulate import simulate

    with reuse_ray():
        return simulate(cfg, num_cpus=num_cpus)
