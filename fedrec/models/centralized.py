"""The centralized counterpart of a federated model: the same score function, every
user's local state in one table, trained on pooled data (``fedrec baseline --model X``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.models.base import Recommender
from fedrec.models.protocol import FederatedModel

__all__ = ["Centralized"]


class Centralized(Recommender):
    """A :class:`FederatedModel` trained centrally: its local vectors become rows of
    per-user tables (``user__<name>``), its global parameters stay as they are."""

    def __init__(self, model: FederatedModel, n_users: int, *, seed: int = 0):
        super().__init__()
        self.model = model
        self.n_users, self.n_items = n_users, model.n_items
        init = model.init_local(np.arange(n_users), seed)
        self.local_prefixes = tuple(f"user__{k}" for k in init)
        for k, v in init.items():
            setattr(self, f"user__{k}", nn.Parameter(torch.as_tensor(v)))

    def _local(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"user__{k}")[users] for k in self.model.local_shapes}

    def _params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        tables, dense = self.model.split_params(self._params())
        rows = {t: v[items].unsqueeze(1) for t, v in tables.items()}  # one item per pair
        pair = torch.func.vmap(lambda lc, rw: self.model.score(lc, rw, dense)[0])
        return pair(self._local(users), rows)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.score_users(self._local(users), self._params())
