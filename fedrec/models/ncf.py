"""The NCF family (He et al. 2017): GMF, MLP and NeuMF."""

from __future__ import annotations

import torch
from torch import nn

from fedrec.models.base import Recommender

__all__ = ["GMF", "MLP", "NeuMF"]


def _init(module: nn.Module, std: float, g: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, std, generator=g)


def _tower(width: int, layers: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """ReLU MLP from ``width`` through ``layers``; returns it and its output width."""
    blocks: list[nn.Module] = []
    for h in layers:
        blocks += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*blocks), width


class GMF(Recommender):
    """Generalised MF: ``h . (p_u * q_i) + b_i``.  Local: ``user_embedding``."""

    def __init__(self, n_users: int, n_items: int, *, dim: int = 32, init_std: float = 0.1, seed: int = 0):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.output = nn.Linear(dim, 1, bias=False)
        _init(self, init_std, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            self.output.weight.fill_(1.0)
            self.item_bias.weight.zero_()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = self.user_embedding(users) * self.item_embedding(items)
        return self.output(h).squeeze(-1) + self.item_bias(items).squeeze(-1)


class MLP(Recommender):
    """MLP over ``[p_u, q_i]``.  Local: ``user_embedding``; the tower is global."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        dim: int = 32,
        layers: tuple[int, ...] = (64, 32, 16),
        init_std: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.tower, width = _tower(2 * dim, layers)
        self.output = nn.Linear(width, 1)
        _init(self, init_std, torch.Generator().manual_seed(seed))

    def hidden(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.tower(torch.cat([self.user_embedding(users), self.item_embedding(items)], -1))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(users, items)).squeeze(-1)


class NeuMF(Recommender):
    """NeuMF: GMF and MLP branches joined by a linear output layer.

    Local: both user embeddings (``user_embedding`` and ``user_embedding_mlp``).
    """

    local_prefixes = ("user_embedding", "user_embedding_mlp")

    def __init__(
        self,
        n_users: int,
        n_items: int,
        *,
        dim: int = 32,
        layers: tuple[int, ...] = (64, 32, 16),
        init_std: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.user_embedding_mlp = nn.Embedding(n_users, dim)
        self.item_embedding_mlp = nn.Embedding(n_items, dim)
        self.tower, width = _tower(2 * dim, layers)
        self.output = nn.Linear(dim + width, 1)
        _init(self, init_std, torch.Generator().manual_seed(seed))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.user_embedding(users) * self.item_embedding(items)
        mlp = self.tower(
            torch.cat([self.user_embedding_mlp(users), self.item_embedding_mlp(items)], -1)
        )
        return self.output(torch.cat([gmf, mlp], -1)).squeeze(-1)
