"""What both sides of a federated run derive from the config: the data, the split
and the cohorts of users hosted by each node.  Cached per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.config import FedConfig
from fedrec.data import (Dataset, Split, hold_out_items, hold_out_users, is_positive, load_dataset, make_split,
                         partition_users, subsample_users)
from fedrec.data.sequences import Histories, stage_histories

SPLIT_SEED = 0  # held-out users/items are the same for every run seed: cells compare on the same users

__all__ = [
    "Federation", "load_federation", "reader_options", "write_node_data", "load_node_data", "federated_model",
    "build_model", "init_global_params", "init_local_state", "item_features", "histories", "activity_groups",
    "SPLIT_SEED", "write_plan", "load_plan", "PLAN_FILE",
]


@dataclass(frozen=True)
class Federation:
    dataset: Dataset
    split: Split
    cohorts: tuple[np.ndarray, ...]  # users of node (partition) p

    @property
    def n_nodes(self) -> int:
        return len(self.cohorts)

    @property
    def n_users(self) -> int:
        return int(sum(len(c) for c in self.cohorts))

    def with_nodes(self, n_nodes: int) -> "Federation":
        """The same users split into ``n_nodes`` contiguous cohorts (when the
        federation has another number of nodes than ``users-per-node`` implies)."""
        if n_nodes == self.n_nodes:
            return self
        if not 1 <= n_nodes <= self.n_users:
            raise ValueError(f"cannot spread {self.n_users} users over {n_nodes} nodes")
        users = np.concatenate(self.cohorts)
        return Federation(self.dataset, self.split, tuple(np.array_split(users, n_nodes)))


@functools.lru_cache(maxsize=4)
def _cached(data: str, format: str, min_rating: float, kcore: int, split: str, users_per_node: int,
            cold_users: float = 0.0, cold_items: float = 0.0, reader_options: tuple = (), max_users: int = 0,
            tie_seed: int = 0) -> Federation:
    ds = load_dataset(data, format=format, min_rating=min_rating or None, kcore=kcore, **dict(reader_options))
    sp_ = make_split(ds, kind=split, tie_seed=tie_seed)
    if cold_items > 0:
        sp_ = hold_out_items(sp_, ds, fraction=cold_items, seed=SPLIT_SEED)
    if cold_users > 0:
        sp_ = hold_out_users(sp_, ds, fraction=cold_users, seed=SPLIT_SEED)
    if max_users > 0:
        sp_ = subsample_users(sp_, max_users, seed=SPLIT_SEED)
    users = np.flatnonzero(np.diff(sp_.train.indptr) > 0)
    return Federation(ds, sp_, tuple(partition_users(users, users_per_node=users_per_node)))


def load_federation(cfg: FedConfig) -> Federation:
    """Dataset, split and node cohorts for ``cfg`` (users with training data only).  The
    order inside ties in time is drawn from ``cfg.seed``: every model run with one seed
    sees the same split, and a study's seeds vary the tie order too."""
    return _cached(cfg.data, cfg.format, cfg.min_rating, cfg.kcore, cfg.split, cfg.users_per_node,
                   cfg.cold_users, cfg.cold_items, reader_options(cfg), cfg.max_users, cfg.seed)


def reader_options(cfg: FedConfig) -> tuple:
    """The data reader's options that ``cfg`` sets (generic files; duplicates), as sorted pairs."""
    opts = {k: getattr(cfg, k) for k in ("user_col", "item_col", "rating_col", "timestamp_col", "sep")
            if getattr(cfg, k)}
    if cfg.duplicates != "error":
        opts["duplicates"] = cfg.duplicates
    return tuple(sorted(opts.items()))


_MODELS: dict = {}  # (dataset id, model settings) -> (dataset, model)


def federated_model(cfg: FedConfig, fed: Federation):
    """The run's :class:`~fedrec.models.protocol.FederatedModel` (``cfg.model``), built once
    per (federation, model settings) in a process; its parameters are the initial
    global parameters (seeded by ``cfg.seed``)."""
    key = (id(fed.dataset), cfg.model, cfg.dim, cfg.init_std, cfg.seed, cfg.seq_len)
    cache = _MODELS
    if key not in cache or cache[key][0] is not fed.dataset:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = (fed.dataset, build_model(cfg.model, fed.dataset, dim=cfg.dim, init_std=cfg.init_std,
                                               seed=cfg.seed, max_len=cfg.seq_len))
    return cache[key][1]


def build_model(spec: str, ds: Dataset, *, dim: int, init_std: float = 0.1, seed: int = 0, max_len: int = 50):
    """The model named by ``spec`` for dataset ``ds`` (with its item features when the
    model ranks items through them; ``max_len``: the history a sequential model reads)."""
    from fedrec.models import build_federated_model, wants_item_features

    feats = item_features(ds) if wants_item_features(spec) else None
    return build_federated_model(spec, ds.n_items, item_features=feats, dim=dim, init_std=init_std, seed=seed,
                                 max_len=max_len)


def histories(fed: Federation, stage: str, *, keep: bool = True) -> Histories:
    """Each user's history before ``stage`` in time order (:func:`fedrec.data.sequences.stage_histories`),
    from the dataset or, on a deployed node, from its data file; cached on the federation
    (``keep=False``: computed without caching them if they are not cached yet)."""
    cache = fed.__dict__.setdefault("_histories", {})
    if not keep and stage not in cache and getattr(fed, "_node_eval", None) is None:
        return stage_histories(fed.dataset, fed.split, stage)
    if stage not in cache:
        if stage not in ("train", "valid", "test"):
            raise ValueError(f"unknown stage {stage!r}; choose 'train', 'valid' or 'test'")
        node_eval = getattr(fed, "_node_eval", None)
        if node_eval is None:
            cache[stage] = stage_histories(fed.dataset, fed.split, stage)
        elif stage == "test":
            cache[stage] = node_eval["history"]
        else:  # the node's test-stage histories without the validation items
            h = node_eval["history"]
            u = np.repeat(np.arange(len(h.indptr) - 1), np.diff(h.indptr))
            keep = is_positive(fed.split.train, u, h.items)
            cache[stage] = Histories(np.r_[0, np.cumsum(np.bincount(u[keep], minlength=len(h.indptr) - 1))],
                                     h.items[keep])
    return cache[stage]


def init_global_params(cfg: FedConfig, fed: Federation) -> dict[str, np.ndarray]:
    """Initial global parameters of the run's model (what the server starts from)."""
    return federated_model(cfg, fed).global_params()


def item_features(ds: Dataset) -> np.ndarray:
    """Content features of the items, ``(n_items, n_features)`` float32: genres
    (multi-hot) and release decade (one-hot, unknown years in their own column),
    each item's row scaled to unit L2 norm."""
    parts = []
    if ds.item_genres is not None:
        parts.append(np.asarray(ds.item_genres, dtype=np.float32))
    if ds.item_year is not None:
        year = np.asarray(ds.item_year, dtype=np.float64)
        known = np.isfinite(year) & (year > 0)
        dec = np.where(known, (np.where(known, year, 0) // 10).astype(np.int64), -1)
        levels = np.unique(dec[known])
        onehot = np.zeros((len(year), len(levels) + 1), dtype=np.float32)
        onehot[known, np.searchsorted(levels, dec[known])] = 1.0
        onehot[~known, -1] = 1.0
        parts.append(onehot)
    if not parts:
        raise ValueError(f"dataset {ds.name!r} has no item features (genres or year) for a feature-aware model")
    f = np.concatenate(parts, axis=1)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return (f / np.where(norm > 0, norm, 1.0)).astype(np.float32)


#: The user-activity groups, lightest first (:func:`activity_groups`).
ACTIVITY_GROUPS = ("light", "medium", "heavy")


def activity_groups(split: Split) -> np.ndarray:
    """Each user's activity group by training interactions: ``light`` (bottom
    third of users with training data), ``medium``, ``heavy`` (top third)."""
    n = np.diff(split.train.indptr)
    active = n[n > 0]
    lo, hi = (np.quantile(active, [1 / 3, 2 / 3]) if len(active) else (0, 0))
    return np.where(n <= lo, "light", np.where(n <= hi, "medium", "heavy")).astype(object)


def init_local_state(users: np.ndarray, cfg: FedConfig, fed: Federation) -> dict[str, np.ndarray]:
    """Initial local state of ``users``, a function of (seed, user) only."""
    return federated_model(cfg, fed).init_local(users, cfg.seed)


# --------------------------------------------------------------------------
# planning and running: what one node holds
# --------------------------------------------------------------------------

NODE_FORMAT = 1  # version of the node data files


def write_node_data(fed: Federation, directory, *, partitions=None) -> list:
    """Write one file per node, ``node-P.npz``, with only what node P needs: its users'
    rows of train/valid/test, the item side (count, genres, years: public item
    features), its users' activity groups and the held-out items: no federation-wide
    statistic of the interactions (novelty and ARP are the server's, from the nodes'
    top-10 counts).  A node that reads its file
    (:func:`load_node_data`) never loads the dataset or the other users' data.
    Returns the paths."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ds, split = fed.dataset, fed.split
    groups = activity_groups(split)
    codes = np.select([groups == g for g in ACTIVITY_GROUPS[:-1]], range(len(ACTIVITY_GROUPS) - 1),
                      len(ACTIVITY_GROUPS) - 1).astype(np.int8)
    paths = []
    # the histories are computed for the files, not kept on the federation: the process that
    # writes node files (a simulation's driver) does not train, and at 138,000 users they are 190 MiB
    test_histories = histories(fed, "test", keep=False) if len(ds.user) else None
    for p in (range(fed.n_nodes) if partitions is None else partitions):
        users = np.asarray(fed.cohorts[p], dtype=np.int64)
        arrays = {"format": np.array(NODE_FORMAT), "partition": np.array(p), "n_nodes": np.array(fed.n_nodes),
                  "n_users": np.array(ds.n_users), "n_items": np.array(ds.n_items), "users": users,
                  "group_codes": codes[users],
                  "cold_items": np.asarray(split.cold_items, dtype=np.int64),
                  "name": np.array(ds.name), "kind": np.array(split.kind), "tie_seed": np.array(split.tie_seed)}
        for stage in ("train", "valid", "test"):
            m = getattr(split, stage)[users].tocsr()
            arrays[f"{stage}/indptr"], arrays[f"{stage}/indices"] = (m.indptr.astype(np.int64),
                                                                     m.indices.astype(np.int32))
        if len(ds.user):  # the users' histories in time order (sequential models read them)
            h = test_histories
            arrays["history/lengths"] = h.lengths(users)
            arrays["history/items"] = np.concatenate([h.of(u) for u in users.tolist()] or [np.zeros(0, np.int64)])
        arrays.update(_item_side(ds))
        path = directory / f"node-{p}.npz"
        tmp = directory / f"node-{p}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(path)
        paths.append(path)
    return paths


def _item_side(ds: Dataset) -> dict[str, np.ndarray]:
    """The public item side of ``ds`` as file arrays: genres, release years, genre names."""
    arrays = {k: np.asarray(getattr(ds, k)) for k in ("item_genres", "item_year") if getattr(ds, k) is not None}
    if ds.genre_names:
        arrays["genre_names"] = np.array(ds.genre_names)
    return arrays


def _catalogue(a: dict, n_users: int, n_items: int) -> Dataset:
    """A dataset with no interactions: the catalogue and item side a node or plan file holds."""
    empty = np.zeros(0, dtype=np.int64)
    return Dataset(user=empty, item=empty, timestamp=empty, n_users=n_users, n_items=n_items,
                   user_ids=np.arange(n_users), item_ids=np.arange(n_items), item_genres=a.get("item_genres"),
                   genre_names=tuple(str(x) for x in a.get("genre_names", ())), item_year=a.get("item_year"),
                   name=str(a["name"]))


@functools.lru_cache(maxsize=64)  # an actor of a simulation serves several nodes, each from its own file
def load_node_data(path: str) -> tuple[Federation, int]:
    """A node's view of the federation from its file (:func:`write_node_data`):
    ``(federation, partition)``.  Its matrices have every user's row, but only the
    node's users' rows hold data; the other cohorts are empty."""
    from pathlib import Path

    import scipy.sparse as sp

    try:
        with np.load(Path(path), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files if not k.startswith("history/")}  # histories: when asked for
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"node data file {path}: not readable ({type(e).__name__})") from None
    if int(a.get("format", -1)) != NODE_FORMAT:
        raise ValueError(f"node data file {path}: format {a.get('format')}, expected {NODE_FORMAT}")
    n_users, n_items, users = int(a["n_users"]), int(a["n_items"]), a["users"]
    p, n_nodes = int(a["partition"]), int(a["n_nodes"])

    def full(stage: str) -> sp.csr_matrix:
        indptr_own, indices = a[f"{stage}/indptr"], a[f"{stage}/indices"]
        counts = np.zeros(n_users, dtype=np.int64)
        counts[users] = np.diff(indptr_own)
        order = np.argsort(users, kind="stable")  # rows in user order, each row's columns as written
        idx = np.concatenate([indices[indptr_own[j]:indptr_own[j + 1]] for j in order]) if len(users) else \
            np.zeros(0, np.int32)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix((np.ones(len(idx), dtype=np.float32), idx, indptr), shape=(n_users, n_items))

    split = Split(train=full("train"), valid=full("valid"), test=full("test"), kind=str(a["kind"]),
                  cold_items=a["cold_items"], tie_seed=int(a.get("tie_seed", 0)))
    empty = np.zeros(0, dtype=np.int64)
    ds = _catalogue(a, n_users, n_items)
    cohorts = tuple(users if q == p else empty for q in range(n_nodes))
    fed = Federation(ds, split, cohorts)
    groups = np.full(n_users, "", dtype=object)
    groups[users] = np.array(ACTIVITY_GROUPS, dtype=object)[a["group_codes"]]
    object.__setattr__(fed, "_node_eval", _NodeEval({"groups": groups},
                                                    path=str(path), users=users, n_users=n_users))
    return fed, p


class _NodeEval(dict):
    """A node's federation-wide inputs from its file; ``"history"`` (the users' ordered
    histories, which only sequential models read: 80 MiB per 10 M interactions) is read
    from the file when first asked for."""

    def __init__(self, values: dict, *, path: str, users: np.ndarray, n_users: int):
        super().__init__(values)
        self._path, self._users, self._n_users = path, users, n_users

    def __missing__(self, key):
        if key != "history":
            raise KeyError(key)
        with np.load(self._path, allow_pickle=False) as z:
            names = set(z.files)
            own_lengths = z["history/lengths"] if "history/lengths" in names else None
            own_items = z["history/items"] if "history/items" in names else None
        lengths = np.zeros(self._n_users, dtype=np.int64)
        items = np.zeros(0, dtype=np.int64)
        if own_lengths is not None:  # rows in user order, as the matrices
            order = np.argsort(self._users, kind="stable")
            starts = np.r_[0, np.cumsum(own_lengths)]
            lengths[self._users] = own_lengths
            items = np.concatenate([own_items[starts[j]:starts[j + 1]] for j in order] or [items])
        self["history"] = Histories(np.r_[0, np.cumsum(lengths)].astype(np.int64), items.astype(np.int64))
        return self["history"]


PLAN_FORMAT = 1  # version of the plan file
PLAN_FILE = "plan.npz"


def write_plan(fed: Federation, directory, *, measurement: bool = False):
    """Write ``plan.npz``: the server's public view of the federation, with nothing
    computed from the interactions.  It holds the catalogue (the item count and
    public item features), the held-out items, the users hosted by each node (who
    takes part, not what they did) and the dataset's name and split kind.  A server
    that reads it (:func:`load_plan`) never opens the interactions.

    ``measurement``: also store the training counts per item, from which a
    *simulation* measures novelty and ARP of the nodes' top-10 lists (a statistic of
    the interactions: a deployment's plan has none).  Returns the path."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ds, split = fed.dataset, fed.split
    sizes = np.array([len(c) for c in fed.cohorts], dtype=np.int64)
    arrays = {"format": np.array(PLAN_FORMAT), "name": np.array(ds.name), "kind": np.array(split.kind),
              "n_users": np.array(ds.n_users), "n_items": np.array(ds.n_items),
              "cohort_sizes": sizes,
              "cohort_users": np.concatenate([np.asarray(c, dtype=np.int64) for c in fed.cohorts])
              if len(sizes) else np.zeros(0, np.int64),
              "cold_items": np.asarray(split.cold_items, dtype=np.int64),
              "cold_users": np.asarray(split.cold_users, dtype=np.int64)}
    arrays.update(_item_side(ds))
    if measurement:
        arrays["item_popularity"] = np.asarray(split.train.sum(axis=0)).ravel().astype(np.float64)
    path, tmp = directory / PLAN_FILE, directory / f"{PLAN_FILE}.tmp.npz"
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_plan(path) -> tuple[Federation, np.ndarray | None]:
    """The server's view of the federation from a plan file (:func:`write_plan`):
    ``(federation, item_popularity)``.  The federation's matrices are empty (the
    server holds no interactions); its cohorts, catalogue, item features and held-out
    items are the plan's.  ``item_popularity`` is ``None`` unless the plan was written
    for a simulation's measurement."""
    from pathlib import Path

    import scipy.sparse as sp

    try:
        with np.load(Path(path), allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"federation plan {path}: not readable ({type(e).__name__})") from None
    if int(a.get("format", -1)) != PLAN_FORMAT:
        raise ValueError(f"federation plan {path}: format {a.get('format')}, expected {PLAN_FORMAT}")
    n_users, n_items = int(a["n_users"]), int(a["n_items"])
    nothing = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    split = Split(train=nothing, valid=nothing.copy(), test=nothing.copy(), kind=str(a["kind"]),
                  cold_items=a["cold_items"], cold_users=a["cold_users"])
    ds = _catalogue(a, n_users, n_items)
    cohorts = tuple(np.split(a["cohort_users"], np.cumsum(a["cohort_sizes"])[:-1])) if len(a["cohort_sizes"]) else ()
    return Federation(ds, split, cohorts), a.get("item_popularity")
