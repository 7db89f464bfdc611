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

    .venv/bin/python benchmarks/opacus_vs_engine.py --users 64
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from torch import nn

from fedrec.config import FedConfig
from fedrec.engine import LocalConfig, cohort_samples, train_cohort
from fedrec.federation import load_federation
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fed = load_federation(FedConfig(data=args.data))
    train = fed.split.train
    users = np.flatnonzero(np.diff(train.indptr) > 0)[: args.users]
    model = FedMF(train.shape[1], dim=args.dim)
    params = {k: torch.as_tensor(v) for k, v in model.global_params().items()}
    local = {k: torch.as_tensor(v) for k, v in model.init_local(users, seed=0).items()}
    cfg = LocalConfig(user_steps=0, item_steps=1, noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=1.0)
    rows = {}
    for generic in (False, True):
        train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=generic)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            train_cohort(model, local, params, train, users, cfg, seed=0, server_round=1, generic=generic)
        rows["engine, generic (torch.func)" if generic else "engine, MF fast path"] = (time.perf_counter() - t) / 3 / len(users)
    for mode in ("ghost", "hooks"):
        rows[f"Opacus {mode}, one model per user"] = opacus_seconds(mode, local["user"], params["item_embedding"],
                                                                    params["item_bias"], train, users, cfg)
    base = rows["engine, generic (torch.func)"]
    print(f"{args.data}: one DP-SGD step of {len(users)} users (MF, dim {args.dim}, {train.shape[1]} items)")
    for k, v in rows.items():
        print(f"{k:>34}: {1e3 * v:8.3f} ms per user-step  ({v / base:6.2f}x the generic engine)")


if __name__ == "__main__":
    main()
