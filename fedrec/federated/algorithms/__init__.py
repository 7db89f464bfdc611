"""Training algorithms: how a node trains its users, one class per file, one registry.

``--algorithm`` (``local.algorithm``) names one: a key of :data:`ALGORITHMS`, or a class of
your own as ``package.module:ClassName`` or ``path/to/file.py:ClassName``
(:func:`fedrec.plugins.load_class`; Flower's actors import it by that name).  ``auto``
(the default) picks private ALS with ``--als``, ``sequential`` for a sequential model,
``cohort-sgd`` otherwise.  Adding one to fedrec is one file beside these and one line in
:data:`ALGORITHMS`; see ``docs/guides/algorithms.md``.
"""

from __future__ import annotations

import functools

from fedrec.federated.algorithms.als import ALS
from fedrec.federated.algorithms.base import (PRIVACY_UNITS, StatisticsAlgorithm, TrainedUsers, TrainingAlgorithm,
                                              UserBatch)
from fedrec.federated.algorithms.cohort_sgd import CohortSGD
from fedrec.federated.algorithms.sequential import Sequential
from fedrec.plugins import load_class

__all__ = ["ALGORITHMS", "TrainingAlgorithm", "StatisticsAlgorithm", "UserBatch", "TrainedUsers", "PRIVACY_UNITS",
           "algorithm_class", "algorithm_name", "algorithm_for", "algorithm_problem", "check_algorithm",
           "model_problem", "check_run"]

#: The shipped algorithms, by the name ``--algorithm`` takes.
ALGORITHMS: dict[str, type[TrainingAlgorithm]] = {
    CohortSGD.name: CohortSGD,
    Sequential.name: Sequential,
    ALS.name: ALS,
}


def algorithm_class(spec: str) -> type[TrainingAlgorithm]:
    """The algorithm named by ``spec`` (not ``auto``); a bad name is a one-line ``ValueError``."""
    return load_class(spec, what="algorithm", shipped=ALGORITHMS, base=TrainingAlgorithm)


def algorithm_name(cfg) -> str:
    """``cfg.algorithm``, with ``auto`` resolved from ``--als`` and the model."""
    if cfg.algorithm != "auto":
        return cfg.algorithm
    if cfg.als:
        return ALS.name
    from fedrec.models import federated_model_class, is_sequential

    return Sequential.name if is_sequential(federated_model_class(cfg.model)) else CohortSGD.name


def algorithm_problem(cfg) -> str | None:
    """Why ``cfg``'s algorithm cannot run it (``None``: it can): a bad name, a model it does
    not train, ``--als`` without ALS (or ALS without it), or a DP unit whose mechanism it
    does not implement."""
    from fedrec.models import federated_model_class

    try:
        algo = algorithm_for(cfg)
    except ValueError as e:
        return str(e).split(": ", 1)[-1]
    if cfg.als and not isinstance(algo, ALS):
        return "--als trains by private ALS: leave algorithm at 'auto' or 'als'"
    problem = algo.problem(cfg, federated_model_class(cfg.model))
    if problem:
        return f"{algo.name or type(algo).__name__} cannot run this: {problem}"
    units = [u for u, on in zip(PRIVACY_UNITS, (cfg.dp, cfg.user_level)) if on]
    missing = [u for u in units if u not in algo.privacy_units]
    if missing:
        return (f"{algo.name or type(algo).__name__} implements no {missing[0]} mechanism (its privacy units: "
                f"{', '.join(sorted(algo.privacy_units)) or 'none'}): run it without {missing[0]} DP")
    return None


def check_algorithm(cfg) -> None:
    """Refuse ``cfg`` in one line (:class:`fedrec.errors.ConfigError` naming ``local.algorithm``)
    if its algorithm cannot run it (:func:`algorithm_problem`).  Called where a run starts
    (the simulation's driver, the ServerApp, the deployment), not by the configuration,
    which knows nothing of the algorithms."""
    from fedrec.config import run_key
    from fedrec.errors import ConfigError

    if problem := algorithm_problem(cfg):
        raise ConfigError(run_key("algorithm"), cfg.algorithm, problem)


def model_problem(cfg) -> tuple[str, str] | None:
    """``(field, why)`` if ``cfg``'s model cannot run under its settings (``None``: it can):
    an unknown model, held-out items for a model that does not rank by item features, and
    what sequential models do not have (a GPU path, an item bias for a popularity prior, an
    interaction-level mechanism)."""
    from fedrec.models import federated_model_class, is_sequential, wants_item_features

    try:
        cls = federated_model_class(cfg.model)
    except ValueError as e:
        return "model", str(e).split(": ", 1)[-1]
    if cfg.cold_items > 0 and not wants_item_features(cfg.model):
        return "cold_items", "held-out items can only be ranked by a feature-aware model: use model='two-tower'"
    if is_sequential(cls):
        if cfg.device != "cpu":
            return "device", ("sequential models train on the CPU only (the GPU path covers the cohort engine's "
                              "models: mf, gmf, mlp, neumf, two-tower and your own FederatedModel)")
        if cfg.prior_noise > 0:
            return "prior_noise", "sequential models have no item bias to start from a popularity prior"
        if cfg.dp or cfg.budget_epsilon > 0:
            return "model", ("interaction-level DP is not available for sequential models: one interaction enters "
                             "up to seq-len + 1 samples (as a target and as the input of later positions); use "
                             "user-level DP (user-dp='client')")
    return None


def check_run(cfg) -> None:
    """Refuse in one line (:class:`fedrec.errors.ConfigError` naming the field) a configuration
    whose model or algorithm cannot run it (:func:`model_problem`, :func:`check_algorithm`).
    Called where a run starts (the simulation's driver, the ServerApp, the deployment): the
    configuration validates its own sections and knows nothing of models or algorithms."""
    from fedrec.config import run_key
    from fedrec.errors import ConfigError

    if problem := model_problem(cfg):
        key, why = problem
        raise ConfigError(run_key(key), getattr(cfg, key), why)
    check_algorithm(cfg)


@functools.lru_cache(maxsize=None)
def _instance(spec: str) -> TrainingAlgorithm:
    return algorithm_class(spec)()


def algorithm_for(cfg) -> TrainingAlgorithm:
    """The algorithm that trains ``cfg``'s run (one instance per name and process)."""
    return _instance(algorithm_name(cfg))
