"""Opacus's per-sample machinery against fedrec's cohort engine, side by side in one run.

The same DP-SGD step (one interaction-level step: per-sample clipping over every
parameter a sample touches, noise, the user's own denominator) for the same
users of ML-100K, computed three ways:

- Opacus 1.6 ghost clipping (``grad_sample_mode="ghost"``), one ``make_private``
  model per user (DP-SGD clips and divides per user), MF as embeddings;
- Opacus 1.6 per-sample gradients by hooks (``grad_sample_mode="hooks"``), same;
- fedrec's engine on the cohort: the generic ``torch.func`` path and MF's fast path
  (after one warm-up call: torch.func's first call costs about 2 s once per process).

Prints seconds per user-step and the ratios (Opacus's include building the
private model per user, which per-user clipping and denominators need).

Models with shared dense layers (GMF's output vector, the MLP towers of MLP and
NeuMF, the two-tower's item tower): the same release step of the whole cohort with
the layers' per-sample gradients from Opacus's registered samplers (``hooks``),
its per-sample norms by ghost clipping (``ghost``, then a second, clip-weighted
backward, as Opacus's fast gradient clipping does) or its ``functorch`` mode,
against the engine's ``torch.func`` pass; each sample's user vectors and item
rows are gathered copies, so their per-sample gradients are plain autograd in
every variant (Opacus's embedding samplers would materialise a whole table per
sample). Each line prints the largest difference of its update from the
engine's, relative to the update's scale: the variants compute the same thing.

    .venv/bin/python benchmarks/opacus_vs_engine.py --users 64
    .venv/bin/python benchmarks/opacus_vs_engine.py --users 943 --models mlp neumf
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from torch import nn

from fedrec.config import FedConfig
from fedrec.engine import LocalConfig, cohort_samples, train_cohort
from fedrec.engine.cohort import _bc, _sq, sample_mask
from fedrec.federated.federation import build_model, load_federation
from fedrec.models import FedMF


class _UserMF(nn.Module):
    """One user's MF as Opacus sees it: scores x = s(pos) - s(neg) of its samples."""

    def __init__(self, p, q, b):
        super().__init__()
        self.user = nn.Embedding(1, p.shape[0])
        self.item = nn.Embedding(*q.shape)
        self.bias = nn.Embedding(q.shape[0], 1)
        with torch.no_grad():
            self.user.weight.copy_(p[None])
            self.item.weight.copy_(q)
            self.bias.weight.copy_(b[:, None])

    def forward(self, x):
        pu = self.user(torch.zeros_like(x[:, 0]))
        e, c = self.item(x.contiguous()), self.bias(x.contiguous())[..., 0]  # each table used once (no tying)
        return ((pu * (e[:, 0] - e[:, 1])).sum(-1) + c[:, 0] - c[:, 1])[:, None]


def opacus_seconds(mode: str, p, q, b, train, users, cfg) -> float:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    t = time.perf_counter()
    for j, u in enumerate(users):
        _, _, items = cohort_samples(train, np.array([u]), 1, seed=0, server_round=1, exclude_positives=False)
        x = torch.as_tensor(items)
        model = _UserMF(p[j], q, b)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        loader = DataLoader(TensorDataset(x, torch.ones(len(x), 1)), batch_size=len(x))
        crit = nn.BCEWithLogitsLoss()  # BCE(x, 1) = softplus(-x): BPR
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader, criterion=crit,
                                               noise_multiplier=cfg.noise_multiplier, max_grad_norm=cfg.max_grad_norm,
                                               poisson_sampling=False, grad_sample_mode=mode)
        model, opt = out[0], out[1]
        crit = out[2] if mode == "ghost" else crit
        xb, yb = next(iter(out[-1]))
        opt.zero_grad()
        crit(model(xb), yb).backward()
        opt.step()
    return (time.perf_counter() - t) / len(users)


# ---- dense towers: the engine against Opacus's per-sample machinery for the shared layers ----

class _Layers(nn.Module):
    """A model's shared (dense) parameters as the torch layers Opacus has samplers for
    (``nn.Linear``); ``forward(local, rows)`` is the model's per-sample loss with each
    sample's user vectors and item rows as inputs (one copy per sample, so their
    per-sample gradients are plain autograd)."""

    def __init__(self, name: str, model, params: dict[str, torch.Tensor]):
        super().__init__()
        self.name, self.model = name, [model]
        tower = {k[6:]: v for k, v in params.items() if k.startswith("tower.")}
        if tower:
            self.tower = copy.deepcopy(model.tower)
            self.tower.load_state_dict(tower)
        if "output.weight" in params:  # GMF's and NeuMF's bias-free output layer
            self.output = nn.Linear(params["output.weight"].shape[1], 1, bias=False)
            with torch.no_grad():
                self.output.weight.copy_(params["output.weight"])

    def grads(self) -> dict[str, torch.nn.Parameter]:
        """The layers' parameters under the model's global keys."""
        out = {"tower." + k: p for k, p in self.tower.named_parameters()} if hasattr(self, "tower") else {}
        if hasattr(self, "output"):
            out["output.weight"] = self.output.weight
        return out

    def forward(self, loc: dict, rows: dict) -> torch.Tensor:
        n = self.name
        if n == "gmf":
            s = self.output(rows["item_embedding"] * loc["user"][:, None]).squeeze(-1)
        elif n == "mlp":
            q = rows["item_embedding"]
            s = self.tower(torch.cat([loc["user"][:, None].expand(-1, q.shape[1], -1), q], -1)).squeeze(-1)
        elif n == "neumf":
            qm = rows["item_embedding_mlp"]
            mlp = torch.relu(self.tower(torch.cat([loc["user_mlp"][:, None].expand(-1, qm.shape[1], -1), qm], -1)))
            s = self.output(torch.cat([rows["item_embedding"] * loc["user"][:, None], mlp], -1)).squeeze(-1)
        elif n == "two-tower":
            v = rows["item_embedding"] + self.tower(rows["item_features"])
            d = v.shape[-1] - 1
            return torch.nn.functional.softplus(_two_tower_scores(v, loc["user"], d)).mean(-1)
        else:
            raise ValueError(n)
        if "item_bias" in rows:
            s = s + rows["item_bias"]
        return torch.nn.functional.softplus(s[:, 1:] - s[:, :1]).mean(-1)  # the protocol's BPR over negatives


def _two_tower_scores(v, user, d):
    s = (v[..., :d] * user[:, None]).sum(-1) + v[..., d]
    return s[:, 1:] - s[:, :1]


def opacus_tower_step(name, model, local, params, train, users, cfg, mode: str):
    """One DP-SGD release step of the cohort (noise aside) with the shared layers'
    per-sample gradients (``hooks``, ``functorch``) or norms (``ghost``, then a second,
    clip-weighted backward) from Opacus; the rows' and user vectors' per-sample
    gradients from autograd.  Returns the update in the engine's convention."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    k = len(users)
    owner, slot, items = cohort_samples(train, users, cfg.negatives, seed=0, server_round=1, exclude_positives=False)
    denom = torch.as_tensor(cfg.sample_rate * np.bincount(owner, minlength=k), dtype=torch.float32)
    take = np.flatnonzero(sample_mask(0, 1, users[owner], slot, 0, cfg.sample_rate))
    o, it = torch.as_tensor(owner[take]), torch.as_tensor(items[take])
    tables, _ = model.split_params(params)
    learn = set(model.table_names())
    rows = {t: v[it].detach().requires_grad_(t in learn) for t, v in tables.items()}
    loc = {n: v[o].detach().requires_grad_(True) for n, v in local.items()}
    net = _Layers(name, model, params)
    if mode == "ghost":
        gsm = GradSampleModuleFastGradientClipping(net, batch_first=True, loss_reduction="sum",
                                                   max_grad_norm=cfg.max_grad_norm, use_ghost_clipping=True)
    else:
        gsm = GradSampleModule(net, batch_first=True, loss_reduction="sum", force_functorch=mode == "functorch")
    layers = net.grads()
    leaves = [*loc.values(), *(rows[t] for t in learn)]
    loss = gsm(loc, rows)
    loss.sum().backward(retain_graph=mode == "ghost")
    sq = sum(_sq(x.grad) for x in leaves)
    if mode == "ghost":
        sq = sq + sum(p._norm_sample.double() ** 2 for p in layers.values())
    else:
        sq = sq + sum(_sq(p.grad_sample) for p in layers.values())
    w = torch.clamp(cfg.max_grad_norm / (sq.sqrt() + 1e-12), max=1.0).float()
    c = w / denom[o]
    update = {}
    if mode == "ghost":  # second pass: the clip-weighted loss, hooks off
        gsm.disable_hooks()
        for x in (*leaves, *layers.values()):
            x.grad = None
        (loss * c.detach()).sum().backward()
        for key, p in layers.items():
            update[key] = p.grad
        rgrad = {t: rows[t].grad for t in learn}
    else:
        for key, p in layers.items():
            update[key] = torch.einsum("n,n...->...", c, p.grad_sample)
        rgrad = {t: rows[t].grad * _bc(c, rows[t].grad) for t in learn}
    for t in learn:
        acc = torch.zeros_like(params[t])
        acc.index_add_(0, it.reshape(-1), rgrad[t].reshape((-1,) + rgrad[t].shape[2:]))
        update[t] = acc
    return {key: -v / k for key, v in update.items()}


ENGINE_FUNC = "engine, torch.func per-sample"


def tower_rows(name, fed, users, dim, repeats):
    """Seconds per user-step of the engine and of the Opacus hybrids for model ``name``,
    and the largest difference between their updates (noise 1e-12: the same computation)."""
    train = fed.split.train
    model = build_model(name, fed.dataset, dim=dim)
    g = torch.Generator().manual_seed(7)
    params = {k: torch.as_tensor(v) + 0.05 * torch.randn(v.shape, generator=g)
              for k, v in model.global_params().items()}
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    cfg = LocalConfig(user_steps=0, item_steps=1, negatives=1, noise_multiplier=1e-12, max_grad_norm=0.1,
                      sample_rate=1.0)
    out = {}
    for ghost in (False, True):
        train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=True, ghost_norms=ghost)
        t = time.perf_counter()
        for _ in range(repeats):
            upd = train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=True,
                               ghost_norms=ghost).update
        sec = (time.perf_counter() - t) / repeats / len(users)
        if not ghost:
            ref = upd
        diff = max(float((upd[key] - ref[key]).abs().max()) for key in upd)
        scale = max(float(ref[key].abs().max()) for key in upd)
        out["engine, ghost norms (default)" if ghost else ENGINE_FUNC] = (sec, diff / scale)
    for mode in ("hooks", "ghost", "functorch"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opacus_tower_step(name, model, local, params, train, users, cfg, mode)  # warm-up
            t = time.perf_counter()
            for _ in range(repeats):
                upd = opacus_tower_step(name, model, local, params, train, users, cfg, mode)
        sec = (time.perf_counter() - t) / repeats / len(users)
        diff = max(float((upd[key] - ref[key]).abs().max()) for key in upd)
        scale = max(float(ref[key].abs().max()) for key in upd)
        out[f"Opacus {mode} for the layers"] = (sec, diff / scale)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64, help="MF's dimension")
    ap.add_argument("--tower-dim", type=int, default=32, help="dimension of the models with shared layers")
    ap.add_argument("--models", nargs="+", default=["mf", "gmf", "mlp", "neumf", "two-tower"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # Opacus's hooks warn at every backward
    fed = load_federation(FedConfig(data=args.data))
    train = fed.split.train
    users = np.flatnonzero(np.diff(train.indptr) > 0)[: args.users]
    if "mf" in args.models:
        model = FedMF(train.shape[1], dim=args.dim)
        params = {k: torch.as_tensor(v) for k, v in model.global_params().items()}
        local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
        cfg = LocalConfig(user_steps=0, item_steps=1, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0)
        rows = {}
        variants = {"engine, MF fast path": dict(generic=False),
                    "engine, generic (batched autograd)": dict(generic=True),
                    "engine, generic (torch.func)": dict(generic=True, ghost_norms=False)}
        for label, kw in variants.items():
            train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, **kw)  # warm-up
            t = time.perf_counter()
            for _ in range(args.repeats):
                train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, **kw)
            rows[label] = (time.perf_counter() - t) / args.repeats / len(users)
        for mode in ("ghost", "hooks"):
            rows[f"Opacus {mode}, one model per user"] = opacus_seconds(mode, local["user"], params["item_embedding"],
                                                                        params["item_bias"], train, users, cfg)
        base = rows["engine, generic (torch.func)"]
        print(f"{args.data}: one DP-SGD step of {len(users)} users (MF, dim {args.dim}, {train.shape[1]} items)")
        for k, v in rows.items():
            print(f"{k:>36}: {1e3 * v:8.3f} ms per user-step  ({v / base:6.2f}x the generic engine)")
    towers = [m for m in args.models if m != "mf"]
    if towers:
        print(f"\n{args.data}: one DP-SGD step of {len(users)} users, dim {args.tower_dim}; the shared layers' "
              "per-sample gradients (or norms) by the engine or by Opacus, the rows' by autograd; relative "
              "difference of the updates")
    for name in towers:
        rows = tower_rows(name, fed, users, args.tower_dim, args.repeats)
        base = rows[ENGINE_FUNC][0]
        for k, (v, diff) in rows.items():
            print(f"{name:>9} {k:>31}: {1e3 * v:8.3f} ms per user-step  ({v / base:6.2f}x the engine)  diff {diff:.1e}")


if __name__ == "__main__":
    main()
