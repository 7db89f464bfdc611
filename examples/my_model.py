"""Bring your own model: a recommender fedrec does not ship, federated with DP for free.

A *factorised bilinear* model: the user's local vector ``p`` meets each item's
vector ``q_i`` through a shared (global) matrix ``W``: ``s(u, i) = p^T W q_i + b_i``.
Declare what is local (``p``), what is global (the item tables and ``W``), and
how to score ``n`` items for one user; fedrec's cohort engine does the rest
(per-sample clipping over every parameter a sample touches, noise, both privacy
units), Flower federates it, and evaluation ranks all items.

It ships with fedrec, so it runs from any directory::

    fedrec simulate --model fedrec_app.examples.my_model:Bilinear --data synthetic:200x100:0 --rounds 20 \
        --users-per-node 50 --out runs/byom
    fedrec simulate --model fedrec_app.examples.my_model:Bilinear --target-epsilon 8 --rounds 20 --out runs/byom-dp

A copy of this file of your own runs as ``--model path/to/my_model.py:Bilinear``.
"""

import torch
from torch import nn

from fedrec.models import FederatedModel


class Bilinear(FederatedModel):
    """``s(u, i) = p_u^T W q_i + b_i``; local ``user``, global ``item_embedding``, ``item_bias``, ``mixing``."""

    def __init__(self, n_items: int, *, dim: int = 32, init_std: float = 0.1, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.n_items, self.init_std = n_items, init_std
        self.local_shapes = {"user": (dim,)}  # never leaves the device
        self.item_tables = ("item_embedding", "item_bias")  # a sample reads only its items' rows
        self.item_embedding = nn.Parameter(torch.randn(n_items, dim, generator=g) * init_std)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.mixing = nn.Parameter(torch.eye(dim))  # dense: shared by every sample

    def score(self, local, items, dense):
        """Scores of n items for one user: ``items[t]`` holds the n items' rows of table t."""
        return items["item_embedding"] @ (dense["mixing"].T @ local["user"]) + items["item_bias"]
