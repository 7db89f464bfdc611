"""Differential privacy: the mechanisms as data, accounting and calibration (Opacus accountants)."""

from fedrec.privacy.accounting import calibrate_noise, epsilon, epsilons_for_steps
from fedrec.privacy.mechanisms import InteractionLevel, PopularityPrior, UserLevel, mechanisms_of

__all__ = ["epsilon", "calibrate_noise", "epsilons_for_steps", "InteractionLevel", "UserLevel", "PopularityPrior",
           "mechanisms_of"]
