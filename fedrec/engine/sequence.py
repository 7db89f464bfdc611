"""Local training of sequential models (:class:`~fedrec.models.sequential.SequentialModel`).

The device's state is its history (:mod:`fedrec.data.sequences`); every
parameter is global.  Per user and round, with the global parameters fixed:

1. **Samples.**  The positions of the user's training windows
   (:func:`~fedrec.data.sequences.training_windows`): each target against
   ``negatives`` distinct items that are not training positives of the user,
   keyed by ``(seed, round, user, target item)`` (:func:`~fedrec.engine.cohort.negative_sets`).
2. **Release.**  ``-gradient`` of the user's mean position loss (a
   pseudo-gradient: the server's optimiser turns the mean over users into a step).
3. **User-level clipping** (``update_clip > 0``): each user's whole release (the
   rows of every item it read or ranked, every encoder weight) is clipped to
   ``update_clip`` before the mean; the server adds the noise (user-level DP).
   Per-user gradients come from ``torch.func.vmap(grad)`` over windows with the
   gathered rows, summed per (user, item) row before the norm is taken.

**Interaction-level DP is refused** (:func:`check_local_config`): one interaction is
the target of one position and an input of every later position of its window
(:func:`~fedrec.data.sequences.max_uses_per_interaction`), so a per-sample clip
does not bound what it contributes; group privacy over ``max_len + 1`` samples
would multiply the epsilon of a DP-SGD step by about that factor.  The user is
the natural unit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.data.sequences import PAD, Histories, training_windows
from fedrec.engine.cohort import (MAX_GRAD_FLOATS, CohortResult, LocalConfig, clipped_user_mean, negative_sets,
                                  weights_over_mean)
from fedrec.models.sequential import SequentialModel

__all__ = ["train_sequences", "sequence_samples", "check_local_config", "trainable_users", "position_weights"]


def check_local_config(cfg: LocalConfig) -> None:
    """Raise ``ValueError`` for what sequential training does not do."""
    if cfg.dp:
        raise ValueError("interaction-level DP is not available for sequential models: one interaction enters up "
                         "to max_len + 1 samples (as a target and as the input of later positions), so per-sample "
                         "clipping does not bound it; use user-level DP (user-dp='client')")


def trainable_users(hist: Histories, users: np.ndarray) -> np.ndarray:
    """Mask of the ``users`` with at least one training position (2 or more history items)."""
    return hist.lengths(users) >= 2


def position_weights(hist: Histories, users: np.ndarray) -> np.ndarray:
    """``p_u / mean(p)`` of ``users``' training positions ``p_u`` (history length - 1): the
    weights that make a cohort's mean of per-user mean gradients the mean over its
    positions, as centralized training weighs them (``weighting = "interaction"``)."""
    return weights_over_mean(hist.lengths(np.asarray(users, dtype=np.int64)) - 1)


def sequence_samples(hist: Histories, train: sp.csr_matrix, users: np.ndarray, length: int, negatives: int, *,
                     seed: int, server_round: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``owner`` (w,), ``inputs`` (w, L), ``candidates`` (w, L, 1 + m) (target, then
    negatives; 0 where empty) and ``mask`` (w, L) of the cohort's training windows."""
    owner, inputs, targets, _ = training_windows(hist, users, length)
    mask = targets != PAD
    cand = np.zeros(targets.shape + (1 + negatives,), dtype=np.int64)
    cand[..., 0] = np.where(mask, targets, 0)
    w, c = np.nonzero(mask)
    # keyed by the target item (what the sample is), not its position in the history
    cand[w, c, 1:] = negative_sets(train, users[owner[w]], targets[w, c], targets[w, c], negatives, seed=seed,
                                   server_round=server_round)
    return owner, np.where(mask, inputs, 0), cand, mask


def train_sequences(model: SequentialModel, params: dict[str, torch.Tensor], hist: Histories, train: sp.csr_matrix,
                    users: np.ndarray, cfg: LocalConfig, *, seed: int, server_round: int,
                    generator: torch.Generator | None = None, user_weights: np.ndarray | None = None) -> CohortResult:
    """One round of local training of a sequential model for the users of a cohort.

    Parameters
    ----------
    model
        The sequential model (declares the parameters and the loss).
    params
        Global parameters (not modified), per name.
    hist
        Training histories (only ``users``' are read).
    train
        Training matrix (negatives exclude its positives of the user).
    users
        Global ids of the cohort's users, each with at least 2 history items
        (:func:`trainable_users`).
    seed, server_round
        Key of the negatives and of the dropout.
    generator
        Unused (no noise on the device: user-level noise is the server's).
    user_weights
        ``(k,)`` weight of each user's release (non-private runs only): the release is
        the mean over users of ``weight * (the user's mean gradient)``;
        :func:`position_weights` makes it the mean over positions.  ``None``: every
        user weighs 1.
    """
    check_local_config(cfg)
    if user_weights is not None and cfg.per_user:
        raise ValueError("user_weights scale what a user releases: not with user-level clipping")
    users = np.asarray(users, dtype=np.int64)
    short = ~trainable_users(hist, users)
    if short.any():
        raise ValueError(f"user {users[np.flatnonzero(short)[0]]} has fewer than 2 training items: "
                         "no training position")
    k = len(users)
    n_items = model.n_items
    owner_np, inp_np, cand_np, mask_np = sequence_samples(hist, train, users, model.max_len, cfg.negatives, seed=seed,
                                                          server_round=server_round)
    n_pos = np.bincount(owner_np, weights=mask_np.sum(1), minlength=k)
    owner, inp, cand = (torch.as_tensor(x) for x in (owner_np, inp_np, cand_np))
    mask = torch.as_tensor(mask_np)
    dtype = params["item_embedding"].dtype
    per_user = np.ones(k) if user_weights is None else np.asarray(user_weights, dtype=np.float64)
    weight = torch.as_tensor(per_user / n_pos, dtype=dtype)[owner]  # each user: the mean over its positions
    dense = {d: params[d] for d in model.dense_names()}
    table = params["item_embedding"]
    torch.manual_seed(int(np.random.default_rng([seed, server_round, int(users[0]), 5]).integers(2**62)))
    per_window = model.max_len * (2 + cfg.negatives) * table.shape[1] + sum(v.numel() for v in dense.values())
    chunk = max(1, MAX_GRAD_FLOATS // per_window)
    user_loss = torch.zeros(k, dtype=torch.float64)
    if not cfg.per_user:
        # one backward of the weighted loss of every window
        tab = table.detach().requires_grad_(True)
        dn = {d: v.detach().requires_grad_(True) for d, v in dense.items()}
        for lo in range(0, len(owner), chunk):
            sl = slice(lo, lo + chunk)
            lw = model.window_loss(tab[inp[sl]], tab[cand[sl]], mask[sl], dn)
            user_loss.index_add_(0, owner[sl], lw.detach().double())
            (lw * weight[sl]).sum().div(k).backward()
        update = {"item_embedding": -tab.grad}
        update.update({d: -v.grad if v.grad is not None else torch.zeros_like(v) for d, v in dn.items()})
    else:
        keys_in = owner[:, None] * n_items + inp
        keys_c = owner[:, None, None] * n_items + cand
        uniq = torch.unique(torch.cat([keys_in[mask], keys_c[mask].reshape(-1)]))
        dummy = len(uniq)  # empty positions accumulate here and are dropped
        idx_in = torch.where(mask, torch.searchsorted(uniq, keys_in), dummy)
        idx_c = torch.where(mask[..., None], torch.searchsorted(uniq, keys_c), dummy)
        r_tab = torch.zeros((dummy + 1, table.shape[1]), dtype=dtype)
        r_den = {d: torch.zeros((k,) + tuple(v.shape), dtype=dtype) for d, v in dense.items()}

        def loss_one(rows_in, rows_c, msk, dn):
            return model.window_loss(rows_in, rows_c, msk, dn)

        grad_one = torch.func.vmap(torch.func.grad_and_value(loss_one, argnums=(0, 1, 3)), in_dims=(0, 0, 0, None),
                                   randomness="different")
        for lo in range(0, len(owner), chunk):
            sl = slice(lo, lo + chunk)
            (g_in, g_c, g_d), lw = grad_one(table[inp[sl]], table[cand[sl]], mask[sl], dense)
            user_loss.index_add_(0, owner[sl], lw.detach().double())
            w = weight[sl]
            r_tab.index_add_(0, idx_in[sl].reshape(-1), (g_in * w[:, None, None]).reshape(-1, table.shape[1]))
            r_tab.index_add_(0, idx_c[sl].reshape(-1), (g_c * w[:, None, None, None]).reshape(-1, table.shape[1]))
            for d, g in g_d.items():
                r_den[d].index_add_(0, owner[sl], g * w.reshape((-1,) + (1,) * (g.dim() - 1)))
        update = clipped_user_mean({"item_embedding": r_tab[:dummy]}, r_den, uniq, k, n_items,
                                    LocalConfig(update_clip=cfg.update_clip, row_norm=cfg.row_norm,
                                                max_rows=cfg.max_rows, user_releases=cfg.user_releases),
                                    params, noise_std=None, generator=generator)
    loss = float((user_loss / torch.as_tensor(n_pos)).mean())
    items_np = np.concatenate([inp_np[mask_np], cand_np[mask_np].reshape(-1)])
    owner_rep = np.concatenate([np.repeat(owner_np, mask_np.sum(1)),
                                np.repeat(np.repeat(owner_np, mask_np.sum(1)), cand_np.shape[-1])])
    return CohortResult(local={}, update={n: v.to(dtype) for n, v in update.items()}, loss=loss, n_users=k,
                        samples=(owner_rep, items_np[:, None], n_items))

