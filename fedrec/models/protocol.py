"""The model protocol of federated training: one small interface every model implements.

In the spirit of Federated Reconstruction, a model *declares* its variables:

- **local state** (:attr:`FederatedModel.local_shapes`): one or more vectors per
  user that are trained on the device and never leave it (a user embedding; none
  for a model whose state is the user's history);
- **global parameters** (the module's ``nn.Parameter`` s, by name): what the server
  aggregates.  Those named in :attr:`FederatedModel.item_tables` are tables with
  one row per item, of which a training sample reads only its own items' rows;
  the others are *dense* (shared layers), read by every sample;
- **public item constants**: buffers named in ``item_tables`` (item features), read
  like tables but never trained nor sent;
- a **score function** for one user over ``n`` items, from which the engine builds
  the per-sample loss (BPR over the sample's positive and its negatives) and the
  full ranking over all items.

``score`` is functional: it receives the values of every tensor it uses, never
reads ``self``'s parameters, so the cohort engine can differentiate it per
sample (``torch.func``) with gathered rows instead of whole tables.  Nothing
outside a model names its tensors: the server takes keys and shapes from
:meth:`FederatedModel.global_params`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["FederatedModel", "Tensors"]

Tensors = Mapping[str, torch.Tensor]


class FederatedModel(nn.Module):
    """Base class of the models that go through the federated engine.

    Subclasses set, in ``__init__`` (after ``super().__init__()``):

    ``n_items``
        Number of items (rows of every item table).
    ``local_shapes``
        ``{name: shape}`` of each user's local vectors.
    ``item_tables``
        Names of the parameters and buffers indexed by item (first dimension
        ``n_items``).

    and implement :meth:`score`.  ``init_std`` scales the initial local state.

    ``batched_score = True`` declares that :meth:`score` and :meth:`sample_loss`
    also take a leading batch dimension (``local[name]`` of shape ``(b, *shape)``,
    item rows ``(b, n, *row_shape)``, scores ``(b, n)``) and that every dense
    parameter is a weight of an ``nn.Linear`` submodule applied through that
    module (``functional_call``) once per forward and used nowhere else.
    Interaction-level DP-SGD then takes the layers' per-sample gradient norms
    from Opacus's ghost norm sampler instead of materialising per-sample
    gradients (two backward passes; about 3x faster for MLP towers, see
    ``benchmarks/opacus_vs_engine.py``); the engine checks the declaration at
    run time and raises if a dense gradient is not accounted for.

    Examples
    --------
    Matrix factorisation in a few lines::

        class MyMF(FederatedModel):
            def __init__(self, n_items, dim=32):
                super().__init__()
                self.n_items, self.local_shapes = n_items, {"user": (dim,)}
                self.item_tables = ("item_embedding",)
                self.item_embedding = nn.Parameter(0.1 * torch.randn(n_items, dim))

            def score(self, local, items, dense):
                return items["item_embedding"] @ local["user"]
    """

    n_items: int
    local_shapes: dict[str, tuple[int, ...]] = {}
    item_tables: tuple[str, ...] = ()
    init_std: float = 0.1
    batched_score: bool = False

    # --- what a model implements ------------------------------------------
    def score(self, local: Tensors, items: Tensors, dense: Tensors) -> torch.Tensor:
        """Scores of ``n`` items for one user.

        Parameters
        ----------
        local
            The user's local vectors, ``local[name]`` of shape ``local_shapes[name]``.
        items
            For every name in :attr:`item_tables`, the rows of the ``n`` items
            scored: shape ``(n, *row_shape)``.
        dense
            Every global parameter that is not an item table, by name.

        Returns
        -------
        torch.Tensor
            ``(n,)`` scores (higher ranks first).
        """
        raise NotImplementedError

    # --- derived from the declarations ------------------------------------
    def global_params(self) -> dict[str, np.ndarray]:
        """Initial global parameters as numpy arrays (the server's keys and shapes)."""
        return {n: p.detach().cpu().numpy().copy() for n, p in self.named_parameters()}

    def global_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.named_parameters()}

    def table_names(self) -> list[str]:
        """Trainable item tables, in parameter order."""
        return [n for n, _ in self.named_parameters() if n in self.item_tables]

    def dense_names(self) -> list[str]:
        """Trainable parameters read by every sample, in parameter order."""
        return [n for n, _ in self.named_parameters() if n not in self.item_tables]

    def constants(self) -> dict[str, torch.Tensor]:
        """Public item constants (buffers listed in :attr:`item_tables`)."""
        return {n: b for n, b in self.named_buffers() if n in self.item_tables}

    def check(self) -> None:
        """Raise ``ValueError`` naming what is wrong with the declarations."""
        name = type(self).__name__
        if not isinstance(getattr(self, "n_items", None), int) or self.n_items < 1:
            raise ValueError(f"model {name}: n_items must be a positive int")
        params = dict(self.named_parameters())
        bufs = dict(self.named_buffers())
        for t in self.item_tables:
            x = params.get(t, bufs.get(t))
            if x is None:
                raise ValueError(f"model {name}: item table {t!r} is neither a parameter nor a buffer")
            if x.shape[0] != self.n_items:
                raise ValueError(f"model {name}: item table {t!r} has {x.shape[0]} rows for {self.n_items} items")
        for k, shape in self.local_shapes.items():
            if not all(isinstance(s, int) and s > 0 for s in shape):
                raise ValueError(f"model {name}: local {k!r} has shape {shape}")

    def init_local(self, users: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Initial local state of ``users``: ``N(0, init_std)``, a function of (seed, user) only."""
        sizes = [int(np.prod(s)) for s in self.local_shapes.values()]
        total = sum(sizes)
        flat = np.empty((len(users), total), dtype=np.float32)
        for j, u in enumerate(np.asarray(users).tolist()):
            flat[j] = np.random.default_rng([seed, 2, u]).standard_normal(total) * self.init_std
        out, start = {}, 0
        for (k, shape), n in zip(self.local_shapes.items(), sizes):
            out[k] = flat[:, start : start + n].reshape((len(users),) + tuple(shape))
            start += n
        return out

    def split_params(self, params: Tensors) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(item tables incl. constants, dense) from a dict of global parameter values."""
        tables = {n: params[n] for n in self.table_names()}
        tables.update(self.constants())
        return tables, {n: params[n] for n in self.dense_names()}

    def score_users(self, local: Tensors, params: Tensors) -> torch.Tensor:
        """``(b, n_items)`` scores of every item for a batch of users (``local[name]``: ``(b, ...)``)."""
        tables, dense = self.split_params(params)
        fn = torch.func.vmap(self.score, in_dims=(0, None, None))
        return fn(dict(local), tables, dense)

    def with_item_prior(self, params: dict[str, np.ndarray], bias: np.ndarray) -> dict[str, np.ndarray]:
        """``params`` with per-item scores ``bias`` (a popularity prior) added where the
        model keeps an additive item bias: ``item_bias`` by default."""
        if "item_bias" not in params or params["item_bias"].shape != (self.n_items,):
            raise ValueError(f"model {type(self).__name__} has no (n_items,) item_bias for a popularity prior")
        out = dict(params)
        out["item_bias"] = (params["item_bias"] + bias).astype(np.float32)
        return out

    def sample_loss(self, scores: torch.Tensor) -> torch.Tensor:
        """Loss of one sample from the scores of ``[positive, negative_1..m]``: BPR,
        averaged over the negatives (one interaction = one clipped sample)."""
        return torch.nn.functional.softplus(scores[..., 1:] - scores[..., :1]).mean(-1)
