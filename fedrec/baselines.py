"""Centralized baselines: MostPop, EASE and centralized training of any fedrec model.

All of them fit on ``split.train`` only, and pick their hyper-parameter (EASE's
lambda, the training epoch) on validation, never on test.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.data.negatives import sample_negatives
from fedrec.data.splits import Split
from fedrec.metrics.evaluate import EvalResult, evaluate
from fedrec.models import LOSSES, Recommender

__all__ = [
    "BaselineResult",
    "most_popular_scores",
    "ease_item_weights",
    "ease_weights",
    "fit_most_popular",
    "fit_private_most_popular",
    "fit_ease",
    "fit_centralized",
    "fit_sequential",
    "train_epoch",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BaselineResult:
    """A fitted baseline: its scorer, what was selected on validation, and the
    validation and test evaluations."""

    name: str
    score_fn: ScoreFn
    valid: EvalResult
    test: EvalResult
    selected: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def most_popular_scores(train: sp.csr_matrix) -> np.ndarray:
    """Item popularity in the training data (number of training users)."""
    return np.asarray(train.sum(axis=0)).ravel().astype(np.float64)


def _non_personal(name: str, item_scores: np.ndarray, split: Split, started: float, selected: dict | None = None,
                  **eval_kwargs) -> BaselineResult:
    """A baseline that gives every user the same item scores, evaluated on both stages."""

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(item_scores, (len(users), len(item_scores)))

    return BaselineResult(
        name,
        score,
        evaluate(score, split, stage="valid", **eval_kwargs),
        evaluate(score, split, stage="test", **eval_kwargs),
        selected=selected or {},
        seconds=time.perf_counter() - started,
    )


def fit_most_popular(split: Split, **eval_kwargs) -> BaselineResult:
    """MostPop: everyone gets the items most often seen in training."""
    t = time.perf_counter()
    return _non_personal("mostpop", most_popular_scores(split.train), split, t, **eval_kwargs)


def fit_private_most_popular(split: Split, *, epsilon: float, delta: float = 1e-5, seed: int = 0,
                             accountant: str = "rdp", reproducible_noise: bool = False,
                             **eval_kwargs) -> BaselineResult:
    """Private MostPop: items ranked by a DP popularity count, the floor a private model must beat.

    One Gaussian release of the sum of the users' unit-norm item vectors
    (:func:`fedrec.privacy.prior.noisy_popularity`): adding or removing a user, or one
    interaction of a user, changes the sum by at most 1 in L2, so the noise multiplier
    that Opacus's accountant calibrates for one step at sample rate 1 gives
    ``(epsilon, delta)`` **user-level** DP, which covers every single interaction too.
    Nothing is selected on validation (no hyper-parameter).  ``selected`` reports the
    noise, the epsilon the accountant computes for it, and the unit.  The noise is
    secret unless ``reproducible_noise`` (then derived from ``seed``).
    """
    from fedrec.privacy.accounting import calibrate_noise, epsilon as epsilon_of
    from fedrec.privacy.prior import noisy_popularity
    from fedrec.privacy.randomness import DPRandomness, noise_statement

    t = time.perf_counter()
    noise = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant)
    spent = epsilon_of(noise_multiplier=noise, sample_rate=1.0, steps=1, delta=delta, accountant=accountant)
    selected = {"noise_multiplier": noise, "epsilon": spent, "delta": delta, "accountant": accountant,
                "unit": "user-level (covers every single interaction too)", **noise_statement(reproducible_noise)}
    release = noisy_popularity(split.train, noise=noise, randomness=DPRandomness.of(reproducible_noise, seed, 21))
    return _non_personal("private-mostpop", release, split, t,
                         selected, **{**eval_kwargs, "seed": seed})


def ease_item_weights(train: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE (Steck 2019): ``B = I - P diagMat(1 / diag(P))``, ``P = (X'X + lam I)^-1``."""
    return next(ease_weights(train, (lam,)))[1]


def ease_weights(train: sp.csr_matrix, lambdas: Sequence[float], *,
                 method: str = "auto") -> Iterator[tuple[float, np.ndarray]]:
    """EASE item weights for each lambda, one decomposition serving them all where it can.

    ``P = (X'X + lam I)^-1`` is computed by

    - ``"woodbury"`` (auto when fewer users have data than there are items):
      ``P = (I - X' U diag(1 / (s + lam)) U' X) / lam`` from one eigendecomposition
      ``X X' = U diag(s) U'`` of the small user Gram matrix; each lambda then costs one
      matrix product (ml-latest-small: 549 users, 9,742 items);
    - ``"cholesky"``: a Cholesky inverse of the item Gram matrix per lambda (18 s at
      9,742 items against 46 s for a general inverse).

    Yields
    ------
    (lambda, B)
        ``B`` is ``(n_items, n_items)`` float64 with a zero diagonal.
    """
    lambdas = [float(lam) for lam in lambdas]
    for lam in lambdas:
        if not lam > 0:
            raise ValueError(f"EASE lambda must be > 0; got {lam}")
    x = train[np.flatnonzero(np.diff(train.indptr))].astype(np.float64)  # users with data
    m, n = x.shape
    if method == "auto":
        method = "woodbury" if m < n else "cholesky"
    if method == "woodbury":
        s, u = np.linalg.eigh((x @ x.T).toarray())
        w = np.asarray((x.T @ u).T)  # U'X, (m, n)
        for lam in lambdas:
            wd = w / np.sqrt(np.clip(s, 0.0, None) + lam)[:, None]
            p = wd.T @ wd
            p *= -1.0 / lam
            p[np.diag_indices(n)] += 1.0 / lam
            yield lam, _ease_from_inverse(p)
        return
    if method != "cholesky":
        raise ValueError(f"EASE method must be 'auto', 'woodbury' or 'cholesky'; got {method!r}")
    from scipy.linalg import lapack

    gram = (x.T @ x).toarray()
    for lam in lambdas:
        g = gram.copy()
        g[np.diag_indices_from(g)] += lam
        chol, info = lapack.dpotrf(g, lower=1, overwrite_a=1)
        if info == 0:
            p, info = lapack.dpotri(chol, lower=1, overwrite_c=1)
        if info != 0:
            raise ArithmeticError(f"EASE: X'X + {lam} I is not positive definite (LAPACK info {info})")
        _mirror_lower(p)
        yield lam, _ease_from_inverse(p)


def _ease_from_inverse(p: np.ndarray) -> np.ndarray:
    """``B = -P diagMat(1 / diag(P))`` with a zero diagonal, in place of ``p``."""
    d = np.diag(p).copy()
    p /= -d[None, :]
    p[np.diag_indices_from(p)] = 0.0
    return p


def _mirror_lower(p: np.ndarray, block: int = 1024) -> None:
    """Copy the lower triangle of square ``p`` onto its upper triangle, in place and by
    blocks (two full ``np.tril`` copies took 4 s of each EASE solve at 9,742 items)."""
    n = p.shape[0]
    for s in range(0, n, block):
        e = min(s + block, n)
        p[s:e, e:] = p[e:, s:e].T
        p[s:e, s:e] = np.tril(p[s:e, s:e]) + np.tril(p[s:e, s:e], -1).T


def fit_ease(
    split: Split,
    *,
    lambdas: Sequence[float] = (10, 20, 50, 100, 200, 300, 500, 1000),
    select: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
    **eval_kwargs,
) -> BaselineResult:
    """EASE with lambda picked on validation ``select``."""
    t = time.perf_counter()
    history = []
    best = None
    x = split.train.astype(np.float64)
    for lam, b in ease_weights(split.train, lambdas):

        def score(users: np.ndarray, b=b) -> np.ndarray:
            return np.asarray(x[users] @ b)

        v = evaluate(score, split, stage="valid", **eval_kwargs)
        history.append({"lambda": lam, **{f"valid_{k}": val for k, val in v.metrics.items()}})
        if progress:
            progress(f"ease lambda={lam:g} valid {select}={v.metrics[select]:.4f}")
        if best is None or v.metrics[select] > best[2].metrics[select]:
            best = (lam, score, v)
    lam, score, v = best
    return BaselineResult(
        "ease",
        score,
        v,
        evaluate(score, split, stage="test", **eval_kwargs),
        selected={"lambda": lam, "on": f"valid {select}"},
        history=history,
        seconds=time.perf_counter() - t,
    )


def train_epoch(
    model: Recommender,
    opt: torch.optim.Optimizer,
    train: sp.csr_matrix,
    *,
    batch_size: int,
    n_negatives: int,
    loss: str,
    rng: np.random.Generator,
) -> float:
    """One epoch over all training interactions with fresh sampled negatives."""
    users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    items = train.indices.astype(np.int64)
    negs = sample_negatives(train, users, n=n_negatives, rng=rng)
    perm = rng.permutation(len(users))
    loss_fn = LOSSES[loss]
    total = 0.0
    model.train()
    for s in range(0, len(perm), batch_size):
        b = perm[s : s + batch_size]
        u = torch.as_tensor(users[b])
        pos = model(u, torch.as_tensor(items[b]))
        neg = model(u.repeat_interleave(n_negatives), torch.as_tensor(negs[b].ravel())).view(len(b), n_negatives)
        value = loss_fn(pos, neg)
        opt.zero_grad()
        value.backward()
        opt.step()
        total += float(value.detach()) * len(b)
    return total / max(1, len(perm))


def model_scorer(model: Recommender) -> ScoreFn:
    def score(users: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model.score_all(torch.as_tensor(users, dtype=torch.long)).numpy()

    return score


def fit_centralized(
    model: Recommender,
    split: Split,
    *,
    epochs: int = 60,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
    n_negatives: int = 1,
    loss: str = "bpr",
    seed: int = 0,
    eval_every: int = 1,
    patience: int = 10,
    select: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
    **eval_kwargs,
) -> BaselineResult:
    """Centralized training (Adam) with the epoch picked on validation ``select``.

    Stops early after ``patience`` evaluations without improvement; the model
    is restored to the best epoch before the test evaluation.
    """
    t = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    score = model_scorer(model)

    def run_epoch(epoch: int) -> float:
        return train_epoch(model, opt, split.train, batch_size=batch_size, n_negatives=n_negatives, loss=loss, rng=rng)

    return _select_epoch(model, split, run_epoch, lambda stage: score, epochs=epochs, eval_every=eval_every,
                         patience=patience, select=select, progress=progress, started=t, **eval_kwargs)


def _select_epoch(model, split: Split, run_epoch: Callable[[int], float], scorer: Callable[[str], ScoreFn], *,
                  epochs: int, eval_every: int, patience: int, select: str, progress, started: float,
                  **eval_kwargs) -> BaselineResult:
    """Train epoch by epoch (``run_epoch(epoch)`` returns the mean training loss), evaluate
    ``scorer("valid")`` every ``eval_every`` epochs, stop after ``patience`` evaluations
    without a better ``select``, restore the best epoch and evaluate it on both stages."""
    best_state, best_val, best_epoch, since = None, -np.inf, 0, 0
    history = []
    for epoch in range(1, epochs + 1):
        train_loss = run_epoch(epoch)
        if epoch % eval_every and epoch != epochs:
            continue
        v = evaluate(scorer("valid"), split, stage="valid", **eval_kwargs)
        history.append({"epoch": epoch, "loss": train_loss, **{f"valid_{k}": x for k, x in v.metrics.items()}})
        if progress:
            progress(f"epoch {epoch:3d} loss {train_loss:.4f} valid {select} {v.metrics[select]:.4f}")
        if v.metrics[select] > best_val:
            best_val, best_epoch, since = v.metrics[select], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    return BaselineResult(
        "centralized",
        scorer("test"),
        evaluate(scorer("valid"), split, stage="valid", **eval_kwargs),
        evaluate(scorer("test"), split, stage="test", **eval_kwargs),
        selected={"epoch": best_epoch, "on": f"valid {select}"},
        history=history,
        seconds=time.perf_counter() - started,
    )


def fit_sequential(
    model,
    split: Split,
    histories: dict,
    *,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 128,
    n_negatives: int = 1,
    seed: int = 0,
    eval_every: int = 1,
    patience: int = 10,
    select: str = "ndcg@10",
    progress: Callable[[str], None] | None = None,
    **eval_kwargs,
) -> BaselineResult:
    """Centralized training of a sequential model (:class:`~fedrec.models.SequentialModel`):
    Adam over shuffled mini-batches of ``batch_size`` training windows of every user,
    the loss averaged over a batch's positions, fresh negatives every epoch; the epoch is
    picked on validation ``select`` and the best one is evaluated on test.

    ``histories`` maps ``"train"``, ``"valid"`` and ``"test"`` to the users' histories
    before each stage (:func:`fedrec.data.sequences.stage_histories`).
    """
    from fedrec.engine.sequence import sequence_samples, trainable_users

    t = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    users = np.flatnonzero(trainable_users(histories["train"], np.arange(split.n_users)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    params = dict(model.named_parameters())
    dense = {d: params[d] for d in model.dense_names()}
    table = params["item_embedding"]

    def scorer(stage: str):
        return model.history_scorer({n: p.detach() for n, p in params.items()}, histories[stage])

    def run_epoch(epoch: int) -> float:
        _, inp, cand, mask = (torch.as_tensor(x) for x in sequence_samples(
            histories["train"], split.train, users, model.max_len, n_negatives, seed=seed, server_round=epoch))
        total, count = 0.0, 0
        for b in np.array_split(rng.permutation(len(inp)), max(1, -(-len(inp) // batch_size))):
            b = torch.as_tensor(b)
            lw = model.window_loss(table[inp[b]], table[cand[b]], mask[b], dense, train=True)
            n = int(mask[b].sum())
            opt.zero_grad()
            (lw.sum() / n).backward()
            opt.step()
            total, count = total + float(lw.detach().sum()), count + n
        return total / count

    return _select_epoch(model, split, run_epoch, scorer, epochs=epochs, eval_every=eval_every, patience=patience,
                         select=select, progress=progress, started=t, **eval_kwargs)
