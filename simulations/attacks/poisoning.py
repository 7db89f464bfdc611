"""Poisoning attacks as malicious Flower nodes.

An attack adds ``nodes`` SuperNodes to a simulation whose ClientApp it swaps
(:func:`fedrec_app.clients.app.make_client_app`, ``malicious=``): they host
``sybils`` fake users and answer the server's train messages with crafted
updates; the honest nodes run fedrec unchanged.  Every sybil's update goes
through the same **per-user stage** as an honest user's
(:func:`fedrec.engine.cohort.clipped_user_mean`: the row bounds ``row-norm`` /
``max-rows`` and the user-level clip of the run's config): it models the server
applying its per-user defences to each user's message, which in a cohort
simulation happens where the per-user updates are.  The attack code never
chooses whether it applies.

Attacks (``kind``):

``boost``
    Explicit boosting (Bhagoji et al. 2019): each sybil has a fake profile (the
    targets and ``filler`` items drawn by popularity), trains on it with fedrec's
    own engine and local settings, and multiplies its update by ``boost``.
``fedrecattack``
    FedRecAttack-style (Rong et al., ICDE 2022): the attacker knows a fraction
    ``public`` of the training interactions; each round it folds in approximate
    user vectors for the users they reveal against the current item table, and
    uploads, from every sybil, the gradient that lifts each target above those
    users' current K-th item (on the target rows only), scaled to norm ``boost``.

``ahum``
    A-hum-style (Rong et al., IJCAI 2022), with no data at all: each round the attacker
    draws ``synthetic`` users (vectors like a new user's), mines them into *hard* users
    for the targets (``hard_steps`` normalised gradient steps of half a vector's norm,
    each followed by a return to that norm, that push the targets down their ranking),
    then uploads, from every sybil, the gradient that lifts each target above those
    hard users' current K-th item (target rows only), scaled to norm ``boost``.
``disguise``
    Popularity disguise (after PipAttack, Zhang et al., WSDM 2022): the attacker knows
    which items are popular (from the ``public`` interactions) and uploads, from every
    sybil, the update that moves each target's rows toward the mean row of the
    ``popular`` most popular items, scaled to norm ``boost``: the targets take on what
    the model learnt of popular items.
``cluster``
    ClusterAttack-style untargeted degradation (after Yu et al., "Untargeted Attack against
    Federated Recommendation Systems via Poisonous Item Embeddings", KDD 2023): from the
    item tables every node receives, the attacker clusters the items' rows (every table's
    row of an item together: MF's vector and bias) into ``clusters`` groups (k-means, a few
    Lloyd steps) and uploads, from every sybil, the update that pulls every row toward its
    group's centre, scaled to norm ``boost``: collapsed rows stop telling
    items apart.  No target, no data: only the public item table.

``+inflate`` (after any attack, e.g. ``fedrecattack+inflate``)
    Sample-size inflation (after UA-FedRec, Yi et al., KDD 2023): the malicious
    nodes report the largest ``num-examples`` the server accepts (its per-node cap:
    the users one node can host) instead of their sybil count, to win weight in
    FedAvg's weighted mean.  A count above the cap is rejected with the reply.

Sybil updates do not use DP noise (an attacker does not add any); with
user-level DP the server's noise still applies to the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from fedrec.federated import protocol

__all__ = [
    "Attack", "ATTACKS", "ATTACK_OPTIONS", "DEFAULT_ATTACKS", "DEFENCES", "SERVERS", "cluster_pull",
    "pick_targets", "per_user_stage", "attack_cells", "run_attacks",
]

ATTACKS = ("boost", "fedrecattack", "ahum", "disguise", "cluster")
#: What an attack's name may add after ``+``.
ATTACK_OPTIONS = ("inflate",)
#: What `fedrec sweep attacks` runs without --attacks (the targeted attacks).
DEFAULT_ATTACKS = ("boost", "fedrecattack")


def pick_targets(train: sp.csr_matrix, n: int, *, seed: int) -> tuple[int, ...]:
    """``n`` target items drawn among the unpopular ones (bottom half by training count,
    at least one interaction): the items an attacker wants to promote."""
    pop = np.asarray(train.sum(0)).ravel()
    cand = np.flatnonzero(pop > 0)
    cand = cand[pop[cand] <= np.median(pop[cand])]
    return tuple(int(x) for x in np.sort(np.random.default_rng([seed, 91]).choice(cand, size=n, replace=False)))


@dataclass(frozen=True)
class Attack:
    """A poisoning attack run by ``nodes`` malicious SuperNodes (partitions from ``first_partition``)."""

    kind: str
    targets: tuple[int, ...]
    sybils: int
    first_partition: int
    nodes: int = 1
    boost: float = 10.0
    filler: int = 30
    public: float = 0.01
    top_k: int = 10
    fold_steps: int = 30
    clusters: int = 2
    inflate: bool = False
    synthetic: int = 256
    hard_steps: int = 10
    popular: int = 50

    @classmethod
    def named(cls, name: str, targets: tuple[int, ...], **kw) -> "Attack":
        """The attack called ``name``: a kind of :data:`ATTACKS`, with ``+inflate`` optionally."""
        kind, *options = name.split("+")
        bad = [o for o in options if o not in ATTACK_OPTIONS]
        if bad:
            raise ValueError(f"attack {name!r}: unknown option {bad[0]!r}; options: {', '.join(ATTACK_OPTIONS)}")
        return cls(kind, targets, inflate="inflate" in options, **kw)

    def __post_init__(self):
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; choose one of {ATTACKS}")
        if self.sybils < 1 or self.nodes < 1 or self.sybils < self.nodes:
            raise ValueError(f"need sybils >= nodes >= 1; got {self.sybils} sybils on {self.nodes} nodes")

    def sybils_of(self, partition: int) -> np.ndarray:
        """Indices (0..sybils-1) of the sybils hosted by ``partition``."""
        return np.array_split(np.arange(self.sybils), self.nodes)[partition - self.first_partition]

    # --- what a malicious node answers -------------------------------------
    def train(self, run_config, config: dict, global_params: dict[str, np.ndarray], partition: int):
        from fedrec.federated.federation import federated_model, load_federation
        from fedrec.federated.protocol import mechanism_of
        from fedrec.federated.node import node_config_of

        torch.set_num_threads(1)
        cfg = node_config_of(run_config, mechanism_of(config))
        fed = load_federation(cfg)  # the attacker's view: item count, popularity, public interactions
        model = federated_model(cfg, fed)
        server_round = int(config[protocol.SERVER_ROUND])
        mine = self.sybils_of(partition)
        params = {n: torch.as_tensor(v) for n, v in global_params.items()}
        if self.kind == "boost":
            releases = self._boost(cfg, fed, model, params, mine, server_round)
        elif self.kind == "cluster":
            releases = self._cluster(cfg, model, params, len(mine), server_round)
        elif self.kind == "ahum":
            releases = self._ahum(cfg, model, params, len(mine), server_round)
        elif self.kind == "disguise":
            releases = self._disguise(cfg, fed, model, params, len(mine))
        else:
            releases = self._fedrecattack(cfg, fed, model, params, len(mine), server_round)
        mean = per_user_stage(releases, model, params, cfg)
        k = len(mine)
        update = {n: (global_params[n] + k * v) if cfg.user_level else v for n, v in mean.items()}
        update = {n: np.asarray(v, dtype=np.float32) for n, v in update.items()}
        if cfg.aggregation == "itemwise":
            touched = np.zeros(model.n_items)
            for r in releases:
                touched += np.abs(r[model.table_names()[0]].numpy().reshape(model.n_items, -1)).sum(1) > 0
            update[protocol.ITEM_COUNTS] = (touched / k).astype(np.float32)
        claim = k
        if self.inflate:  # the most the server accepts: the users one node can host
            from fedrec_app.server.strategy import max_node_users

            claim = max_node_users(cfg.users_per_node, fed.n_users, fed.n_nodes + self.nodes)
        metrics = {protocol.NUM_EXAMPLES: claim, protocol.DECLINED: 0}  # the honest replies' keys, plausible values
        if not (cfg.dp or cfg.user_level):
            metrics[protocol.TRAIN_LOSS] = 0.5
        if cfg.dp:
            metrics[protocol.EPSILON] = [0.0] * k
        return update, metrics

    def _boost(self, cfg, fed, model, params, mine, server_round) -> list[dict[str, torch.Tensor]]:
        from fedrec.engine import train_cohort
        from fedrec.engine.cohort import LocalConfig

        pop = np.asarray(fed.split.train.sum(0)).ravel()
        p = pop / pop.sum()
        n_items = model.n_items
        rows = []
        for j in mine.tolist():
            rng = np.random.default_rng([cfg.seed, 93, j])
            filler = rng.choice(n_items, size=min(self.filler, n_items - len(self.targets)), replace=False, p=p)
            rows.append(np.unique(np.r_[list(self.targets), filler]))
        indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
        fake = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(rows), indptr),
                             shape=(len(rows), n_items))
        honest = LocalConfig(user_lr=cfg.user_lr, user_steps=cfg.user_steps, item_steps=cfg.item_steps,
                             negatives=cfg.negatives, user_l2=cfg.user_l2)
        local0 = model.init_local(np.arange(len(rows)) + 10_000_000, cfg.seed)
        out = []
        for j in range(len(rows)):  # one user at a time: its own release
            res = train_cohort(model, {n: torch.as_tensor(v[j:j + 1]) for n, v in local0.items()}, params, fake,
                               np.array([j]), honest, seed=cfg.seed + 7, server_round=server_round)
            out.append({n: v * self.boost for n, v in res.update.items()})
        return out

    def _every_sybil(self, release: dict[str, torch.Tensor], k: int) -> list[dict[str, torch.Tensor]]:
        """``release`` scaled to norm ``boost`` (all parameters together), sent by each of ``k`` sybils."""
        norm = float(torch.sqrt(sum((r.double() ** 2).sum() for r in release.values())))
        scale = self.boost / norm if norm > 0 else 0.0
        return [{n: r * scale for n, r in release.items()} for _ in range(k)]

    def _cluster(self, cfg, model, params, k, server_round) -> list[dict[str, torch.Tensor]]:
        release = {n: torch.zeros_like(v) for n, v in params.items()}
        tables = model.table_names()  # an item's row: all of its tables' rows together (MF: vector and bias)
        widths = [int(np.prod(params[t].shape[1:])) for t in tables]
        rows = torch.cat([params[t].reshape(model.n_items, -1) for t in tables], 1)
        pull = torch.split(cluster_pull(rows, self.clusters, seed=cfg.seed + server_round), widths, 1)
        for t, p in zip(tables, pull):
            release[t] = p.reshape(params[t].shape)
        return self._every_sybil(release, k)

    def _public(self, cfg, fed) -> sp.csr_matrix:
        """The training interactions the attacker knows: a fraction ``public`` of them."""
        train = fed.split.train.tocoo()
        pick = np.random.default_rng([cfg.seed, 95]).random(train.nnz) < self.public
        return sp.csr_matrix((np.ones(int(pick.sum()), np.float32), (train.row[pick], train.col[pick])),
                             shape=train.shape)

    def _fedrecattack(self, cfg, fed, model, params, k, server_round) -> list[dict[str, torch.Tensor]]:
        from fedrec.engine import train_cohort
        from fedrec.engine.cohort import LocalConfig

        public = self._public(cfg, fed)
        users = np.flatnonzero(np.diff(public.indptr) > 0)
        if not len(users) or not model.local_shapes:
            return [{n: torch.zeros_like(v) for n, v in params.items()} for _ in range(k)]
        fold = LocalConfig(user_lr=cfg.user_lr, user_steps=self.fold_steps - 1, item_steps=1, negatives=cfg.negatives)
        local0 = {n: torch.as_tensor(v) for n, v in model.init_local(users, cfg.seed + 1).items()}
        approx = train_cohort(model, local0, params, public, users, fold, seed=cfg.seed + 9,
                              server_round=server_round).local
        seen = (torch.as_tensor(np.repeat(np.arange(len(users)), np.diff(public[users].indptr))),
                torch.as_tensor(public[users].indices.astype(np.int64)))
        return self._every_sybil(self._lift_targets(model, params, approx, seen), k)

    def _ahum(self, cfg, model, params, k, server_round) -> list[dict[str, torch.Tensor]]:
        if not model.local_shapes:
            return [{n: torch.zeros_like(v) for n, v in params.items()} for _ in range(k)]
        ids = np.arange(self.synthetic) + 30_000_000 + self.synthetic * server_round  # fresh users every round
        local = {n: torch.as_tensor(v) for n, v in model.init_local(ids, cfg.seed + 3).items()}
        norms = {n: _row_norms(v) for n, v in local.items()}
        t = torch.as_tensor(self.targets)
        fixed = {n: v.detach() for n, v in params.items()}
        for _ in range(self.hard_steps):  # hard-user mining: the targets down each user's ranking
            leaves = {n: v.detach().requires_grad_(True) for n, v in local.items()}
            scores = model.score_users(leaves, fixed)
            gap = scores[:, t].mean(1) - scores.mean(1)
            grads = torch.autograd.grad(gap.sum(), list(leaves.values()))
            local = {}
            for (n, v), g in zip(leaves.items(), grads):
                w = (v - 0.5 * _per_row(norms[n] / _row_norms(g), g) * g).detach()  # a step of half the norm
                local[n] = w * _per_row(norms[n] / _row_norms(w), w)  # back at the user's own norm
        return self._every_sybil(self._lift_targets(model, params, local, None), k)

    def _lift_targets(self, model, params, users_local, seen) -> dict[str, torch.Tensor]:
        """The release that lifts every target above the K-th item of the users
        ``users_local`` (their ``seen`` items masked), on the target rows only."""
        leaves = {n: v.detach().clone().requires_grad_(True) for n, v in params.items()}
        scores = model.score_users(users_local, leaves)  # (u, n_items)
        with torch.no_grad():
            masked = scores.detach().clone()
            if seen is not None:
                masked[seen] = -np.inf
            kth = masked.topk(self.top_k, dim=1).values[:, -1]
        t = torch.as_tensor(self.targets)
        loss = torch.nn.functional.softplus(kth[:, None] - scores[:, t]).mean()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        release = {}
        for (n, v), g in zip(leaves.items(), grads):
            g = torch.zeros_like(v) if g is None else g.detach()
            release[n] = -g * self._target_rows(v) if n in model.table_names() else torch.zeros_like(g)
        return release

    def _target_rows(self, table: torch.Tensor) -> torch.Tensor:
        """A 0/1 mask of the target rows, shaped to broadcast against ``table``."""
        keep = torch.zeros(table.shape[0], dtype=table.dtype)
        keep[torch.as_tensor(self.targets)] = 1.0
        return _per_row(keep, table)

    def _disguise(self, cfg, fed, model, params, k) -> list[dict[str, torch.Tensor]]:
        counts = np.asarray(self._public(cfg, fed).sum(0)).ravel()
        popular = torch.as_tensor(np.argsort(-counts, kind="stable")[: self.popular])
        release = {n: torch.zeros_like(v) for n, v in params.items()}
        for n in model.table_names():
            v = params[n]
            release[n] = (v[popular].mean(0, keepdim=True) - v) * self._target_rows(v)
        return self._every_sybil(release, k)


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of ``x`` (``(n, ...)``), at least 1e-12."""
    return x.reshape(len(x), -1).norm(dim=1).clamp(min=1e-12)


def _per_row(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``w`` (``(n,)``) shaped to scale the rows of ``like``."""
    return w.reshape((-1,) + (1,) * (like.dim() - 1))


def cluster_pull(table: torch.Tensor, clusters: int, *, seed: int, steps: int = 10) -> torch.Tensor:
    """The update that moves every row of ``table`` (``(n, ...)``) to the centre of its
    k-means group (``clusters`` groups, ``steps`` Lloyd iterations from rows drawn with
    ``seed``): ``centre[group] - row``."""
    x = table.reshape(table.shape[0], -1).double()
    rng = np.random.default_rng([seed, 97])
    centres = x[torch.as_tensor(rng.choice(len(x), size=min(clusters, len(x)), replace=False))].clone()
    for _ in range(steps):
        group = torch.cdist(x, centres).argmin(1)
        for c in range(len(centres)):
            if (group == c).any():
                centres[c] = x[group == c].mean(0)
    group = torch.cdist(x, centres).argmin(1)
    return (centres[group] - x).reshape(table.shape).to(table.dtype)


def per_user_stage(releases: list[dict[str, torch.Tensor]], model, params: dict[str, torch.Tensor], cfg) -> dict:
    """The mean of the users' ``releases`` after the run's per-user stage (row bounds and
    the user-level clip, :func:`fedrec.engine.cohort.clipped_user_mean`), as numpy."""
    from fedrec.engine.cohort import LocalConfig, clipped_user_mean

    k, n_items = len(releases), model.n_items
    tables = model.table_names()
    local = LocalConfig.from_settings(cfg)
    if not local.per_user:
        return {n: (sum(r[n] for r in releases) / k).numpy() for n in params}
    keys, r_tab = [], {t: [] for t in tables}
    for j, r in enumerate(releases):
        rows = torch.zeros(n_items, dtype=torch.bool)
        for t in tables:
            rows |= r[t].reshape(n_items, -1).abs().sum(1) > 0
        idx = torch.nonzero(rows).ravel()
        keys.append(j * n_items + idx)
        for t in tables:
            r_tab[t].append(-r[t][idx])  # clipped_user_mean takes gradients (-release)
    keys = torch.cat(keys)
    r_tab = {t: torch.cat(v) for t, v in r_tab.items()}
    r_den = {d: torch.stack([-r[d] for r in releases]) for d in params if d not in tables}
    out = clipped_user_mean(r_tab, r_den, keys, k, n_items, local, params, noise_std=None, generator=None)
    return {n: v.numpy() for n, v in out.items()}


# --------------------------------------------------------------------------
# `fedrec sweep attacks`: attack x defence x malicious fraction x seed
# --------------------------------------------------------------------------

#: Defences as config settings (composable server pieces; see README).  ``row-bounds``: each
#: user's item rows clipped to 0.05 (above the 99th percentile, 0.034, of honest MF users' rows
#: in ML-100K's first round) and at most 500 rows per user (above the 90th percentile, 415);
#: ``adam-eps``: the server's Adam with epsilon 1e-4 and learning rate 1e-2 (tuned on ML-1M, seed 0);
#: ``user-dp``: user-level DP-FedAvg at epsilon 8 (the study's preset); both composed.
DEFENCES: dict[str, dict] = {
    "none": {},
    "row-bounds": dict(row_norm=0.05, max_rows=500),
    # Adam's epsilon as a floor: rows whose mean update per coordinate is far below it (the bounded
    # pushes of a few sybils on items few honest users train) move in proportion to it, not by a full
    # normalised step; a larger server learning rate keeps the well-trained rows' pace
    "adam-eps": dict(server_eps=1e-4, server_lr=1e-2),
    "row-bounds+adam-eps": dict(row_norm=0.05, max_rows=500, server_eps=1e-4, server_lr=1e-2),
    # Flower's robust strategies over the nodes' updates, at the node size of a small device
    # cohort (the honest users and the sybils alike, so that a malicious node is one of many)
    **{rule: dict(aggregation=rule, users_per_node=16) for rule in ("median", "trimmed-mean", "krum", "multikrum",
                                                                   "bulyan")},
}


#: The server every cell runs (``--server``): ``adam`` is fedrec's default (server Adam, learning
#: rate 5e-3); ``fedavg`` is plain FedAvg, the server of the attack papers (the mean update applied
#: by SGD; with learning rate 20 MF without attack reaches a clean test NDCG@10 of 0.040 ± 0.003 on
#: ML-100K in 10 rounds, 3 seeds; README, Robustness).  Adam bounds each coordinate's step by its
#: learning rate whatever the sybils send, which is why an attack needs more rounds against it.
SERVERS: dict[str, dict] = {
    "adam": {},
    "fedavg": dict(server_opt="sgd", server_lr=20.0),
}


def _defences() -> dict[str, dict]:
    from fedrec_app.simulations.studies.study import USER_PRESET

    user = {**{k: v for k, v in USER_PRESET.items() if k != "prior_noise"}, "user_target_epsilon": 8.0}
    return {**DEFENCES, "user-dp": user, "row-bounds+user-dp": {**DEFENCES["row-bounds"], **user}}


def attack_cells(data: str, *, attacks=DEFAULT_ATTACKS, defences=("none", "row-bounds", "user-dp"),
                 fractions=(0.01, 0.05), rounds: int = 30, n_targets: int = 5,
                 server: str = "adam") -> list[tuple]:
    """``(Cell, Attack | None)`` pairs: each defence without attack, and each attack x
    malicious fraction under it; the targets are the same unpopular items everywhere.
    ``server``: a :data:`SERVERS` key, the server optimiser of every cell."""
    from dataclasses import replace

    from fedrec.config import FedConfig
    from fedrec.federated.federation import load_federation
    from fedrec_app.simulations.studies.runner import Cell
    from fedrec_app.simulations.studies.study import _users_per_node

    fed = load_federation(FedConfig(data=data))
    targets = pick_targets(fed.split.train, n_targets, seed=0)
    if server not in SERVERS:
        raise ValueError(f"--server {server}: choose from {', '.join(SERVERS)}")
    table = _defences()
    clash = [d for d in defences if server != "adam" and {"server_opt", "server_lr", "server_eps"} & set(table[d])]
    if clash:
        raise ValueError(f"--defences {' '.join(clash)} set the server's Adam: not with --server {server}")
    base = FedConfig(data=data, users_per_node=_users_per_node(fed.n_users), num_server_rounds=rounds,
                     eval_every=rounds, patience=0, exposure_items=",".join(map(str, targets)), **SERVERS[server])
    out = []
    for d in defences:
        cfg = replace(base, **table[d])
        sybils = {f: max(1, round(f * fed.n_users)) for f in fractions}
        nodes = {f: -(-n // cfg.users_per_node) for f, n in sybils.items()}  # sybils hosted like honest users
        if cfg.robust_aggregation:  # the rule tolerates the malicious nodes of the largest fraction
            cfg = replace(cfg, byzantine_nodes=max([1, *nodes.values()]))
        honest = load_federation(cfg).n_nodes  # the sybils' partitions come after the honest nodes
        out.append((Cell(f"clean-{d}", cfg, {"attack": "none", "defence": d, "fraction": 0.0}), None))
        for a in attacks:
            for f in fractions:
                att = Attack.named(a, targets, sybils=sybils[f], first_partition=honest, nodes=nodes[f])
                out.append((Cell(f"{a}-{f:g}-{d}", cfg, {"attack": a, "defence": d, "fraction": f,
                                                         "sybils": sybils[f]}), att))
    return out


def run_attacks(out, *, data: str = "ml-latest-small", attacks=DEFAULT_ATTACKS,
                defences=("none", "row-bounds", "user-dp"),
                fractions=(0.01, 0.05), seeds: int = 1, rounds: int = 30, server: str = "adam", command: str = "",
                overrides: dict | None = None, say=print):
    """Run (or resume) the attack sweep; write ``results.csv``, ``attacks.png`` and ``report.md``."""
    import time
    from pathlib import Path

    from fedrec_app.simulations.studies.runner import run_cells, write_rows
    from fedrec_app.simulations.simulate import simulate

    t0 = time.perf_counter()
    out = Path(out)
    pairs = attack_cells(data, attacks=attacks, defences=defences, fractions=fractions, rounds=rounds, server=server)
    by_dir = {f"{c.name}-seed{s}": a for c, a in pairs for s in range(seeds)}

    def run(cfg):  # a fresh Ray per run: actors kept up between runs keep the first run's ClientApp
        return simulate(cfg, attack=by_dir[Path(cfg.out).name], overwrite=True)

    say(f"attacks on {data}: {len(pairs)} cells x {seeds} seeds")
    rows = run_cells([c for c, _ in pairs], list(range(seeds)), out, run=run, overrides=overrides, say=say)
    write_rows(out, rows)
    return write_attack_report(out, rows, data=data, seeds=seeds, rounds=rounds, seconds=time.perf_counter() - t0,
                               command=command, targets=pairs[0][0].cfg.exposure_items, server=server)


def write_attack_report(out, rows: list[dict], *, data: str, seeds: int, rounds: int, seconds: float, command: str,
                        targets: str, server: str = "adam"):
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedrec_app.simulations.report.plots import mean_sd

    defences = list(dict.fromkeys(r["defence"] for r in rows))
    lines_ = [(a, f) for a, f in dict.fromkeys((r["attack"], r["fraction"]) for r in rows)]

    def cell(a, f, d, key):
        return mean_sd([r.get(key) for r in rows if (r["attack"], r["fraction"], r["defence"]) == (a, f, d)])

    grid = [[cell(a, f, d, "test_er@10")[0] for d in defences] for a, f in lines_]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(defences), 1.3 + 0.45 * len(lines_)))
    im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=max(0.05, max(max(g) for g in grid)))
    ax.set_xticks(range(len(defences)), defences, fontsize=8, rotation=20, ha="right")
    ax.set_yticks(range(len(lines_)), [f"{a} {f:g}" for a, f in lines_], fontsize=8)
    for i, g in enumerate(grid):
        for j, v in enumerate(g):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.3f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"Target exposure ER@10 after {rounds} rounds ({data})", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(out / "attacks.png", dpi=120)
    plt.close(fig)

    def f_(m):
        return "–" if math.isnan(m[0]) else (f"{m[0]:.4f} ± {m[1]:.4f}" if seeds > 1 else f"{m[0]:.4f}")

    lines = [f"# Poisoning attacks on {data}", "",
             f"Command: `{command}` ({seconds / 60:.1f} min; {seeds} seed(s)).", "",
             f"Targets (item indices): {targets} — unpopular items. After {rounds} rounds: exposure ER@5 / ER@10 of "
             "the targets (share of the users who have not seen a target with it in their full-ranking top-K, mean "
             "over targets) and clean test NDCG@10. Sybils run as extra Flower nodes; each sybil's update goes "
             "through the same per-user stage as an honest user's (the defence). Server: "
             + ("fedrec's Adam (learning rate 5e-3 unless the defence sets it)" if server == "adam" else
                f"{server} ({', '.join(f'{k} {v}' for k, v in SERVERS[server].items())})") + ".", "",
             "| attack | malicious | defence | ER@5 | ER@10 | test NDCG@10 |", "|---|---|---|---|---|---|"]
    for a, f in lines_:
        for d in defences:
            lines.append(f"| {a} | {f:.1%} | {d} | {f_(cell(a, f, d, 'test_er@5'))} "
                         f"| {f_(cell(a, f, d, 'test_er@10'))} "
                         f"| {f_(cell(a, f, d, 'test_ndcg@10'))} |")
    lines += ["", "![target exposure](attacks.png)", "", "Per-run results: `results.csv`; runs under `runs/`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
