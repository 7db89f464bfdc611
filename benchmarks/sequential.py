"""A sequential model's training round (SASRec, GRU4Rec) beside MF's, side by side in one run.

For each model: median seconds of a round computed directly (every node's train
function in this process) without DP and with user-level DP (each user's whole
update clipped on its node), and of the same DP round through Flower's
simulation engine.  Sequential models use 8 negatives per position and read the
last 50 items; MF its defaults.  ``gru4rec-steps`` is GRU4Rec's direct rounds with
the step-by-step recurrence (what ``vmap`` runs) instead of the fused ``torch.gru``.

    .venv/bin/python benchmarks/sequential.py --data ml-100k --rounds 4 --users-per-node 472
    .venv/bin/python benchmarks/sequential.py --data ../shared/data/ml-1m --rounds 3 --users-per-node 3019
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json

import torch

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation

from round_time import direct_round_seconds, flower_round_seconds  # noqa: E402  (same folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--users-per-node", type=int, default=472)
    ap.add_argument("--models", nargs="+", default=["mf", "sasrec", "gru4rec", "gru4rec-steps"])
    ap.add_argument("--no-flower", action="store_true", help="direct rounds only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label in args.models:
        name, steps = label.removesuffix("-steps"), label.endswith("-steps")
        extra = {} if name == "mf" else {"negatives": 8, "seq_len": 50}
        dp = FedConfig(data=args.data, model=name, num_server_rounds=args.rounds, users_per_node=args.users_per_node,
                       user_dp="client", user_noise_multiplier=1.0, user_clip=0.1, **extra)
        plain = dataclasses.replace(dp, user_dp="off", user_noise_multiplier=0.0)
        with step_by_step(steps):
            r = {"model": label, "direct": direct_round_seconds(plain, args.rounds),
                 "direct_dp": direct_round_seconds(dp, args.rounds),
                 "flower_dp": float("nan") if args.no_flower or steps else flower_round_seconds(dp)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    fed = load_federation(FedConfig(data=args.data, users_per_node=args.users_per_node))
    print(f"\n{args.data}: {fed.n_users} users on {fed.n_nodes} nodes; user-level DP (client clipping, noise 1.0); "
          f"median s/round over {args.rounds} rounds")
    print(f"{'model':>13} {'direct':>8} {'direct+DP':>10} {'Flower+DP':>10} {'DP/no DP':>9} {'x MF (DP)':>10}")
    mf = next((r["direct_dp"] for r in rows if r["model"] == "mf"), float("nan"))
    for r in rows:
        print(f"{r['model']:>13} {r['direct']:>8.3f} {r['direct_dp']:>10.3f} {r['flower_dp']:>10.3f} "
              f"{r['direct_dp'] / r['direct']:>9.2f} {r['direct_dp'] / mf:>10.1f}")


@contextlib.contextmanager
def step_by_step(on: bool):
    """GRU4Rec's step-by-step recurrence everywhere (``on``), as under ``vmap``."""
    import fedrec.models.sequential as seq

    saved = seq._transformed
    if on:
        seq._transformed = lambda: True
    try:
        yield
    finally:
        seq._transformed = saved


if __name__ == "__main__":
    main()
