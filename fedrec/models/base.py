"""What every fedrec model declares: its local and its global parameters."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Recommender"]


class Recommender(nn.Module):
    """Base class of fedrec's models.

    Subclasses set :attr:`local_prefixes`: the parameter-name prefixes that are
    *local* (trained on a client, never sent anywhere — the user embedding).
    Every other parameter is *global* (item embeddings, biases, shared layers):
    the only thing the server sees and aggregates.
    """

    local_prefixes: tuple[str, ...] = ("user_embedding",)

    n_users: int
    n_items: int

    def is_local(self, name: str) -> bool:
        return name.startswith(self.local_prefixes)

    def local_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if self.is_local(n)]

    def global_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if not self.is_local(n)]

    def global_state(self) -> dict[str, np.ndarray]:
        """Copies of the global parameters as numpy arrays (what gets sent)."""
        return {
            n: p.detach().cpu().numpy().copy()
            for n, p in self.named_parameters()
            if not self.is_local(n)
        }

    def load_global_state(self, state: dict[str, np.ndarray]) -> None:
        """Overwrite the global parameters; raises KeyError/ValueError on mismatch."""
        params = dict(self.named_parameters())
        expected = set(self.global_names())
        if set(state) != expected:
            raise KeyError(
                f"global state keys {sorted(state)} do not match the model's {sorted(expected)}"
            )
        with torch.no_grad():
            for n, v in state.items():
                if tuple(v.shape) != tuple(params[n].shape):
                    raise ValueError(
                        f"global parameter {n!r} has shape {tuple(v.shape)}, expected {tuple(params[n].shape)}"
                    )
                params[n].copy_(torch.as_tensor(v))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: ``(len(users), n_items)``."""
        items = torch.arange(self.n_items, device=users.device)
        b = users.shape[0]
        return self.forward(
            users.repeat_interleave(self.n_items), items.repeat(b)
        ).view(b, self.n_items)
