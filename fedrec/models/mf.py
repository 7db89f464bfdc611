"""Matrix factorisation: ``score(u, i) = p_u . q_i + b_i``."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import Recommender

__all__ = ["MF"]


class MF(Recommender):
    """Matrix factorisation with an item bias.

    Local: ``user_embedding``.  Global: ``item_embedding``, ``item_bias``.
    """

    def __init__(self, n_users: int, n_items: int, *, dim: int = 64, init_std: float = 0.1, seed: int = 0):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        g = torch.Generator().manual_seed(seed)
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, init_std, generator=g)
            self.item_embedding.weight.normal_(0.0, init_std, generator=g)
            self.item_bias.weight.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        p = self.user_embedding(users)
        q = self.item_embedding(items)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_embedding(users) @ self.item_embedding.weight.T + self.item_bias.weight.T
