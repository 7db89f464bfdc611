"""User cold-start: users held out of training join afterwards.

A held-out user fits only its local embedding against the frozen global item
parameters (those of the round selected on validation, ``best_params.npz``)
from its first ``k`` interactions (chronological).  Every ``k`` is evaluated on
the same targets: the user's interactions after its first ``max(ks)``, ranked
among all items except those first ``max(ks)`` (the user's history).  ``k = 0``
is a non-personal ranking (zero embedding: the item biases).  The same users
(those with more than ``max(ks)`` interactions) are used for every ``k``, so
the curve compares like with like.

The fit is :func:`fedrec.engine.mf_round` run on the user's ``k`` items
(item parameters frozen, the item update discarded): full-batch steps without
DP, or DP-SGD (Poisson sampling, per-pair clipping, Gaussian noise) with its
interaction-level epsilon computed by the Opacus RDP accountant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.metrics.ranking import target_ranks
from fedrec.privacy.accounting import calibrate_noise, epsilon
from fedrec.engine import LocalConfig, mf_round

__all__ = ["FoldIn", "user_coldstart", "sequential_coldstart", "KS"]

KS = (0, 1, 2, 5, 10, 20)


@dataclass(frozen=True)
class FoldIn:
    """How a new user fits its embedding: ``steps`` steps of (DP-)SGD at ``lr``."""

    steps: int = 30
    lr: float = 1.0
    negatives: int = 4
    target_epsilon: float = 0.0  # > 0: DP fit calibrated to this interaction-level epsilon
    sample_rate: float = 0.5
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    interaction_cap: int = 20  # the public normaliser of a DP fit: the most items a curve's user folds in

    def local(self) -> LocalConfig:
        sigma = 0.0
        if self.target_epsilon > 0:
            sigma = calibrate_noise(target_epsilon=self.target_epsilon, delta=self.delta,
                                    sample_rate=self.sample_rate, steps=self.steps)
        return LocalConfig(user_lr=self.lr, user_steps=self.steps - 1, item_steps=1, negatives=self.negatives,
                           sample_rate=self.sample_rate if sigma else 1.0, noise_multiplier=sigma,
                           max_grad_norm=self.max_grad_norm, interaction_cap=self.interaction_cap)

    def epsilon(self) -> float:
        loc = self.local()
        if not loc.dp:
            return float("inf")
        return epsilon(noise_multiplier=loc.noise_multiplier, sample_rate=loc.sample_rate, steps=self.steps,
                       delta=self.delta)


def _csr(rows: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
    idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(idx), np.float32), idx, indptr), shape=(len(rows), n_items))


def _coldstart_targets(cold_user_items: dict[int, np.ndarray], n_items: int, kmax: int):
    """The users with more than ``kmax`` distinct items, their sequences (first occurrence of
    each item, in time order), the targets (after the first ``kmax``) and the masked history."""
    seqs = {}
    for u, s in sorted(cold_user_items.items()):
        _, first = np.unique(np.asarray(s), return_index=True)
        seqs[u] = np.asarray(s)[np.sort(first)]  # first occurrence of each item, in time order
    users = [u for u, s in seqs.items() if len(s) > kmax]
    if not users:
        raise ValueError(f"no held-out user has more than {kmax} interactions")
    targets = _csr([seqs[u][kmax:] for u in users], n_items)
    history = _csr([seqs[u][:kmax] for u in users], n_items)
    return users, seqs, targets, history


def sequential_coldstart(model, params: dict[str, np.ndarray] | str | Path, cold_user_items: dict[int, np.ndarray], *,
                         ks=KS) -> list[dict]:
    """The same curve for a sequential model, with **no training at all**: a held-out user
    is scored from its first ``k`` items (the model reads the last ``max_len`` of them);
    ``k = 0`` is the model's ranking after an empty history.  Same users, targets and
    mask as :func:`user_coldstart`; ``fit_epsilon`` is 0 (nothing is fitted or released)."""
    from fedrec.data.sequences import Histories

    if not isinstance(params, dict):
        with np.load(params) as z:
            params = {k: z[k] for k in z.files if k != "round"}
    p = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    n_items = model.n_items
    users, seqs, targets, history = _coldstart_targets(cold_user_items, n_items, max(ks))
    out = []
    for k in ks:
        first = [seqs[u][:k] for u in users]
        hist = Histories(np.r_[0, np.cumsum([len(f) for f in first])].astype(np.int64),
                         np.concatenate(first).astype(np.int64) if k else np.zeros(0, np.int64))
        scores = model.history_scorer(p, hist)(np.arange(len(users)))
        tr = target_ranks(scores, targets, history, user_ids=np.asarray(users))
        m = tr.metrics(ks=(10, 20))
        out.append({"k": k, "users": len(users), "ndcg@10": float(m["ndcg@10"].mean()),
                    "hr@10": float(m["hr@10"].mean()),
                    "recall@20": float(m["recall@20"].mean()), "fit_epsilon": 0.0})
    return out


def user_coldstart(params: dict[str, np.ndarray] | str | Path, cold_user_items: dict[int, np.ndarray], *,
                   ks=KS, fit: FoldIn = FoldIn(), seed: int = 0) -> list[dict]:
    """Metrics of held-out users against ``k`` for one set of global parameters.

    Parameters
    ----------
    params
        ``item_embedding``/``item_bias`` (or a path to ``best_params.npz``).
    cold_user_items
        Held-out user -> its items in chronological order (``Split.cold_user_items``).

    Returns
    -------
    list of dict
        One row per ``k``: ``k``, ``users``, ``ndcg@10``, ``hr@10``, ``recall@20``,
        and the fit's interaction-level ``fit_epsilon`` (``inf``: no DP).
    """
    if not isinstance(params, dict):
        with np.load(params) as z:
            params = {k: z[k] for k in ("item_embedding", "item_bias")}
    q = np.asarray(params["item_embedding"], dtype=np.float32)
    b = np.asarray(params["item_bias"], dtype=np.float32)
    n_items = q.shape[0]
    users, seqs, targets, history = _coldstart_targets(cold_user_items, n_items, max(ks))
    loc = fit.local()
    out = []
    for k in ks:
        seen = [seqs[u][:k] for u in users]
        if k == 0:
            emb = np.zeros((len(users), q.shape[1]), np.float32)
        else:
            train = _csr(seen, n_items)
            # a DP fit draws its noise and sampling from fresh secret randomness (generator None)
            new_emb, _, _, _ = mf_round(torch.zeros((len(users), q.shape[1])), torch.as_tensor(q), torch.as_tensor(b),
                                        train, np.arange(len(users)), loc, seed=seed, server_round=k)
            emb = new_emb.numpy()
        scores = emb @ q.T + b[None, :]
        tr = target_ranks(scores, targets, history, user_ids=np.asarray(users))
        m = tr.metrics(ks=(10, 20))
        out.append({"k": k, "users": len(users), "ndcg@10": float(m["ndcg@10"].mean()),
                    "hr@10": float(m["hr@10"].mean()),
                    "recall@20": float(m["recall@20"].mean()), "fit_epsilon": fit.epsilon() if k else 0.0})
    return out
