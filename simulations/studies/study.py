"""The trade-off study: privacy vs accuracy (both units), user and item cold-start,
beyond-accuracy and activity groups, and population size.

``fedrec sweep default`` runs the reduced study the README's main command runs
(about 15 minutes on 2 cores for bundled ml-latest-small); ``fedrec sweep full`` runs
every level of the issue with more rounds.  Each federated run goes through
Flower's simulation engine; finished runs are kept and skipped on a re-run.

Every run of the privacy experiment holds the same 10% of users out of
training (split seed fixed), so the user cold-start curves are computed from
the very models whose privacy-utility point is reported.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fedrec.config import FedConfig
from fedrec.federated.federation import federated_model, load_federation
from fedrec.models import is_sequential
from fedrec.presets import choose, preset_fields, with_preset
from fedrec_app.simulations.studies.coldstart import KS, FoldIn, sequential_coldstart, user_coldstart
from fedrec_app.simulations.studies.runner import Cell, run_cells, write_rows

__all__ = ["Study", "STUDIES", "study_cells", "chosen_cells", "run_study", "DP_PRESET", "USER_PRESET"]

#: Interaction-level DP settings tuned on ML-100K validation (dimension 8: fewer
#: noised coordinates; server SGD: noise averages out instead of being
#: normalised away by Adam; a larger sampling rate per step) and a DP popularity prior.
DP_PRESET = preset_fields("dp-sgd")
#: User-level DP (DP-FedAvg): each user's whole update clipped on its node, noise
#: on the sum, SGD on the noised mean (see README, privacy section).
USER_PRESET = preset_fields("dp-fedavg")
#: The non-private twins' prior: exact popularity (a noise of 1e-9 changes no ranking).
NOISE_FREE_PRIOR = 1e-9
#: Both presets start the item biases from a DP popularity prior (Gaussian noise 5 on
#: the sum of users' unit-norm item vectors), composed into each unit's epsilon; the
#: study without it is in the README (it lifted interaction-level epsilon 2 from
#: NDCG@10 0.008 to 0.038 and user-level epsilon 2 from 0.039 to 0.045).


@dataclass(frozen=True)
class Study:
    """Levels of a study.  ``epsilons`` are target epsilons at ``delta`` (1e-5)."""

    name: str
    seeds: int = 3
    nonprivate_rounds: int = 100
    private_rounds: int = 60
    interaction_eps: tuple[float, ...] = (8.0, 2.0, 0.5)
    user_eps: tuple[float, ...] = (8.0, 2.0)
    item_coldstart: bool = True
    item_rounds: int = 0  # rounds of the item cold-start cell (0: nonprivate_rounds)
    fit_eps: tuple[float, ...] = (1.0,)  # DP fold-in of new users, on the non-private model
    populations: tuple[int, ...] = ()  # synthetic users, user-level DP at population_eps
    population_eps: float = 2.0
    population_rounds: int = 30
    cold_users: float = 0.1
    privacy_cells: bool = True  # False: only the population experiment
    #: epsilons of the trained-MF mechanisms (DP-SGD, DP-FedAvg); None: ``interaction_eps`` / ``user_eps``
    mf_dp_eps: tuple[float, ...] | None = None
    #: at each unit and epsilon, the mechanism ``--privacy UNIT --epsilon E`` chooses for the data
    #: (private ALS where it beats private MostPop; private MostPop is the floor row already)
    chosen: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)


STUDIES = {
    # sized to finish in about 15 minutes on 2 cores for bundled ml-latest-small: each run costs
    # about 20 s of start-up (Ray, actors, data) beside its rounds
    "default": Study("default", nonprivate_rounds=60, private_rounds=30, interaction_eps=(8.0, 2.0),
                     user_eps=(8.0, 2.0),
                     item_rounds=40, mf_dp_eps=(8.0,), fit_eps=()),  # the DP fold-in (100 s here): `full`
    "full": Study("full", nonprivate_rounds=250, private_rounds=100, interaction_eps=(16, 8, 4, 2, 1, 0.5),
                  user_eps=(16, 8, 4, 2, 1), fit_eps=(8.0, 1.0), populations=(1_000, 10_000, 100_000)),
    "population": Study("population", seeds=2, item_coldstart=False, populations=(1_000, 10_000, 100_000),
                        privacy_cells=False),
    "tiny": Study("tiny", seeds=2, nonprivate_rounds=4, private_rounds=4, interaction_eps=(8.0,), user_eps=(8.0,),
                  fit_eps=(1.0,), populations=(120,), population_rounds=3, cold_users=0.2, chosen=False),
}


def prior_noise_for(target_epsilon: float, noise: float, share: float = 0.25) -> float:
    """The preset's prior noise, raised where needed so that the prior alone spends
    at most ``share`` of the target epsilon (the training noise is calibrated for
    the rest, composed by the accountant)."""
    from fedrec.privacy.accounting import calibrate_noise

    need = calibrate_noise(target_epsilon=share * target_epsilon, delta=1e-5, sample_rate=1.0, steps=1)
    return max(noise, need)


def _users_per_node(n_users: int) -> int:
    return max(1, math.ceil(n_users / 2))  # two nodes: one per core (Flower's cost is per node)


def study_cells(study: Study, data: str = "ml-latest-small", rounds: int | None = None) -> list[Cell]:
    """Every federated run of the study (without seeds)."""
    fed = load_federation(FedConfig(data=data, cold_users=study.cold_users))
    upn = _users_per_node(fed.n_users)
    eval_every = 10 if (rounds or study.private_rounds) >= 20 else 2
    base = FedConfig(data=data, users_per_node=upn, cold_users=study.cold_users, eval_every=eval_every)
    np_rounds, p_rounds = rounds or study.nonprivate_rounds, rounds or study.private_rounds
    cells = [] if not study.privacy_cells else [Cell("non-private", replace(base, num_server_rounds=np_rounds),
                  {"experiment": "privacy", "unit": "none", "target_epsilon": math.inf})]
    mf_eps = {"interaction": study.interaction_eps if study.mf_dp_eps is None else study.mf_dp_eps,
              "user": study.user_eps if study.mf_dp_eps is None else study.mf_dp_eps}
    for e in mf_eps["interaction"] if study.privacy_cells else ():
        cfg = replace(base, **DP_PRESET, num_server_rounds=p_rounds, target_epsilon=float(e))
        cfg = replace(cfg, prior_noise=prior_noise_for(float(e), cfg.prior_noise))
        cells.append(Cell(f"interaction-eps{e:g}", cfg, {"experiment": "privacy", "unit": "interaction-level",
                                                          "target_epsilon": float(e)}))
    for e in mf_eps["user"] if study.privacy_cells else ():
        cfg = replace(base, **USER_PRESET, num_server_rounds=p_rounds, user_target_epsilon=float(e))
        cfg = replace(cfg, prior_noise=prior_noise_for(float(e), cfg.prior_noise))
        cells.append(Cell(f"user-eps{e:g}", cfg, {"experiment": "privacy", "unit": "user-level",
                                                   "target_epsilon": float(e)}))
    # non-private twins at the private presets: same dimension, optimiser, rounds and popularity
    # prior (noise-free), no DP noise; a private cell against its twin is what privacy costs,
    # the twin against "non-private" what the preset costs
    twins = [("interaction", DP_PRESET, mf_eps["interaction"]),
             ("user", {**USER_PRESET, "user_dp": "off"}, mf_eps["user"])]
    for unit, preset, eps in twins if study.privacy_cells else ():
        if eps:
            cfg = replace(base, **{**preset, "prior_noise": NOISE_FREE_PRIOR}, num_server_rounds=p_rounds)
            cells.append(Cell(f"non-private @{unit} preset", cfg, {"experiment": "privacy", "unit": "none",
                                                                   "target_epsilon": math.inf, "twin": unit}))
    if study.privacy_cells and study.chosen:
        cells += chosen_cells(base, fed.dataset.name, fed.dataset.n_users, study)  # as `fedrec simulate` chooses
    if study.item_coldstart:
        # every user trains here (no held-out users): two nodes of all of them, one per core
        cfg = replace(base, model="two-tower", cold_items=0.1, cold_users=0.0,
                      num_server_rounds=rounds or study.item_rounds or study.nonprivate_rounds,
                      users_per_node=_users_per_node(fed.n_users + len(fed.split.cold_users)))
        cells.append(Cell("item-coldstart", cfg, {"experiment": "item-coldstart", "unit": "none",
                                                   "target_epsilon": math.inf}))
    for n in study.populations:
        pdata = f"synthetic:{n}x1000:0:20"
        preset = {**USER_PRESET, "prior_noise": prior_noise_for(study.population_eps, USER_PRESET["prior_noise"])}
        cfg = FedConfig(data=pdata, users_per_node=_users_per_node(n), **preset,
                        user_target_epsilon=study.population_eps, num_server_rounds=rounds or study.population_rounds,
                        eval_every=max(1, (rounds or study.population_rounds) // 3))
        cells.append(Cell(f"population-{n}", cfg, {"experiment": "population", "unit": "user-level",
                                                    "target_epsilon": study.population_eps, "population": n}))
    return cells


def chosen_cells(base: FedConfig, dataset: str, n_users: int, study: Study) -> list[Cell]:
    """At each unit and epsilon of ``study``, the mechanism :func:`fedrec.presets.choose`
    picks for the data (what ``fedrec simulate --privacy UNIT --epsilon E`` runs), named after
    its preset; and the non-private twin of the private-ALS preset.  A choice of private MostPop
    adds nothing: it is the floor row the baselines already hold."""
    out, als = [], False
    for unit, eps in (("user-level", study.user_eps), ("interaction-level", study.interaction_eps)):
        for e in eps:
            choice = choose(unit, float(e), dataset, n_users)
            if choice.preset == "private-mostpop":
                continue
            als = als or bool(choice.settings.get("als"))
            cfg = with_preset(base, choice.settings)
            out.append(Cell(f"{choice.preset} {unit.split('-')[0]}-eps{e:g}", cfg,
                            {"experiment": "privacy", "unit": unit, "target_epsilon": float(e),
                             "mechanism": "private-als" if choice.settings.get("als") else choice.preset,
                             "family": "als" if choice.settings.get("als") else unit.split("-")[0],
                             "preset": choice.preset, "chosen": True}))
    if als:  # the same passes, caps and ridge without noise: what privacy costs private ALS
        out.append(Cell("non-private @private-als preset", with_preset(base, preset_fields("private-als")),
                        {"experiment": "privacy", "unit": "none", "target_epsilon": math.inf, "twin": "als"}))
    return out


def baseline_rows(data: str, cold_users: float, seeds: list[int], epsilons: tuple[float, ...] = ()) -> list[dict]:
    """MostPop and EASE on each seed's split (the seed draws the order inside ties in time,
    as it does for the federated cells), and private MostPop at each of ``epsilons``
    (user-level; its noise drawn per seed): the floor a private model must beat."""
    from fedrec.baselines import fit_ease, fit_most_popular, fit_private_most_popular

    from fedrec.federated.node import evaluation_inputs

    def inputs_of(s: int) -> tuple:
        fed = load_federation(FedConfig(data=data, cold_users=cold_users, seed=s))
        inputs = evaluation_inputs(fed)  # the beyond-accuracy inputs and groups the federated cells use
        popularity = np.asarray(fed.split.train.sum(axis=0)).ravel().astype(np.float64)  # as the server counts it
        return fed.split, dict(sampled_negatives=99, item_popularity=popularity, item_features=inputs["features"],
                               user_groups={"activity": inputs["groups"]})

    rows = []

    def row(name: str, s: int, res, t: float, **labels) -> dict:
        out = {"cell": name, "seed": s, "experiment": "privacy", "unit": "none", "target_epsilon": math.inf,
               "baseline": True, "seconds": time.perf_counter() - t, **labels}
        for stage, r in (("test", res.test), ("valid", res.valid)):
            out.update({f"{stage}_{m}": v for m, v in r.metrics.items()})
        for group, means in res.test.groups.get("activity", {}).items():
            if group in ("light", "medium", "heavy"):
                out.update({f"test@{group}_{m}": means[m] for m in ("ndcg@10", "hr@10", "recall@20")})
        return out

    for s in seeds:
        split, extras = inputs_of(s)
        for name, fit in (("MostPop", fit_most_popular), ("EASE (centralized)", fit_ease)):
            t = time.perf_counter()
            rows.append(row(name, s, fit(split, **extras), t))
    for eps in sorted(set(epsilons), reverse=True):
        for s in seeds:
            split, extras = inputs_of(s)
            t = time.perf_counter()
            res = fit_private_most_popular(split, epsilon=eps, seed=s, **extras)
            rows.append(row(f"private MostPop eps {eps:g}", s, res, t, unit="user-level", target_epsilon=eps,
                            user_epsilon=res.selected["epsilon"],
                            user_noise_multiplier=res.selected["noise_multiplier"],
                            delta=res.selected["delta"], mechanism="private-mostpop"))
    return rows


def coldstart_rows(out: Path, cells: list[Cell], seeds: list[int], study: Study, say=print) -> list[dict]:
    """User cold-start curves for every privacy cell and seed (kept in each run directory)."""
    rows = []
    for cell in cells:
        if cell.labels.get("experiment") != "privacy" or cell.cfg.cold_users <= 0:
            continue
        for seed in seeds:
            fed = load_federation(replace(cell.cfg, seed=seed))  # the new users' first items: this seed's tie order
            d = out / "runs" / f"{cell.name}-seed{seed}"
            path = d / "coldstart.json"
            if path.exists():
                got = json.loads(path.read_text())
            elif is_sequential(model := federated_model(replace(cell.cfg, seed=seed), fed)):
                # a sequential model serves a new user from its first items: nothing is fitted
                got = [{"fit": "no training", **r} for r in
                       sequential_coldstart(model, d / "best_params.npz", fed.split.cold_user_items, ks=KS)]
                path.write_text(json.dumps(got, indent=1) + "\n")
            else:
                fits = [("no DP", FoldIn())]
                if cell.name == "non-private":
                    fits += [(f"DP fit eps {e:g}", FoldIn(target_epsilon=e)) for e in study.fit_eps]
                got = []
                for fit_name, fit in fits:
                    for r in user_coldstart(d / "best_params.npz", fed.split.cold_user_items, ks=KS, fit=fit,
                                            seed=seed):
                        got.append({"fit": fit_name, **r})
                path.write_text(json.dumps(got, indent=1) + "\n")
            for r in got:
                rows.append({"cell": cell.name, "seed": seed, "unit": cell.labels["unit"],
                             "target_epsilon": cell.labels["target_epsilon"], **r})
        say(f"user cold-start: {cell.name} done")
    return rows


def run_study(name: str, out: Path, *, data: str = "ml-latest-small", seeds: int | None = None,
              rounds: int | None = None, overrides: dict | None = None, say=print) -> dict:
    """Run (or resume) a study; write results, cold-start results, plots and ``report.md``."""
    from fedrec_app.simulations.report.plots import make_plots
    from fedrec_app.simulations.report.markdown import write_study_report

    study = STUDIES[name]
    t0 = time.perf_counter()
    seed_list = list(range(seeds if seeds is not None else study.seeds))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = study_cells(study, data, rounds)
    say(f"study {name!r} on {data}: {len(cells)} cells x {len(seed_list)} seeds = {len(cells) * len(seed_list)} "
        f"federated runs (finished ones are kept)")
    rows = run_cells(cells, seed_list, out, overrides=overrides, say=say)
    if study.privacy_cells:
        rows += baseline_rows(data, study.cold_users, seed_list, study.interaction_eps + study.user_eps)
    write_rows(out, rows)
    cold = coldstart_rows(out, cells, seed_list, study, say=say)
    (out / "coldstart.json").write_text(json.dumps(cold, indent=1, default=str) + "\n")
    _write_csv(out / "coldstart.csv", cold)
    plots = make_plots(out, rows, cold)
    seconds = time.perf_counter() - t0
    report = write_study_report(out, study, rows, cold, plots, data=data, seeds=seed_list, cells=cells,
                                seconds=seconds)
    say(f"report: {report} ({seconds:.0f}s)")
    return {"rows": rows, "coldstart": cold, "plots": plots, "report": report, "seconds": seconds}


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
