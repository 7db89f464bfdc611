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
Every release is computed by a node's own round
(:func:`fedrec.federated.node.train_round`, on a node hosting exactly the attacked
users) and the model attacked is trained by the library's rounds
(:func:`fedrec.federated.inprocess.run_rounds`); the noise of every mechanism is
drawn from secret randomness, as in a run.

``none``
    The server sees the user's own release (a node with one user), no DP.
``interaction-level DP``
    The client's own mechanism, the DP preset's sampling rate and clipping norm
    (Poisson sampling of training pairs, per-pair clipping over every parameter the
    pair touches, Gaussian noise on every item row and bias), its noise calibrated
    for the preset's run (:func:`fedrec.privacy.calibration.resolved`).  The server
    sees the user's noisy release.  Epsilon: one round (``user_steps +
    item_steps`` steps of the subsampled Gaussian) for one training pair (with
    ``negatives=1``: one interaction), plus, for reference, the budget of the whole
    run the noise was calibrated for.
``user-level DP``
    The node clips each user's whole release (item rows and biases) to L2 norm
    ``C`` (``user-dp = client``) and the sum gets the server's user-level noise,
    std ``sigma * C`` (:func:`fedrec_app.server.strategy.add_user_level_noise`:
    Flower's DP wrapper's noise).  The DP guarantee is about one user, for an
    attacker that may know the other ``k - 1`` contributions; we simulate that
    worst case: a cohort of size 1 (``cohort_size > 1`` gives the sum of ``k``
    clipped updates plus one noise draw: what the server really sees, which leaks
    less).  Epsilon: one release of the Gaussian mechanism with sensitivity ``C``
    (sample rate 1, one round) for one user's whole data.
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
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.stats
import torch

from fedrec.config import FedConfig
from fedrec.data import Split
from fedrec.engine import LocalConfig
from fedrec.federated import node, protocol
from fedrec.federated.federation import Federation, load_federation
from fedrec.federated.inprocess import InProcessRun, run_rounds
from fedrec.privacy.calibration import planned_steps, resolved, steps_per_round
from fedrec.privacy.mechanisms import InteractionLevel, UserLevel
from fedrec.privacy.randomness import DPRandomness
from fedrec.results import write_json
from fedrec_app.server.strategy import add_user_level_noise
from fedrec_app.simulations.attacks.audit import audit, audit_als, dp_epsilon, dp_noise
from fedrec_app.simulations.studies.sweeps import DP_PRESET

__all__ = [
    "ATTACKS", "roc_auc", "item_scores", "model_config", "train_model", "local_state", "release", "update_attack",
    "als_attack", "popularity_auc", "membership_auc", "interaction_level", "leakage_table", "markdown_table", "main",
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


#: The item-side tables of federated MF's release that the update attack reads.
ITEM_TABLE, ITEM_BIAS = "item_embedding", "item_bias"

#: Rounds the interaction-level DP rows' noise is calibrated for (the DP preset's run).
DP_ROUNDS = int(DP_PRESET["num_server_rounds"])

UNIT_NONE = "none (no DP mechanism)"
UNIT_INTERACTION = "interaction (one training pair), one round"
UNIT_USER = "user (whole update), one round"


def model_config(data: str = "ml-latest-small", *, split: str = "leave-last-out", dim: int = 64, rounds: int = 100,
                 server_lr: float = 5e-3, delta: float = 1e-5, seed: int = 0) -> FedConfig:
    """The non-private federated MF whose releases are attacked: the project's tuned local
    rate, one sampled negative per positive (one training pair per interaction), Adam on
    the server, no evaluation, every user in one node (in process the nodes' split does
    not change the model: the server's mean is over users)."""
    return FedConfig(data=data, split=split, model="mf", dim=dim, num_server_rounds=rounds, server_lr=server_lr,
                     server_opt="adam", user_lr=1.0, negatives=1, delta=delta, seed=seed, eval_every=0,
                     users_per_node=1_000_000)


def train_model(cfg: FedConfig, fed: Federation | None = None) -> tuple[InProcessRun, Federation]:
    """Train ``cfg`` for its ``num_server_rounds`` rounds through the library's rounds
    (:func:`fedrec.federated.inprocess.run_rounds`); returns the run (parameters and every
    user's local state) and the federation."""
    fed = fed if fed is not None else load_federation(cfg)
    return run_rounds(cfg, fed, rounds=cfg.num_server_rounds), fed


def local_state(run: InProcessRun, fed: Federation) -> dict[str, np.ndarray]:
    """Every user's local state by global user id (what the devices hold)."""
    n_users = fed.split.train.shape[0]
    return {n: run.local(n, n_users) for n in run.states[0].local}


def release(cfg: FedConfig, fed: Federation, params: dict[str, np.ndarray], local: dict[str, np.ndarray],
            users: np.ndarray, *, server_round: int, trained_items: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The SUM of the releases of ``users`` in round ``server_round``, as a node that hosts
    exactly them computes it (:func:`fedrec.federated.node.train_round`, with ``cfg``'s
    mechanism: interaction-level noise drawn from the node's secret randomness; with
    user-level DP, each user's update clipped; the server's noise is not added here).

    ``local``: every user's local state by global id; ``trained_items``: DP-FEST's
    boolean mask of the items the server trains (sent as the message carries it).
    Returns float64 arrays by parameter name.
    """
    users = np.asarray(users, dtype=np.int64)
    one = Federation(fed.dataset, fed.split, (users,))
    state = node.NodeState(users=users, local={n: v[users] for n, v in local.items()},
                           dp_steps=np.zeros(len(users), dtype=np.int64), rounds=np.zeros(len(users), dtype=np.int64))
    bits = None if trained_items is None else protocol.trained_items_of(protocol.trained_items_config(trained_items))
    update, metrics, _ = node.train_round(cfg, one, 0, state, global_params=params, server_round=server_round,
                                          trained_items=bits)
    if cfg.user_level:  # the reply is (global parameters + the sum of the clipped updates)
        return {n: update[n].astype(np.float64) - params[n] for n in params}
    k = int(metrics[protocol.NUM_EXAMPLES])
    return {n: update[n].astype(np.float64) * k for n in params}


def update_attack(
    cfg: FedConfig,
    fed: Federation,
    params: dict[str, np.ndarray],
    local: dict[str, np.ndarray],
    users: np.ndarray,
    *,
    server_round: int,
    cohort_size: int = 1,
    user_level: tuple[float, float] | None = None,
    attacks: tuple[str, ...] = ATTACKS,
    trained_items: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Mean per-user ROC AUC of the update attack.

    The users are shuffled (from ``cfg.seed``) and cut into cohorts of ``cohort_size``
    (the remainder is dropped).  For each cohort the server sees the sum of the members'
    releases (:func:`release`; ``cohort_size=1``: one user's own release) and attacks
    every member's training items from it.

    Parameters
    ----------
    cfg
        The clients' training (``cfg.dp``: interaction-level DP, noise from the nodes'
        secret randomness).
    fed, params, local
        Data, the round's global parameters and every user's local state.
    users
        Users to attack.
    server_round
        The round attacked (keys the clients' negatives and sampling).
    cohort_size
        ``k``: users of one node, or of a securely aggregated cohort.
    user_level
        ``(clip, noise_multiplier)``: each member's update clipped on its node and the
        cohort's sum noised as the server's user-level mechanism does
        (:func:`fedrec_app.server.strategy.add_user_level_noise`, secret randomness).
    attacks
        Names in :data:`ATTACKS`.
    trained_items
        DP-FEST's mask of the items the server trains (``cfg.train_head > 0``).

    Returns
    -------
    dict
        ``attack -> {"auc": mean, "auc_std": std over users, "n_targets": n}``.
    """
    if cohort_size < 1:
        raise ValueError(f"cohort_size must be >= 1; got {cohort_size}")
    rng = np.random.default_rng([cfg.seed, 17])
    users = rng.permutation(np.asarray(users, dtype=np.int64))
    n_cohorts = len(users) // cohort_size
    if n_cohorts == 0:
        raise ValueError(f"{len(users)} users cannot fill one cohort of {cohort_size}")
    if user_level is not None:
        clip, sigma = user_level
        cfg = dataclasses.replace(cfg, user_dp="client", user_clip=clip, user_noise_multiplier=sigma)
    train = fed.split.train
    n_items = train.shape[1]
    aucs: dict[str, list[float]] = {a: [] for a in attacks}
    for c in range(n_cohorts):
        cohort = users[c * cohort_size : (c + 1) * cohort_size]
        total = release(cfg, fed, params, local, cohort, server_round=server_round, trained_items=trained_items)
        if user_level is not None:
            add_user_level_noise(list(total.values()), noise_multiplier=sigma, clip=clip,
                                 randomness=DPRandomness.secret())
        for u in cohort:
            labels = np.zeros(n_items, dtype=bool)
            labels[train.indices[train.indptr[u] : train.indptr[u + 1]]] = True
            for a in attacks:
                aucs[a].append(roc_auc(item_scores(total[ITEM_TABLE], total[ITEM_BIAS], a), labels))
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
    never in a release).  The noise is secret (operating-system entropy)."""
    from fedrec import als

    rng = np.random.default_rng([seed, 23])
    noise = DPRandomness.secret().numpy()
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
            c = als.noisy_counts(c, noise_multiplier=noise_multiplier, cap=cap, rng=noise)
        aucs["counts"].append(roc_auc(c, labels))
        U = als.clip_rows(als.user_vectors(V, train, one, alpha=alpha, reg_user=reg_user), clip)
        b, K = als.pass_statistics(U, train, one, cap=cap, seed=seed)
        if noise_multiplier > 0:
            b, K = als.noisy_pass(b, K, noise_multiplier=noise_multiplier, cap=cap, clip=clip, rng=noise)
        aucs["pass"].append(roc_auc(np.linalg.norm(b, axis=1), labels))
    return {k: {"auc": float(np.mean(v)), "auc_std": float(np.std(v)), "n_targets": len(v)} for k, v in aucs.items()}


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
    params: dict[str, np.ndarray],
    user_emb: np.ndarray,
    split: Split,
    users: np.ndarray,
    *,
    n_random: int = 100,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Membership inference on the final model with the user's own embedding (upper bound).

    Score of ``(u, i)``: ``p_u . q_i + b_i`` (``params``' item table and biases,
    ``user_emb`` every user's local embedding).  Per user, ROC AUC of training
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
    scores_all = (np.asarray(user_emb, dtype=np.float64) @ np.asarray(params[ITEM_TABLE], dtype=np.float64).T
                  + np.asarray(params[ITEM_BIAS], dtype=np.float64))
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


def _row(setting: str, unit: str, epsilon: float, attack: str, res: dict, **extra) -> dict:
    return {"setting": setting, "unit": unit, "epsilon": float(epsilon), "attack": attack, "auc": res["auc"],
            "auc_std": res["auc_std"], "n_targets": res["n_targets"], **extra}


def interaction_level(cfg: FedConfig, target_epsilon: float, dp_rounds: int = DP_ROUNDS) -> FedConfig:
    """``cfg`` with the DP preset's interaction-level mechanism (its sampling rate and
    clipping norm), the noise calibrated for ``target_epsilon`` over ``dp_rounds``
    rounds (:func:`fedrec.privacy.calibration.resolved`)."""
    return resolved(dataclasses.replace(cfg, target_epsilon=target_epsilon, sample_rate=DP_PRESET["sample_rate"],
                                        max_grad_norm=DP_PRESET["max_grad_norm"], num_server_rounds=dp_rounds))


def leakage_table(
    cfg: FedConfig,
    *,
    n_users: int = 300,
    interaction_epsilons: tuple[float, ...] = (8.0, 1.0),
    dp_rounds: int = DP_ROUNDS,
    user_sigmas: tuple[float, ...] = (1.0, 4.0),
    user_clip: float | None = None,
    cohort_sizes: tuple[int, ...] = (10, 50),
    als_epsilons: tuple[float, ...] = (8.0,),
    membership: bool = True,
    verbose: bool = False,
) -> list[dict]:
    """Run every attack on one federated MF; one row per (setting, attack).

    Steps: train ``cfg`` (non-private; :func:`model_config`) for its rounds through the
    library's rounds (the snapshot the update attacks run against: item parameters and
    every user's local embedding), then attack one further round's releases of
    ``n_users`` random users under each protection, each computed by the node's own
    round and mechanism, and (``membership``) run the membership attack on the final
    non-private model and on a model trained with interaction-level DP.

    Parameters
    ----------
    cfg
        The non-private model and its data (:func:`model_config`); ``cfg.seed`` seeds
        the model, the split's ties and the attacked users, ``cfg.delta`` every epsilon.
    n_users
        Users attacked (random subset of those with training data).
    interaction_epsilons
        Interaction-level DP (the DP preset's sampling rate and clipping norm): noise
        calibrated so that ``dp_rounds`` rounds reach each epsilon; the row's
        ``epsilon`` is that of the ONE attacked round, ``epsilon_run`` the full budget.
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

    if cfg.dp or cfg.user_level:
        raise ValueError("`cfg` is the non-private model; the DP settings are added by leakage_table")
    delta, seed = cfg.delta, cfg.seed
    run, fed = train_model(cfg)
    params, local = run.params, local_state(run, fed)
    say(f"trained the non-private model ({cfg.num_server_rounds} rounds, dim {cfg.dim})")
    train = fed.split.train
    have = np.flatnonzero(np.diff(train.indptr) > 0)
    rng = np.random.default_rng([seed, 5])
    targets = np.sort(rng.choice(have, size=min(n_users, len(have)), replace=False))
    attack_round = run.server_round + 1
    rows: list[dict] = []
    inf = dp_epsilon(noise_multiplier=0.0, sample_rate=1.0, steps=1, delta=delta)  # inf: no mechanism

    def attack(c: FedConfig = cfg, **kw) -> dict:
        return update_attack(c, fed, params, local, targets, server_round=attack_round, **kw)

    base = dict(noise_multiplier=0.0, sample_rate=1.0, clip=None, cohort_size=1, delta=delta, epsilon_run=inf)
    for a, res in attack().items():
        rows.append(_row("none", UNIT_NONE, inf, f"update:{a}", res, **base))
    rows.append(_row("reference: no release, item popularity of the other users", UNIT_NONE, inf, "popularity",
                     popularity_auc(train, targets), **base))
    say("no protection")
    for e in interaction_epsilons:
        dcfg = interaction_level(cfg, e, dp_rounds)
        mech = InteractionLevel.from_config(dcfg)
        eps_round, eps_run = mech.epsilon(steps_per_round(dcfg)), mech.epsilon(planned_steps(dcfg))
        for a, res in attack(dcfg).items():
            rows.append(_row(f"interaction-level DP (run eps={e:g} over {dp_rounds} rounds)", UNIT_INTERACTION,
                             eps_round, f"update:{a}", res, noise_multiplier=dcfg.noise_multiplier,
                             sample_rate=dcfg.sample_rate, clip=dcfg.max_grad_norm, cohort_size=1, delta=delta,
                             epsilon_run=eps_run))
        say(f"interaction-level DP sigma={dcfg.noise_multiplier:.3g}")
    if user_clip is None:
        norms = []
        for u in targets:
            r = release(cfg, fed, params, local, np.array([u]), server_round=attack_round)
            norms.append(math.sqrt(sum(float((v * v).sum()) for v in r.values())))
        user_clip = float(np.median(norms))

    def user_epsilon(sigma: float) -> float:  # one release of the user-level mechanism, every user in it
        return UserLevel(noise_multiplier=sigma, sample_rate=1.0, clip=user_clip, delta=delta).epsilon(1)

    for s in user_sigmas:
        for a, res in attack(user_level=(user_clip, s)).items():
            rows.append(_row(f"user-level DP (sigma={s:g}, worst case k=1)", UNIT_USER, user_epsilon(s),
                             f"update:{a}", res, noise_multiplier=s, sample_rate=1.0, clip=user_clip, cohort_size=1,
                             delta=delta, epsilon_run=float("nan")))
        say(f"user-level DP sigma={s:g}")
    for k in cohort_sizes:
        for a, res in attack(cohort_size=k).items():
            rows.append(_row(f"secure aggregation (k={k})", UNIT_NONE, inf, f"update:{a}", res, **{**base,
                             "cohort_size": k}))
        say(f"secure aggregation k={k}")
    if cohort_sizes and user_sigmas:
        k, s = cohort_sizes[0], user_sigmas[0]
        for a, res in attack(cohort_size=k, user_level=(user_clip, s)).items():
            rows.append(_row(f"user-level DP + secure aggregation (sigma={s:g}, k={k})", UNIT_USER, user_epsilon(s),
                             f"update:{a}", res, noise_multiplier=s, sample_rate=1.0, clip=user_clip,
                             cohort_size=k, delta=delta, epsilon_run=float("nan")))
        say("user-level DP + secure aggregation")
    if als_epsilons:
        from fedrec_app.simulations.studies.frontier import ALS_PRESET as A

        kw = dict(cap=A["als_cap"], clip=A["als_clip"], dim=A["dim"], alpha=A["als_alpha"],
                  reg_user=A["als_user_reg"], seed=seed)
        for a, res in als_attack(train, targets, noise_multiplier=0.0, **kw).items():
            rows.append(_row("private ALS, one user's release, no noise", UNIT_NONE, inf, f"als:{a}", res, **base))
        for e in als_epsilons:
            z = dp_noise(target_epsilon=e, delta=delta, sample_rate=1.0, steps=A["als_passes"] + 1)
            eps_one = dp_epsilon(noise_multiplier=z, sample_rate=1.0, steps=1, delta=delta)
            for a, res in als_attack(train, targets, noise_multiplier=z, **kw).items():
                rows.append(_row(f"private ALS (run eps={e:g}), one user's release (worst case k=1)", UNIT_USER,
                                 eps_one, f"als:{a}", res, noise_multiplier=z, sample_rate=1.0, clip=A["als_clip"],
                                 cohort_size=1, delta=delta, epsilon_run=e))
        say("private ALS")
    if membership:
        for name, res in membership_auc(params, local["user"], fed.split, targets, seed=seed).items():
            rows.append(_row(f"final model, non-private ({cfg.num_server_rounds} rounds)", UNIT_NONE, inf,
                             f"membership (user embedding): {name}", res, **base))
        if interaction_epsilons:
            e = max(interaction_epsilons)
            dcfg = resolved(dataclasses.replace(cfg, **{**DP_PRESET, "num_server_rounds": dp_rounds},
                                                target_epsilon=e))
            drun, _ = train_model(dcfg, fed)
            eps_run = InteractionLevel.from_config(dcfg).epsilon(planned_steps(dcfg))
            for name, res in membership_auc(drun.params, local_state(drun, fed)["user"], fed.split, targets,
                                            seed=seed).items():
                rows.append(_row(f"final model, interaction-level DP (DP preset, {dp_rounds} rounds)",
                                 "interaction (one training pair), whole run", eps_run,
                                 f"membership (user embedding): {name}", res, noise_multiplier=dcfg.noise_multiplier,
                                 sample_rate=dcfg.sample_rate, clip=dcfg.max_grad_norm, cohort_size=1, delta=delta,
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
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # Opacus: harmless here

    t0 = time.time()
    cfg = model_config(args.data, split=args.split, dim=args.dim, rounds=args.rounds, delta=args.delta,
                       seed=args.seed)
    rows = leakage_table(cfg, n_users=args.users, interaction_epsilons=_floats(args.interaction_epsilons),
                         user_sigmas=_floats(args.user_sigmas),
                         cohort_sizes=tuple(int(x) for x in _floats(args.cohorts)),
                         membership=not args.no_membership, verbose=True)
    audits = []
    if args.canaries > 0:
        train = load_federation(cfg).split.train
        for e in _floats(args.interaction_epsilons):
            local = LocalConfig.from_settings(interaction_level(cfg, e))
            for control in (False, True):
                res = audit(train, cfg=local, m=args.canaries, guesses=args.guesses, delta=args.delta,
                            seed=args.seed, negative_control=control)
                res["setting"] = f"interaction-level DP (run eps={e:g}, q={local.sample_rate:g}), one round" + (
                    " [NEGATIVE CONTROL: noise off]" if control else "")
                audits.append(res)
        for e in _floats(args.audit_round_epsilons):  # one round at full batch: its noise for this epsilon
            one = dataclasses.replace(cfg, target_epsilon=e, sample_rate=1.0, num_server_rounds=1,
                                      max_grad_norm=DP_PRESET["max_grad_norm"])
            local = LocalConfig.from_settings(resolved(one))
            res = audit(train, cfg=local, m=args.canaries, guesses=args.guesses, delta=args.delta, seed=args.seed)
            res["setting"] = f"interaction-level DP (one-round eps={e:g}, q=1), one round"
            audits.append(res)
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
        write_json(out / "leakage.json", {"config": meta, "rows": rows, "audit": audits, "seconds": time.time() - t0})
        print(f"\nwrote {out / 'leakage.csv'} and {out / 'leakage.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
