"""Local training of a sequential model (SASRec, GRU4Rec) from each user's history, kept on
the node; user-level DP only (one interaction enters up to seq-len + 1 samples)."""

from __future__ import annotations

import numpy as np

from fedrec.federated.algorithms.base import TrainedUsers, TrainingAlgorithm, UserBatch

__all__ = ["Sequential"]


class Sequential(TrainingAlgorithm):
    """:func:`fedrec.engine.sequence.train_sequences` on each batch of users."""

    name = "sequential"
    privacy_units = frozenset({"user-level"})

    def problem(self, cfg, model_class):
        from fedrec.models.sequential import is_sequential

        return None if is_sequential(model_class) else "it trains sequential models (sasrec, gru4rec)"

    def trainable_users(self, fed, users: np.ndarray) -> np.ndarray:
        """A user with one training item has no (prefix, next item) sample."""
        from fedrec.engine.sequence import trainable_users
        from fedrec.federated.federation import histories

        return trainable_users(histories(fed, "train"), users)

    def user_weights(self, fed, users: np.ndarray) -> np.ndarray:
        """By training positions (history length - 1)."""
        from fedrec.engine.sequence import position_weights
        from fedrec.federated.federation import histories

        return position_weights(histories(fed, "train"), users)

    def train_users(self, batch: UserBatch) -> TrainedUsers:
        from fedrec.engine.sequence import train_sequences
        from fedrec.federated.federation import histories

        cfg = batch.cfg
        return train_sequences(batch.model, batch.params, histories(batch.fed, "train"), batch.fed.split.train,
                               batch.users, batch.local_config(), seed=cfg.seed,
                               server_round=batch.server_round, generator=batch.generator, user_weights=batch.weights)
