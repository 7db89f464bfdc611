"""Sequential recommenders whose user state is the history itself: SASRec and GRU4Rec.

A :class:`SequentialModel` has **no local vectors**: the device keeps the user's
ordered history (:mod:`fedrec.data.sequences`) and never sends it; every
parameter is global: the item table (shared by inputs and outputs, as in
SASRec) and the sequence encoder.  The model reads the last ``max_len`` items
and scores every item by the dot product of the encoder's last state with the
item's row.

Training samples are positions of a window (:func:`fedrec.data.sequences.training_windows`):
the target of each position against ``negatives`` sampled items, with the
position's loss (:meth:`SequentialModel.position_loss`: BPR averaged over the
negatives, or sampled softmax).  The functions take the *gathered* item rows
of a window, never whole tables, so the sequence engine
(:mod:`fedrec.engine.sequence`) can take per-user gradients cheaply.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedrec.data.sequences import Histories, last_items
from fedrec.models.federated import _sub
from fedrec.models.protocol import FederatedModel, Tensors

__all__ = ["SequentialModel", "SASRec", "GRU4Rec", "SEQUENTIAL_MODELS", "is_sequential"]


class SequentialModel(FederatedModel):
    """Base class of the models whose user state is the history (no local vectors).

    Subclasses build ``self.encoder`` (an ``nn.Module`` mapping input rows
    ``(..., L, d)`` and a mask ``(..., L)`` to states ``(..., L, d)``, where the
    state at column ``c`` depends on the inputs at columns ``<= c`` only) and
    call :meth:`_declare` first.

    Attributes
    ----------
    max_len : int
        Items of the history the model reads (``L``).
    loss : str
        ``"bpr"`` (mean over the negatives) or ``"softmax"`` (sampled softmax over
        the target and its negatives).
    dropout : float
        Dropout rate while training (0 at evaluation).
    """

    max_len: int
    loss: str = "softmax"
    dropout: float = 0.0

    def _declare(self, n_items: int, dim: int, max_len: int, init_std: float, loss: str, dropout: float,
                 g: torch.Generator) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1; got {max_len}")
        if loss not in ("bpr", "softmax"):
            raise ValueError(f"loss must be 'bpr' or 'softmax'; got {loss!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.n_items, self.init_std, self.dim = n_items, init_std, dim
        self.max_len, self.loss, self.dropout = max_len, loss, dropout
        self.local_shapes = {}
        self.item_tables = ("item_embedding",)
        self.item_embedding = nn.Parameter(torch.randn(n_items, dim, generator=g) * init_std)

    # --- the engine's entry points ----------------------------------------
    def encode(self, rows: torch.Tensor, mask: torch.Tensor, dense: Tensors, *, train: bool = False) -> torch.Tensor:
        """States ``(..., L, d)`` from input rows ``(..., L, d)`` (zero where ``mask`` is false)."""
        return functional_call(self.encoder, _sub(dense, "encoder"), (rows, mask, train))

    def position_loss(self, scores: torch.Tensor) -> torch.Tensor:
        """Loss per position from the scores ``(..., 1 + m)`` of ``[target, negatives]``."""
        if self.loss == "bpr":
            return F.softplus(scores[..., 1:] - scores[..., :1]).mean(-1)
        return torch.logsumexp(scores, -1) - scores[..., 0]

    def window_loss(self, rows_in: torch.Tensor, rows_cand: torch.Tensor, mask: torch.Tensor, dense: Tensors, *,
                    train: bool = True) -> torch.Tensor:
        """Summed loss of a window's positions (any leading batch dimensions).

        ``rows_in`` ``(..., L, d)``: the input items' rows; ``rows_cand``
        ``(..., L, 1 + m, d)``: each position's target then negatives; ``mask``
        ``(..., L)``: which positions exist."""
        m = mask.to(rows_in.dtype)
        h = self.encode(rows_in * m[..., None], mask, dense, train=train)
        scores = (rows_cand * h[..., None, :]).sum(-1)
        return (self.position_loss(scores) * m).sum(-1)

    def score_histories(self, history: torch.Tensor, params: Tensors) -> torch.Tensor:
        """``(b, n_items)`` scores of every item after each history ``(b, L)`` (``-1`` pads)."""
        table = params["item_embedding"]
        mask = history >= 0
        rows = table[history.clamp(min=0)] * mask[..., None].to(table.dtype)
        dense = {n: params[n] for n in self.dense_names()}
        h = self.encode(rows, mask, dense)[..., -1, :]
        return h @ table.T

    def history_scorer(self, params: Tensors, hist: Histories):
        """A score function (users -> ``(b, n_items)`` scores) after each user's last
        ``max_len`` items of ``hist``: what evaluation ranks."""

        def score(users: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(last_items(hist, users, self.max_len))
            with torch.no_grad():
                return self.score_histories(x, params).numpy()

        return score

    def score(self, local, items, dense):
        raise TypeError(f"{type(self).__name__} is sequential: it scores from a history (score_histories), "
                        "not from local vectors")


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x_q, x_kv, allowed, p: float, train: bool):
        *lead, L, d = x_q.shape
        h, dh = self.heads, d // self.heads

        def split(t):
            return t.reshape(*lead, L, h, dh).transpose(-3, -2)  # (..., h, L, dh)

        q, k, v = split(self.q(x_q)), split(self.k(x_kv)), split(self.v(x_kv))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        att = torch.where(allowed[..., None, :, :], att, torch.full_like(att, -1e9))
        att = F.dropout(torch.softmax(att, -1), p, train)
        out = (att @ v).transpose(-3, -2).reshape(*lead, L, d)
        return self.o(out)


class _SASRecBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_attention = nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads)
        self.ln_feedforward = nn.LayerNorm(dim)
        self.ff1, self.ff2 = nn.Linear(dim, dim), nn.Linear(dim, dim)


class _SASRecEncoder(nn.Module):
    """SASRec's encoder (Kang & McAuley 2018, the authors' pre-norm variant):
    scaled item rows plus learned positions, causal self-attention blocks with a
    point-wise feed-forward, a final layer norm."""

    def __init__(self, dim: int, max_len: int, blocks: int, heads: int, dropout: float, std: float, g: torch.Generator):
        super().__init__()
        self.dropout = dropout
        self.position = nn.Parameter(torch.randn(max_len, dim, generator=g) * std)
        self.blocks = nn.ModuleList(_SASRecBlock(dim, heads) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)
        with torch.no_grad():
            for b in self.blocks:
                for lin in (b.attention.q, b.attention.k, b.attention.v, b.attention.o, b.ff1, b.ff2):
                    nn.init.xavier_uniform_(lin.weight, generator=g)
                    lin.bias.zero_()

    def forward(self, rows, mask, train: bool):
        L, d = rows.shape[-2:]
        m = mask[..., None].to(rows.dtype)
        p = self.dropout
        x = F.dropout(rows * math.sqrt(d) + self.position, p, train) * m
        causal = torch.ones(L, L, dtype=torch.bool, device=rows.device).tril()
        allowed = causal & mask[..., None, :]  # (..., L, L): key j <= query i and present
        for b in self.blocks:
            q = b.ln_attention(x)
            x = q + b.attention(q, x, allowed, p, train)
            y = b.ln_feedforward(x)
            x = y + F.dropout(b.ff2(F.dropout(F.relu(b.ff1(y)), p, train)), p, train)
            x = x * m
        return self.ln(x)


class SASRec(SequentialModel):
    """SASRec-style self-attention over the last ``max_len`` items (``--model sasrec``).

    Global: ``item_embedding`` (n_items, dim) and the encoder (positions,
    ``blocks`` causal attention blocks of ``heads`` heads, layer norms)."""

    def __init__(self, n_items: int, *, dim: int = 64, max_len: int = 50, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, loss: str = "softmax", init_std: float = 0.1, seed: int = 0, **_):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self._declare(n_items, dim, max_len, init_std, loss, dropout, g)
        self.encoder = _SASRecEncoder(dim, max_len, blocks, heads, dropout, init_std, g)


class _GRUEncoder(nn.Module):
    """One GRU layer over the input rows (the state stays put over padding).

    Outside ``torch.func`` transforms the layer runs as PyTorch's fused GRU
    (``torch.gru``) over each window's present items moved to the front; the
    state at a column is then the state after the window's last present item at
    or before it, which is what the step-by-step recurrence (:meth:`recurrence`,
    used under ``vmap``/``grad``, where ``torch.gru`` has no batching rule) keeps
    over padding.  The two agree to float rounding (tested); the fused layer's
    forward and backward are about 10x faster on the CPU (a non-private round 2x)."""

    def __init__(self, dim: int, dropout: float, g: torch.Generator):
        super().__init__()
        self.dropout = dropout
        self.input, self.hidden = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        with torch.no_grad():
            bound = 1 / math.sqrt(dim)
            for lin in (self.input, self.hidden):
                lin.weight.uniform_(-bound, bound, generator=g)
                lin.bias.zero_()

    def forward(self, rows, mask, train: bool):
        rows = F.dropout(rows, self.dropout, train)
        states = self.recurrence(rows, mask) if _transformed() else self.fused(rows, mask)
        return F.dropout(states, self.dropout, train)

    def recurrence(self, rows, mask):
        """States ``(..., L, d)``, one step per column (any transform composes with it)."""
        L, d = rows.shape[-2:]
        gi = self.input(rows)  # (..., L, 3d)
        h = torch.zeros_like(rows[..., 0, :])
        out = []
        for t in range(L):
            gh = self.hidden(h)
            r = torch.sigmoid(gi[..., t, :d] + gh[..., :d])
            z = torch.sigmoid(gi[..., t, d:2 * d] + gh[..., d:2 * d])
            n = torch.tanh(gi[..., t, 2 * d:] + r * gh[..., 2 * d:])
            h = torch.where(mask[..., t, None], (1 - z) * n + z * h, h)
            out.append(h)
        return torch.stack(out, -2)

    def fused(self, rows, mask):
        """The same states through ``torch.gru`` (gate order r, z, n as :meth:`recurrence`)."""
        lead, (L, d) = rows.shape[:-2], rows.shape[-2:]
        x, m = rows.reshape(-1, L, d), mask.reshape(-1, L)
        front = torch.argsort((~m).to(torch.int8), dim=1, stable=True)  # present items first, in order
        packed = x.gather(1, front[..., None].expand(-1, -1, d))
        weights = [self.input.weight, self.hidden.weight, self.input.bias, self.hidden.bias]
        out, _ = torch.gru(packed, x.new_zeros(1, len(x), d), weights, True, 1, 0.0, False, False, True)
        seen = m.cumsum(1)  # present items at or before each column
        states = out.gather(1, (seen - 1).clamp(min=0)[..., None].expand(-1, -1, d))
        return torch.where((seen > 0)[..., None], states, 0.0).reshape(*lead, L, d)


def _transformed() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``) is running."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return True if active is None else bool(active())


class GRU4Rec(SequentialModel):
    """GRU4Rec-style recurrent encoder over the last ``max_len`` items (``--model gru4rec``).

    Global: ``item_embedding`` (n_items, dim) and one GRU layer of width ``dim``."""

    def __init__(self, n_items: int, *, dim: int = 64, max_len: int = 50, dropout: float = 0.2, loss: str = "softmax",
                 init_std: float = 0.1, seed: int = 0, **_):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self._declare(n_items, dim, max_len, init_std, loss, dropout, g)
        self.encoder = _GRUEncoder(dim, dropout, g)


SEQUENTIAL_MODELS = {"sasrec": SASRec, "gru4rec": GRU4Rec}


def is_sequential(model) -> bool:
    """Whether ``model`` (an instance or a class) scores from histories."""
    cls = model if isinstance(model, type) else type(model)
    return issubclass(cls, SequentialModel)

