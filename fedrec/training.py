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
    update_clip : float
        > 0: each user's whole release (item embedding and bias update, after
        its interaction-level noise if any) is clipped to this L2 norm before
        the cohort's mean is taken (user-level DP, client-side clipping).
    """

    user_lr: float = 0.5
    user_steps: int = 1
    item_steps: int = 1
    negatives: int = 1
    sample_rate: float = 1.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    user_l2: float = 0.0
    update_clip: float = 0.0

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
        if self.update_clip < 0:
            raise ValueError(f"update_clip must be >= 0; got {self.update_clip}")

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


def _clipped_user_sum(
    r_item: torch.Tensor,
    r_bias: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    n_items: int,
    cfg: LocalConfig,
    *,
    noise_std: torch.Tensor | None,
    generator: torch.Generator | None,
    chunk: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over users of each user's release clipped to ``cfg.update_clip``.

    ``r_item``/``r_bias`` hold the users' (un-noised) item gradients row-compactly
    (row ``j`` belongs to user ``keys[j] // n_items``, item ``keys[j] % n_items``).
    Without interaction-level noise a user's norm only involves the rows it
    touched.  With it (``noise_std``: per-user std), every user's release is
    dense: it is built, noised and clipped in chunks of users, so the clip bounds
    exactly what the user contributes (noise included).
    """
    owner = keys // n_items
    item = keys % n_items
    g_item = torch.zeros((n_items, r_item.shape[1]), dtype=r_item.dtype)
    g_bias = torch.zeros(n_items, dtype=r_bias.dtype)
    if noise_std is None:
        sq = torch.zeros(k, dtype=torch.float64).index_add_(0, owner, ((r_item.double() ** 2).sum(1) + r_bias.double() ** 2))
        factor = torch.clamp(cfg.update_clip / (sq.sqrt() + 1e-12), max=1.0).to(r_item.dtype)
        g_item.index_add_(0, item, r_item * factor[owner][:, None])
        g_bias.index_add_(0, item, r_bias * factor[owner])
        return g_item, g_bias
    d = r_item.shape[1]
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        sel = (owner >= lo) & (owner < hi)
        dense = torch.zeros((hi - lo, n_items, d + 1), dtype=r_item.dtype)
        o, it = owner[sel] - lo, item[sel]
        dense[o, it, :d] = r_item[sel]
        dense[o, it, d] = r_bias[sel]
        std = noise_std[lo:hi].to(r_item.dtype)[:, None, None]
        dense += std * torch.randn(dense.shape, generator=generator, dtype=dense.dtype)
        norm = dense.double().pow(2).sum((1, 2)).sqrt()
        dense *= torch.clamp(cfg.update_clip / (norm + 1e-12), max=1.0).to(dense.dtype)[:, None, None]
        total = dense.sum(0)
        g_item += total[:, :d]
        g_bias += total[:, d]
    return g_item, g_bias


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
    clip_users = cfg.update_clip > 0
    if clip_users:
        # each user's own release, kept row-compact: one row per (user, item) touched
        n_s = len(s_owner)
        keys = torch.cat([s_owner * n_items + s_pos, s_owner * n_items + s_neg])
        uniq, inv = torch.unique(keys, return_inverse=True)
        inv_pos, inv_neg = inv[:n_s], inv[n_s:]
        r_item = torch.zeros((len(uniq), d), dtype=item_emb.dtype)
        r_bias = torch.zeros(len(uniq), dtype=item_bias.dtype)
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
            sb = cw / denom[s_owner]
            if clip_users:
                r_item.index_add_(0, inv_pos, scale)
                r_item.index_add_(0, inv_neg, -scale)
                r_bias.index_add_(0, inv_pos, sb)
                r_bias.index_add_(0, inv_neg, -sb)
            else:
                g_item.index_add_(0, s_pos, scale)
                g_item.index_add_(0, s_neg, -scale)
                g_bias.index_add_(0, s_pos, sb)
                g_bias.index_add_(0, s_neg, -sb)
        p = p - cfg.user_lr * (gp + cfg.user_l2 * p)
    if clip_users:
        g_item, g_bias = _clipped_user_sum(
            r_item / cfg.item_steps, r_bias / cfg.item_steps, uniq, k, n_items, cfg,
            noise_std=(sigma_c / (math.sqrt(cfg.item_steps) * denom.double())) if cfg.dp else None,
            generator=generator,
        )
        g_item /= k
        g_bias /= k
    else:
        g_item /= cfg.item_steps * k
        g_bias /= cfg.item_steps * k
    if cfg.dp and not clip_users:
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
