"""What lives on a device: users' local state, kept in files, and an on-device recommender.

:class:`LocalState` and its store (:func:`save_local_state`, :func:`load_local_state`)
live in :mod:`fedrec.federated.state`, shared with the node's round; they are
re-exported here.

:class:`DeviceRecommender` is the device-side API on top of it, for one user:
add interactions, recommend top-k (unseen items), fold in from a few
interactions against the latest global item parameters, report the privacy
spent.  It works from a saved global checkpoint without any server.

The device holds any federated model (``model``: ``mf``, ``gmf``, ``mlp``,
``neumf``, the sequential ``sasrec`` and ``gru4rec``, or ``path.py:Class``); it
reads the model's declarations, never names its tensors.  Two copies of the
local state, on purpose: ``train_local`` takes part in federated training (moved
only by the DP mechanism, so everything the device releases is covered by its
accountant); ``rank_local`` is refit on *all* of the user's interactions for
on-device ranking only.  Nothing the device releases depends on ``rank_local``,
so it needs no noise.  (MF's ``train_emb``/``rank_emb`` are their ``user``
vectors.)  A sequential model has no local vectors: the device's state is its
ordered history, which it ranks from directly (zero-training cold start).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.federated import protocol
from fedrec.federated.state import LocalState, latest_saved_round, load_local_state, save_local_state
from fedrec.privacy.policy import PolicyError, PrivacyPolicy
from fedrec.privacy.calibration import resolved

__all__ = [
    "LocalState",
    "save_local_state",
    "load_local_state",
    "latest_saved_round",
    "DeviceRecommender",
    "load_global_params",
    "fold_in",
]

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
            if any(k.startswith("param/") for k in z.files):  # a checkpoint: its param/<name> entries
                params = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("param/")}
            else:  # best_params.npz: the parameters and the round they are from
                params = {k: z[k] for k in z.files if k != "round"}
    except FileNotFoundError:
        raise FileNotFoundError(f"no global parameters at {p}") from None
    if not params:
        raise ValueError(f"{p} holds no global parameters")
    return params


def fold_in(
    items: np.ndarray,
    params: dict[str, np.ndarray],
    *,
    model=None,
    init: dict[str, np.ndarray] | None = None,
    steps: int = 100,
    lr: float = 0.5,
    l2: float = 0.01,
    negatives: int = 4,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Local state fit to ``items`` against frozen global parameters: ``steps`` local
    steps of the cohort engine (the model's loss over sampled negatives, full batch, no
    noise: the result is never released).  With no items, zeros (the global parameters
    alone rank: for MF, the item biases).  ``model``: default MF of the parameters'
    shape."""
    from fedrec.engine import LocalConfig, train_cohort

    model = model if model is not None else _device_model("mf", params, {"dim": params["item_embedding"].shape[1]})
    items = np.unique(np.asarray(items, dtype=np.int64))
    if len(items) == 0:
        return {k: np.zeros(shape, dtype=np.float32) for k, shape in model.local_shapes.items()}
    n_items = model.n_items
    # the user's items as row 0 of a training matrix; one engine step per iteration,
    # with fresh negatives each (keyed by the iteration)
    train = sp.csr_matrix((np.ones(len(items), np.float32), (np.zeros(len(items), np.int64), items)),
                          shape=(1, n_items))
    cfg = LocalConfig(user_lr=lr, user_steps=0, item_steps=1, negatives=negatives, user_l2=l2)
    tp = {k: torch.as_tensor(np.asarray(params[k]), dtype=torch.float32) for k in model.global_shapes()}
    local = {k: torch.as_tensor(np.asarray(init[k]) if init is not None else np.zeros(shape), dtype=torch.float32)
             .reshape((1,) + tuple(shape)).clone() for k, shape in model.local_shapes.items()}
    for t in range(steps):
        local = train_cohort(model, local, tp, train, np.array([0]), cfg, seed=seed, server_round=t).local
    return {k: v[0].numpy().astype(np.float32) for k, v in local.items()}


_DEVICE_MODELS: dict[tuple, object] = {}


def _catalogue(n_items: int, item_meta: dict[str, np.ndarray]):
    """A dataset of no interactions over ``n_items`` items carrying the public item metadata
    ``item_meta`` (``item_genres``, ``item_year``): what the federation's feature-aware
    models read through :func:`fedrec.federated.federation.item_features`."""
    from fedrec.data import Dataset

    none = np.zeros(0, dtype=np.int64)
    return Dataset(user=none, item=none, timestamp=none, n_users=0, n_items=n_items, user_ids=none,
                   item_ids=np.arange(n_items), item_genres=item_meta.get("item_genres"),
                   item_year=item_meta.get("item_year"), name="device")


def _device_model(spec: str, params: dict[str, np.ndarray] | None, args: dict,
                  item_meta: dict[str, np.ndarray] | None = None):
    """The model ``spec`` as the run built it (``args``: dim, init_std, seed, seq_len), for
    the item count of ``params`` (``None``: its declarations only).  A feature-aware
    model (two-tower) reads the public item metadata ``item_meta`` the device keeps."""
    from fedrec.federated.federation import build_model
    from fedrec.models import wants_item_features

    feature_aware = wants_item_features(spec)
    if feature_aware and not item_meta:
        raise ValueError(f"model {spec!r} ranks items through their public features: create the device with "
                         "item_genres= and/or item_year= (the federation's dataset.item_genres / item_year)")
    kw = dict(dim=int(args.get("dim", 64)), init_std=float(args.get("init_std", 0.1)), seed=int(args.get("seed", 0)),
              max_len=int(args.get("seq_len", 50)))
    n = len(next(iter(item_meta.values()))) if feature_aware else 1
    if params is not None:
        tables = _device_model(spec, None, args, item_meta).table_names()
        if not tables or tables[0] not in params:
            raise ValueError(f"the global parameters {sorted(params)} are not model {spec!r}'s (no {tables[:1]})")
        if feature_aware and int(params[tables[0]].shape[0]) != n:
            raise ValueError(f"the global parameters hold {params[tables[0]].shape[0]} items; the device's item "
                             f"metadata {n}")
        n = int(params[tables[0]].shape[0])
    meta_key = tuple((k, v.shape, hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest())
                     for k, v in sorted((item_meta or {}).items())) if feature_aware else ()
    key = (spec, n, tuple(sorted(kw.items())), meta_key)
    if key not in _DEVICE_MODELS:
        if len(_DEVICE_MODELS) >= 8:
            _DEVICE_MODELS.clear()
        _DEVICE_MODELS[key] = build_model(spec, _catalogue(n, item_meta or {}), dim=kw["dim"],
                                          init_std=kw["init_std"], seed=kw["seed"], max_len=kw["max_len"])
    return _DEVICE_MODELS[key]


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
    train_local: dict[str, np.ndarray]  # the model's local state as training moves it (only through the mechanism)
    rank_local: dict[str, np.ndarray]  # refit on all local data; used for ranking only, never released
    items: np.ndarray  # (n,) item ids the user interacted with, in order
    times: np.ndarray  # (n,) their timestamps
    dp_steps: int = 0
    rounds: int = 0
    privacy: dict = field(default_factory=dict)  # the mechanism its DP steps were taken under (run-config keys)
    model: str = "mf"  # the federation's model (``--model``)
    model_args: dict = field(default_factory=dict)  # what the run built it with: dim, init_std, seed, seq_len
    # public item metadata a feature-aware model reads (item_genres, item_year)
    item_meta: dict = field(default_factory=dict)
    policy: PrivacyPolicy = field(default_factory=PrivacyPolicy)  # what the user accepts, whatever the server asks
    released_round: int = 0  # the last round the device released, and the release (sent again if asked again)
    release: dict = field(default_factory=dict)
    non_private_rounds: int = 0  # rounds released without DP (the policy allowed them): epsilon is infinite

    # --- MF's user vector under its earlier names ----------------------------
    @property
    def train_emb(self) -> np.ndarray:
        return self.train_local["user"]

    @train_emb.setter
    def train_emb(self, v) -> None:
        self.train_local["user"] = np.asarray(v, dtype=np.float32)

    @property
    def rank_emb(self) -> np.ndarray:
        return self.rank_local["user"]

    @rank_emb.setter
    def rank_emb(self, v) -> None:
        self.rank_local["user"] = np.asarray(v, dtype=np.float32)

    # --- lifecycle --------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, user: int = 0, dim: int = 64, seed: int = 0, init_std: float = 0.1,
               model: str = "mf", seq_len: int = 50, item_genres: np.ndarray | None = None,
               item_year: np.ndarray | None = None, policy: PrivacyPolicy | None = None) -> "DeviceRecommender":
        """A new device state for a federation of ``model`` (built as the run builds it:
        ``dim``, ``init_std``, ``seed``, ``seq_len``): the initial local state a simulated
        node would give this user, no interactions.  The privacy mechanism comes with the
        first round it trains (the run's config, as the server resolved it).

        A feature-aware model (``two-tower``) ranks items through public item metadata:
        pass the federation's ``item_genres`` (multi-hot, one row per item) and/or
        ``item_year`` (as ``dataset.item_genres`` / ``dataset.item_year`` hold them); the
        device keeps them and builds the item tower's input exactly as the nodes do.

        ``policy`` (:class:`fedrec.privacy.policy.PrivacyPolicy`; default: interaction-level
        DP required, at most epsilon 8): what the user accepts; the device checks every
        round's configuration against it and keeps its own budget."""
        args = {"dim": int(dim), "init_std": float(init_std), "seed": int(seed), "seq_len": int(seq_len)}
        meta = {k: np.asarray(v) for k, v in (("item_genres", item_genres), ("item_year", item_year)) if v is not None}
        if len({len(v) for v in meta.values()}) > 1:
            raise ValueError(f"item_genres and item_year describe {[len(v) for v in meta.values()]} items")
        m = _device_model(model, None, args, meta)
        train = {k: v[0].astype(np.float32) for k, v in m.init_local(np.array([user]), seed=seed).items()}
        rank = {k: np.zeros_like(v) for k, v in train.items()}
        dev = cls(Path(path), int(user), train, rank, np.zeros(0, np.int64), np.zeros(0, np.float64),
                  model=model, model_args=args, item_meta=meta, policy=policy or PrivacyPolicy())
        dev.save()
        return dev

    @classmethod
    def open(cls, path: str | Path) -> "DeviceRecommender":
        p = Path(path)
        try:
            with np.load(p) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                train = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("train/")}
                rank = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("rank/")}
                if "train_emb" in z.files:  # a state written before devices held any model: MF's user vector
                    train["user"], rank["user"] = z["train_emb"], z["rank_emb"]
                model = meta.get("model", "mf")
                args = meta.get("model_args") or {"dim": int(len(train["user"]))}
                item_meta = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("item_meta/")}
                release = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("release/")}
                policy = PrivacyPolicy.from_dict(meta["policy"]) if "policy" in meta else PrivacyPolicy()
                return cls(p, int(meta["user"]), train, rank, z["items"], z["times"], int(meta["dp_steps"]),
                           int(meta["rounds"]), dict(meta["privacy"]), model, dict(args), item_meta, policy,
                           int(meta.get("released_round", 0)), release, int(meta.get("non_private_rounds", 0)))
        except FileNotFoundError:
            raise FileNotFoundError(f"no device state at {p}; create one with DeviceRecommender.create") from None
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"device state {p} is unreadable: {e}") from e

    def save(self) -> None:
        """Write the state atomically (a crash mid-write keeps the previous file)."""
        meta = {"user": self.user, "dp_steps": self.dp_steps, "rounds": self.rounds, "privacy": self.privacy,
                "model": self.model, "model_args": self.model_args, "policy": self.policy.to_dict(),
                "released_round": self.released_round, "non_private_rounds": self.non_private_rounds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        arrays = {f"train/{k}": v for k, v in self.train_local.items()}
        arrays.update({f"rank/{k}": v for k, v in self.rank_local.items()})
        arrays.update({f"item_meta/{k}": v for k, v in self.item_meta.items()})
        arrays.update({f"release/{k}": v for k, v in self.release.items()})
        np.savez(tmp, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), items=self.items, times=self.times,
                 **arrays)
        tmp.replace(self.path)

    def federated_model(self, global_params: dict[str, np.ndarray]):
        """The model this device holds, for the item count of ``global_params``."""
        return _device_model(self.model, global_params, self.model_args, self.item_meta)

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

    def history(self) -> np.ndarray:
        """The user's items in time order (ties: the order they were added)."""
        return self.items[np.argsort(self.times, kind="stable")]

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
        would take its epsilon past its policy's ``max_epsilon``, or user-level Poisson
        sampling left it out).

        ``cfg`` is the run's :class:`fedrec.config.FedConfig` (its mechanism as the
        server resolved it); a configuration that breaks the device's policy is refused
        (:class:`fedrec.privacy.policy.PolicyError`), and the server's ``budget-epsilon``
        is replaced by the policy's.  A round is released once: asked for the round it
        released last, the device sends that release again (no new noise, nothing
        accounted twice); asked for an earlier round, it refuses.  The device is a
        one-user client of the same handler as a
        simulated node (:func:`fedrec.federated.node.train_round`): the same engine, sampling,
        clipping, noise and accountant, DP popularity prior included; a sequential
        model trains on the device's own ordered history.
        ``trained_items``: the server's trained-items mask (``train-head``; from the
        message, :func:`fedrec.federated.protocol.trained_items_of`).
        """
        import dataclasses

        from fedrec.federated import node

        cfg = resolved(cfg)
        self.policy.check(cfg)
        if server_round == self.released_round and self.release:
            return {k: v.copy() for k, v in self.release.items()}
        if server_round < self.released_round:
            raise PolicyError(f"device {self.path}: round {server_round} is older than the round it released last "
                              f"({self.released_round}); a second release would draw new noise over the same data")
        if cfg.dp:  # the device's budget, never the server's
            cfg = dataclasses.replace(cfg, budget_epsilon=0.0 if math.isinf(self.policy.max_epsilon)
                                      else self.policy.max_epsilon)
        elif cfg.user_dp == "distributed":
            raise PolicyError(f"device {self.path}: user-dp='distributed' is run by fedrec's node cohorts; the "
                              "on-device recommender does not encode a distributed-DP share yet")
        elif cfg.user_level:  # every round counts for every user (the accountant's Poisson sampling)
            from fedrec.privacy.mechanisms import UserLevel

            if UserLevel.from_config(cfg).epsilon(server_round) > self.policy.max_epsilon:
                return None
        if cfg.model != self.model or cfg.dim != int(self.model_args.get("dim", cfg.dim)):
            raise ValueError(f"device {self.path} holds model {self.model!r} of dimension "
                             f"{self.model_args.get('dim')}; the run trains {cfg.model!r} of dimension {cfg.dim}")
        mech = _mechanism(cfg)
        if self.dp_steps and self.privacy and self.privacy != mech:
            raise ValueError(f"device {self.path}: this round's mechanism {mech} differs from the one its "
                             f"{self.dp_steps} DP steps were accounted under {self.privacy}")
        fed = self.federation(global_params)
        state = LocalState(np.array([self.user]), {k: v[None, ...].copy() for k, v in self.train_local.items()},
                           np.array([self.dp_steps]), np.array([self.rounds]))
        update, metrics, new = node.train_round(cfg, fed, 0, state, global_params=global_params,
                                                server_round=server_round, trained_items=trained_items)
        if metrics[protocol.NUM_EXAMPLES] == 0:
            return None
        self.train_local = {k: v[0].astype(np.float32) for k, v in new.local.items()}
        self.dp_steps, self.rounds = int(new.dp_steps[0]), int(new.rounds[0])
        if cfg.dp:
            self.privacy = mech
        if not node.private_release(cfg):
            self.non_private_rounds += 1
        self.released_round, self.release = int(server_round), {k: np.array(v, copy=True) for k, v in update.items()}
        self.save()
        return update

    def federation(self, global_params: dict[str, np.ndarray]):
        """This device's view of the federation: its own interactions only (as a node
        reads from its data file, in time order), the item count from the global parameters."""
        from fedrec.data import Dataset, Split
        from fedrec.federated.federation import Federation

        n_items = self.federated_model(global_params).n_items
        train = self.train_matrix(n_items)
        empty = sp.csr_matrix(train.shape, dtype=np.float32)
        order = np.argsort(self.times, kind="stable")
        ts = np.empty(len(order), dtype=np.int64)
        ts[order] = np.arange(len(order))  # the order of the device's times, as integers
        ds = Dataset(user=np.full(len(self.items), self.user, dtype=np.int64), item=self.items.astype(np.int64),
                     timestamp=ts, n_users=train.shape[0], n_items=n_items, user_ids=np.arange(train.shape[0]),
                     item_ids=np.arange(n_items), item_genres=self.item_meta.get("item_genres"),
                     item_year=self.item_meta.get("item_year"), name="device")
        return Federation(ds, Split(train=train, valid=empty, test=empty, kind="device"), (np.array([self.user]),))

    # --- privacy ----------------------------------------------------------
    def privacy_spent(self) -> dict:
        """Interaction-level epsilon spent so far: every DP step taken, the DP popularity
        prior composed, by the mechanism object simulated nodes use
        (:class:`fedrec.privacy.InteractionLevel`, through :func:`fedrec.federated.node.user_epsilons`)."""
        from fedrec.privacy.mechanisms import InteractionLevel

        mech = self.privacy or {}
        eps = 0.0
        if self.dp_steps:
            eps = InteractionLevel(**{k: v for k, v in mech.items() if k != "unit"}).epsilon(self.dp_steps)
        if self.non_private_rounds:  # a release without DP (the policy allowed it): no finite epsilon holds
            eps = math.inf
        return {"unit": "interaction-level", "epsilon": eps, "delta": mech.get("delta"), "steps": self.dp_steps,
                "rounds": self.rounds, "non_private_rounds": self.non_private_rounds, "mechanism": mech,
                "policy": self.policy.to_dict()}

    # --- ranking (on the device only) -------------------------------------
    def refit(self, global_params: dict[str, np.ndarray], **kw) -> None:
        """Refit the ranking state on all local interactions (no noise: never released).
        A sequential model has nothing to fit: it ranks from the history."""
        m = self.federated_model(global_params)
        if m.local_shapes:
            self.rank_local = fold_in(self.items, global_params, model=m, init=self.train_local, **kw)
        self.save()

    def fold_in(self, global_params: dict[str, np.ndarray], items=None, **kw) -> None:
        """Cold start: add ``items`` (if given) and fit the ranking state from them (a
        sequential model ranks from them directly, with no training at all)."""
        if items is not None:
            self.add_interactions(items)
        m = self.federated_model(global_params)
        if m.local_shapes:
            self.rank_local = fold_in(self.items, global_params, model=m, **kw)
        self.save()

    def scores(self, global_params: dict[str, np.ndarray]) -> np.ndarray:
        """``(n_items,)`` scores of every item for this user: the model's score from the
        ranking state, or, for a sequential model, after the user's last items."""
        from fedrec.models import is_sequential

        m = self.federated_model(global_params)
        tp = {k: torch.as_tensor(np.asarray(global_params[k]), dtype=torch.float32) for k in m.global_shapes()}
        with torch.no_grad():
            if is_sequential(m):
                L = m.max_len
                hist = np.full(L, -1, dtype=np.int64)
                tail = self.history()[-L:]
                if len(tail):
                    hist[L - len(tail):] = tail
                return m.score_histories(torch.as_tensor(hist)[None], tp)[0].numpy()
            local = {k: torch.as_tensor(v, dtype=torch.float32)[None] for k, v in self.rank_local.items()}
            return m.score_users(local, tp)[0].numpy()

    def recommend(self, global_params: dict[str, np.ndarray], n: int = 10, *, exclude_seen: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` item ids and scores (``implicit``-style), excluding seen items."""
        scores = np.asarray(self.scores(global_params), dtype=np.float64)
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
