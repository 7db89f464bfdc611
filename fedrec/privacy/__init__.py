"""Differential privacy: accounting and calibration (Opacus accountants)."""

from fedrec.privacy.accounting import calibrate_noise, epsilon, epsilons_for_steps

__all__ = ["epsilon", "calibrate_noise", "epsilons_for_steps"]
