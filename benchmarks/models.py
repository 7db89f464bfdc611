"""Every federated model through Flower with interaction-level DP, side by side in one run,
and the generic engine against MF's fast path.

Prints, for each shipped model, the median seconds of a training round through
Flower's simulation engine (DP-SGD: noise multiplier, sample rate below) and of
the same computation called directly; then, for MF, the median seconds of one
node's round through the generic engine and through the registered fast path,
and their ratio (goal: generic / fast at most 1.5).

    .venv/bin/python benchmarks/models.py --data ml-100k --rounds 8 --users-per-node 472
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.federated.federation import init_global_params, load_federation
from fedrec.privacy.calibration import resolved

from round_time import direct_round_seconds, flower_round_seconds  # noqa: E402  (same folder)


def engine_seconds(cfg: FedConfig, rounds: int) -> tuple[float, float, float]:
    """Node 0's training round through the fast path and through the generic engine,
    side by side: each round runs both (in alternating order, each on its own copy of
    the node's state).  Returns the median seconds of each (first round left out) and
    the median of the per-round ratios generic / fast, which a shared machine's load
    moves far less than either time."""
    fed = load_federation(cfg)
    cfgs = {"fast": resolved(dataclasses.replace(cfg, engine="auto")),
            "generic": resolved(dataclasses.replace(cfg, engine="generic"))}
    params = init_global_params(cfgs["fast"], fed)
    states = {k: node.load_state({}, fed, 0, c) for k, c in cfgs.items()}
    times: dict[str, list[float]] = {"fast": [], "generic": []}
    for r in range(1, rounds + 1):
        for k in (("fast", "generic") if r % 2 else ("generic", "fast")):
            t = time.perf_counter()
            node.train_round(cfgs[k], fed, 0, states[k], global_params=params, server_round=r)
            times[k].append(time.perf_counter() - t)
    ratios = [g / f for f, g in zip(times["fast"][1:], times["generic"][1:])]
    return statistics.median(times["fast"][1:]), statistics.median(times["generic"][1:]), statistics.median(ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--users-per-node", type=int, default=472)
    ap.add_argument("--models", nargs="+", default=["mf", "gmf", "mlp", "neumf", "two-tower"])
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        cfg = FedConfig(data=args.data, model=name, dim=32 if name != "mf" else 64, num_server_rounds=args.rounds,
                        users_per_node=args.users_per_node, noise_multiplier=args.noise_multiplier,
                        sample_rate=args.sample_rate)
        r = {"model": name, "direct_dp": direct_round_seconds(cfg, args.rounds), "flower_dp": flower_round_seconds(cfg)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    mf = FedConfig(data=args.data, num_server_rounds=args.rounds, users_per_node=args.users_per_node)
    ratios = {}
    for label, c in (("no DP", mf), ("DP", dataclasses.replace(mf, noise_multiplier=args.noise_multiplier,
                                                                  sample_rate=args.sample_rate))):
        ratios[label] = engine_seconds(c, max(args.rounds, 20))
    print(f"\n{args.data}: {load_federation(mf).n_users} users, {args.users_per_node} per node; interaction-level DP "
          f"noise {args.noise_multiplier}, sample rate {args.sample_rate}; median s/round over {args.rounds} rounds")
    print(f"{'model':>10} {'direct+DP':>10} {'Flower+DP':>10} {'Flower/direct':>13}")
    for r in rows:
        print(f"{r['model']:>10} {r['direct_dp']:>10.3f} {r['flower_dp']:>10.3f} "
              f"{r['flower_dp'] / r['direct_dp']:>13.2f}")
    print(f"\nMF, one node of {args.users_per_node} users: generic engine vs fast path, each round both "
          f"(goal: ratio <= 1.5; median of per-round ratios)")
    for label, (fast, slow, ratio) in ratios.items():
        print(f"{label:>6}: fast {fast:.3f} s, generic {slow:.3f} s, generic/fast {ratio:.2f}x")


if __name__ == "__main__":
    main()
