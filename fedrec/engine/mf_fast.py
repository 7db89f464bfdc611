"""Fast path of the cohort engine for :class:`~fedrec.models.federated.FedMF` with BPR.

The same algorithm as :func:`fedrec.engine.cohort.train_cohort` (same samples,
Poisson masks, clipping, noise draws in the same order), with MF's per-sample
gradient written out by hand instead of ``torch.func``.  For a sample with
positive ``i`` and negatives ``j_1..j_m`` and ``x_l = p . (q_i - q_{j_l}) + b_i - b_{j_l}``,
``c_l = -sigmoid(-x_l) / m``:

- ``d/dp = sum_l c_l (q_i - q_{j_l})``,
- ``d/dq_i = (sum_l c_l) p``, ``d/db_i = sum_l c_l``,
- ``d/dq_{j_l} = -c_l p``, ``d/db_{j_l} = -c_l``,

so (the negatives being distinct rows) the per-sample norm over every parameter
the sample touches is
``sqrt(|d/dp|^2 + (|p|^2 + 1) ((sum_l c_l)^2 + sum_l c_l^2))``.
Tests hold it equal to the generic engine.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedrec.engine.cohort import (
    CohortResult,
    clipped_user_mean,
    frozen_rows_zeroed,
    cohort_samples,
    expected_batches,
    gaussian,
    release_denominators,
    register_fast_path,
    sample_mask,
)
from fedrec.models.federated import FedMF

__all__ = ["train_mf_cohort", "mf_round"]


@register_fast_path(FedMF)
def train_mf_cohort(model, local, params, train, users, cfg, *, seed, server_round, generator=None, dp_key=None,
                    trainable=None, user_weights=None) -> CohortResult:
    k = len(users)
    item_emb, item_bias = params["item_embedding"], params["item_bias"]
    n_items = item_emb.shape[0]
    owner_np, _, items_np = cohort_samples(train, users, cfg.negatives, seed=seed, server_round=server_round,
                                                 exclude_positives=not cfg.dp)
    m = cfg.negatives
    dev = item_emb.device
    owner = torch.as_tensor(owner_np, device=dev)
    pos = torch.as_tensor(items_np[:, 0], device=dev)
    neg = torch.as_tensor(items_np[:, 1:], device=dev)  # (n, m)
    n_u = torch.as_tensor(np.bincount(owner_np, minlength=k).astype(np.float64), device=dev)
    q = cfg.sample_rate
    denom = expected_batches(cfg, n_u).to(item_emb.dtype)  # public with DP
    rdenom = release_denominators(denom, user_weights)
    sigma_c = cfg.noise_multiplier * cfg.max_grad_norm
    p = local["user"].clone()
    if not cfg.dp:  # every sample in every step: gather once
        dq = item_emb[pos][:, None, :] - item_emb[neg]  # (n, m, d)
        db = item_bias[pos][:, None] - item_bias[neg]  # (n, m)
    clip_users = cfg.per_user
    s_user = users[owner_np]
    if clip_users:
        keys = (owner[:, None] * n_items + torch.as_tensor(items_np, device=dev)).reshape(-1)
        uniq, inv = torch.unique(keys, return_inverse=True)
        inv = inv.reshape(items_np.shape)
        r_item = torch.zeros((len(uniq), item_emb.shape[1]), dtype=item_emb.dtype, device=dev)
        r_bias = torch.zeros(len(uniq), dtype=item_bias.dtype, device=dev)
    g_item = torch.zeros_like(item_emb)
    g_bias = torch.zeros_like(item_bias)
    first_loss = math.nan  # with DP the loss is not computed: it would be a release no mechanism covers
    for step in range(cfg.user_steps + cfg.item_steps):
        if cfg.dp:
            # DP-SGD: only the samples Poisson sampling took in this step (the others weigh 0)
            sel = torch.as_tensor(np.flatnonzero(sample_mask(dp_key, server_round, s_user, items_np[:, 0], step, q)),
                                  device=dev)
            o, pos_s, neg_s = owner[sel], pos[sel], neg[sel]
            dq_s = item_emb[pos_s][:, None, :] - item_emb[neg_s]
            db_s = item_bias[pos_s][:, None] - item_bias[neg_s]
            inv_s = inv[sel] if clip_users else None
        else:
            o, pos_s, neg_s, dq_s, db_s = owner, pos, neg, dq, db
            inv_s = inv if clip_users else None
        ps = p[o]
        x = (ps[:, None, :] * dq_s).sum(-1) + db_s  # (n, m)
        if step == 0 and not cfg.dp:
            per_user = torch.zeros(k, dtype=torch.float64, device=dev).index_add_(
                0, o, torch.nn.functional.softplus(-x).mean(1).double())
            first_loss = float((per_user / n_u).mean())
        coef = -torch.sigmoid(-x) / m
        csum = coef.sum(1)
        gp_s = (coef[:, :, None] * dq_s).sum(1)  # per-sample gradient of p
        # row gradients: the positive's (q, b) is csum * (p, 1), negative j's -coef_j * (p, 1); a
        # frozen row's (trainable 0) is dropped before clipping
        m_pos = torch.ones_like(csum) if trainable is None else trainable[pos_s].to(csum.dtype)
        m_neg = torch.ones_like(coef) if trainable is None else trainable[neg_s].to(coef.dtype)
        if cfg.dp:
            sq = (gp_s.double() ** 2).sum(1) + ((ps.double() ** 2).sum(1) + 1.0) * (
                (csum.double() * m_pos) ** 2 + ((coef.double() * m_neg) ** 2).sum(1))
            w = torch.clamp(cfg.max_grad_norm / (sq.sqrt() + 1e-12), max=1.0).to(item_emb.dtype)
        else:
            w = torch.ones_like(csum)
        gp = torch.zeros_like(p).index_add_(0, o, w[:, None] * gp_s)
        if cfg.dp:
            gp = gp + sigma_c * gaussian(p.shape, generator, p.dtype, dev)
        gp = gp / denom[:, None]
        if step >= cfg.user_steps:
            c = w / rdenom[o]
            ci = (c * csum * m_pos)  # d/db_i weight; d/dq_i = ci * p
            cn = -(c[:, None] * coef * m_neg)  # (n, m)
            if clip_users:
                r_item.index_add_(0, inv_s[:, 0], ci[:, None] * ps)
                r_item.index_add_(0, inv_s[:, 1:].reshape(-1),
                                  (cn[:, :, None] * ps[:, None, :]).reshape(-1, ps.shape[1]))
                r_bias.index_add_(0, inv_s[:, 0], ci)
                r_bias.index_add_(0, inv_s[:, 1:].reshape(-1), cn.reshape(-1))
            else:
                g_item.index_add_(0, pos_s, ci[:, None] * ps)
                g_item.index_add_(0, neg_s.reshape(-1), (cn[:, :, None] * ps[:, None, :]).reshape(-1, ps.shape[1]))
                g_bias.index_add_(0, pos_s, ci)
                g_bias.index_add_(0, neg_s.reshape(-1), cn.reshape(-1))
        p = p - cfg.user_lr * (gp + cfg.user_l2 * p)
    if clip_users:
        update = clipped_user_mean(
            {"item_embedding": r_item, "item_bias": r_bias}, {}, uniq, k, n_items, cfg, params,
            noise_std=(sigma_c / (math.sqrt(cfg.item_steps) * denom.double())) if cfg.dp else None, generator=generator,
            trainable=trainable)
    else:
        dtype = item_emb.dtype
        update = {"item_embedding": (-g_item / (cfg.item_steps * k)).to(dtype),
                  "item_bias": (-g_bias / (cfg.item_steps * k)).to(dtype)}
        if cfg.dp:
            var = (sigma_c**2 / (cfg.item_steps * denom.double() ** 2)).sum() / k**2
            std = float(math.sqrt(float(var)))
            for n in ("item_embedding", "item_bias"):
                noise = gaussian(update[n].shape, generator, dtype, dev)
                update[n] = update[n] - std * frozen_rows_zeroed(noise, trainable)
    return CohortResult(local={"user": p}, update=update, loss=first_loss, n_users=k,
                        samples=(owner_np, items_np, n_items))


_MF_VIEWS: dict[tuple[int, int], FedMF] = {}


def mf_round(user_emb: torch.Tensor, item_emb: torch.Tensor, item_bias: torch.Tensor, train, users, cfg, *, seed: int,
             server_round: int, generator: torch.Generator | None = None, dp_key: int | None = None,
             generic: bool = False, trainable: torch.Tensor | None = None):
    """One round of the cohort engine for MF given as plain tensors (for MF-specific
    studies: attacks, audit, fold-in).  Returns ``(new user_emb, item_update,
    bias_update, CohortResult)``; the updates are the cohort's mean release
    (``trainable``: the 0/1 mask of trained item rows, DP-FEST; ``None``: every row)."""
    from fedrec.engine.cohort import train_cohort

    key = tuple(item_emb.shape)
    model = _MF_VIEWS.get(key)
    if model is None:
        model = _MF_VIEWS[key] = FedMF(key[0], dim=key[1])
    res = train_cohort(model, {"user": user_emb}, {"item_embedding": item_emb, "item_bias": item_bias}, train,
                       np.asarray(users, dtype=np.int64), cfg, seed=seed, server_round=server_round,
                       generator=generator, dp_key=dp_key, generic=generic, trainable=trainable)
    return res.local["user"], res.update["item_embedding"], res.update["item_bias"], res
