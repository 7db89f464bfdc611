"""Empirical DP audit in one training run (Steinke, Nasr and Jagielski, NeurIPS 2023,
"Privacy auditing with one (1) training run", arXiv:2305.08846).

The method
----------
``m`` canaries are each included in the training data independently with
probability 1/2.  After one run the auditor scores every canary, guesses
"included" for the ``k+`` highest scores and "excluded" for the ``k-`` lowest
(abstaining on the rest), and counts the ``v`` correct guesses out of ``r = k+ +
k-``.  If the mechanism is (eps, delta)-DP with respect to each canary, the
paper's main theorem (Theorem 5.2 / Corollary 5.4, computed as in its
Appendix D) bounds

    P[W >= v] <= f(v) + 2 m delta * max_{1 <= i <= v} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v].

:func:`p_value` is the right-hand side; :func:`eps_lower_bound` returns the
largest eps whose p-value is below ``p`` (default 0.05), i.e. the audited lower
bound at 95% confidence (the paper's ``get_eps_audit``: bracket, then 30
bisection steps, returning the conservative end).  With ``delta = 0`` it is the
pure-DP bound ``f(v) < p``.

The canaries here
-----------------
The audited mechanism is the client's interaction-level DP-SGD round
(:func:`fedrec.engine.train_cohort` with ``noise_multiplier > 0``); its claimed
epsilon is that of one round, ``user_steps + item_steps`` steps of the Poisson
subsampled Gaussian, for one training pair (the canary is one interaction and
``negatives`` must be 1, so one interaction is one pair).

* Canary ``j`` is the interaction (canary user ``j``, canary item ``j``).  Canary
  items are fresh item rows that no one else has as a positive (other users
  never see them: each canary user trains alone).  Each canary user gets the
  training items of a random real user as background data, so it has data
  whether or not its canary is included.
* The attacker sees each canary user's own release (no secure aggregation:
  the per-user view an honest-but-curious server has with one user per node)
  and knows what the auditor planted: the canary user's embedding at the start
  of the round (random direction, norm ``user_norm``), its background data and
  the clients' hash seed, hence the training negative ``n_j`` the canary pair
  draws when it is included (negatives are a pure function of (seed, round,
  user, positive item) and the user's positives; computed as if every canary
  were included, so without knowing which are).  The Poisson inclusion is keyed
  by the device's secret key, which the auditor does not know.
* Score of canary ``j``: ``s(c_j) - s(n_j)`` with ``s(i) = g_i + <G_i, p_j>``
  for the released bias update ``g_i`` and row ``G_i``.  An included canary pair
  pushes the canary item along ``(+p_j, +1)`` and its negative along
  ``(-p_j, -1)``; an excluded canary item is untouched or a sampled negative of
  another pair.
* Each canary only changes its own user's data, and each canary user's
  release is a separate run of the mechanism with data-independent noise
  draws, so the joint release is (eps, delta)-DP with respect to each canary
  (parallel composition): the theorem's assumption.

The score ignores the canary's effect through the (never released) user
embedding, only the last ``item_steps`` of the ``user_steps + item_steps``
accounted steps reach the release, and the canary is in a step only with
probability ``sample_rate``: the audit is a valid lower bound, not a tight one.  The
release is divided by the public expected batch ``sample_rate * interaction_cap``,
so the canary changes no normaliser.

Negative control: ``negative_control=True`` runs the same round with the noise
switched off (``noise_multiplier=0``, which in ``train_cohort`` also disables
clipping and sampling) while still claiming the noisy mechanism's epsilon; the
audit must then report a lower bound above the claim.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import scipy.sparse as sp
import scipy.stats
import torch

from fedrec.engine import LocalConfig, keyed_negatives, mf_round, steps_per_round
from fedrec.privacy.accounting import calibrate_noise, epsilon

__all__ = ["p_value", "eps_lower_bound", "canary_scores", "audit", "audit_als", "deploy_audit", "dp_epsilon",
           "dp_noise"]


def dp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """:func:`fedrec.privacy.accounting.epsilon` (RDP), without Opacus's alpha-range warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)


def dp_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """:func:`fedrec.privacy.accounting.calibrate_noise`, without Opacus's alpha-range warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return calibrate_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps)


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P-value of ``v`` correct guesses out of ``r`` under (eps, delta)-DP.

    Upper bound on ``P[W >= v]`` from Steinke, Nasr and Jagielski (2023),
    Theorem 5.2 / Appendix D.

    Parameters
    ----------
    m : int
        Canaries (each included with probability 1/2).
    r : int
        Guesses (abstentions excluded), ``0 <= v <= r <= m``.
    v : int
        Correct guesses.
    eps, delta : float
        The null hypothesis: the mechanism is (eps, delta)-DP.

    Returns
    -------
    float
        The p-value, at most 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m; got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1; got {eps}, {delta}")
    q = 1.0 / (1.0 + math.exp(-eps))
    beta = float(scipy.stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0:
        return min(beta, 1.0)
    alpha = 0.0
    acc = 0.0  # P[v > Binomial(r, q) >= v - i]
    for i in range(1, v + 1):
        acc += float(scipy.stats.binom.pmf(v - i, r, q))
        if acc > i * alpha:
            alpha = acc / i
    return min(beta + alpha * delta * 2 * m, 1.0)


def eps_lower_bound(m: int, r: int, v: int, *, delta: float, p: float = 0.05) -> float:
    """Largest eps rejected at level ``p``: the audited lower bound on epsilon.

    Bisection as in the paper's Appendix D (``get_eps_audit``): the upper end is
    raised in steps of 1 until it is not rejected, then 30 bisection steps;
    returns the low (conservative) end, 0 when even eps = 0 is not rejected.
    """
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1); got {p}")
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < p:
        hi += 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if p_value(m, r, v, mid, delta) < p:
            lo = mid
        else:
            hi = mid
    return lo


def _guess(scores: np.ndarray, include: np.ndarray, guesses: int, rng: np.random.Generator) -> tuple[int, int]:
    """The auditor's guesses, fixed before it looks at which canaries were in: "included" for
    the ``guesses // 2`` highest scores, "excluded" for as many lowest (ties broken at
    random); returns (correct guesses, ``guesses // 2``)."""
    m, k = len(scores), guesses // 2
    order = np.lexsort((rng.random(m), scores))  # ascending score, random tie-break
    guess = np.zeros(m, dtype=np.int64)
    guess[order[m - k:]] = 1
    guess[order[:k]] = -1
    return int(((guess == 1) & include).sum() + ((guess == -1) & ~include).sum()), k


def _canary_data(
    train: sp.csr_matrix, m: int, rng: np.random.Generator, *, include_all: bool = False
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows of ``m`` canary users over ``n_items + m`` items, and who includes its canary
    (``include_all``: the same background with every canary included)."""
    n_items = train.shape[1]
    have = np.flatnonzero(np.diff(train.indptr) > 0)
    donors = rng.choice(have, size=m, replace=True)
    include = rng.random(m) < 0.5
    if include_all:
        include = np.ones(m, dtype=bool)
    rows, cols = [], []
    for j, u in enumerate(donors):
        items = train.indices[train.indptr[u] : train.indptr[u + 1]]
        if include[j]:
            items = np.r_[items, n_items + j]
        rows.append(np.full(len(items), j))
        cols.append(items)
    r, c = np.concatenate(rows), np.concatenate(cols)
    t = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(m, n_items + m))
    t.sort_indices()
    return t, include


def canary_scores(
    canary_train: sp.csr_matrix,
    n_items: int,
    cfg: LocalConfig,
    *,
    would_be_negative: np.ndarray,
    dim: int,
    init_std: float,
    user_norm: float,
    seed: int,
    trainable: torch.Tensor | None = None,
) -> np.ndarray:
    """Run one round for each canary user alone and score its canary (see the module doc).

    ``canary_train`` has one row per canary user ``j`` over ``n_items + m`` items;
    canary ``j`` is item ``n_items + j``; ``would_be_negative[j]`` is the
    training negative the canary pair draws when it is included.
    """
    m = canary_train.shape[0]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n_items + m, dim, generator=g, dtype=torch.float64) * init_std
    b = torch.zeros(n_items + m, dtype=torch.float64)
    p = torch.randn(m, dim, generator=g, dtype=torch.float64)
    p = p / p.norm(dim=1, keepdim=True) * user_norm
    noise = torch.Generator().manual_seed(seed + 1)
    out = np.empty(m)
    for j in range(m):
        _, item_update, bias_update, _ = mf_round(p[j : j + 1], q, b, canary_train, np.array([j]), cfg, seed=seed,
                                                  server_round=1, generator=noise, trainable=trainable)
        c, neg = n_items + j, int(would_be_negative[j])
        pos_stat = float(bias_update[c]) + float(item_update[c] @ p[j])
        neg_stat = float(bias_update[neg]) + float(item_update[neg] @ p[j])
        out[j] = pos_stat - neg_stat
    return out


def audit(
    train: sp.csr_matrix,
    *,
    cfg: LocalConfig,
    m: int = 1000,
    guesses: int = 200,
    delta: float = 1e-5,
    p: float = 0.05,
    dim: int = 64,
    init_std: float = 0.1,
    user_norm: float = 2.0,
    seed: int = 0,
    negative_control: bool = False,
    train_head: float = 0.0,
) -> dict:
    """One-run audit of the interaction-level DP round (see the module doc).

    ``train_head > 0`` audits DP-FEST: only that fraction of the real items (the most
    popular) and every canary item are trained (the auditor puts the canaries in the
    head, where they are released); the other rows are frozen, their gradients
    dropped before clipping.

    Parameters
    ----------
    train
        Real training matrix: background data of the canary users.
    cfg
        The audited client config; needs ``noise_multiplier > 0`` (the claim)
        and ``negatives == 1``.
    m
        Canaries.
    guesses
        ``r``: ``guesses // 2`` "included" guesses (top scores) and as many
        "excluded" guesses (bottom scores), fixed before the run.
    delta
        Delta of the claim and of the audit.
    p
        Significance: the bound holds with probability ``1 - p``.
    dim, init_std
        Embedding size and std of the (random) item parameters.
    user_norm
        Norm of the canary users' (random) embeddings: chosen by the auditor;
        large embeddings put most of a canary pair's clipped gradient into the
        released item rows.
    seed
        Seed of canaries, parameters, noise and the clients' hashing.
    negative_control
        Run with the noise switched off but keep claiming ``cfg``'s epsilon.

    Returns
    -------
    dict
        ``eps_lower, eps_claimed, correct, guesses, m, delta, p, unit,
        noise_multiplier, sample_rate, max_grad_norm, steps, negative_control,
        included`` (canaries included).
    """
    if not cfg.dp:
        raise ValueError("audit needs the DP config whose claim is audited (noise_multiplier > 0)")
    if cfg.negatives != 1:
        raise ValueError("the canary is one interaction = one training pair only with negatives=1")
    if not 2 <= guesses <= m:
        raise ValueError(f"need 2 <= guesses <= m; got {guesses}, m={m}")

    rng = np.random.default_rng([seed, 41])
    n_items = train.shape[1]
    canary_train, include = _canary_data(train, m, rng)
    # the negative a canary pair draws if included: a pure function of (seed, round, user, canary
    # item) and the user's positives (computed with every canary included: no knowledge of `include`)
    all_in, _ = _canary_data(train, m, np.random.default_rng([seed, 41]), include_all=True)
    would_be_negative = keyed_negatives(all_in, np.arange(m), n_items + np.arange(m), seed=seed, server_round=1)
    run_cfg = dataclasses.replace(cfg, noise_multiplier=0.0) if negative_control else cfg
    trainable = None
    if train_head > 0:
        from fedrec.als import head_items

        head = head_items(np.asarray(train.sum(0)).ravel(), train_head)
        trainable = torch.as_tensor(np.r_[head, np.ones(m, dtype=bool)].astype(np.float64))
    scores = canary_scores(canary_train, n_items, run_cfg, would_be_negative=would_be_negative, dim=dim,
                           init_std=init_std, user_norm=user_norm, seed=seed, trainable=trainable)
    correct, k = _guess(scores, include, guesses, rng)
    r = 2 * k
    steps = steps_per_round(cfg)
    eps_claimed = dp_epsilon(noise_multiplier=cfg.noise_multiplier, sample_rate=cfg.sample_rate, steps=steps,
                             delta=delta)
    return {
        "eps_lower": eps_lower_bound(m, r, correct, delta=delta, p=p),
        "eps_claimed": eps_claimed,
        "correct": correct,
        "guesses": r,
        "m": m,
        "included": int(include.sum()),
        "delta": delta,
        "p": p,
        "unit": "interaction (one training pair), one round",
        "noise_multiplier": cfg.noise_multiplier,
        "sample_rate": cfg.sample_rate,
        "max_grad_norm": cfg.max_grad_norm,
        "steps": steps,
        "negative_control": negative_control,
        "train_head": train_head,
    }


def audit_als(*, noise_multiplier: float, cap: int = 50, clip: float = 0.05, dim: int = 8, m: int = 1000,
              guesses: int = 200, delta: float = 1e-5, p: float = 0.05, seed: int = 0,
              negative_control: bool = False) -> dict:
    """One-run audit of private ALS's releases at user level (:mod:`fedrec.als`).

    Canary ``j`` is a user with ``cap`` items of its own (fresh items nobody else
    has), included with probability 1/2; its vector is the exact solve against a
    random public item table, which the auditor knows.  One run of the counts
    release and of one pass over all canaries; the score of canary ``j`` adds its
    items' noisy counts (scaled to the counts' sensitivity) and the projections of
    its items' released rows on its clipped vector (scaled to the pass's).  Each
    release is (eps, delta)-DP for each canary (one Gaussian mechanism over a sum
    of users), so the claim audited is the epsilon of these two releases together.
    ``negative_control``: no noise, the same claim.
    """
    from fedrec import als
    from fedrec.privacy.accounting import epsilon

    if not 2 <= guesses <= m:
        raise ValueError(f"need 2 <= guesses <= m; got {guesses}, m={m}")
    rng = np.random.default_rng([seed, 43])
    include = rng.random(m) < 0.5
    items = np.arange(m * cap).reshape(m, cap)  # canary j's items
    rows = np.repeat(np.arange(m), cap)
    train = sp.csr_matrix((np.ones(m * cap, np.float32), (rows, items.ravel())), shape=(m, m * cap))
    users = np.flatnonzero(include)
    V = rng.standard_normal((m * cap, dim)) * 0.1
    U_all = als.clip_rows(als.user_vectors(V, train, np.arange(m), alpha=0.2, reg_user=1.0), clip)
    z = 0.0 if negative_control else noise_multiplier
    counts = als.count_statistics(train, users, cap=cap, seed=seed)
    b, K = als.pass_statistics(U_all[users], train, users, cap=cap, seed=seed)
    if z > 0:
        counts = als.noisy_counts(counts, noise_multiplier=z, cap=cap, rng=rng)
        b, K = als.noisy_pass(b, K, noise_multiplier=z, cap=cap, clip=clip, rng=rng)
    s_counts = counts[items].sum(1) / als.count_sensitivity(cap)
    s_pass = np.einsum("jkd,jd->j", b[items], U_all) / als.pass_sensitivity(cap, clip)
    scores = s_counts + s_pass
    correct, k = _guess(scores, include, guesses, rng)
    claimed = epsilon(noise_multiplier=noise_multiplier, sample_rate=1.0, steps=2, delta=delta)
    return {"eps_lower": eps_lower_bound(m, 2 * k, correct, delta=delta, p=p), "eps_claimed": claimed,
            "correct": correct, "guesses": 2 * k, "m": m, "delta": delta, "p": p, "unit": "user (private ALS)",
            "noise_multiplier": noise_multiplier, "cap": cap, "clip": clip, "negative_control": negative_control,
            "included": int(include.sum())}


def _write_canary_files(directory, train: sp.csr_matrix, m: int, rng: np.random.Generator) -> np.ndarray:
    """A MovieLens-CSV dataset of ``m`` canary users (``ratings.csv``, ``movies.csv``):
    user ``j`` (raw id ``j + 1``) has the training items of a random real user at times
    1, 2, ... (the last two are leave-last-out's validation and test items) and, with
    probability 1/2, its canary item (raw id ``n_items + j + 1``) at time 0, in training.
    ``movies.csv`` lists every item, so the catalogue (and every id) is the same whether
    or not a canary is in.  Returns who includes its canary."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_items = train.shape[1]
    rows, include = _canary_data(train, m, rng)
    rows_all = []
    for j in range(m):
        background = [i for i in rows.indices[rows.indptr[j]:rows.indptr[j + 1]].tolist() if i < n_items]
        rows_all += [f"{j + 1},{i + 1},5.0,{t + 1}" for t, i in enumerate(background)]
        if include[j]:
            rows_all.append(f"{j + 1},{n_items + j + 1},5.0,0")
    (directory / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows_all) + "\n")
    (directory / "movies.csv").write_text("movieId,title,genres\n" + "".join(
        f"{i + 1},item {i + 1} (2000),Drama\n" for i in range(n_items + m)))
    return include


def deploy_audit(train: sp.csr_matrix, *, out, noise_multiplier: float, sample_rate: float = 0.3,
                 max_grad_norm: float = 0.5, m: int = 1000, users_per_node: int = 100, guesses: int = 200,
                 delta: float = 1e-5, p: float = 0.05, dim: int = 64, seed: int = 0, negative_control: bool = False,
                 insecure: bool = True, timeout: float = 1800.0) -> dict:
    """The one-run audit of the interaction-level DP round through ``fedrec deploy``:
    a SuperLink and SuperNodes hosting ``users_per_node`` of the ``m`` canary users each
    (data written by :func:`_write_canary_files`), one round, the server keeping every
    node's reply (``keep-replies``: the honest-but-curious server's view; the auditor
    tells the nodes apart by the SuperNode IDs in the deployment's logs).  The auditor scores each
    canary from that release as :func:`canary_scores` does, with what it knows: the
    public seed (the canary users' initial embeddings and each canary pair's negative),
    not the device's secret noise or Poisson sampling.

    A node's release is the mean over its users of their noisy updates, so a canary's
    score also carries the other users' noise and their negatives that land on canary
    items (a canary item is one of ``m`` in the catalogue): a weaker audit than one user
    per node, still a valid lower bound; fewer users per node, a stronger one.
    ``negative_control``: the same run with the noise off, still claiming the noisy
    round's epsilon.  Returns the fields of :func:`audit` plus ``deploy_seconds``."""
    from pathlib import Path

    from fedrec.config import FedConfig
    from fedrec.federated.federation import init_local_state, load_federation
    from fedrec_app.deploy import deploy

    out = Path(out)
    rng = np.random.default_rng([seed, 41])
    n_items = train.shape[1]
    include = _write_canary_files(out / "data", train, m, rng)
    settings = {"data": str(out / "data" / "ratings.csv"), "num-server-rounds": 1, "users-per-node": users_per_node,
                "dim": dim,
                "noise-multiplier": 0.0 if negative_control else noise_multiplier, "sample-rate": sample_rate,
                "max-grad-norm": max_grad_norm, "negatives": 1, "user-steps": 0, "item-steps": 1, "seed": seed,
                "keep-replies": True, "prior-noise": 0.0, "server-lr": 1.0, "server-opt": "sgd",
                "round-timeout": timeout}
    res = deploy(settings, out=out / "run", insecure=insecure, timeout=timeout, overwrite=True)
    if not res.ok:
        raise RuntimeError(f"the audited deployment failed: {res.error}")
    # which SuperNode hosts which users: the node IDs in the deployment's logs, the users in its node file
    import re

    logs = out / "run" / "deploy" / "logs"
    cohorts = load_federation(FedConfig(data=settings["data"], users_per_node=users_per_node, seed=seed)).cohorts
    hosted = {}
    for part in range(res.n_nodes):
        users_of = np.asarray(cohorts[part], dtype=np.int64)  # the node files held these (removed with the run)
        for node_id in re.findall(r"SuperNode ID: (\d+)", (logs / f"supernode-{part}.log").read_text()):
            hosted[int(node_id)] = users_of  # a SuperNode that reconnects logs each ID it was given
    replies = sorted((out / "run" / "replies" / "round-1").glob("reply-*.npz"))
    if len(replies) != res.n_nodes:
        raise RuntimeError(f"expected a reply from each of the {res.n_nodes} nodes, found {len(replies)}")
    # what the auditor knows: the deployed federation's ids and split, the public seed
    cfg = FedConfig(data=settings["data"], users_per_node=users_per_node, dim=dim, seed=seed, negatives=1,
                    user_steps=0)
    fed = load_federation(cfg)
    users = np.arange(m)
    release_of = np.empty(m, dtype=object)
    for path in replies:
        with np.load(path) as z:
            release = (z["array/item_embedding"].astype(np.float64),
                       z["array/item_bias"].astype(np.float64).reshape(-1))
            for u in hosted[int(z["node"])]:
                release_of[u] = release
    canary = np.searchsorted(fed.dataset.item_ids, n_items + users + 1)
    all_in = fed.split.train.tolil()
    all_in[users, canary] = 1.0
    would_be_negative = keyed_negatives(all_in.tocsr(), users, canary, seed=seed, server_round=1)
    emb = init_local_state(users, cfg, fed)
    p_users = next(iter(emb.values())).astype(np.float64)
    scores = np.empty(m)
    for j in range(m):
        rows, bias = release_of[j]
        c, n = canary[j], would_be_negative[j]
        scores[j] = bias[c] + rows[c] @ p_users[j] - bias[n] - rows[n] @ p_users[j]
    correct, k = _guess(scores, include, guesses, rng)
    steps = 1
    eps_claimed = dp_epsilon(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta)
    return {"eps_lower": eps_lower_bound(m, 2 * k, correct, delta=delta, p=p), "eps_claimed": eps_claimed,
            "correct": correct, "guesses": 2 * k, "m": m, "included": int(include.sum()), "delta": delta, "p": p,
            "unit": "interaction (one training pair), one round", "noise_multiplier": noise_multiplier,
            "sample_rate": sample_rate, "max_grad_norm": max_grad_norm, "steps": steps,
            "negative_control": negative_control,
            "through": f"fedrec deploy (SuperLink + {res.n_nodes} SuperNodes of {users_per_node} users)",
            "deploy_seconds": res.seconds}


def main(argv: list[str] | None = None) -> int:
    """``python -m fedrec_app.simulations.attacks.audit --data ml-100k --out DIR``: the one-run audit
    through ``fedrec deploy`` (the real mechanism and its negative control)."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m fedrec_app.simulations.attacks.audit",
                                 description="One-run DP audit (Steinke, Nasr and Jagielski 2023) of the interaction-"
                                             "level DP round through fedrec deploy: SuperLink and a SuperNode of "
                                             "canary users, the server keeping the node's reply.")
    ap.add_argument("--data", required=True, help="dataset whose training rows are the canary users' background")
    ap.add_argument("--out", required=True, help="directory for the runs and audit.json")
    ap.add_argument("--noise-multiplier", type=float, default=2.86, help="the audited noise (default 2.86: the "
                    "epsilon-8 preset's, 100 rounds at q 0.3)")
    ap.add_argument("--sample-rate", type=float, default=0.3)
    ap.add_argument("--canaries", type=int, default=1000)
    ap.add_argument("--guesses", type=int, default=200)
    ap.add_argument("--users-per-node", type=int, default=100, help="canary users per SuperNode (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from fedrec.data import load_dataset, make_split

    train = make_split(load_dataset(args.data), tie_seed=args.seed).train
    out = Path(args.out)
    rows = [deploy_audit(train, out=out / ("negative-control" if nc else "mechanism"),
                         noise_multiplier=args.noise_multiplier,
                         sample_rate=args.sample_rate, m=args.canaries, users_per_node=args.users_per_node,
                         guesses=args.guesses, seed=args.seed,
                         negative_control=nc) for nc in (False, True)]
    (out / "audit.json").write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{'negative control (noise off)' if r['negative_control'] else 'mechanism'}: eps claimed "
              f"{r['eps_claimed']:.3f}, lower bound {r['eps_lower']:.3f} ({r['correct']}/{r['guesses']} right, "
              f"{r['m']} canaries), {r['through']}")
    ok = rows[0]["eps_lower"] <= rows[0]["eps_claimed"] and rows[1]["eps_lower"] > rows[1]["eps_claimed"]
    print("the audit " + ("stays within the claim and catches its negative control" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
