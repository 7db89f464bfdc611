"""Cohort SGD: the cohort engine's local training of a model scored from local vectors
(MF, GMF, MLP, NeuMF, two-tower, your own :class:`~fedrec.models.protocol.FederatedModel`),
with interaction-level DP-SGD or user-level clipping as the run asks."""

from __future__ import annotations

from fedrec.federated.algorithms.base import PRIVACY_UNITS, TrainedUsers, TrainingAlgorithm, UserBatch

__all__ = ["CohortSGD"]


class CohortSGD(TrainingAlgorithm):
    """:func:`fedrec.engine.train_cohort` on each batch of users."""

    name = "cohort-sgd"
    privacy_units = frozenset(PRIVACY_UNITS)

    def problem(self, cfg, model_class):
        from fedrec.models.sequential import is_sequential

        return ("it trains models scored from local vectors; sequential models use 'sequential'"
                if is_sequential(model_class) else None)

    def train_users(self, batch: UserBatch) -> TrainedUsers:
        from fedrec.engine import train_cohort

        cfg = batch.cfg
        return train_cohort(batch.model, batch.local, batch.params, batch.fed.split.train, batch.users,
                            batch.local_config(),
                            seed=cfg.seed, server_round=batch.server_round, generator=batch.generator,
                            dp_key=batch.dp_key, generic=cfg.engine == "generic", trainable=batch.trainable,
                            device=batch.device, user_weights=batch.weights)
