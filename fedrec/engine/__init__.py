"""The cohort engine: local training of any federated model, with or without DP.

:func:`train_cohort` trains the users of a cohort against fixed global
parameters (see :mod:`fedrec.engine.cohort`); registered fast paths
(:mod:`fedrec.engine.mf_fast`) serve models whose gradients are written out by hand.
"""

from fedrec.engine.cohort import (
    FAST_PATHS,
    CohortResult,
    LocalConfig,
    cohort_samples,
    interaction_weights,
    keyed_negatives,
    register_fast_path,
    steps_per_round,
    train_cohort,
)
from fedrec.engine.mf_fast import mf_round  # also registers the MF fast path

__all__ = ["train_cohort", "LocalConfig", "CohortResult", "cohort_samples", "keyed_negatives", "steps_per_round",
           "register_fast_path", "FAST_PATHS", "mf_round", "interaction_weights"]
