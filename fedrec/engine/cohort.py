"""One cohort engine: local training of any :class:`~fedrec.models.protocol.FederatedModel`.

A pure function of (the users' local state, the global parameters, the data, the
config), vectorised over the users of a cohort so that one Flower node can host
many simulated users; every user still has its own sampling, clipping, noise
and release.  What a node sends is the mean of its users' releases.

Per user ``u`` and round:

1. **Samples.**  One sample per training interaction: its positive item and
   ``negatives`` distinct sampled negatives (items that are not training
   positives of the user).  An interaction enters exactly one sample, so one
   per-sample clip bounds what one interaction contributes to a step, whatever
   the number of negatives.  With interaction-level DP the negatives exclude
   only the sample's own positive: were they to exclude every positive, adding
   or removing one interaction would change the distribution of *other*
   samples' negatives too, outside what one clip bounds.
2. **Steps.**  ``user_steps + item_steps`` steps of (DP-)SGD on the user's loss
   (the model's :meth:`sample_loss`, BPR by default).  Global parameters stay
   fixed during the round; every step moves the local state with its (noisy)
   gradient; the (noisy) global gradients of the last ``item_steps`` steps are
   averaged into the release.
3. **Release** ``-mean global gradient`` (a pseudo-gradient; the server's
   optimiser turns the mean over users into a step).

With DP (``noise_multiplier > 0``) each step is DP-SGD as in Opacus: every
sample is included independently with probability ``sample_rate`` (Poisson),
the per-sample gradient over *every* parameter the sample touches (the local
vectors, the item rows it reads, every dense layer) is clipped to
``max_grad_norm``, the sum gets Gaussian noise of std ``noise_multiplier *
max_grad_norm`` on every coordinate (local state, every row of every table,
every dense weight) and is divided by the expected batch ``sample_rate * B``,
where ``B`` (``interaction_cap``) is a public constant, as Opacus divides by the
expected batch size of the dataset: never by the user's own count ``n_u``, which
the noise scale would then reveal.  Global parameters being fixed within a round,
the noise of the released mean over ``item_steps`` steps is one Gaussian per
coordinate with variance ``sigma^2 C^2 / (item_steps (q B)^2)``, drawn once.  Each
step is one step of the subsampled Gaussian mechanism for the accountant.

Adjacency (interaction-level): two datasets differ in one interaction of one user.
Every sample is keyed by what it is, ``(user, positive item)``: its negatives by the
public seed, its Poisson inclusion by the party's secret key
(:class:`fedrec.privacy.randomness.DPRandomness`), so adding or removing one
interaction adds or removes its own sample and changes no other sample.  The
Gaussian noise and the Poisson inclusion are secret from everyone but the device.

User-level clipping (``update_clip > 0``) clips each user's whole release
(every global parameter, its interaction-level noise included) before the mean.

Per-sample gradients come from ``torch.func.vmap(grad)`` over the gathered rows
of a chunk of samples (never whole tables); without DP and user clipping one
backward of the batched loss gives the same sums.  With interaction-level DP a
model that declares ``batched_score`` runs a batched forward instead: its user
vectors' and rows' per-sample gradients are plain autograd on the gathered
copies, its ``nn.Linear`` layers' per-sample norms come from Opacus's ghost norm
sampler and their clipped sum from a second backward (:class:`GhostNorms`).
Models with a registered fast path (:func:`register_fast_path`, MF) use it
unless ``generic=True``; tests hold each fast path equal to this engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from fedrec.data.negatives import is_positive, positive_keys
from fedrec.models.protocol import FederatedModel
from fedrec.rng import hash_ints, hash_uniform

__all__ = ["LocalConfig", "CohortResult", "train_cohort", "cohort_samples", "keyed_negatives", "negative_sets",
           "steps_per_round",
           "register_fast_path", "FAST_PATHS", "sample_mask", "MAX_GRAD_FLOATS", "row_bound_factors",
           "clipped_user_mean", "frozen_rows_zeroed", "gaussian", "interaction_weights", "weights_over_mean",
           "release_denominators", "expected_batches", "GhostNorms"]

#: Floats of per-sample gradients materialised at once (bounds the engine's memory).
MAX_GRAD_FLOATS = 16_000_000
#: Samples per batched forward of :class:`GhostNorms`.
GHOST_CHUNK = 8192


@dataclass(frozen=True)
class LocalConfig:
    """What one user does in one round.

    Attributes
    ----------
    user_lr : float
        SGD learning rate of the local state.
    user_steps : int
        Steps that only update the local state (reconstruction) before the
        released global gradients are computed.
    item_steps : int
        Steps whose global gradients are averaged into the release (the local
        state keeps moving during them).
    negatives : int
        Distinct sampled negatives per positive (all in the positive's one sample).
    sample_rate : float
        Poisson sampling rate of samples per step (1: full batch).
    noise_multiplier : float
        Gaussian noise std / clipping norm; 0 disables DP.
    max_grad_norm : float
        Per-sample clipping norm (used only with DP).
    interaction_cap : int
        With DP, the public normaliser ``B``: a user's noisy sums are divided by
        the expected batch ``sample_rate * B``, the same for every user, so that no
        release is scaled by the user's own interaction count after its noise (the
        count is what adding or removing one interaction changes).
    user_l2 : float
        L2 penalty on the local state.
    update_clip : float
        > 0: each user's whole release (after its interaction-level noise if
        any) is clipped to this L2 norm before the cohort's mean is taken
        (user-level DP, client-side clipping).
    row_norm : float
        > 0: robustness bound: each item row of a user's release (every table's
        row of that item together) is clipped to this L2 norm (before ``update_clip``).
    max_rows : int
        > 0: robustness bound: a user's release keeps at most this many item rows,
        those of largest norm (the others are dropped).
    user_releases : callable or None
        Receives each chunk of users' clipped releases, ``{name: (chunk, *shape)
        float64 tensor}`` with the users in order, instead of their mean being taken
        (distributed DP encodes each user's release on its own); the update the engine
        returns is then zero.
    """

    user_lr: float = 0.5
    user_steps: int = 1
    item_steps: int = 1
    negatives: int = 1
    sample_rate: float = 1.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    interaction_cap: int = 100
    user_l2: float = 0.0
    update_clip: float = 0.0
    row_norm: float = 0.0
    max_rows: int = 0
    user_releases: Callable | None = field(default=None, compare=False, repr=False)

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
        if self.interaction_cap < 1:
            raise ValueError(f"interaction_cap must be >= 1; got {self.interaction_cap}")
        if self.update_clip < 0:
            raise ValueError(f"update_clip must be >= 0; got {self.update_clip}")
        if self.row_norm < 0 or self.max_rows < 0:
            raise ValueError(f"row_norm and max_rows must be >= 0; got {self.row_norm}, {self.max_rows}")
        if self.dp and self.row_bounds:
            raise ValueError("row bounds need each user's un-noised rows: not available with interaction-level DP")

    @classmethod
    def from_settings(cls, cfg) -> LocalConfig:
        """What one user does in a round of the run ``cfg`` (a :class:`fedrec.config.FedConfig`)."""
        return cls(user_lr=cfg.user_lr, user_steps=cfg.user_steps, item_steps=cfg.item_steps,
                   negatives=cfg.negatives, sample_rate=cfg.sample_rate, noise_multiplier=cfg.noise_multiplier,
                   max_grad_norm=cfg.max_grad_norm, interaction_cap=cfg.interaction_cap, user_l2=cfg.user_l2,
                   update_clip=cfg.user_clip if cfg.user_dp in ("client", "distributed") else 0.0,
                   row_norm=cfg.row_norm, max_rows=cfg.max_rows)

    @property
    def row_bounds(self) -> bool:
        return self.row_norm > 0 or self.max_rows > 0

    @property
    def per_user(self) -> bool:
        """Whether each user's release is processed alone before the mean (clip or row bounds)."""
        return self.update_clip > 0 or self.row_bounds

    @property
    def dp(self) -> bool:
        return self.noise_multiplier > 0


def steps_per_round(cfg: LocalConfig) -> int:
    """DP-SGD steps a user takes per round (each one is accounted)."""
    return cfg.user_steps + cfg.item_steps


@dataclass
class CohortResult:
    local: dict[str, torch.Tensor]  # new local state, (k, ...) per name
    update: dict[str, torch.Tensor]  # mean over users of their release, per global parameter
    loss: float  # mean over users of their mean sample loss at the start of the round
    n_users: int
    samples: tuple[np.ndarray, np.ndarray, int]  # (owner, items, n_items) of the round's samples

    @property
    def item_counts(self) -> np.ndarray:
        """``(n_items,)``: how many users of the cohort touched each item row."""
        owner, items, n_items = self.samples
        keys = np.unique(np.repeat(owner, items.shape[1]) * n_items + items.ravel())
        return np.bincount(keys % n_items, minlength=n_items)


def keyed_negatives(
    train: sp.csr_matrix, users: np.ndarray, slot: np.ndarray, *, seed: int, server_round: int, max_tries: int = 64
) -> np.ndarray:
    """One training negative per ``(users[j], slot[j])``, uniform over the items that
    are not training positives of the user; a pure function of
    ``(seed, server_round, user, slot)`` (see :mod:`fedrec.rng`)."""
    keys = positive_keys(train, users)  # once, for every attempt
    return _keyed_draws(train.shape[1], seed, server_round, users, slot,
                        lambda out: is_positive(train, users, out, keys=keys), max_tries=max_tries)


def _keyed_draws(n_items: int, seed: int, server_round: int, users: np.ndarray, slots: np.ndarray, invalid, *,
                 max_tries: int) -> np.ndarray:
    """Items uniform in ``[0, n_items)`` keyed by ``(seed, round, user, slot, attempt)``:
    draws that ``invalid`` (a mask over all draws) rejects are redrawn with the next attempt."""
    out = hash_ints(n_items, seed, server_round, users, slots, 0)
    attempt = 1
    while (bad := np.flatnonzero(invalid(out))).size:
        if attempt > max_tries:
            raise ValueError(f"could not sample the negatives of user {users[bad[0]]}: too few eligible items")
        out[bad] = hash_ints(n_items, seed, server_round, users[bad], slots[bad], attempt)
        attempt += 1
    return out


def cohort_samples(train: sp.csr_matrix, users: np.ndarray, negatives: int, *, seed: int, server_round: int,
                   exclude_positives: bool = True, max_tries: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cohort's samples: ``owner`` (index of the user in the cohort), ``slot``
    (index of the positive within its user) and ``items`` ``(n, 1 + negatives)``:
    the positive, then distinct negatives keyed by ``(seed, round, user, positive * m + j,
    attempt)``: by what the sample is, not where it sits in the user's row, so that
    removing one interaction leaves every other sample's negatives as they are.

    Negatives exclude the user's training positives, or with
    ``exclude_positives=False`` only the sample's own positive: then whether an
    interaction is present changes no other sample's negatives (what
    interaction-level DP needs; see :func:`train_cohort`).
    """
    rows = train[users]
    n_u = np.diff(rows.indptr)
    if (n_u == 0).any():
        raise ValueError(f"user {users[np.flatnonzero(n_u == 0)[0]]} has no training interactions")
    owner = np.repeat(np.arange(len(users)), n_u).astype(np.int64)
    slot = np.arange(len(owner)) - np.repeat(rows.indptr[:-1], n_u)
    pos = rows.indices.astype(np.int64)
    negs = negative_sets(train, users[owner], pos, pos, negatives, seed=seed, server_round=server_round,
                         exclude_positives=exclude_positives, max_tries=max_tries)
    return owner, slot, np.concatenate([pos[:, None], negs], axis=1)


def negative_sets(train: sp.csr_matrix, users: np.ndarray, positives: np.ndarray, slots: np.ndarray, m: int, *,
                  seed: int, server_round: int, exclude_positives: bool = True, max_tries: int = 64) -> np.ndarray:
    """``(n, m)`` distinct negatives of ``n`` samples (sample ``j``: user ``users[j]``, positive
    ``positives[j]``), keyed by ``(seed, round, user, slots[j] * m + i, attempt)``: items that
    are not training positives of the user, or with ``exclude_positives=False`` not the
    sample's own positive."""
    pos = np.asarray(positives, dtype=np.int64)
    s_user = np.repeat(np.asarray(users, dtype=np.int64), m)
    s_slot = (np.asarray(slots, dtype=np.int64)[:, None] * m + np.arange(m)[None, :]).reshape(-1)

    keys = positive_keys(train, users) if exclude_positives else None  # once, for every attempt

    def invalid(flat: np.ndarray) -> np.ndarray:
        neg = flat.reshape(-1, m)
        if exclude_positives:
            bad = is_positive(train, s_user, flat, keys=keys).reshape(neg.shape)
        else:
            bad = neg == pos[:, None]
        if m > 1:  # a repeat of an earlier negative of the same sample
            order = np.argsort(neg, axis=1, kind="stable")
            srt = np.take_along_axis(neg, order, axis=1)
            dup = np.zeros_like(bad)
            np.put_along_axis(dup, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
            bad |= dup
        return bad.reshape(-1)

    return _keyed_draws(train.shape[1], seed, server_round, s_user, s_slot, invalid, max_tries=max_tries).reshape(-1, m)


def sample_mask(key: int, server_round: int, users: np.ndarray, items: np.ndarray, step: int, q: float) -> np.ndarray:
    """Poisson inclusion of each sample in DP step ``step``, keyed by the sample's user and
    positive item under ``key`` (a party's secret :attr:`DPRandomness.key`)."""
    return hash_uniform(key, server_round, users, items, 1000 + step) < q


FastPath = Callable[..., CohortResult]
#: model class -> a function with :func:`train_cohort`'s signature (without ``generic``)
FAST_PATHS: dict[type, FastPath] = {}


def register_fast_path(cls: type) -> Callable[[FastPath], FastPath]:
    """Decorator: register a hand-derived cohort trainer for exactly ``cls`` (not its subclasses)."""

    def deco(fn: FastPath) -> FastPath:
        FAST_PATHS[cls] = fn
        return fn

    return deco


def train_cohort(
    model: FederatedModel,
    local: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor],
    train: sp.csr_matrix,
    users: np.ndarray,
    cfg: LocalConfig,
    *,
    seed: int,
    server_round: int,
    generator: torch.Generator | None = None,
    dp_key: int | None = None,
    generic: bool = False,
    trainable: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    user_weights: np.ndarray | None = None,
    ghost_norms: bool = True,
) -> CohortResult:
    """One round of local training for the users of a cohort (see the module doc).

    Parameters
    ----------
    model
        Declares local state, global parameters and the score function.
    local
        ``(k, ...)`` local state of the cohort's users, per name.
    params
        Global parameters (not modified), per name.
    train
        Training matrix; only rows ``users`` are read.
    users
        Global ids of the cohort's users (``k`` of them).
    seed, server_round
        Key of the users' negatives (public; per user, independent of the cohort).
    generator
        Source of the Gaussian noise (DP); ``None``: fresh secret randomness
        (:meth:`DPRandomness.secret`), never torch's default generator, whose
        initial seed is public.
    dp_key
        Secret key of the samples' Poisson inclusion (DP; :attr:`DPRandomness.key`);
        ``None``: a fresh secret key.
    generic
        Use the generic engine even where a fast path is registered.
    trainable
        ``(n_items,)`` 0/1 mask of the items whose rows are trained (DP-FEST: the
        server freezes the others).  A sample's gradient with respect to a frozen
        row is dropped *before* it is clipped, so the clip is spent on trained rows
        only, and the release never carries a frozen row.  ``None``: every row.
    device
        Where the tensors of the computation live (``"cuda"``, ``"cuda:1"``; ``None``:
        the CPU).  Inputs may be on the CPU and results come back to it; samples,
        Poisson masks and noise are drawn on the CPU (the same draws as a CPU run)
        and moved, so a run on a GPU equals the CPU run within float tolerance.
    user_weights
        ``(k,)`` weight of each user's release (non-private runs only): the cohort's
        release is the mean over users of ``weight * (the user's mean gradient)``;
        ``n_u / mean(n)`` makes it the mean over interactions
        (``weighting = "interaction"``).  ``None``: every user weighs 1.  The local
        state's steps are not weighted.
    ghost_norms
        With interaction-level DP, take the per-sample norms of the layers of a model
        that declares ``batched_score`` from Opacus's ghost norm sampler
        (:class:`GhostNorms`); ``False``: per-sample gradients by ``torch.func``
        for every model (the two are tested equal).
    """
    if user_weights is not None and (cfg.dp or cfg.per_user):
        raise ValueError("user_weights scale what a user releases: not with DP or user-level clipping")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if cfg.dp and (generator is None or dp_key is None):
        from fedrec.privacy.randomness import DPRandomness

        secret = DPRandomness.secret()
        generator = secret.torch_generator() if generator is None else generator
        dp_key = secret.key if dp_key is None else dp_key
    fast = None if generic else FAST_PATHS.get(type(model))
    run = _generic if fast is None else fast
    on = lambda d: {n: v.to(dev) for n, v in d.items()}  # noqa: E731
    extra = {"ghost_norms": ghost_norms} if fast is None else {}
    res = run(model, on(local), on(params), train, users, cfg, seed=seed, server_round=server_round,
              generator=generator, dp_key=dp_key, trainable=None if trainable is None else trainable.to(dev),
              user_weights=None if user_weights is None else torch.as_tensor(np.asarray(user_weights), device=dev),
              **extra)
    if dev.type == "cpu":
        return res
    return CohortResult(local={n: v.cpu() for n, v in res.local.items()},
                        update={n: v.cpu() for n, v in res.update.items()}, loss=res.loss, n_users=res.n_users,
                        samples=res.samples)


def interaction_weights(train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """``n_u / mean(n)`` of ``users`` (their training interactions): the weights that
    make a cohort's mean of per-user mean gradients the mean over its interactions,
    as centralized training weighs them (:func:`train_cohort`'s ``user_weights``)."""
    return weights_over_mean(np.diff(train.indptr)[np.asarray(users, dtype=np.int64)])


def weights_over_mean(counts: np.ndarray) -> np.ndarray:
    """``counts / mean(counts)`` as float64 (empty stays empty): users weighed by what they
    count (interactions, positions) so that a mean over users is a mean over those."""
    n = np.asarray(counts, dtype=np.float64)
    return n / max(float(n.mean()), 1e-300) if len(n) else n


def gaussian(shape, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Standard Gaussian noise of ``shape`` drawn on the CPU from ``generator`` and moved to
    ``device``: the same draws wherever the engine computes."""
    noise = torch.randn(shape, generator=generator, dtype=dtype, device="cpu")
    return noise if device.type == "cpu" else noise.to(device)


def _row_mask(trainable: torch.Tensor | None, it: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``g`` (gradients of the rows ``it`` reads, ``(n, 1+m, *row)``) with frozen rows zeroed."""
    if trainable is None:
        return g
    return g * trainable[it].reshape(tuple(it.shape) + (1,) * (g.dim() - it.dim())).to(g.dtype)


def release_denominators(denom: torch.Tensor, user_weights: torch.Tensor | None) -> torch.Tensor:
    """Each user's denominator of its released gradients: its expected batch size,
    divided by its weight (``None``: as is)."""
    return denom if user_weights is None else denom / user_weights.to(denom.dtype)


def expected_batches(cfg: LocalConfig, n_u: torch.Tensor) -> torch.Tensor:
    """Each user's denominator of its gradient sums: with DP the public expected batch
    ``sample_rate * interaction_cap`` (the same for every user); without, the user's own
    expected batch ``sample_rate * n_u`` (its mean gradient)."""
    if cfg.dp:
        return torch.full_like(n_u, cfg.sample_rate * cfg.interaction_cap)
    return cfg.sample_rate * n_u


def _generic(model, local, params, train, users, cfg, *, seed, server_round, generator, dp_key=None, trainable=None,
             user_weights=None, ghost_norms=True) -> CohortResult:
    k = len(users)
    n_items = model.n_items
    owner_np, _, items_np = cohort_samples(train, users, cfg.negatives, seed=seed, server_round=server_round,
                                                 exclude_positives=not cfg.dp)
    n_s = len(owner_np)
    ref = next(iter(params.values()))
    dtype, dev = ref.dtype, ref.device
    owner = torch.as_tensor(owner_np, device=dev)
    items = torch.as_tensor(items_np, device=dev)
    n_u = torch.as_tensor(np.bincount(owner_np, minlength=k).astype(np.float64), device=dev)
    q = cfg.sample_rate
    denom = expected_batches(cfg, n_u).to(dtype)  # expected batch size per user (public with DP)
    rdenom = release_denominators(denom, user_weights)
    sigma_c = cfg.noise_multiplier * cfg.max_grad_norm
    clip_users = cfg.per_user
    per_sample = cfg.dp or clip_users
    tables = {t: params[t] for t in model.table_names()}
    consts = {t: v.to(dev) for t, v in model.constants().items()}
    dense = {d: params[d] for d in model.dense_names()}
    local_names = list(local)
    loc = {n: v.clone() for n, v in local.items()}

    def loss_one(lc, rw, dn, cr):
        return model.sample_loss(model.score(lc, {**rw, **cr}, dn))

    grad_one = torch.func.vmap(torch.func.grad_and_value(loss_one, argnums=(0, 1, 2)), in_dims=(0, 0, None, 0))
    loss_many = torch.func.vmap(loss_one, in_dims=(0, 0, None, 0))
    # release accumulators: summed over users (each divided by its own expected batch)
    acc = {n: torch.zeros_like(v) for n, v in params.items()}
    if clip_users:
        keys = owner[:, None] * n_items + items  # (n_s, 1+m) per-(user, item) row keys
        uniq, inv = torch.unique(keys.reshape(-1), return_inverse=True)
        inv = inv.reshape(keys.shape)
        r_tab = {t: torch.zeros((len(uniq),) + tuple(v.shape[1:]), dtype=v.dtype, device=dev)
                 for t, v in tables.items()}
        r_den = {d: torch.zeros((k,) + tuple(v.shape), dtype=v.dtype, device=dev) for d, v in dense.items()}
    per_sample_floats = (sum(int(np.prod(s)) for s in model.local_shapes.values())
                         + sum(int(np.prod(v.shape[1:])) * items.shape[1] for v in tables.values())
                         + sum(v.numel() for v in dense.values()))
    # interaction-level DP-SGD of a model that scores batches through its layers: the layers'
    # per-sample norms by Opacus's ghost norm sampler (no per-sample layer gradients)
    ghost = GhostNorms(model) if (cfg.dp and not clip_users and ghost_norms and GhostNorms.applies(model)) else None
    if ghost is not None:
        per_sample_floats -= sum(v.numel() for v in dense.values())
    chunk = max(1, MAX_GRAD_FLOATS // max(1, per_sample_floats))
    if ghost is not None:  # batched activations: chunks that stay in the caches (measured: 8192 samples of
        chunk = min(chunk, GHOST_CHUNK)  # ML-100K's MLP 1.5x faster than the whole cohort at once)
    s_user = users[owner_np]
    if not per_sample:  # one backward over every sample in every step: its rows gathered once
        rows = {t: v[items] for t, v in tables.items()}
        crow = {t: v[items] for t, v in consts.items()}
    first_loss = None
    total = cfg.user_steps + cfg.item_steps
    for step in range(total):
        release = step >= cfg.user_steps
        g_loc = {n: torch.zeros_like(v) for n, v in loc.items()}
        if per_sample:
            # DP-SGD: only the samples Poisson sampling took in this step (the others weigh 0, so
            # skipping them changes no sum); no training loss either: it would be a release that
            # no mechanism covers, so the node does not send one
            todo = (torch.as_tensor(np.flatnonzero(sample_mask(dp_key, server_round, s_user, items_np[:, 0], step, q)),
                                    device=dev) if cfg.dp else None)
            n_todo = n_s if todo is None else len(todo)
            for lo in range(0, n_todo, chunk):
                sl = slice(lo, min(n_todo, lo + chunk)) if todo is None else todo[lo:lo + chunk]
                o = owner[sl]
                it = items[sl]  # each sample reads only its items' rows
                if ghost is not None:
                    gl, gr, sq, dense_sum = ghost.pass_one(model, {n: v[o] for n, v in loc.items()},
                                                           {t: v[it] for t, v in tables.items()}, dense,
                                                           {t: v[it] for t, v in consts.items()}, trainable, it)
                    w = torch.clamp(cfg.max_grad_norm / (sq.sqrt() + 1e-12), max=1.0)
                else:
                    (gl, gr, gd), lv = grad_one({n: v[o] for n, v in loc.items()},
                                                {t: v[it] for t, v in tables.items()},
                                                dense, {t: v[it] for t, v in consts.items()})
                    gr = {t: _row_mask(trainable, it, g) for t, g in gr.items()}
                    if step == 0 and not cfg.dp:
                        first_loss = _add_loss(first_loss, lv, o, k)
                    if cfg.dp:
                        sq = sum(_sq(g) for g in (*gl.values(), *gr.values(), *gd.values()))
                        w = torch.clamp(cfg.max_grad_norm / (sq.sqrt() + 1e-12), max=1.0)
                    else:
                        w = torch.ones(len(o), dtype=dtype, device=dev)
                for n, g in gl.items():
                    g_loc[n].index_add_(0, o, _bc(w, g) * g)
                if release:
                    c = w / rdenom[o]
                    for t, g in gr.items():
                        if clip_users:
                            r_tab[t].index_add_(0, inv[sl].reshape(-1), (_bc(c, g) * g).reshape((-1,) + g.shape[2:]))
                        else:
                            acc[t].index_add_(0, it.reshape(-1), (_bc(c, g) * g).reshape((-1,) + g.shape[2:]))
                    if ghost is not None:  # the clip-weighted sum of the layers' gradients: a second backward
                        for d, g in dense_sum(c).items():
                            acc[d] += g
                    for d, g in ({} if ghost is not None else gd).items():
                        if clip_users:
                            r_den[d].index_add_(0, o, _bc(c, g) * g)
                        else:
                            acc[d] += (_bc(c, g) * g).sum(0)
        else:
            # no clipping: one backward of the batched loss, each sample weighted by 1/denom of its user
            lc = {n: v.detach().requires_grad_(True) for n, v in loc.items()}
            rw = {t: v.detach().requires_grad_(True) for t, v in rows.items()}
            dn = {d: v.detach().requires_grad_(True) for d, v in dense.items()}
            lv = loss_many({n: v[owner] for n, v in lc.items()}, rw, dn, crow)
            if step == 0:
                first_loss = _add_loss(None, lv.detach(), owner, k)
            leaves = [*lc.values(), *rw.values(), *dn.values()]
            grads = torch.autograd.grad((lv / rdenom[owner]).sum(), leaves, allow_unused=True)
            grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
            gl = dict(zip(lc, grads[: len(lc)]))
            gr = {t: _row_mask(trainable, items, g) for t, g in zip(rw, grads[len(lc) : len(lc) + len(rw)])}
            gd = dict(zip(dn, grads[len(lc) + len(rw) :]))
            for n, g in gl.items():  # already divided by rdenom: undo, the common path divides below
                g_loc[n] += g * _bc(rdenom, g)
            if release:
                for t, g in gr.items():
                    acc[t].index_add_(0, items.reshape(-1), g.reshape((-1,) + g.shape[2:]))
                for d, g in gd.items():
                    acc[d] += g
        new = {}
        for n in local_names:
            g = g_loc[n].to(dtype)
            if cfg.dp:
                g = g + sigma_c * gaussian(g.shape, generator, dtype, dev)
            g = g / _bc(denom, g)
            new[n] = loc[n] - cfg.user_lr * (g + cfg.user_l2 * loc[n])
        loc = new
    if clip_users:
        update = clipped_user_mean(r_tab, r_den, uniq, k, n_items, cfg, params,
                                    noise_std=((sigma_c / (math.sqrt(cfg.item_steps) * denom.double()))
                                               if cfg.dp else None),
                                    generator=generator, trainable=trainable)
    else:
        update = {n: (-acc[n] / (cfg.item_steps * k)).to(dtype) for n in params}
        if cfg.dp:
            # noise of the k users' mean release, summed over item_steps steps: one draw per coordinate
            var = (sigma_c**2 / (cfg.item_steps * denom.double() ** 2)).sum() / k**2
            std = float(math.sqrt(float(var)))
            for n in params:
                noise = gaussian(update[n].shape, generator, dtype, dev)
                update[n] = update[n] - std * frozen_rows_zeroed(noise, trainable if n in tables else None)
    loss = float((first_loss / n_u).mean()) if first_loss is not None else math.nan
    return CohortResult(local=loc, update=update, loss=loss, n_users=k, samples=(owner_np, items_np, n_items))


class GhostNorms:
    """Per-sample gradient norms of a model's ``nn.Linear`` layers by Opacus's ghost
    norm sampler (``opacus.grad_sample.linear.compute_linear_norm_sample``), for
    models that declare ``batched_score`` (see :class:`~fedrec.models.protocol.FederatedModel`).

    One batched forward of a chunk of samples records each layer's input and the
    gradient of its output; one backward gives the per-sample gradients of the
    user vectors and item rows (each sample has its own gathered copy) and, from
    the records, every layer's per-sample gradient norm without forming the
    per-sample gradient; a second backward of the clip-weighted loss gives the
    layers' clipped sum (:meth:`pass_one`).  On its first chunk it checks that the
    records account for every dense gradient (a parameter used outside its
    layer, or a layer called twice, would otherwise escape the clip) and raises
    if not.
    """

    def __init__(self, model: FederatedModel):
        from opacus.grad_sample.linear import compute_linear_norm_sample

        self._norm_sample = compute_linear_norm_sample
        self._layers = {m: name for name, m in model.named_modules() if type(m) is nn.Linear}
        self._checked = False

    @staticmethod
    def applies(model: FederatedModel) -> bool:
        """Whether ``model`` declares batched scoring and keeps every dense
        parameter in an ``nn.Linear`` layer."""
        if not getattr(model, "batched_score", False):
            return False
        in_layers = {f"{name}.{p}" if name else p for name, m in model.named_modules() if type(m) is nn.Linear
                     for p, _ in m.named_parameters(recurse=False)}
        return all(d in in_layers for d in model.dense_names())

    def _forward(self, model, lc, rw, dn, consts):
        """The chunk's per-sample losses and, per layer call, ``[layer, input, output grad]``
        (the output grad filled in by the first backward)."""
        records = []

        def record(module, inputs, out):
            rec = [module, inputs[0].detach(), None]
            records.append(rec)
            if out.requires_grad:
                out.register_hook(lambda g: rec.__setitem__(2, g.detach()) if rec[2] is None else None)

        handles = [m.register_forward_hook(record) for m in self._layers]
        try:
            lv = model.sample_loss(model.score(lc, {**rw, **consts}, dn))
        finally:
            for h in handles:
                h.remove()
        names = [self._layers[m] for m, _, _ in records]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"model {type(model).__name__}: layer {twice[0]!r} runs twice in one forward; ghost norms "
                             "need one call per layer (set batched_score = False)")
        return lv, records

    def _check(self, model, lc, rw, dn, consts, n: int = 64) -> None:
        """On ``n`` samples: the layer records account for every dense gradient (in
        float64, so that only a real misuse, not rounding, can fail it)."""
        sub = lambda d: {k: v[:n].detach().requires_grad_(v.requires_grad) for k, v in d.items()}  # noqa: E731
        dn = {d: v.detach().requires_grad_(True) for d, v in dn.items()}
        lv, records = self._forward(model, sub(lc), sub(rw), dn, {k: v[:n] for k, v in consts.items()})
        grads = torch.autograd.grad(lv.sum(), list(dn.values()), allow_unused=True)
        rebuilt, scale = {}, {}  # the records' sum of each dense gradient, and the sum of its terms' sizes
        for module, act, gout in records:
            if gout is None:
                continue
            name = self._layers[module]
            g64, a64 = gout.double(), act.double()
            rebuilt[f"{name}.weight"] = torch.einsum("n...i,n...j->ij", g64, a64)
            scale[f"{name}.weight"] = float(torch.einsum("n...i,n...j->ij", g64.abs(), a64.abs()).norm())
            if module.bias is not None:
                rebuilt[f"{name}.bias"] = g64.reshape(-1, g64.shape[-1]).sum(0)
                scale[f"{name}.bias"] = float(g64.abs().reshape(-1, g64.shape[-1]).sum(0).norm())
        for d, g in zip(dn, grads):
            g = torch.zeros_like(dn[d], dtype=torch.float64) if g is None else g.double()
            r = rebuilt.get(d, torch.zeros_like(g))
            if float((r - g).norm()) > 1e-4 * max(scale.get(d, 0.0), 1e-30):
                raise ValueError(f"model {type(model).__name__}: dense parameter {d!r} gets gradient outside one call "
                                 "of its nn.Linear layer, so its per-sample norm would escape the clip (set "
                                 "batched_score = False)")

    def pass_one(self, model, local, rows, dense, consts, trainable, items):
        """Per-sample ``(local grads, row grads, squared norms)`` of a chunk and a
        function ``c -> {dense name: sum_i c_i grad_i}`` (the second backward)."""
        lc = {n: v.detach().requires_grad_(True) for n, v in local.items()}
        rw = {t: v.detach().requires_grad_(True) for t, v in rows.items()}
        dn = {d: v.detach().requires_grad_(True) for d, v in dense.items()}
        if not self._checked and dn:
            self._check(model, lc, rw, dn, consts)
        self._checked = True
        lv, records = self._forward(model, lc, rw, dn, consts)
        # the layers' weights among the inputs: a layer on no other leaf's path (a tower over
        # public item features) still gets its output gradient recorded
        leaves = [*lc.values(), *rw.values(), *dn.values()]
        grads = torch.autograd.grad(lv.sum(), leaves, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
        gl = dict(zip(lc, grads[: len(lc)]))
        gr = {t: _row_mask(trainable, items, g) for t, g in zip(rw, grads[len(lc) : len(lc) + len(rw)])}
        sq = sum((_sq(g) for g in (*gl.values(), *gr.values())),
                 torch.zeros(len(lv), dtype=torch.float64, device=lv.device))
        for module, act, gout in records:
            if gout is None:  # the layer is not on the loss's path
                continue
            name = self._layers[module]
            stand_in = _LinearView(dn[f"{name}.weight"], dn[f"{name}.bias"] if module.bias is not None else None)
            for ns in self._norm_sample(stand_in, [act], gout).values():
                sq = sq + ns.double() ** 2

        def dense_sum(c: torch.Tensor) -> dict[str, torch.Tensor]:
            if not dn:
                return {}
            out = torch.autograd.grad((lv * c.to(lv.dtype)).sum(), list(dn.values()), allow_unused=True)
            return {d: torch.zeros_like(x) if g is None else g for (d, x), g in zip(dn.items(), out)}

        return gl, gr, sq, dense_sum


@dataclass
class _LinearView:
    """What Opacus's linear norm sampler reads of a layer: the weight and bias leaves
    of this pass (so its answer is keyed by them and needs nothing of the module)."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def frozen_rows_zeroed(x: torch.Tensor, trainable: torch.Tensor | None) -> torch.Tensor:
    """``x`` (an item table's shape) with the rows of frozen items zeroed (``None``: as is)."""
    return x if trainable is None else x * _bc(trainable, x)


def _bc(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``w`` (n,) shaped to broadcast against ``g`` (n, ...)."""
    return w.reshape((-1,) + (1,) * (g.dim() - 1)).to(g.dtype)


def _sq(g: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of ``g`` (n, ...)."""
    g = g.reshape(g.shape[0], -1)
    return (g * g).sum(1).double()


def _add_loss(acc: torch.Tensor | None, lv: torch.Tensor, o: torch.Tensor, k: int) -> torch.Tensor:
    """Per-user sums of the sample losses (accumulated over chunks)."""
    per = torch.zeros(k, dtype=torch.float64, device=lv.device).index_add_(0, o, lv.detach().double())
    return per if acc is None else acc + per


def row_bound_factors(owner: torch.Tensor, rows: dict[str, torch.Tensor], *, row_norm: float = 0.0,
                      max_rows: int = 0) -> torch.Tensor:
    """Scale factors ``(n,)`` of row-compact user releases (row ``j``: user ``owner[j]``;
    ``rows[t][j]``: table ``t``'s row of that item, all tables of an item together):
    each row clipped to ``row_norm`` (> 0) and, per user, only the ``max_rows`` (> 0)
    rows of largest norm kept (ties: the earlier row)."""
    norm = sum(_sq(g) for g in rows.values()).sqrt()
    f = torch.ones_like(norm)
    if row_norm > 0:
        f = torch.clamp(row_norm / (norm + 1e-12), max=1.0)
    if max_rows > 0 and len(norm):
        o = owner.cpu().numpy()
        order = np.lexsort((np.arange(len(o)), -norm.cpu().numpy(), o))  # by user, largest norm first
        start = np.searchsorted(o[order], o[order], side="left")
        rank = np.empty(len(o), dtype=np.int64)
        rank[order] = np.arange(len(o)) - start
        f = f * torch.as_tensor(rank < max_rows, dtype=f.dtype, device=f.device)
    return f


def clipped_user_mean(r_tab, r_den, keys, k, n_items, cfg, params, *, noise_std, generator, chunk=32, trainable=None):
    """Mean over users of each user's release (``-gradient``), its item rows bounded
    (``cfg.row_norm``, ``cfg.max_rows``, :func:`row_bound_factors`) and the whole
    clipped to ``cfg.update_clip`` (each if > 0): the per-user stage of user-level DP
    and of the robustness defences, and what an attack's sybils go through too.

    ``r_tab[t]`` holds the users' (un-noised) table gradients row-compactly (row
    ``j`` belongs to user ``keys[j] // n_items``, item ``keys[j] % n_items``),
    ``r_den[d]`` the per-user dense gradients.  Without interaction-level noise a
    user's norm only involves what it touched.  With it (``noise_std``: per-user
    std), every user's release is dense: built, noised and clipped in chunks of
    users, so the clip bounds exactly what the user contributes (noise included);
    ``trainable`` (frozen item rows, DP-FEST): no noise on a frozen row.
    """
    steps = cfg.item_steps
    r_tab = {t: g.double() for t, g in r_tab.items()}
    r_den = {d: g.double() for d, g in r_den.items()}
    owner = keys // n_items
    item = keys % n_items
    out = {n: torch.zeros_like(v, dtype=torch.float64) for n, v in params.items()}
    sink = cfg.user_releases
    if noise_std is None and sink is None:
        if cfg.row_bounds:  # robustness: each (user, item) row bounded, at most max_rows rows per user
            f = row_bound_factors(owner, {t: g / steps for t, g in r_tab.items()}, row_norm=cfg.row_norm,
                                  max_rows=cfg.max_rows)
            r_tab = {t: g * _bc(f, g) for t, g in r_tab.items()}
        dev = keys.device
        sq = torch.zeros(k, dtype=torch.float64, device=dev)
        for g in r_tab.values():
            sq.index_add_(0, owner, _sq(g / steps))
        for g in r_den.values():
            sq += _sq(g / steps)
        factor = (torch.clamp(cfg.update_clip / (sq.sqrt() + 1e-12), max=1.0) if cfg.update_clip > 0
                  else torch.ones(k, dtype=torch.float64, device=dev))
        for t, g in r_tab.items():
            out[t].index_add_(0, item, _bc(factor[owner], g) * g / steps)
        for d, g in r_den.items():
            out[d] += (_bc(factor, g) * g / steps).sum(0)
    else:
        for lo in range(0, k, chunk):
            hi = min(k, lo + chunk)
            sel = (owner >= lo) & (owner < hi)
            o, it = owner[sel] - lo, item[sel]
            parts = {}
            for n, v in params.items():
                dense_u = torch.zeros((hi - lo,) + tuple(v.shape), dtype=torch.float64, device=v.device)
                if n in r_tab:
                    dense_u[o, it] = r_tab[n][sel] / steps
                else:
                    dense_u += r_den[n][lo:hi] / steps
                if noise_std is not None:
                    noise = gaussian(dense_u.shape, generator, v.dtype, v.device).double()
                    if trainable is not None and n in r_tab:
                        noise = noise * trainable.reshape((1, -1) + (1,) * (noise.dim() - 2)).double()
                    dense_u = dense_u + _bc(noise_std[lo:hi], dense_u) * noise
                parts[n] = dense_u
            norm = sum(_sq(p) for p in parts.values()).sqrt()
            factor = (torch.clamp(cfg.update_clip / (norm + 1e-12), max=1.0) if cfg.update_clip > 0
                      else torch.ones_like(norm))
            if sink is not None:  # each user's release (-gradient), clipped
                sink({n: -(_bc(factor, p) * p) for n, p in parts.items()})
                continue
            for n, p in parts.items():
                out[n] += (_bc(factor, p) * p).sum(0)
    return {n: (-out[n] / k).to(v.dtype) for n, v in params.items()}
