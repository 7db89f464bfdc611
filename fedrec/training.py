"""Local training of a cohort of users against fixed global item parameters.

This is the client's computation, as a pure function of (user state, global
parameters, data, config).  It is vectorised over the users of a cohort so that
one Flower node can host many simulated users; every user still has its own
local embedding, its own Poisson sampling, clipping and noise, and its own
release.  What a node sends is the mean of its users' releases.

The algorithm (per user ``u``, per round), for matrix factorisation
``s(u, i) = p_u . q_i + b_i`` and BPR with sampled negatives:

1. draw ``negatives`` training negatives per positive (excluding only the
   user's training positives);
2. run ``user_steps + item_steps`` steps of (DP-)SGD on the user's loss.  Item
   parameters stay fixed during the round; every step updates the user
   embedding ``p_u`` with its (noisy) gradient, and the (noisy) item gradients of
   the last ``item_steps`` steps are averaged into the release;
3. release ``update = -mean item gradient`` (a pseudo-gradient; the server's
   optimiser turns the mean over users into a step).

With differential privacy (``noise_multiplier > 0``), each step is DP-SGD as in
Opacus: every training pair is included independently with probability
``sample_rate`` (Poisson), the per-pair gradient over *all* parameters the step
touches (``p_u`` and the item rows) is clipped to ``max_grad_norm``, the sum gets
Gaussian noise with std ``noise_multiplier * max_grad_norm`` on every coordinate
(user embedding, every item row and bias), and is divided by the expected batch
size ``sample_rate * n_u``.  The user embedding therefore only ever moves
through the DP mechanism.  Because item parameters are fixed within a round,
the item noise of the released mean over ``item_steps`` steps is one Gaussian
with variance ``sigma^2 C^2 / (item_steps (q n_u)^2)`` per coordinate: it is
drawn once, which is identical in distribution to drawing it at every step.
Each step is one step of the subsampled Gaussian mechanism for the accountant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from fedrec.data.negatives import is_positive
from fedrec.rng import hash_ints, hash_uniform

__all__ = ["LocalConfig", "CohortResult", "train_cohort", "cohort_pairs", "keyed_negatives", "steps_per_round"]


@dataclass(frozen=True)
class LocalConfig:
    """What one user does in one round.

    Attributes
    ----------
    user_lr : float
        SGD learning rate of the local user embedding.
    user_steps : int
        Steps that only update the user embedding (reconstruction) before the
        released item gradients are computed.
    item_steps : int
        Steps whose item gradients are averaged into the release (the user
        embedding keeps moving during them).
    negatives : int
        Sampled negatives per positive.
    sample_rate : float
        Poisson sampling rate of training pairs per step (1: full batch).
    noise_multiplier : float
        Gaussian noise std / clipping norm; 0 disables DP.
    max_grad_norm : float
        Per-pair clipping norm (used only with DP).
    user_l2 : float
        L2 penalty on the user embedding.
    """

    user_lr: float = 0.5
    user_steps: int = 1
    item_steps: int = 1
    negatives: int = 1
    sample_rate: float = 1.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    user_l2: float = 0.0

    def __post_init__(self):
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0; got {self.noise_multiplier}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0; got {self.max_grad_norm}")
        if self.item_steps < 1 or self.user_steps < 0:
            raise ValueError(f"need item_steps >= 1 and user_steps >= 0; got {self.item_steps}, {self.user_steps}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1; got {self.negatives}")

    @property
    def dp(self) -> bool:
        return self.noise_multiplier > 0


def steps_per_round(cfg: LocalConfig) -> int:
    """DP-SGD steps a user takes per round (each one is accounted)."""
    return cfg.user_steps + cfg.item_steps


@dataclass
class CohortResult:
    user_emb: torch.Tensor  # (k, d) new local embeddings
    item_update: torch.Tensor  # (n_items, d) mean over users of their released update
    bias_update: torch.Tensor  # (n_items,)
    loss: float  # mean over users of their mean training loss (at the start of the round)
    n_users: int
    item_counts: np.ndarray  # (n_items,) how many users of the cohort touched each item row


def cohort_pairs(train: sp.csr_matrix, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened training positives of ``users``: (index of the user in the cohort, item)."""
    rows = train[users]
    owner = np.repeat(np.arange(len(users)), np.diff(rows.indptr))
    return owner.astype(np.int64), rows.indices.astype(np.int64)


def keyed_negatives(
    train: sp.csr_matrix, users: np.ndarray, slot: np.ndarray, *, seed: int, server_round: int, max_tries: int = 64
) -> np.ndarray:
    """One training negative per ``(users[j], slot[j])``, uniform over the items that
    are not training positives of the user; a pure function of
    ``(seed, server_round, user, slot)`` (see :mod:`fedrec.rng`)."""
    n_items = train.shape[1]
    out = hash_ints(n_items, seed, server_round, users, slot, 0)
    todo = np.flatnonzero(is_positive(train, users, out))
    attempt = 1
    while len(todo):
        if attempt > max_tries:
            raise ValueError(f"could not sample a negative for user {users[todo[0]]}: too few non-positive items")
        out[todo] = hash_ints(n_items, seed, server_round, users[todo], slot[todo], attempt)
        todo = todo[is_positive(train, users[todo], out[todo])]
        attempt += 1
    return out


def train_cohort(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    item_bias: torch.Tensor,
    train: sp.csr_matrix,
    users: np.ndarray,
    cfg: LocalConfig,
    *,
    seed: int,
    server_round: int,
    generator: torch.Generator | None = None,
) -> CohortResult:
    """One round of local training for the users of a cohort (see the module doc).

    Parameters
    ----------
    user_emb
        ``(k, d)`` embeddings of the cohort's users (local state).
    item_emb, item_bias
        Global item parameters (not modified).
    train
        Training matrix; only rows ``users`` are read.
    users
        Global ids of the cohort's users (``k`` of them).
    seed, server_round
        Key of the users' negatives and Poisson sampling (per user, independent
        of the cohort).
    generator
        Source of the Gaussian noise.
    """
    k, d = user_emb.shape
    n_items = item_emb.shape[0]
    owner, pos = cohort_pairs(train, users)
    n_u = np.bincount(owner, minlength=k).astype(np.float64)
    if (n_u == 0).any():
        raise ValueError(f"user {users[np.flatnonzero(n_u == 0)[0]]} has no training interactions")
    m = cfg.negatives
    starts = np.r_[0, np.cumsum(n_u)[:-1]].astype(np.int64)
    idx_in_user = np.arange(len(owner)) - starts[owner]
    s_user = np.repeat(users[owner], m)
    s_slot = np.repeat(idx_in_user * m, m) + np.tile(np.arange(m), len(owner))
    negs = keyed_negatives(train, s_user, s_slot, seed=seed, server_round=server_round).reshape(-1, m)
    owner_t = torch.as_tensor(owner)
    pos_t = torch.as_tensor(pos)
    neg_t = torch.as_tensor(negs)
    # every (positive, negative) pair is one sample of the user's dataset
    s_owner = owner_t.repeat_interleave(m)
    s_pos = pos_t.repeat_interleave(m)
    s_neg = neg_t.reshape(-1)
    n_samples = torch.as_tensor(n_u * m)
    q = cfg.sample_rate
    denom = (q * n_samples).to(item_emb.dtype)  # expected batch size per user
    sigma_c = cfg.noise_multiplier * cfg.max_grad_norm
    p = user_emb.clone()
    qi, qj = item_emb[s_pos], item_emb[s_neg]
    dq = qi - qj
    db = item_bias[s_pos] - item_bias[s_neg]
    dq_sq = (dq * dq).sum(-1)
    g_item = torch.zeros_like(item_emb)
    g_bias = torch.zeros_like(item_bias)
    first_loss = None
    total = cfg.user_steps + cfg.item_steps
    for step in range(total):
        ps = p[s_owner]
        x = (ps * dq).sum(-1) + db
        if first_loss is None:
            per_user = torch.zeros(k, dtype=x.dtype).index_add_(0, s_owner, F.softplus(-x))
            first_loss = float((per_user / n_samples.to(x.dtype)).mean())
        coef = -torch.sigmoid(-x)  # d loss / d x
        if cfg.dp:
            mask = torch.as_tensor(hash_uniform(seed, server_round, s_user, s_slot, 1000 + step) < q)
            # per-sample gradient norm over (p_u, q_i, q_j, b_i, b_j)
            norm = coef.abs() * torch.sqrt(dq_sq + 2.0 * (ps * ps).sum(-1) + 2.0)
            w = torch.clamp(cfg.max_grad_norm / (norm + 1e-12), max=1.0) * mask
        else:
            w = torch.ones_like(coef)
        cw = coef * w
        gp = torch.zeros_like(p).index_add_(0, s_owner, cw[:, None] * dq)
        if cfg.dp:
            gp += sigma_c * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        gp = gp / denom[:, None]
        if step >= cfg.user_steps:
            # item gradient of this step, each user's divided by its own expected batch
            scale = (cw / denom[s_owner])[:, None] * ps
            g_item.index_add_(0, s_pos, scale)
            g_item.index_add_(0, s_neg, -scale)
            sb = cw / denom[s_owner]
            g_bias.index_add_(0, s_pos, sb)
            g_bias.index_add_(0, s_neg, -sb)
        p = p - cfg.user_lr * (gp + cfg.user_l2 * p)
    g_item /= cfg.item_steps * k
    g_bias /= cfg.item_steps * k
    if cfg.dp:
        # noise of the k users' mean release, summed over item_steps steps: one draw
        var = (sigma_c**2 / (cfg.item_steps * denom.double() ** 2)).sum() / k**2
        std = float(math.sqrt(float(var)))
        g_item += std * torch.randn(g_item.shape, generator=generator, dtype=g_item.dtype)
        g_bias += std * torch.randn(g_bias.shape, generator=generator, dtype=g_bias.dtype)
    touched = np.unique(np.r_[owner * n_items + pos, np.repeat(owner, m) * n_items + negs.ravel()])
    counts = np.bincount(touched % n_items, minlength=n_items)
    return CohortResult(
        user_emb=p,
        item_update=-g_item,
        bias_update=-g_bias,
        loss=first_loss,
        n_users=k,
        item_counts=counts,
    )
