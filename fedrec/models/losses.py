"""Training losses with sampled negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "bce_loss", "LOSSES"]


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Bayesian personalised ranking: ``-log sigmoid(s_pos - s_neg)``.

    ``pos`` has shape ``(B,)``, ``neg`` ``(B,)`` or ``(B, n_neg)``.
    """
    if neg.dim() == pos.dim() + 1:
        pos = pos.unsqueeze(-1)
    loss = F.softplus(neg - pos)
    if neg.dim() > 1:
        loss = loss.mean(-1)
    return _reduce(loss, reduction)


def bce_loss(pos: torch.Tensor, neg: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy: positives labelled 1, sampled negatives 0."""
    loss = F.softplus(-pos)
    neg_loss = F.softplus(neg)
    if neg.dim() > pos.dim():
        neg_loss = neg_loss.sum(-1)
    return _reduce(loss + neg_loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


LOSSES = {"bpr": bpr_loss, "bce": bce_loss}
