"""Measured privacy leakage: honest-but-curious server attacks.

What the server of a federated MF run sees is, per round, the item-side release
of each node: the pseudo-gradient of the item embedding table ``(n_items, d)``
and of the item biases ``(n_items,)`` (see :mod:`fedrec.engine`).  This module
measures how much of a user's training set a curious server recovers from that
release, under several protections, and how much a *strong* attacker recovers
from the final model.

Attacks
-------
Update attack (per user, one round).
    The server holds one release ``(G, g)`` (item rows, item biases) that
    contains the target user ``u`` and scores every item:

    * ``"norm"``: ``||G_i||_2 + |g_i|``.  Rows the user never touched are exactly
      zero without DP.  Training negatives are touched too (one sampled negative
      per positive, uniform over the items that are not the user's training
      positives), so sampled negatives look like positives and this AUC is below
      1 even without protection.
    * ``"signed"``: ``g_i``.  BPR pushes a positive's bias up and a negative's
      down, so the sign of the bias update separates the user's positives from
      the sampled negatives.

    Score: ROC AUC over all items (positives: the user's training items;
    negatives: every other item), averaged over the attacked users.

Protections simulated
---------------------
``none``
    The server sees the user's own release (a node with one user), no DP.
``interaction-level DP``
    The client's own mechanism: :func:`fedrec.engine.train_cohort` with
    ``noise_multiplier > 0`` (Poisson sampling of training pairs, per-pair
    clipping over every parameter the pair touches, Gaussian noise on every item
    row and bias).  The server sees the user's noisy release.  Epsilon: one
    round (``user_steps + item_steps`` steps of the subsampled Gaussian) for one
    training pair (with ``negatives=1``: one interaction), plus, for reference,
    the budget of the whole run the noise was calibrated for.
``user-level DP``
    :func:`clip_and_noise`: the whole per-user release (item rows and biases
    concatenated) is clipped to L2 norm ``C`` and Gaussian noise with std
    ``sigma * C`` is added.  In a real deployment the noise is added once to the
    *sum* over a cohort of ``k`` clipped updates (central DP, e.g. under secure
    aggregation).  The DP guarantee is about one user, for an attacker that may
    know the other ``k - 1`` contributions; we simulate that worst case: the
    server sees ``clip(update_u) + N(0, (sigma C)^2 I)``, i.e. a cohort of size 1
    (``cohort_size > 1`` gives the sum of ``k`` clipped updates plus one noise
    draw: what the server really sees, which leaks less).  Epsilon: one release
    of the Gaussian mechanism with sensitivity ``C`` (sample rate 1, one step)
    for one user's whole data.
``secure aggregation``
    The server only sees the sum of the (non-private) releases of a cohort of
    ``k`` users and attacks each member's items from the sum.  No DP guarantee.

Membership inference against the final model.
    For a model trained federatedly (item embeddings ``Q``, biases ``b``) the
    attacker scores ``(u, i)`` by the model score ``p_u . q_i + b_i`` using the
    user's *final local embedding* ``p_u``, which the server never receives:
    this is an upper bound (an attacker holding the user's device state).
    Positives: ``u``'s training interactions.  Negatives: ``u``'s held-out
    (validation and test) interactions (``"train vs held-out"``, a pure
    membership test between real interactions) and additionally random items
    ``u`` never interacted with (``"train vs held-out+random"``, which also
    rewards the model's ability to generalise).  ROC AUC per user, averaged.

Every row of :func:`leakage_table` names the unit the epsilon is about; rows
without a DP mechanism carry ``epsilon = inf`` as returned by the accountant
for zero noise.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.stats
import torch

from fedrec.data import Split
from fedrec.engine import LocalConfig, mf_round, steps_per_round
from fedrec.federated.optim import OptState, server_step

__all__ = [
    "ATTACKS",
    "roc_auc",
    "item_scores",
    "clip_and_noise",
    "release",
    "update_attack",
    "als_attack",
    "popularity_auc",
    "train_federated",
    "membership_auc",
    "leakage_table",
    "dp_epsilon",
    "dp_noise",
    "markdown_table",
    "main",
]

#: Item-scoring statistics of the update attack.
ATTACKS = ("norm", "signed")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula.

    ``AUC = P[s(pos) > s(neg)] + 0.5 * P[s(pos) == s(neg)]`` over all
    (positive, negative) pairs, computed with average ranks so ties count half.

    Parameters
    ----------
    scores : np.ndarray
        Real scores, higher means "more likely positive"; finite.
    labels : np.ndarray
        Same length; truthy for positives.

    Returns
    -------
    float
        AUC in ``[0, 1]``.

    Raises
    ------
    ValueError
        If the shapes differ, a score is not finite, or there is no positive or
        no negative.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need at least one positive and one negative; got {n_pos} and {n_neg}")
    ranks = scipy.stats.rankdata(s, method="average")
    u_stat = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def item_scores(item_update: np.ndarray, bias_update: np.ndarray, attack: str) -> np.ndarray:
    """Per-item score of the update attack (see the module doc).

    Parameters
    ----------
    item_update : np.ndarray
        ``(n_items, d)`` released item-embedding update.
    bias_update : np.ndarray
        ``(n_items,)`` released item-bias update.
    attack : str
        ``"norm"`` (``||row|| + |bias|``) or ``"signed"`` (the bias update).

    Returns
    -------
    np.ndarray
        ``(n_items,)`` scores, higher = more likely a training item.
    """
    if attack == "norm":
        return np.linalg.norm(item_update, axis=1) + np.abs(bias_update)
    if attack == "signed":
        return np.asarray(bias_update, dtype=np.float64).copy()
    raise ValueError(f"unknown attack {attack!r}; choose from {ATTACKS}")


def clip_and_noise(
    update_dict: dict[str, Any],
    *,
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """User-level Gaussian mechanism on one whole update.

    All arrays of ``update_dict`` are treated as one vector: it is scaled by
    ``min(1, clip_norm / ||update||_2)`` and every coordinate gets independent
    Gaussian noise with std ``noise_multiplier * clip_norm``.

    Parameters
    ----------
    update_dict : dict
        Name -> ``torch.Tensor`` or ``np.ndarray`` (e.g. item rows and biases).
    clip_norm : float
        L2 bound ``C`` of the whole update (> 0).
    noise_multiplier : float
        ``sigma`` (>= 0); 0 only clips.
    generator : torch.Generator, optional
        Source of the noise.

    Returns
    -------
    dict
        Same keys and array types (numpy in, numpy out), clipped and noised.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0; got {clip_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0; got {noise_multiplier}")
    tensors = {k: torch.as_tensor(np.asarray(v) if isinstance(v, np.ndarray) else v).double()
               for k, v in update_dict.items()}
    norm = math.sqrt(sum(float((t * t).sum()) for t in tensors.values()))
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    out: dict[str, Any] = {}
    for k, t in tensors.items():
        v = t * factor
        if std > 0:
            v = v + std * torch.randn(t.shape, generator=generator, dtype=torch.float64)
        out[k] = v.numpy() if isinstance(update_dict[k], np.ndarray) else v.to(update_dict[k].dtype)
    return out


def dp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """:func:`fedrec.privacy.accounting.epsilon` (RDP), without Opacus's alpha-range warning."""
    from fedrec.privacy.accounting import epsilon

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)


def dp_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """:func:`fedrec.privacy.accounting.calibrate_noise`, without Opacus's alpha-range warning."""
    from fedrec.privacy.accounting import calibrate_noise

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return calibrate_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps)


def release(
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
    trainable: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The SUM of the releases of ``users`` in one round (``k * CohortResult`` mean).

    ``user_emb`` holds the embeddings of ``users`` (``(k, d)``).  Returns
    float64 ``(item_update (n_items, d), bias_update (n_items,))``.  ``trainable``:
    DP-FEST's mask of trained rows (the others' gradients dropped before clipping).
    """
    users = np.asarray(users, dtype=np.int64)
    _, item_update, bias_update, _ = mf_round(user_emb, item_emb, item_bias, train, users, cfg, seed=seed,
                                              server_round=server_round, generator=generator, trainable=trainable)
    k = len(users)
    return item_update.double().numpy() * k, bias_update.double().numpy() * k


def update_attack(
    item_emb: torch.Tensor,
    item_bias: torch.Tensor,
    user_emb: torch.Tensor,
    train: sp.csr_matrix,
    users: np.ndarray,
    cfg: LocalConfig,
    *,
    cohort_size: int = 1,
    user_level: tuple[float, float] | None = None,
    attacks: tuple[str, ...] = ATTACKS,
    seed: int = 0,
    server_round: int = 1,
    generator: torch.Generator | None = None,
    trainable: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Mean per-user ROC AUC of the update attack (``trainable``: DP-FEST's trained rows).

    The users are shuffled and cut into cohorts of ``cohort_size`` (the
    remainder is dropped).  For each cohort the server sees the sum of the
    members' releases (``cohort_size=1``: one user's own release) and attacks
    every member's training items from it.

    Parameters
    ----------
    item_emb, item_bias
        Global item parameters of the round.
    user_emb
        ``(n_users, d)`` local embeddings of all users (rows ``users`` are used).
    train
        Training matrix (the targets are its rows).
    users
        Users to attack.
    cfg
        The clients' local training (interaction-level DP if ``cfg.dp``).
    cohort_size
        ``k``: size of the securely aggregated cohort.
    user_level
        ``(clip_norm, noise_multiplier)``: each member's release is clipped to
        ``clip_norm`` and the cohort sum gets noise ``noise_multiplier *
        clip_norm`` (one draw; with ``cohort_size=1`` this is exactly
        :func:`clip_and_noise` of the user's release).
    attacks
        Names in :data:`ATTACKS`.
    seed, server_round
        Key of the clients' negatives and Poisson sampling; ``seed`` also
        shuffles the users.
    generator
        Source of all Gaussian noise.

    Returns
    -------
    dict
        ``attack -> {"auc": mean, "auc_std": std over users, "n_targets": n}``.
    """
    if cohort_size < 1:
        raise ValueError(f"cohort_size must be >= 1; got {cohort_size}")
    rng = np.random.default_rng([seed, 17])
    users = rng.permutation(np.asarray(users, dtype=np.int64))
    n_cohorts = len(users) // cohort_size
    if n_cohorts == 0:
        raise ValueError(f"{len(users)} users cannot fill one cohort of {cohort_size}")
    n_items = item_emb.shape[0]
    aucs: dict[str, list[float]] = {a: [] for a in attacks}
    for c in range(n_cohorts):
        cohort = users[c * cohort_size : (c + 1) * cohort_size]
        if user_level is None:
            g_item, g_bias = release(user_emb[cohort], item_emb, item_bias, train, cohort, cfg, seed=seed,
                                     server_round=server_round, generator=generator, trainable=trainable)
        else:
            clip, sigma = user_level
            g_item = np.zeros((n_items, item_emb.shape[1]))
            g_bias = np.zeros(n_items)
            for u in cohort:
                gi, gb = release(user_emb[[u]], item_emb, item_bias, train, np.array([u]), cfg, seed=seed,
                                 server_round=server_round, generator=generator, trainable=trainable)
                if cohort_size == 1:
                    noised = clip_and_noise({"item": gi, "bias": gb}, clip_norm=clip, noise_multiplier=sigma,
                                            generator=generator)
                else:
                    noised = clip_and_noise({"item": gi, "bias": gb}, clip_norm=clip, noise_multiplier=0.0)
                g_item += noised["item"]
                g_bias += noised["bias"]
            if cohort_size > 1 and sigma > 0:
                std = sigma * clip
                g_item += std * torch.randn(g_item.shape, generator=generator, dtype=torch.float64).numpy()
                g_bias += std * torch.randn(g_bias.shape, generator=generator, dtype=torch.float64).numpy()
        for u in cohort:
            labels = np.zeros(n_items, dtype=bool)
            labels[train.indices[train.indptr[u] : train.indptr[u + 1]]] = True
            for a in attacks:
                aucs[a].append(roc_auc(item_scores(g_item, g_bias, a), labels))
    return {a: {"auc": float(np.mean(v)), "auc_std": float(np.std(v)), "n_targets": len(v)} for a, v in aucs.items()}


def als_attack(train: sp.csr_matrix, users: np.ndarray, *, noise_multiplier: float, cap: int, clip: float,
               dim: int = 8, alpha: float = 0.2, reg_user: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean per-user ROC AUC of attacks on private ALS's releases of ONE user (the worst
    case: a node that hosts a single user, seen after the server's noise).

    ``counts``: the item counts release (the user's capped items, plus noise
    ``noise_multiplier * sqrt(cap)``), items scored by their released count.
    ``pass``: one pass's release ``(b, K)`` from the user's clipped exact solve
    against a random item table, items scored by the norm of their released row.
    Positives are all of the user's training items (those outside its cap are
    never in a release)."""
    from fedrec import als

    rng = np.random.default_rng([seed, 23])
    n_items = train.shape[1]
    V = rng.standard_normal((n_items, dim)) * 0.1
    aucs: dict[str, list[float]] = {"counts": [], "pass": []}
    for u in np.asarray(users).tolist():
        one = np.array([u])
        labels = np.zeros(n_items, dtype=bool)
        labels[train.indices[train.indptr[u]:train.indptr[u + 1]]] = True
        if labels.all() or not labels.any():
            continue
        c = als.count_statistics(train, one, cap=cap, seed=seed)
        if noise_multiplier > 0:
            c = als.noisy_counts(c, noise_multiplier=noise_multiplier, cap=cap, rng=rng)
        aucs["counts"].append(roc_auc(c, labels))
        U = als.clip_rows(als.user_vectors(V, train, one, alpha=alpha, reg_user=reg_user), clip)
        b, K = als.pass_statistics(U, train, one, cap=cap, seed=seed)
        if noise_multiplier > 0:
            b, K = als.noisy_pass(b, K, noise_multiplier=noise_multiplier, cap=cap, clip=clip, rng=rng)
        aucs["pass"].append(roc_auc(np.linalg.norm(b, axis=1), labels))
    return {k: {"auc": float(np.mean(v)), "auc_std": float(np.std(v)), "n_targets": len(v)} for k, v in aucs.items()}


def train_federated(
    train: sp.csr_matrix,
    *,
    dim: int,
    rounds: int,
    cfg: LocalConfig,
    server_opt: str = "adam",
    server_lr: float = 5e-3,
    init_std: float = 0.1,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Federated MF in-process: every round all users with training data train
    (:func:`fedrec.engine.mf_round`, one cohort) and the server applies the project's server
    optimiser (:func:`fedrec.federated.optim.server_step`: Adam, betas 0.9/0.999, or SGD) to the mean release.

    This is the federated algorithm of the project with ``fraction-train 1``,
    without Flower's transport (the mean over all users equals the user-weighted
    mean of node means).

    Returns
    -------
    tuple of torch.Tensor
        ``(item_emb (n_items, d), item_bias (n_items,), user_emb (n_users, d))``;
        rows of users without training data keep their initial embedding.
    """
    n_users, n_items = train.shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_items, dim, generator=g) * init_std
    b = torch.zeros(n_items)
    p = torch.randn(n_users, dim, generator=g) * init_std
    users = np.flatnonzero(np.diff(train.indptr) > 0)
    if server_opt not in ("adam", "sgd"):
        raise ValueError(f"server_opt must be 'adam' or 'sgd'; got {server_opt!r}")
    opt = OptState()
    for t in range(1, rounds + 1):
        p[users], item_update, bias_update, _ = mf_round(p[users], q, b, train, users, cfg, seed=seed, server_round=t,
                                                         generator=generator)
        new, opt = server_step({"q": q.numpy(), "b": b.numpy()}, {"q": item_update.numpy(), "b": bias_update.numpy()},
                               opt, opt=server_opt, lr=server_lr)
        q, b = torch.as_tensor(new["q"]), torch.as_tensor(new["b"])
    return q, b, p


def popularity_auc(train: sp.csr_matrix, users: np.ndarray) -> dict[str, float]:
    """Reference attack without any release: score items by their training
    popularity among the *other* users (leave-target-out counts).

    What any attack that only recovers popular items achieves; the
    secure-aggregation rows should be read against it.

    Returns
    -------
    dict
        ``{"auc", "auc_std", "n_targets"}``.
    """
    counts = np.asarray(train.sum(axis=0)).ravel()
    out = []
    for u in np.asarray(users, dtype=np.int64):
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        labels = np.zeros(train.shape[1], dtype=bool)
        labels[items] = True
        out.append(roc_auc(counts - labels, labels))
    return {"auc": float(np.mean(out)), "auc_std": float(np.std(out)), "n_targets": len(out)}


def membership_auc(
    item_emb: torch.Tensor,
    item_bias: torch.Tensor,
    user_emb: torch.Tensor,
    split: Split,
    users: np.ndarray,
    *,
    n_random: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Membership inference on the final model with the user's own embedding (upper bound).

    Score of ``(u, i)``: ``p_u . q_i + b_i``.  Per user, ROC AUC of training
    items against (a) held-out items (``"train vs held-out"``) and (b)
    held-out items plus ``n_random`` random items the user never interacted
    with (``"train vs held-out+random"``); means over the users that have
    held-out items.

    Returns
    -------
    dict
        ``name -> {"auc", "auc_std", "n_targets"}``.
    """
    rng = np.random.default_rng([seed, 23])
    held = (split.valid + split.test).tocsr()
    seen = (split.train + held).tocsr()
    scores_all = (user_emb.double() @ item_emb.double().T + item_bias.double()).numpy()
    out: dict[str, list[float]] = {"train vs held-out": [], "train vs held-out+random": []}
    n_items = split.n_items
    for u in np.asarray(users, dtype=np.int64):
        pos = split.train.indices[split.train.indptr[u] : split.train.indptr[u + 1]]
        ho = held.indices[held.indptr[u] : held.indptr[u + 1]]
        if len(pos) == 0 or len(ho) == 0:
            continue
        unseen = np.setdiff1d(np.arange(n_items), seen.indices[seen.indptr[u] : seen.indptr[u + 1]])
        rand = rng.choice(unseen, size=min(n_random, len(unseen)), replace=False)
        s = scores_all[u]
        out["train vs held-out"].append(roc_auc(np.r_[s[pos], s[ho]], np.r_[np.ones(len(pos)), np.zeros(len(ho))]))
        neg = np.r_[ho, rand]
        out["train vs held-out+random"].append(
            roc_auc(np.r_[s[pos], s[neg]], np.r_[np.ones(len(pos)), np.zeros(len(neg))]))
    return {k: {"auc": float(np.mean(v)), "auc_std": float(np.std(v)), "n_targets": len(v)} for k, v in out.items()}


#: Interaction-level DP settings of the project's DP runs (``simulations.sweeps.DP_PRESET``):
#: sampling rate, clipping norm and the number of rounds the noise is calibrated for.
DP_SAMPLE_RATE = 0.3
DP_MAX_GRAD_NORM = 0.5
DP_ROUNDS = 100

UNIT_NONE = "none (no DP mechanism)"
UNIT_INTERACTION = "interaction (one training pair), one round"
UNIT_USER = "user (whole update), one round"


def _row(setting: str, unit: str, epsilon: float, attack: str, res: dict, **extra) -> dict:
    return {"setting": setting, "unit": unit, "epsilon": float(epsilon), "attack": attack, "auc": res["auc"],
            "auc_std": res["auc_std"], "n_targets": res["n_targets"], **extra}


def leakage_table(
    split: Split,
    *,
    n_users: int = 300,
    dim: int = 64,
    rounds: int = 100,
    local: LocalConfig | None = None,
    server_lr: float = 5e-3,
    interaction_epsilons: tuple[float, ...] = (8.0, 1.0),
    dp_rounds: int = DP_ROUNDS,
    dp_sample_rate: float = DP_SAMPLE_RATE,
    dp_max_grad_norm: float = DP_MAX_GRAD_NORM,
    user_sigmas: tuple[float, ...] = (1.0, 4.0),
    user_clip: float | None = None,
    cohort_sizes: tuple[int, ...] = (10, 50),
    als_epsilons: tuple[float, ...] = (8.0,),
    membership: bool = True,
    delta: float = 1e-5,
    seed: int = 0,
    verbose: bool = False,
) -> list[dict]:
    """Run every attack on one split; one row per (setting, attack).

    Steps: train federated MF without DP for ``rounds`` rounds (the snapshot the
    update attacks run against: item parameters and local user embeddings),
    then attack one further round's releases of ``n_users`` random users under
    each protection, and (``membership``) run the membership attack on the
    final non-private model and on a model trained with interaction-level DP.

    Parameters
    ----------
    split
        Train / held-out matrices.
    n_users
        Users attacked (random subset of those with training data).
    dim, rounds, local, server_lr
        The non-private model (``local`` defaults to ``LocalConfig(user_lr=1.0)``,
        the project's tuned default).
    interaction_epsilons
        Interaction-level DP: noise calibrated so that ``dp_rounds`` rounds at
        ``dp_sample_rate`` reach each epsilon (the project's DP runs); the row's
        ``epsilon`` is that of the ONE attacked round, ``epsilon_run`` the full
        budget.
    dp_sample_rate, dp_max_grad_norm
        Poisson rate and per-pair clipping norm of the interaction-level rows.
    user_sigmas
        Noise multipliers of the user-level rows (worst case: cohort of 1).
    user_clip
        ``C`` of user-level DP; default: the median L2 norm of the attacked
        users' non-private releases (a simulation convenience: a deployment
        would fix ``C`` without looking at the data).
    cohort_sizes
        ``k`` of the secure-aggregation rows (no noise); the first one also
        gets a user-level-DP row with the first sigma (noise on the cohort sum).
    als_epsilons
        Private ALS (the sweep's preset, :data:`fedrec_app.simulations.studies.frontier.ALS_PRESET`):
        one user's counts and pass releases without noise and with the noise of each
        run epsilon (the row's ``epsilon`` is that of the one attacked release).
    membership
        Add the membership-inference rows.
    delta
        Delta of every epsilon.
    seed
        Seed of everything.

    Returns
    -------
    list of dict
        Keys ``setting, unit, epsilon, attack, auc`` plus ``auc_std,
        n_targets`` and the setting's parameters.
    """
    t0 = time.time()

    def say(msg: str) -> None:
        if verbose:
            print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    local = local or LocalConfig(user_lr=1.0)
    if local.dp:
        raise ValueError("`local` is the non-private client config; DP settings are added by leakage_table")
    train = split.train
    gen = torch.Generator().manual_seed(seed)
    q, b, p = train_federated(train, dim=dim, rounds=rounds, cfg=local, server_lr=server_lr, seed=seed)
    say(f"trained non-private model ({rounds} rounds, dim {dim})")
    have = np.flatnonzero(np.diff(train.indptr) > 0)
    rng = np.random.default_rng([seed, 5])
    targets = np.sort(rng.choice(have, size=min(n_users, len(have)), replace=False))
    attack_round = rounds + 1
    rows: list[dict] = []
    inf = dp_epsilon(noise_multiplier=0.0, sample_rate=1.0, steps=1, delta=delta)  # inf: no mechanism

    def attack(**kw) -> dict:
        return update_attack(q, b, p, train, targets, kw.pop("cfg", local), seed=seed, server_round=attack_round,
                             generator=gen, **kw)

    base = dict(noise_multiplier=0.0, sample_rate=1.0, clip=None, cohort_size=1, delta=delta, epsilon_run=inf)
    for a, res in attack().items():
        rows.append(_row("none", UNIT_NONE, inf, f"update:{a}", res, **base))
    rows.append(_row("reference: no release, item popularity of the other users", UNIT_NONE, inf, "popularity",
                     popularity_auc(train, targets), **base))
    say("no protection")
    steps = steps_per_round(local)
    for e in interaction_epsilons:
        sigma = dp_noise(target_epsilon=e, delta=delta, sample_rate=dp_sample_rate, steps=dp_rounds * steps)
        cfg = dataclasses.replace(local, noise_multiplier=sigma, sample_rate=dp_sample_rate,
                                  max_grad_norm=dp_max_grad_norm)
        eps_round = dp_epsilon(noise_multiplier=sigma, sample_rate=dp_sample_rate, steps=steps, delta=delta)
        eps_run = dp_epsilon(noise_multiplier=sigma, sample_rate=dp_sample_rate, steps=dp_rounds * steps, delta=delta)
        for a, res in attack(cfg=cfg).items():
            rows.append(_row(f"interaction-level DP (run eps={e:g} over {dp_rounds} rounds)", UNIT_INTERACTION,
                             eps_round, f"update:{a}", res, noise_multiplier=sigma, sample_rate=dp_sample_rate,
                             clip=dp_max_grad_norm, cohort_size=1, delta=delta, epsilon_run=eps_run))
        say(f"interaction-level DP sigma={sigma:.3g}")
    if user_clip is None:
        norms = []
        for u in targets:
            gi, gb = release(p[[u]], q, b, train, np.array([u]), local, seed=seed, server_round=attack_round)
            norms.append(math.sqrt(float((gi * gi).sum() + (gb * gb).sum())))
        user_clip = float(np.median(norms))
    for s in user_sigmas:
        eps_u = dp_epsilon(noise_multiplier=s, sample_rate=1.0, steps=1, delta=delta)
        for a, res in attack(user_level=(user_clip, s)).items():
            rows.append(_row(f"user-level DP (sigma={s:g}, worst case k=1)", UNIT_USER, eps_u, f"update:{a}", res,
                             noise_multiplier=s, sample_rate=1.0, clip=user_clip, cohort_size=1, delta=delta,
                             epsilon_run=float("nan")))
        say(f"user-level DP sigma={s:g}")
    for k in cohort_sizes:
        for a, res in attack(cohort_size=k).items():
            rows.append(_row(f"secure aggregation (k={k})", UNIT_NONE, inf, f"update:{a}", res, **{**base,
                             "cohort_size": k}))
        say(f"secure aggregation k={k}")
    if cohort_sizes and user_sigmas:
        k, s = cohort_sizes[0], user_sigmas[0]
        eps_u = dp_epsilon(noise_multiplier=s, sample_rate=1.0, steps=1, delta=delta)
        for a, res in attack(cohort_size=k, user_level=(user_clip, s)).items():
            rows.append(_row(f"user-level DP + secure aggregation (sigma={s:g}, k={k})", UNIT_USER, eps_u,
                             f"update:{a}", res, noise_multiplier=s, sample_rate=1.0, clip=user_clip,
                             cohort_size=k, delta=delta, epsilon_run=float("nan")))
        say("user-level DP + secure aggregation")
    if als_epsilons:
        from fedrec.privacy.accounting import calibrate_noise
        from fedrec_app.simulations.studies.frontier import ALS_PRESET as A

        kw = dict(cap=A["als_cap"], clip=A["als_clip"], dim=A["dim"], alpha=A["als_alpha"],
                  reg_user=A["als_user_reg"], seed=seed)
        for a, res in als_attack(train, targets, noise_multiplier=0.0, **kw).items():
            rows.append(_row("private ALS, one user's release, no noise", UNIT_NONE, inf, f"als:{a}", res, **base))
        for e in als_epsilons:
            z = calibrate_noise(target_epsilon=e, delta=delta, sample_rate=1.0, steps=A["als_passes"] + 1)
            eps_one = dp_epsilon(noise_multiplier=z, sample_rate=1.0, steps=1, delta=delta)
            for a, res in als_attack(train, targets, noise_multiplier=z, **kw).items():
                rows.append(_row(f"private ALS (run eps={e:g}), one user's release (worst case k=1)", UNIT_USER,
                                 eps_one, f"als:{a}", res, noise_multiplier=z, sample_rate=1.0, clip=A["als_clip"],
                                 cohort_size=1, delta=delta, epsilon_run=e))
        say("private ALS")
    if membership:
        for name, res in membership_auc(q, b, p, split, targets, seed=seed).items():
            rows.append(_row(f"final model, non-private ({rounds} rounds)", UNIT_NONE, inf,
                             f"membership (user embedding): {name}", res, **base))
        if interaction_epsilons:
            e = max(interaction_epsilons)
            sigma = dp_noise(target_epsilon=e, delta=delta, sample_rate=dp_sample_rate, steps=dp_rounds * steps)
            from fedrec_app.simulations.studies.sweeps import DP_PRESET

            cfg = LocalConfig(user_lr=DP_PRESET["user_lr"], user_steps=local.user_steps, item_steps=local.item_steps,
                              negatives=local.negatives, sample_rate=dp_sample_rate, noise_multiplier=sigma,
                              max_grad_norm=dp_max_grad_norm)
            qd, bd, pd = train_federated(train, dim=DP_PRESET["dim"], rounds=dp_rounds, cfg=cfg,
                                         server_opt=DP_PRESET["server_opt"], server_lr=DP_PRESET["server_lr"],
                                         seed=seed, generator=gen)
            eps_run = dp_epsilon(noise_multiplier=sigma, sample_rate=dp_sample_rate, steps=dp_rounds * steps,
                                 delta=delta)
            for name, res in membership_auc(qd, bd, pd, split, targets, seed=seed).items():
                rows.append(_row(f"final model, interaction-level DP (DP preset, {dp_rounds} rounds)",
                                 "interaction (one training pair), whole run", eps_run,
                                 f"membership (user embedding): {name}", res, noise_multiplier=sigma,
                                 sample_rate=dp_sample_rate, clip=dp_max_grad_norm, cohort_size=1, delta=delta,
                                 epsilon_run=eps_run))
            say("membership inference")
    return rows


def _fmt_eps(e: float) -> str:
    if e is None or (isinstance(e, float) and math.isnan(e)):
        return "-"
    return "inf" if math.isinf(e) else f"{e:.3g}"


def markdown_table(rows: list[dict]) -> str:
    """Rows of :func:`leakage_table` as a markdown table."""
    lines = ["| setting | unit | epsilon (delta) | attack | AUC (± std over users) |", "|---|---|---|---|---|"]
    for r in rows:
        eps = _fmt_eps(r["epsilon"])
        if not math.isinf(r["epsilon"]):
            eps += f" ({r['delta']:g})"
        lines.append(f"| {r['setting']} | {r['unit']} | {eps} | {r['attack']} | {r['auc']:.3f} ± {r['auc_std']:.3f} |")
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _jsonable(x.item())
    return x


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m fedrec_app.simulations.attacks.leakage --data ml-100k --out runs/leakage``."""
    ap = argparse.ArgumentParser(
        prog="python -m fedrec_app.simulations.attacks.leakage",
        description="Measured privacy leakage of federated MF: update attacks of an honest-but-curious server "
        "under no protection, interaction-level DP, user-level DP and secure aggregation; membership inference "
        "on the final model; one-run DP audit (simulations.audit).",
    )
    ap.add_argument("--data", default="ml-latest-small",
                    help="dataset (as for `fedrec simulate`; default ml-latest-small)")
    ap.add_argument("--split", default="leave-last-out", choices=("leave-last-out", "temporal-ratio"))
    ap.add_argument("--out", default="", help="directory for leakage.csv and leakage.json")
    ap.add_argument("--users", type=int, default=300, help="users attacked (random subset; default 300)")
    ap.add_argument("--dim", type=int, default=64, help="embedding dimension of the non-private model")
    ap.add_argument("--rounds", type=int, default=100, help="rounds of the non-private model")
    ap.add_argument("--interaction-epsilons", default="8,1",
                    help=f"run budgets of the interaction-level DP rows (over {DP_ROUNDS} rounds)")
    ap.add_argument("--user-sigmas", default="1,4", help="noise multipliers of the user-level DP rows")
    ap.add_argument("--cohorts", default="10,50", help="cohort sizes of the secure-aggregation rows")
    ap.add_argument("--no-membership", action="store_true", help="skip membership inference")
    ap.add_argument("--canaries", type=int, default=1000, help="canaries of the DP audit (0: no audit)")
    ap.add_argument("--guesses", type=int, default=200, help="guesses of the DP audit (half in, half out)")
    ap.add_argument("--audit-round-epsilons", default="8",
                    help="extra audits of a weakly private round (full batch, noise for this one-round epsilon)")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from fedrec.data import load_dataset, make_split
    from fedrec_app.simulations.attacks.audit import audit

    t0 = time.time()
    split = make_split(load_dataset(args.data), kind=args.split, tie_seed=args.seed)
    rows = leakage_table(split, n_users=args.users, dim=args.dim, rounds=args.rounds,
                         interaction_epsilons=_floats(args.interaction_epsilons),
                         user_sigmas=_floats(args.user_sigmas),
                         cohort_sizes=tuple(int(x) for x in _floats(args.cohorts)),
                         membership=not args.no_membership, delta=args.delta, seed=args.seed, verbose=True)
    audits = []
    if args.canaries > 0:
        local = LocalConfig(user_lr=1.0)
        for e in _floats(args.interaction_epsilons):
            sigma = dp_noise(target_epsilon=e, delta=args.delta, sample_rate=DP_SAMPLE_RATE,
                                    steps=DP_ROUNDS * steps_per_round(local))
            cfg = dataclasses.replace(local, noise_multiplier=sigma, sample_rate=DP_SAMPLE_RATE,
                                      max_grad_norm=DP_MAX_GRAD_NORM)
            for control in (False, True):
                res = audit(split.train, cfg=cfg, m=args.canaries, guesses=args.guesses, delta=args.delta,
                            seed=args.seed, negative_control=control)
                res["setting"] = f"interaction-level DP (run eps={e:g}, q={DP_SAMPLE_RATE:g}), one round" + (
                    " [NEGATIVE CONTROL: noise off]" if control else "")
                audits.append(res)
        for e in _floats(args.audit_round_epsilons):
            sigma = dp_noise(target_epsilon=e, delta=args.delta, sample_rate=1.0, steps=steps_per_round(local))
            cfg = dataclasses.replace(local, noise_multiplier=sigma, sample_rate=1.0, max_grad_norm=DP_MAX_GRAD_NORM)
            res = audit(split.train, cfg=cfg, m=args.canaries, guesses=args.guesses, delta=args.delta, seed=args.seed)
            res["setting"] = f"interaction-level DP (one-round eps={e:g}, q=1), one round"
            audits.append(res)
        from fedrec_app.simulations.attacks.audit import audit_als
        from fedrec_app.simulations.studies.frontier import ALS_PRESET, ALS_PRESET_LOW

        for e, preset in ((8.0, ALS_PRESET), (2.0, ALS_PRESET_LOW)):  # private ALS: its counts and one pass
            z = dp_noise(target_epsilon=e, delta=args.delta, sample_rate=1.0, steps=preset["als_passes"] + 1)
            for control in (False, True):
                res = audit_als(noise_multiplier=z, cap=preset["als_cap"], clip=preset["als_clip"], dim=preset["dim"],
                                m=args.canaries, guesses=args.guesses, delta=args.delta, seed=args.seed,
                                negative_control=control)
                res["setting"] = f"private ALS (run eps={e:g}), counts + one pass" + (
                    " [NEGATIVE CONTROL: noise off]" if control else "")
                audits.append(res)
        print(f"[{time.time() - t0:6.1f}s] audits done", file=sys.stderr)
    print(markdown_table(rows))
    if audits:
        print()
        print("| audit | unit | eps claimed | eps lower bound (95%) | correct / guesses | canaries |")
        print("|---|---|---|---|---|---|")
        for a in audits:
            print(f"| {a['setting']} | {a['unit']} | {_fmt_eps(a['eps_claimed'])} | {a['eps_lower']:.3f} | "
                  f"{a['correct']} / {a['guesses']} | {a['m']} |")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        keys = list(rows[0])
        with open(out / "leakage.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        meta = {k: v for k, v in vars(args).items()}
        (out / "leakage.json").write_text(json.dumps(_jsonable({"config": meta, "rows": rows, "audit": audits,
                                                                "seconds": time.time() - t0}), indent=2))
        print(f"\nwrote {out / 'leakage.csv'} and {out / 'leakage.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
