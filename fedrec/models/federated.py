"""The shipped federated models: MF, GMF, MLP, NeuMF and a two-tower model.

Each implements :class:`fedrec.models.protocol.FederatedModel`: the user's
vectors are local, every item table and shared layer is global.  Tables are
plain ``(n_items, ...)`` parameters (``item_bias`` is ``(n_items,)``) so the
server's keys read as what they hold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedrec.models.protocol import FederatedModel, Tensors

__all__ = ["FedMF", "FedGMF", "FedMLP", "FedNeuMF", "TwoTower", "FEDERATED_MODELS"]


def _table(n: int, dim: int, std: float, g: torch.Generator) -> nn.Parameter:
    return nn.Parameter(torch.randn(n, dim, generator=g) * std if dim else torch.zeros(n))


def _mlp(width: int, layers: tuple[int, ...], out: int, std: float, g: torch.Generator) -> nn.Sequential:
    """ReLU MLP ``width -> layers... -> out`` with N(0, std) weights and zero biases."""
    blocks: list[nn.Module] = []
    for h in layers:
        blocks += [nn.Linear(width, h), nn.ReLU()]
        width = h
    blocks.append(nn.Linear(width, out))
    seq = nn.Sequential(*blocks)
    with torch.no_grad():
        for p in seq.parameters():
            if p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, std, generator=g)
    return seq


def _declare(model: FederatedModel, n_items: int, dim: int, init_std: float, g: torch.Generator, *,
             users: tuple[str, ...] = ("user",), tables: tuple[str, ...] = ("item_embedding",)) -> None:
    """The NCF family's declarations: local vectors ``users`` of size ``dim``, item
    tables ``tables`` (``N(0, init_std)``, drawn from ``g`` in order) and a zero ``item_bias``."""
    model.n_items, model.init_std = n_items, init_std
    model.local_shapes = {u: (dim,) for u in users}
    model.item_tables = tuple(tables) + ("item_bias",)
    for t in tables:
        setattr(model, t, _table(n_items, dim, init_std, g))
    model.item_bias = _table(n_items, 0, init_std, g)


def _sub(dense: Tensors, prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``dense`` under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in dense.items() if k.startswith(prefix + ".")}


def _output(weight: torch.Tensor) -> nn.Linear:
    """A bias-free output layer ``h -> h . weight`` (a layer, so that DP-SGD takes its
    per-sample gradient norms from Opacus's norm sampler for ``nn.Linear``)."""
    layer = nn.Linear(len(weight), 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight[None])
    return layer


_ACTIVATIONS_PER_CHUNK = 1 << 20


def _tower_all(tower: nn.Sequential, weights: dict[str, torch.Tensor], users: torch.Tensor,
               items: torch.Tensor) -> torch.Tensor:
    """``tower([users_b, items_n])`` for every (user, item) pair: ``(b, n, out)``.

    The first layer is split into its user and item halves, each applied once
    (``b`` and ``n`` rows) instead of once per pair, so full ranking costs the
    later, narrower layers only.  Equal to applying the tower to the concatenated
    pairs (tested)."""
    w, bias = weights["0.weight"], weights["0.bias"]
    d = users.shape[-1]
    user_part = users @ w[:, :d].T
    item_part = items @ w[:, d:].T + bias
    # a few users at a time: the (users, items, width) activations then stay
    # small enough for the caches (about 3x faster than 256 users at once on ML-1M)
    chunk = max(1, _ACTIVATIONS_PER_CHUNK // max(1, item_part.numel()))
    outs = []
    for start in range(0, max(1, len(user_part)), chunk):
        h = user_part[start : start + chunk, None, :] + item_part[None]
        for i, layer in enumerate(tower):
            if i == 0:
                continue
            if isinstance(layer, nn.Linear):
                h = torch.nn.functional.linear(h, weights[f"{i}.weight"], weights[f"{i}.bias"])
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            else:  # pragma: no cover - _mlp builds Linear and ReLU only
                raise TypeError(f"unexpected layer {layer!r} in a tower")
        outs.append(h)
    return torch.cat(outs)


class FedMF(FederatedModel):
    """Matrix factorisation: ``s(u, i) = p_u . q_i + b_i``.

    Local: ``user`` (dim).  Global: ``item_embedding`` (n_items, dim), ``item_bias`` (n_items,).
    The initial item table is ``N(0, init_std)`` from ``np.random.default_rng([seed, 1])``
    (the federated runs' long-standing initialisation).
    """

    batched_score = True

    def __init__(self, n_items: int, *, dim: int = 64, init_std: float = 0.1, seed: int = 0, **_):
        super().__init__()
        self.n_items, self.init_std = n_items, init_std
        self.local_shapes = {"user": (dim,)}
        self.item_tables = ("item_embedding", "item_bias")
        rng = np.random.default_rng([seed, 1])
        self.item_embedding = nn.Parameter(
            torch.as_tensor((rng.standard_normal((n_items, dim)) * init_std).astype(np.float32)))
        self.item_bias = nn.Parameter(torch.zeros(n_items))

    def score(self, local, items, dense):
        # a product and a sum rather than ``@``: under vmap a matrix-vector product per
        # sample becomes a batched matmul of tiny matrices, whose backward is ~10x slower
        return (items["item_embedding"] * local["user"].unsqueeze(-2)).sum(-1) + items["item_bias"]

    def score_users(self, local, params):
        return local["user"] @ params["item_embedding"].T + params["item_bias"]


class FedGMF(FederatedModel):
    """Generalised MF (He et al. 2017): ``s(u, i) = h . (p_u * q_i) + b_i``, ``h`` global."""

    batched_score = True

    def __init__(self, n_items: int, *, dim: int = 32, init_std: float = 0.1, seed: int = 0, **_):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        _declare(self, n_items, dim, init_std, g)
        self.output = _output(torch.ones(dim))

    def score(self, local, items, dense):
        h = items["item_embedding"] * local["user"].unsqueeze(-2)
        return functional_call(self.output, _sub(dense, "output"), (h,)).squeeze(-1) + items["item_bias"]


class FedMLP(FederatedModel):
    """MLP over ``[p_u, q_i]`` (He et al. 2017); the tower is global."""

    batched_score = True

    def __init__(self, n_items: int, *, dim: int = 32, layers: tuple[int, ...] = (64, 32, 16), init_std: float = 0.1,
                 seed: int = 0, **_):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        _declare(self, n_items, dim, init_std, g)
        self.tower = _mlp(2 * dim, tuple(layers), 1, init_std, g)

    def score(self, local, items, dense):
        q = items["item_embedding"]
        x = torch.cat([local["user"].unsqueeze(-2).expand(q.shape), q], -1)
        return functional_call(self.tower, _sub(dense, "tower"), (x,)).squeeze(-1) + items["item_bias"]

    def score_users(self, local, params):
        tables, dense = self.split_params(params)
        out = _tower_all(self.tower, _sub(dense, "tower"), local["user"], tables["item_embedding"])
        return out.squeeze(-1) + tables["item_bias"]


class FedNeuMF(FederatedModel):
    """NeuMF: a GMF and an MLP branch joined by a global linear output.

    Local: ``user`` (GMF branch) and ``user_mlp`` (MLP branch).
    """

    batched_score = True

    def __init__(self, n_items: int, *, dim: int = 32, layers: tuple[int, ...] = (64, 32, 16), init_std: float = 0.1,
                 seed: int = 0, **_):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        _declare(self, n_items, dim, init_std, g, users=("user", "user_mlp"),
                 tables=("item_embedding", "item_embedding_mlp"))
        layers = tuple(layers)
        self.tower = _mlp(2 * dim, layers[:-1], layers[-1], init_std, g)
        self.output = _output(torch.cat([torch.ones(dim), torch.randn(layers[-1], generator=g) * init_std]))

    def score(self, local, items, dense):
        q, qm = items["item_embedding"], items["item_embedding_mlp"]
        gmf = q * local["user"].unsqueeze(-2)
        x = torch.cat([local["user_mlp"].unsqueeze(-2).expand(qm.shape), qm], -1)
        mlp = torch.relu(functional_call(self.tower, _sub(dense, "tower"), (x,)))
        out = functional_call(self.output, _sub(dense, "output"), (torch.cat([gmf, mlp], -1),))
        return out.squeeze(-1) + items["item_bias"]

    def score_users(self, local, params):
        tables, dense = self.split_params(params)
        d = local["user"].shape[-1]
        out = dense["output.weight"][0]
        gmf = (local["user"] * out[:d]) @ tables["item_embedding"].T
        mlp = torch.relu(_tower_all(self.tower, _sub(dense, "tower"), local["user_mlp"], tables["item_embedding_mlp"]))
        return gmf + mlp @ out[d:] + tables["item_bias"]


class TwoTower(FederatedModel):
    """Two towers: the user's local vector against an item vector built from public
    item features by a small global network, plus a free per-item row.

    ``v_i = e_i + f(x_i)``, ``s(u, i) = p_u . v_i[:d] + v_i[d]`` with ``x_i`` the item's
    features (a constant table), ``f`` a ReLU MLP and ``e_i`` a free row (zero at
    start).  Items never seen in training keep ``e_i = 0`` (their rows are frozen
    by the server) and are ranked through the tower alone.
    """

    batched_score = True

    def __init__(self, n_items: int, *, item_features: np.ndarray | None = None, dim: int = 64,
                 layers: tuple[int, ...] = (64,), init_std: float = 0.1, seed: int = 0, **_):
        super().__init__()
        if item_features is None or len(item_features) != n_items:
            raise ValueError("two-tower needs item features with one row per item (genres or year)")
        g = torch.Generator().manual_seed(seed)
        self.n_items, self.init_std, self.dim = n_items, init_std, dim
        self.local_shapes = {"user": (dim,)}
        self.item_tables = ("item_embedding", "item_features")
        self.register_buffer("item_features", torch.as_tensor(np.asarray(item_features, dtype=np.float32)))
        self.item_embedding = nn.Parameter(torch.zeros(n_items, dim + 1))
        self.tower = _mlp(self.item_features.shape[1], tuple(layers), dim + 1, init_std, g)

    def with_item_prior(self, params, bias):
        out = dict(params)
        out["item_embedding"] = params["item_embedding"].copy()
        out["item_embedding"][:, self.dim] += bias
        return out

    def score(self, local, items, dense):
        v = items["item_embedding"] + functional_call(self.tower, _sub(dense, "tower"), (items["item_features"],))
        return (v[..., : self.dim] * local["user"].unsqueeze(-2)).sum(-1) + v[..., self.dim]


FEDERATED_MODELS = {"mf": FedMF, "gmf": FedGMF, "mlp": FedMLP, "neumf": FedNeuMF, "two-tower": TwoTower}
