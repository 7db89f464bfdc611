"""What lives on a device: users' local state, kept in files, and an on-device recommender.

:class:`LocalState` is the local state of one user (a phone) or of a cohort of
simulated users (one Flower node): their embeddings, the DP steps each has
taken (their interaction-level accountant) and the rounds they took part in.
It never leaves the device.  :func:`save_local_state` / :func:`load_local_state`
keep it in a directory, one file per round with the last few rounds kept, so a
restarted SuperNode continues where it stopped and a resumed server (which
repeats the rounds after its last checkpoint) finds the state *as of* that
checkpoint, not a later one.

:class:`DeviceRecommender` is the device-side API on top of it, for one user:
add interactions, recommend top-k (unseen items), fold in from a few
interactions against the latest global item parameters, report the privacy
spent.  It works from a saved global checkpoint without any server.

Two embeddings, on purpose: ``train_emb`` is the one that takes part in
federated training (moved only by the DP mechanism, so everything the device
releases is covered by its accountant); ``rank_emb`` is refit on *all* of the
user's interactions for on-device ranking only.  Nothing the device releases
depends on ``rank_emb``, so it needs no noise.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "LocalState",
    "save_local_state",
    "load_local_state",
    "DeviceRecommender",
    "load_global_params",
    "fold_in",
]

KEEP_ROUNDS = 3
_FILE = re.compile(r"^round-(\d+)\.npz$")


@dataclass
class LocalState:
    """Local state of the users hosted on one device or node (never sent)."""

    users: np.ndarray  # (k,) global user ids
    local: dict[str, np.ndarray]  # the model's local state, (k, ...) per name (e.g. "user": embeddings)
    dp_steps: np.ndarray  # (k,) int64 steps of the subsampled Gaussian mechanism taken
    rounds: np.ndarray  # (k,) rounds taken part in

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"users": self.users, "dp_steps": self.dp_steps, "rounds": self.rounds}
        out.update({f"local/{k}": v for k, v in self.local.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "LocalState":
        """Inverse of :meth:`arrays` (``user_emb`` of older files is the local ``user``)."""
        keys = list(arrays.keys())
        local = {k.split("/", 1)[1]: np.asarray(arrays[k]) for k in keys if k.startswith("local/")}
        if "user_emb" in keys:
            local["user"] = np.asarray(arrays["user_emb"])
        return cls(np.asarray(arrays["users"]), local, np.asarray(arrays["dp_steps"]), np.asarray(arrays["rounds"]))


def save_local_state(directory: str | Path, state: LocalState, *, server_round: int) -> Path:
    """Write ``state`` as it is after ``server_round`` (atomically); keep the last
    :data:`KEEP_ROUNDS` rounds' files."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"round-{int(server_round):08d}.npz"
    tmp = d / f".round-{int(server_round):08d}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **state.arrays())
    tmp.replace(final)
    for old in sorted(_rounds(d))[:-KEEP_ROUNDS]:
        (d / f"round-{old:08d}.npz").unlink(missing_ok=True)
    return final


def _rounds(d: Path) -> list[int]:
    if not d.is_dir():
        return []
    return [int(m.group(1)) for p in d.iterdir() if (m := _FILE.match(p.name))]


def load_local_state(directory: str | Path, *, at_most_round: int | None = None) -> tuple[LocalState, int] | None:
    """The latest saved state of a round ``<= at_most_round`` and its round, or ``None``.

    Raises ``ValueError`` naming the file if it cannot be read.
    """
    d = Path(directory)
    rounds = [r for r in _rounds(d) if at_most_round is None or r <= at_most_round]
    if not rounds:
        return None
    r = max(rounds)
    path = d / f"round-{r:08d}.npz"
    try:
        with np.load(path) as z:
            st = LocalState.from_arrays(z)
    except Exception as e:  # noqa: BLE001 - any decoding failure
        raise ValueError(f"local state file {path} is unreadable: {e}") from e
    return st, r


def load_global_params(path: str | Path) -> dict[str, np.ndarray]:
    """Global item parameters as nodes receive them, without any server.

    ``path`` is a run directory (its ``best_params.npz``, the model of the round
    selected on validation, else its last checkpoint), a checkpoint directory,
    or an ``.npz`` file (``best_params.npz``, ``checkpoint.npz``).
    """
    p = Path(path)
    if p.is_dir():
        for cand in (p / "best_params.npz", p / "checkpoint.npz", p / "checkpoint" / "checkpoint.npz"):
            if cand.exists():
                p = cand
                break
    try:
        with np.load(p) as z:
            if "param/feature_embedding" in z.files:
                raise ValueError(f"{p} holds a feature-aware model's raw parameters; use the run's best_params.npz "
                                 "(the item table as nodes receive it)")
            if "param/item_embedding" in z.files:
                return {"item_embedding": z["param/item_embedding"], "item_bias": z["param/item_bias"]}
            return {"item_embedding": z["item_embedding"], "item_bias": z["item_bias"]}
    except FileNotFoundError:
        raise FileNotFoundError(f"no global parameters at {p}") from None
    except KeyError as e:
        raise ValueError(f"{p} holds no item_embedding/item_bias: {e}") from e


def fold_in(
    items: np.ndarray,
    item_emb: np.ndarray,
    item_bias: np.ndarray,
    *,
    init: np.ndarray | None = None,
    steps: int = 100,
    lr: float = 0.5,
    l2: float = 0.01,
    negatives: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """A user embedding fit to ``items`` against frozen item parameters (BPR, full-batch
    SGD over sampled negatives).  With no items, the zero vector (scores = item
    biases: a non-personal ranking)."""
    from fedrec.engine import LocalConfig, mf_round

    d = item_emb.shape[1]
    items = np.unique(np.asarray(items, dtype=np.int64))
    if len(items) == 0:
        return np.zeros(d, dtype=np.float32)
    n_items = item_emb.shape[0]
    # the user's items as row 0 of a training matrix; one engine step per iteration,
    # with fresh negatives each (keyed by the iteration)
    train = sp.csr_matrix((np.ones(len(items), np.float32), (np.zeros(len(items), np.int64), items)), shape=(1, n_items))
    cfg = LocalConfig(user_lr=lr, user_steps=0, item_steps=1, negatives=negatives, user_l2=l2)
    q = torch.as_tensor(item_emb, dtype=torch.float32)
    b = torch.as_tensor(item_bias, dtype=torch.float32)
    p = torch.as_tensor(init if init is not None else np.zeros(d), dtype=torch.float32).reshape(1, d).clone()
    for t in range(steps):
        p, _, _, _ = mf_round(p, q, b, train, np.array([0]), cfg, seed=seed, server_round=t)
    return p[0].numpy().astype(np.float32)


@dataclass
class DeviceRecommender:
    """The device side of fedrec for one user, kept in one file.

    Parameters
    ----------
    path
        The state file (``.npz``), created by :meth:`create`, read by :meth:`open`.
    """

    path: Path
    user: int
    train_emb: np.ndarray  # (d,) moved only through the DP mechanism; what training uses
    rank_emb: np.ndarray  # (d,) refit on all local data; used for ranking only, never released
    items: np.ndarray  # (n,) item ids the user interacted with, in order
    times: np.ndarray  # (n,) their timestamps
    dp_steps: int = 0
    rounds: int = 0
    privacy: dict = field(default_factory=dict)  # the mechanism its DP steps were taken under (run-config keys)

    # --- lifecycle --------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, user: int = 0, dim: int = 64, seed: int = 0,
               init_std: float = 0.1) -> "DeviceRecommender":
        """A new device state (the initial training embedding a simulated node would
        give this user, no interactions).  The privacy mechanism comes with the first
        round it trains (the run's config, as the server resolved it)."""
        emb = (np.random.default_rng([seed, 2, user]).standard_normal(dim) * init_std).astype(np.float32)
        dev = cls(Path(path), int(user), emb, np.zeros(dim, np.float32), np.zeros(0, np.int64), np.zeros(0, np.float64))
        dev.save()
        return dev

    @classmethod
    def open(cls, path: str | Path) -> "DeviceRecommender":
        p = Path(path)
        try:
            with np.load(p) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                return cls(p, int(meta["user"]), z["train_emb"], z["rank_emb"], z["items"], z["times"],
                           int(meta["dp_steps"]), int(meta["rounds"]), dict(meta["privacy"]))
        except FileNotFoundError:
            raise FileNotFoundError(f"no device state at {p}; create one with DeviceRecommender.create") from None
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"device state {p} is unreadable: {e}") from e

    def save(self) -> None:
        """Write the state atomically (a crash mid-write keeps the previous file)."""
        meta = {"user": self.user, "dp_steps": self.dp_steps, "rounds": self.rounds, "privacy": self.privacy}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), train_emb=self.train_emb,
                 rank_emb=self.rank_emb, items=self.items, times=self.times)
        tmp.replace(self.path)

    # --- data -------------------------------------------------------------
    def add_interactions(self, items, times=None) -> None:
        """Record interactions (item ids; timestamps default to their order)."""
        items = np.asarray(items, dtype=np.int64).ravel()
        if (items < 0).any():
            raise ValueError(f"item ids must be >= 0; got {items[items < 0][:5].tolist()}")
        if times is None:
            start = self.times.max() + 1 if len(self.times) else 0.0
            times = start + np.arange(len(items), dtype=np.float64)
        times = np.asarray(times, dtype=np.float64).ravel()
        if len(times) != len(items):
            raise ValueError(f"{len(items)} items but {len(times)} timestamps")
        self.items = np.r_[self.items, items]
        self.times = np.r_[self.times, times]
        self.save()

    def train_matrix(self, n_items: int) -> sp.csr_matrix:
        """The user's interactions as row ``user`` of a training matrix (other rows
        empty), so sampling is keyed by the user's id exactly as on a simulated node."""
        if len(self.items) and self.items.max() >= n_items:
            raise ValueError(f"item id {int(self.items.max())} >= number of global items {n_items}")
        cols = np.unique(self.items)
        rows = np.full(len(cols), self.user, dtype=np.int64)
        return sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(self.user + 1, n_items))

    # --- federated training ----------------------------------------------
    def train(self, global_params: dict[str, np.ndarray], cfg, *, server_round: int,
              trained_items: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
        """One round of local (DP-)training; returns the release (the pseudo-gradients
        of the global parameters) or ``None`` if the user does not take part (the round
        would exceed ``budget-epsilon``, or user-level Poisson sampling left it out).

        ``cfg`` is the run's :class:`fedrec.config.FedConfig` (its mechanism as the
        server resolved it).  The device is a one-user client of the same handler as a
        simulated node (:func:`fedrec.node.train_round`): the same engine, sampling,
        clipping, noise and accountant, DP popularity prior included.
        ``trained_items``: the server's trained-items mask (``train-head``; from the
        message, :func:`fedrec.node.trained_items_of`).
        """
        from fedrec import node

        cfg = cfg.resolved()
        mech = _mechanism(cfg)
        if self.dp_steps and self.privacy and self.privacy != mech:
            raise ValueError(f"device {self.path}: this round's mechanism {mech} differs from the one its "
                             f"{self.dp_steps} DP steps were accounted under {self.privacy}")
        fed = self.federation(global_params)
        state = LocalState(np.array([self.user]), {"user": self.train_emb[None, :].copy()},
                           np.array([self.dp_steps]), np.array([self.rounds]))
        update, metrics, new = node.train_round(cfg, fed, 0, state, global_params=global_params,
                                                server_round=server_round, trained_items=trained_items)
        if metrics["num-examples"] == 0:
            return None
        self.train_emb = new.local["user"][0].astype(np.float32)
        self.dp_steps, self.rounds = int(new.dp_steps[0]), int(new.rounds[0])
        if cfg.dp:
            self.privacy = mech
        self.save()
        return update

    def federation(self, global_params: dict[str, np.ndarray]):
        """This device's view of the federation: its own interactions only (as a node
        reads from its data file), the item count from the global parameters."""
        from fedrec.data import Dataset, Split
        from fedrec.federation import Federation

        n_items = int(global_params["item_embedding"].shape[0])
        train = self.train_matrix(n_items)
        empty = sp.csr_matrix(train.shape, dtype=np.float32)
        z = np.zeros(0, dtype=np.int64)
        ds = Dataset(user=z, item=z, timestamp=z, n_users=train.shape[0], n_items=n_items,
                     user_ids=np.arange(train.shape[0]), item_ids=np.arange(n_items), name="device")
        return Federation(ds, Split(train=train, valid=empty, test=empty, kind="device"), (np.array([self.user]),))

    # --- privacy ----------------------------------------------------------
    def privacy_spent(self) -> dict:
        """Interaction-level epsilon spent so far: every DP step taken, the DP popularity
        prior composed, by the mechanism object simulated nodes use
        (:class:`fedrec.privacy.InteractionLevel`, through :func:`fedrec.node.user_epsilons`)."""
        from fedrec.privacy.mechanisms import InteractionLevel

        mech = self.privacy or {}
        eps = 0.0
        if self.dp_steps:
            eps = InteractionLevel(**{k: v for k, v in mech.items() if k != "unit"}).epsilon(self.dp_steps)
        return {"unit": "interaction-level", "epsilon": eps, "delta": mech.get("delta"), "steps": self.dp_steps,
                "rounds": self.rounds, "mechanism": mech}

    # --- ranking (on the device only) -------------------------------------
    def refit(self, global_params: dict[str, np.ndarray], **kw) -> None:
        """Refit the ranking embedding on all local interactions (no noise: never released)."""
        self.rank_emb = fold_in(self.items, global_params["item_embedding"], global_params["item_bias"],
                                init=self.train_emb, **kw)
        self.save()

    def fold_in(self, global_params: dict[str, np.ndarray], items=None, **kw) -> None:
        """Cold start: add ``items`` (if given) and fit the ranking embedding from them."""
        if items is not None:
            self.add_interactions(items)
        self.rank_emb = fold_in(self.items, global_params["item_embedding"], global_params["item_bias"], **kw)
        self.save()

    def recommend(self, global_params: dict[str, np.ndarray], n: int = 10, *, exclude_seen: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item ids and scores (``implicit``-style), excluding seen items."""
        q, b = global_params["item_embedding"], global_params["item_bias"]
        scores = q @ self.rank_emb + b
        if exclude_seen and len(self.items):
            scores = scores.copy()
            scores[self.items[self.items < len(scores)]] = -np.inf
        n = min(n, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, n - 1)[:n] if n > 0 else np.zeros(0, np.int64)
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]


def _mechanism(cfg) -> dict:
    """The interaction-level mechanism a round runs under, as stored with the device's steps."""
    from fedrec.privacy.mechanisms import InteractionLevel

    return InteractionLevel.from_config(cfg).to_dict()
