"""The interface every training algorithm implements.

A node's round (:func:`fedrec.federated.node.train_round`) does what all algorithms share: it
replays a release it already made, draws the secret DP randomness, picks the users that
train (Poisson sampling, epsilon budgets), cuts them into chunks that bound memory, and
builds the release from the chunks' results (their user-weighted mean; with user-level DP
the global parameters plus the users' sum, the form Flower's DP wrappers clip and noise)
with its metrics and accounting.  A :class:`TrainingAlgorithm` trains one chunk of users
(:meth:`TrainingAlgorithm.train_users`); the composed server averages the releases and
steps its optimiser, with every DP wrapper, SecAgg+ and robust aggregation it offers.

An algorithm whose release is not a change of the global parameters (private
ALS releases sufficient statistics, and has a server of its own) is a
:class:`StatisticsAlgorithm` and runs the node's whole round itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from fedrec.config import FedConfig
    from fedrec.federated.state import LocalState
    from fedrec.federated.federation import Federation
    from fedrec.models.protocol import FederatedModel

__all__ = ["UserBatch", "TrainedUsers", "TrainingAlgorithm", "StatisticsAlgorithm", "PRIVACY_UNITS"]

#: The units a private run may ask for (``FedConfig.dp``: interaction-level; ``FedConfig.user_level``).
PRIVACY_UNITS = ("interaction-level", "user-level")


@dataclass
class UserBatch:
    """One chunk of a node's users that train this round, and everything their training reads.

    ``local`` holds these users' rows of the local state; ``params`` the global
    parameters as received (never modified).  ``generator`` and ``dp_key`` are the node's
    secret DP randomness (``None`` in a run without DP); ``trainable`` (``train-head``) is
    the mask of item rows the server trains; ``weights`` the users' weights in the node's
    release (``weighting='interaction'``; ``None``: equal); ``user_releases`` (distributed
    DP) receives each chunk of the users' clipped releases instead of their mean
    (:class:`fedrec.engine.cohort.LocalConfig`'s ``user_releases``).
    """

    cfg: FedConfig
    fed: Federation
    model: FederatedModel
    params: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]
    users: np.ndarray
    server_round: int
    generator: torch.Generator | None = None
    dp_key: int | None = None
    trainable: torch.Tensor | None = None
    device: torch.device | None = None
    weights: np.ndarray | None = None
    user_releases: Callable | None = None

    def local_config(self):
        """What each user of the batch does this round (:class:`fedrec.engine.cohort.LocalConfig`)."""
        import dataclasses

        from fedrec.engine.cohort import LocalConfig

        return dataclasses.replace(LocalConfig.from_settings(self.cfg), user_releases=self.user_releases)


@dataclass
class TrainedUsers:
    """What :meth:`TrainingAlgorithm.train_users` returns (the engine's ``CohortResult`` has
    the same fields).

    ``update``: the mean over the batch's users (weighted by ``UserBatch.weights``) of what
    each releases, per global parameter: the change the user's training makes to it (a
    model delta; the server's optimiser moves the parameters along the mean of them,
    FedOpt's pseudo-gradient: ``params + lr * update`` with ``--server-opt sgd``).
    ``local``: the users' new local state, per name.  ``loss``: their mean training loss
    (released only in runs without DP).  ``item_counts``: how many of them touched each
    item row (item-wise aggregation only).
    """

    update: dict[str, torch.Tensor]
    local: dict[str, torch.Tensor]
    loss: float = 0.0
    item_counts: np.ndarray | None = None


class TrainingAlgorithm:
    """How a node trains a batch of its users in one round.

    Subclasses set :attr:`name` and implement :meth:`train_users`.  :attr:`privacy_units`
    names the DP units whose mechanism the algorithm runs: a private run of another unit is
    refused where the run starts (:func:`fedrec.federated.algorithms.check_run`).
    Every parameter trained on a user's data that reaches the release must go through the
    mechanism, so an algorithm that does not clip and noise as the unit requires may not be
    used with it.
    """

    #: the name ``--algorithm`` takes (and the registry's key)
    name: ClassVar[str] = ""
    #: DP units whose mechanism the algorithm implements (subset of :data:`PRIVACY_UNITS`)
    privacy_units: ClassVar[frozenset[str]] = frozenset()

    def problem(self, cfg: FedConfig, model_class: type) -> str | None:
        """Why the algorithm cannot train ``model_class`` under ``cfg`` (``None``: it can)."""
        return None

    def trainable_users(self, fed: Federation, users: np.ndarray) -> np.ndarray:
        """Mask of ``users`` that have something to train on (default: all)."""
        return np.ones(len(users), dtype=bool)

    def user_weights(self, fed: Federation, users: np.ndarray) -> np.ndarray:
        """Each user's weight under ``weighting='interaction'`` (default: its training interactions)."""
        from fedrec.engine import interaction_weights

        return interaction_weights(fed.split.train, users)

    def train_users(self, batch: UserBatch) -> TrainedUsers:
        """Train ``batch``'s users for one round; see :class:`TrainedUsers`."""
        raise NotImplementedError

    def evaluation_state(self, cfg: FedConfig, fed: Federation, state: LocalState,
                         global_params: dict[str, np.ndarray]) -> LocalState:
        """The local state the node's evaluation scores from (default: the state as kept)."""
        return state


class StatisticsAlgorithm(TrainingAlgorithm):
    """An algorithm that runs the node's whole round itself (its release is not a
    pseudo-gradient of the global parameters, and its server is its own)."""

    def round(self, cfg: FedConfig, fed: Federation, partition: int, state: LocalState, *,
              global_params: dict[str, np.ndarray],
              server_round: int) -> tuple[dict[str, np.ndarray], dict, LocalState]:
        """The node's release, its metrics and the new local state."""
        raise NotImplementedError
