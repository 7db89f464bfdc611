"""What a node does, as functions of (config, data, node state, global parameters).

Used by the Flower ClientApp (``clients/app.py``) and callable directly (the
benchmarks compare the two).  A node hosts the cohort of users of its partition.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.config import FedConfig
from fedrec.federated.state import LocalState, latest_saved_round, load_local_state, save_local_state
from fedrec.federated import protocol
from fedrec.federated.algorithms import StatisticsAlgorithm, UserBatch, algorithm_for
from fedrec.federated.federation import Federation, federated_model, histories, init_local_state, load_federation
from fedrec.models.sequential import is_sequential
from fedrec.metrics.evaluate import evaluate
from fedrec.privacy.mechanisms import InteractionLevel
from fedrec.privacy.calibration import resolved, steps_per_round
from fedrec.privacy.randomness import DPRandomness
from fedrec.rng import hash_uniform

__all__ = [
    "NodeState", "SimulatedDropout", "setup", "node_config_of", "state_dir", "load_state", "save_state",
    "state_for_round", "private_release", "dp_randomness", "maybe_fail", "analytics_round", "active_users",
    "compute_device", "train_round", "trim_heap", "TRIM_AFTER_PAIRS", "evaluate_round",
    "evaluation_inputs", "user_epsilons",
]

NodeState = LocalState  # a node's state is the local state of its users


class SimulatedDropout(RuntimeError):
    """A node failing on purpose (``dropout-rate``): the server sees an error reply."""


def setup(run_config, node_config, mechanism: dict | None = None) -> tuple[FedConfig, Federation, int]:
    """The node's config, data and partition, for one message.

    Planning and running are separate: ``mechanism`` (what the server resolved once
    and sent in the message config: the noise multipliers) replaces the node's own
    calibration, and a node config ``data-file`` (written by
    :func:`fedrec.federated.federation.write_node_data`) gives the node its own users' data
    only; without one (simulation) the node derives its cohort from the dataset.
    Both are cached in the process."""
    cfg = node_config_of(run_config, mechanism)
    data_file = (node_config or {}).get("data-file")
    if data_file:
        from fedrec.federated.federation import load_node_data

        fed, partition = load_node_data(str(data_file))
        given = node_config.get("partition-id")
        if given is not None and int(given) != partition:
            raise ValueError(f"node config data-file={data_file} holds partition {partition}, not partition-id={given}")
        return cfg, fed, partition
    fed = load_federation(cfg)
    partition = int(node_config.get("partition-id", 0))
    n_part = int(node_config.get("num-partitions", fed.n_nodes))
    # a federation with another number of nodes than users-per-node implies
    # (e.g. `flwr run` with Flower's default connection) splits the users evenly
    fed = fed.with_nodes(n_part)
    return cfg, fed, partition


def _item_mask(bits: np.ndarray, n_items: int) -> np.ndarray:
    """The first ``n_items`` of an unpacked mask (the rest is byte padding, all False)."""
    if len(bits) < n_items or bits[n_items:].any() or len(bits) - n_items >= 8:
        raise ValueError(f"trained-items mask of {len(bits)} bits does not fit {n_items} items")
    return bits[:n_items]


def node_config_of(run_config, mechanism: dict | None = None) -> FedConfig:
    """The config a node runs: the run config with the mechanism the server resolved (the
    noise multipliers, from the message config) in place of the node's own calibration."""
    return _config(tuple(sorted(dict(run_config).items())), tuple(sorted((mechanism or {}).items())))


@functools.lru_cache(maxsize=4)
def _config(run_config: tuple, mechanism: tuple) -> FedConfig:
    import dataclasses

    cfg = FedConfig.from_run_config(dict(run_config))
    if mechanism:  # resolved by the server: no calibration on the node
        return dataclasses.replace(cfg, target_epsilon=0.0, user_target_epsilon=0.0,
                                   **{k.replace("-", "_"): float(v) for k, v in mechanism})
    return resolved(cfg)


def state_dir(cfg: FedConfig, partition: int, node_config=None) -> Path | None:
    """Directory of the node's persisted local state: node config ``state-dir``,
    else config ``state-dir``, else ``OUT/client-state``; ``None``: memory only."""
    base = ((node_config or {}).get("state-dir") or cfg.state_dir
            or (str(Path(cfg.out) / "client-state") if cfg.out else ""))
    return Path(base) / f"node-{partition}" if base else None


def load_state(stored: dict | None, fed: Federation, partition: int, cfg: FedConfig, *,
               directory: Path | None = None, at_most_round: int | None = None) -> NodeState:
    """The node's users' state: from ``directory`` (latest round <= ``at_most_round``)
    if given and present, else from ``stored`` (the arrays :func:`save_state` returned,
    kept by the caller, e.g. in Flower's context state), else fresh."""
    users = fed.cohorts[partition]
    if directory is not None:
        found = load_local_state(directory, at_most_round=at_most_round)
        if found is not None:
            st = found[0]
            if not np.array_equal(st.users, users):
                raise ValueError(f"local state in {directory} belongs to other users than partition {partition}")
            return st
    elif stored:
        return NodeState.from_arrays(stored)
    return NodeState(
        users=users,
        local=init_local_state(users, cfg, fed),
        dp_steps=np.zeros(len(users), dtype=np.int64),
        rounds=np.zeros(len(users), dtype=np.int64),
    )


def private_release(cfg: FedConfig) -> bool:
    """Whether the node's round releases private data under a DP mechanism whose
    randomness is drawn per round (either unit): such a round is released once."""
    return bool(cfg.dp or cfg.user_level)


def state_for_round(stored: dict | None, fed: Federation, partition: int, cfg: FedConfig, *,
                    directory: Path | None = None, server_round: int) -> NodeState:
    """The state a train request for ``server_round`` starts from: the users' state as of
    the previous round (a resumed server repeats rounds).

    In a private run a round is released once: if the node already answered
    ``server_round``, this is the state that round left, with its kept release, which
    :func:`train_round` sends again (no new draw of noise over the same data).  A round
    answered before whose release is no longer kept is refused (``ValueError``)."""
    if not private_release(cfg):
        return load_state(stored, fed, partition, cfg, directory=directory, at_most_round=server_round - 1)
    state = load_state(stored, fed, partition, cfg, directory=directory, at_most_round=server_round)
    if state.release_round == server_round and state.release:
        return state
    done = latest_saved_round(directory) if directory is not None else state.release_round
    if done >= server_round:
        raise ValueError(f"node {partition}: round {server_round} was released before (its state holds round {done}) "
                         "and that release is no longer kept; a second release would draw new noise over the same "
                         "data, which no accountant covers")
    return state


def dp_randomness(cfg: FedConfig, server_round: int, partition: int) -> DPRandomness | None:
    """The node's randomness for a private round (secret unless ``reproducible-noise``);
    ``None`` for a non-private round."""
    if not private_release(cfg):
        return None
    return DPRandomness.of(cfg.reproducible_noise, cfg.seed, server_round, partition, 3)


def save_state(state: NodeState, *, directory: Path | None = None, server_round: int = 0) -> dict | None:
    """Persist ``state`` in ``directory``; without one, return its arrays for the caller to keep."""
    if directory is not None:
        save_local_state(directory, state, server_round=server_round)
        return None
    return state.arrays()


def maybe_fail(cfg: FedConfig, partition: int, server_round: int) -> None:
    """Simulated fault: raise :class:`SimulatedDropout` with probability ``dropout-rate``
    (a pure function of seed, round and node)."""
    if cfg.dropout_rate > 0:
        u = np.random.default_rng([cfg.seed, server_round, partition, 11]).random()
        if u < cfg.dropout_rate:
            raise SimulatedDropout(f"simulated dropout of node {partition} in round {server_round}")


MAX_PAIRS = 400_000  # training pairs per vectorised chunk (about 0.5 GB of per-pair tensors at dim 64)


def _chunks(idx: np.ndarray, pairs: np.ndarray, max_pairs: int | None = None) -> list[np.ndarray]:
    """Consecutive pieces of ``idx`` with at most ``max_pairs`` (default :data:`MAX_PAIRS`)
    pairs each (at least one user)."""
    max_pairs = MAX_PAIRS if max_pairs is None else max_pairs
    out, start, acc = [], 0, 0
    for j, n in enumerate(pairs.tolist()):
        if acc and acc + n > max_pairs:
            out.append(idx[start:j])
            start, acc = j, 0
        acc += n
    out.append(idx[start:])
    return out


def active_users(cfg: FedConfig, state: NodeState, server_round: int,
                 randomness: DPRandomness | None = None) -> tuple[np.ndarray, int]:
    """Mask of the node's users that train this round, and how many declined.

    A user takes part with probability ``user-sample-rate`` (Poisson sampling, as
    the user-level accountant assumes), keyed by round and user under the node's
    secret ``randomness`` in a private run (:func:`dp_randomness`), under the public
    seed otherwise; and declines if the round would take its interaction-level
    epsilon past ``budget-epsilon``.
    """
    take = np.ones(len(state.users), dtype=bool)
    if cfg.user_sample_rate < 1:
        if private_release(cfg) and randomness is None:
            raise ValueError("a private run's user sampling needs the node's DP randomness")
        key = randomness.key if randomness is not None else cfg.seed
        take = hash_uniform(key, server_round, state.users, 0, 77) < cfg.user_sample_rate
    declined = np.zeros_like(take)
    if cfg.budget_epsilon > 0:
        nxt = user_epsilons(cfg, state.dp_steps + steps_per_round(cfg))
        declined = take & (nxt > cfg.budget_epsilon)
    return take & ~declined, int(declined.sum())


def compute_device(name: str) -> torch.device | None:
    """The torch device of config ``device`` (``None``: the CPU); a GPU that PyTorch
    does not see is refused in one line."""
    if name == "cpu":
        return None
    if not torch.cuda.is_available():
        raise ValueError(f"device={name}: PyTorch sees no GPU on this machine (torch.cuda.is_available() is "
                         f"False); use device=cpu")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


class DistributedRelease:
    """A node's distributed-DP release in the making: what its users' devices would encode
    (:meth:`fedrec.privacy.distributed.DistributedDP.encode`), summed in the field.  The
    users that train add their clipped, rotated, rounded releases (:meth:`add`); every
    user adds its noise share (:meth:`add_noise`: one Skellam draw for all of them, or each
    user's discrete Gaussian).  The parameters travel flattened in :func:`~fedrec.federated.protocol.ddp_order`."""

    def __init__(self, cfg: FedConfig, fed: Federation, global_params: dict[str, np.ndarray], server_round: int,
                 rng: np.random.Generator, field: dict | None = None):
        from fedrec.privacy.distributed import distributed_mechanism, rotation_signs

        self.names = protocol.ddp_order(global_params)
        dim = sum(int(np.prod(global_params[n].shape)) for n in self.names)
        self.mech = distributed_mechanism(cfg, n_users=fed.n_users, n_nodes=fed.n_nodes, dim=dim, field=field)
        self.signs = rotation_signs(cfg.seed, server_round, self.mech.padded_dim)
        self.rng = rng
        self.total = np.zeros(self.mech.padded_dim, dtype=np.int64)

    def add(self, releases: dict[str, torch.Tensor]) -> None:
        flat = np.concatenate([releases[n].reshape(releases[n].shape[0], -1).cpu().numpy() for n in self.names],
                              axis=1)
        for lo in range(0, len(flat), 64):
            rounded = self.mech.rounded(flat[lo:lo + 64], signs=self.signs, rng=self.rng)
            self.total = np.mod(self.total + rounded.sum(axis=0), self.mech.modulus)

    def add_noise(self, users: int) -> None:
        """The noise shares of the node's ``users`` users (every one adds its share)."""
        self.total = np.mod(self.total + self.mech.noise_sum(users, self.rng), self.mech.modulus)

    def reply(self) -> dict[str, np.ndarray]:
        from fedrec.privacy.distributed import SECAGG_CLIP, to_flower_grid

        return {protocol.DDP_SUM: to_flower_grid(self.total, clipping_range=SECAGG_CLIP,
                                                 quantization_range=self.mech.modulus)}


def train_round(
    cfg: FedConfig,
    fed: Federation,
    partition: int,
    state: NodeState,
    *,
    global_params: dict[str, np.ndarray],
    server_round: int,
    trained_items: np.ndarray | None = None,
    distributed: dict | None = None,
) -> tuple[dict[str, np.ndarray], dict, NodeState]:
    """Train the node's users for one round.

    ``distributed`` (``user-dp='distributed'``): the field the server sized
    (:func:`fedrec.federated.protocol.distributed_of`); without it the node sizes it from
    ``fed``, which is right only where ``fed`` is the whole federation (in one process).

    ``trained_items`` (``train-head``: the items the server trains, sent with the
    message; :func:`fedrec.federated.protocol.trained_items_of`): a sample's gradients with respect to the other
    items' rows, which the server keeps frozen, are dropped before clipping.

    Only the users :func:`active_users` selects train.  Returns the node's
    release, its metrics (``num-examples`` = users trained, possibly 0; loss;
    ``declined`` = users out of budget; each user's interaction-level epsilon
    so far) and the new local state.  A private run (either unit) releases no
    training loss: no mechanism covers it.  The release is the mean over the trained
    users of their item pseudo-gradients (with item-wise aggregation also the
    fraction of them that touched each item row); with user-level DP it is the
    global parameters plus the *sum* of their clipped pseudo-gradients.
    """
    algorithm = algorithm_for(cfg)
    if isinstance(algorithm, StatisticsAlgorithm):  # private ALS: its own release, its own server
        return algorithm.round(cfg, fed, partition, state, global_params=global_params, server_round=server_round)
    if state.release_round == server_round and state.release:  # asked again: the same release, no new draw
        return ({n: v.copy() for n, v in state.release.items()}, dict(state.release_metrics), state)
    torch.set_num_threads(1)
    randomness = dp_randomness(cfg, server_round, partition)
    gen = randomness.torch_generator() if randomness is not None else None
    dp_key = randomness.key if randomness is not None else None
    model = federated_model(cfg, fed)
    active, declined = active_users(cfg, state, server_round, randomness)
    active &= algorithm.trainable_users(fed, state.users)
    k = int(active.sum())
    params = {n: torch.as_tensor(v) for n, v in global_params.items()}
    update = {n: np.zeros(v.shape, dtype=np.float64) for n, v in global_params.items()}
    n_items = model.n_items
    if (trained_items is None) != (cfg.train_head <= 0):
        raise ValueError(f"config train-head={cfg.train_head} but the message "
                         f"{'carries no' if trained_items is None else 'carries a'} trained-items mask")
    trainable = None if trained_items is None else torch.as_tensor(_item_mask(trained_items, n_items))
    loss, counts = 0.0, np.zeros(n_items)
    local = {n: v.copy() for n, v in state.local.items()}
    steps, rounds = state.dp_steps.copy(), state.rounds.copy()
    device = compute_device(cfg.device)
    pairs = 0
    ddp = (DistributedRelease(cfg, fed, global_params, server_round, randomness.numpy(), distributed)
           if cfg.user_dp == "distributed" else None)
    if k:
        idx = np.flatnonzero(active)
        user_pairs = np.diff(fed.split.train.indptr)[state.users[idx]] * cfg.negatives
        pairs = int(user_pairs.sum())
        # weighting='interaction': each user by its interactions over the node's mean, so the
        # node's release (the chunks' user-weighted means) is the mean over its interactions
        weights = algorithm.user_weights(fed, state.users[idx]) if cfg.weighting == "interaction" else None
        for part in _chunks(idx, user_pairs):
            # users are independent: chunks bound the memory of the per-sample tensors (a
            # sample's 1 + m gathered rows are at most the 2m rows of its m old-style pairs);
            # the weighted mean of the chunks' means (and of their noise) is the cohort's
            res = algorithm.train_users(UserBatch(
                cfg=cfg, fed=fed, model=model, params=params,
                local={n: torch.as_tensor(v[part]) for n, v in state.local.items()}, users=state.users[part],
                server_round=server_round, generator=gen, dp_key=dp_key, trainable=trainable, device=device,
                weights=weights[np.searchsorted(idx, part)] if weights is not None else None,
                user_releases=None if ddp is None else ddp.add))
            w = len(part) / k
            for n, v in res.local.items():
                local[n][part] = v.numpy().astype(np.float32)
            for n, v in res.update.items():
                update[n] += w * v.numpy()
            loss += w * float(res.loss)
            if cfg.aggregation == "itemwise":
                counts += res.item_counts
        steps[active] += steps_per_round(cfg) if cfg.dp else 0
        rounds[active] += 1
    update = {n: v.astype(np.float32) for n, v in update.items()}
    new = NodeState(state.users, local, steps, rounds)
    if ddp is not None:
        # every user of the node adds its noise share, whether or not its secret coin had it train;
        # the reply names no count of those that trained (num-examples: the node's public cohort)
        ddp.add_noise(len(state.users))
        update = ddp.reply()
        metrics = {protocol.NUM_EXAMPLES: len(state.users), protocol.NOISE_SHARES: len(state.users),
                   protocol.DECLINED: declined}
    elif cfg.user_level:
        # user-level DP: the reply is (global parameters + the SUM of the users'
        # clipped updates), the form Flower's DP wrappers clip and noise
        update = {n: global_params[n] + k * v for n, v in update.items()}
    if cfg.aggregation == "itemwise":
        update[protocol.ITEM_COUNTS] = (counts / max(k, 1)).astype(np.float32)
    if ddp is None:
        metrics = {protocol.NUM_EXAMPLES: k, protocol.DECLINED: declined}
    if not (cfg.dp or cfg.user_level):
        # the training loss is computed from every training pair of the users and no mechanism
        # covers it: a private run does not release it (the engine does not even compute it)
        metrics[protocol.TRAIN_LOSS] = loss
    if cfg.dp:
        metrics[protocol.EPSILON] = [float(x) for x in user_epsilons(cfg, steps)]
    if pairs >= TRIM_AFTER_PAIRS:
        trim_heap()
    if randomness is not None:  # kept with the state: a repeated request gets this release again
        new.release_round, new.release_metrics = server_round, dict(metrics)
        new.release = {n: v.copy() for n, v in update.items()}
    return update, metrics, new


#: Training pairs of a round from which the node hands the C heap's free pages back to
#: the OS afterwards (:func:`trim_heap` costs about 2 ms: nothing against such a round).
TRIM_AFTER_PAIRS = 1_000_000


def trim_heap() -> None:
    """Return the C heap's free memory to the operating system (glibc ``malloc_trim``).

    glibc keeps the pages of freed medium-sized blocks (its mmap threshold grows with the
    sizes freed), so after a large round or an evaluation a node process held about 300
    MiB it no longer used (138,000 users on 2 nodes: measured with ``/proc``, see the
    README's Performance section); a simulation's actors and a deployed SuperNode are
    long-lived.  A no-op where the C library is not glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def analytics_round(fed: Federation, partition: int, query: str) -> dict[str, np.ndarray]:
    """A node's contribution to a federated statistic, from its own users' training data
    only: ``popularity``, the sum of its users' unit-norm item vectors (the DP popularity
    prior's release is the server's noise on the sum over nodes;
    :func:`fedrec.privacy.prior.popularity_sum`)."""
    from fedrec.privacy.prior import popularity_sum

    if query != "popularity":
        raise ValueError(f"analytics query {query!r}: choose {', '.join(protocol.ANALYTICS_QUERIES)}")
    return {"popularity": popularity_sum(fed.split.train, fed.cohorts[partition])}


def user_epsilons(cfg: FedConfig, steps: np.ndarray) -> np.ndarray:
    """Each user's interaction-level epsilon after ``steps`` DP-SGD steps, the DP
    popularity prior composed (Opacus RDP).  The one accountant of a node and of a
    device (:class:`fedrec.device.DeviceRecommender`)."""
    return InteractionLevel.from_config(cfg).epsilons(steps)


def evaluate_round(
    cfg: FedConfig,
    fed: Federation,
    partition: int,
    state: NodeState,
    *,
    global_params: dict[str, np.ndarray],
) -> dict:
    """Full-ranking metrics of the node's users on validation and test, as sums.

    Keys ``<stage>/<metric>`` hold sums over users and ``<stage>-count`` the
    number of users evaluated, for the stages ``valid``, ``test``, the test
    metrics of each user-activity group (``test@light`` ...), and with held-out
    items ``test@cold-items``/``test@warm-items`` (test targets among held-out /
    other items, ranked among all items) and ``test@cold-among-cold`` (held-out
    targets ranked among the held-out items only: the cold-start ranking task).  Test also carries beyond-accuracy
    sums (diversity, novelty, popularity) and ``test-topk``, how many top-10
    lists of this node each item is in (for coverage).  The server selects
    rounds on validation only.
    """
    model = federated_model(cfg, fed)
    params = {n: torch.as_tensor(v) for n, v in global_params.items()}
    row = {int(u): j for j, u in enumerate(state.users.tolist())}
    state = algorithm_for(cfg).evaluation_state(cfg, fed, state, global_params)  # ALS: each user's exact solve

    dev = compute_device(cfg.device)
    if dev is not None:  # the model's own tensors (public item features) beside the parameters
        model.to(dev)
        params = {n: v.to(dev) for n, v in params.items()}

    def score(users: np.ndarray) -> np.ndarray:
        at = [row[int(u)] for u in users]
        with torch.no_grad():
            local = {n: torch.as_tensor(v[at], device=dev) for n, v in state.local.items()}
            return model.score_users(local, params).cpu().numpy()

    score_valid = score_test = score
    if is_sequential(model):  # scores from each user's history before the stage (kept on the node)
        score_valid, score_test = (model.history_scorer(params, histories(fed, s)) for s in ("valid", "test"))

    out: dict = {protocol.NUM_EXAMPLES: int(len(state.users))}
    extras = evaluation_inputs(fed)

    def put(stage: str, r) -> None:
        sums, count = r.sums()
        out[f"{stage}-count"] = int(count)
        for k, v in sums.items():
            out[f"{stage}/{k}"] = float(v)

    put("valid", evaluate(score_valid, fed.split, stage="valid", users=state.users, ties=cfg.ties,
                          sampled_negatives=99, seed=cfg.seed, mask_consumed=not cfg.rank_consumed))
    # novelty and ARP: the server's, from the summed top-10 counts (a node holds no federation-wide statistic)
    r = evaluate(score_test, fed.split, stage="test", users=state.users, ties=cfg.ties, sampled_negatives=99,
                 seed=cfg.seed, item_features=extras["features"], mask_consumed=not cfg.rank_consumed)
    put("test", r)
    out[protocol.TEST_TOPK] = [int(x) for x in r.topk_item_counts]
    if cfg.exposure_targets:  # every user of the node, history (train + valid) masked
        from fedrec.metrics.exposure import exposure_counts

        history = (fed.split.train + fed.split.valid).tocsr()
        for k, v in exposure_counts(score_test, state.users, history, cfg.exposure_targets).items():
            out[protocol.EXPOSURE_PREFIX + k] = [int(x) for x in v]
    per_group = extras["groups"][r.users]
    for g in ("light", "medium", "heavy"):
        m = per_group == g
        out[f"test@{g}-count"] = int(m.sum())
        for k, v in r.per_user.items():
            out[f"test@{g}/{k}"] = float(v[m].sum())
    if len(fed.split.cold_items):
        for name, split in extras["item_views"].items():
            # full ranking only: sampling 99 negatives outside a user's positives is slow where the
            # cold-among-cold view masks every warm item as a positive (15 s of a round on ml-latest-small)
            put(f"test@{name}", evaluate(score_test, split, stage="test", users=state.users, ties=cfg.ties,
                                         seed=cfg.seed, sampled_negatives=0, mask_consumed=not cfg.rank_consumed))
    trim_heap()  # the ranking's working set (hundreds of MiB at scale) goes back to the OS
    return out


def evaluation_inputs(fed: Federation) -> dict:
    """Per-federation evaluation inputs, cached on the federation object: item
    ``features`` (genres), user activity ``groups`` and the held-out-item ``item_views``
    of the split."""
    cached = getattr(fed, "_eval_extras", None)
    if cached is not None:
        return cached
    import dataclasses

    from fedrec.federated.federation import activity_groups

    split = fed.split
    node_eval = getattr(fed, "_node_eval", None)  # a node's view: its users' activity groups from its data file
    genres = fed.dataset.item_genres
    feats = genres.astype(np.float32) if genres is not None else None
    views = {}
    if len(split.cold_items):
        cold = np.zeros(split.n_items, dtype=np.float32)
        cold[split.cold_items] = 1.0
        test = split.test.tocsr()
        cold_test = (test @ sp.diags(cold)).tocsr()
        warm_test = (test @ sp.diags(1.0 - cold)).tocsr()
        for m in (cold_test, warm_test):
            m.eliminate_zeros()
        # the cold-start ranking task: held-out items among held-out items only (warm
        # items are masked like history: added to the validation matrix the test masks)
        rows = np.flatnonzero(np.diff(split.train.indptr) + np.diff(split.valid.indptr) + np.diff(split.test.indptr))
        warm = np.flatnonzero(cold == 0)
        # every warm item, in the rows of users with data (not a dense users x items matrix)
        indptr = np.searchsorted(rows, np.arange(split.n_users + 1), side="left") * len(warm)
        warm_all = sp.csr_matrix((np.ones(len(rows) * len(warm), dtype=np.float32), np.tile(warm, len(rows)), indptr),
                                 shape=(split.n_users, split.n_items))
        views = {"cold-items": dataclasses.replace(split, test=cold_test),
                 "warm-items": dataclasses.replace(split, test=warm_test),
                 "cold-among-cold": dataclasses.replace(split, test=cold_test, valid=(split.valid + warm_all).tocsr())}
    groups = node_eval["groups"] if node_eval else activity_groups(split)
    out = {"features": feats, "groups": groups, "item_views": views}
    object.__setattr__(fed, "_eval_extras", out)
    return out
