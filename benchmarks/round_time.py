"""Seconds per federated round, side by side in one run: direct calls vs Flower's
simulation engine, with and without interaction-level DP, for several cohort sizes.

Prints the ratios the performance issue asks for:
  DP overhead     = Flower round with DP / Flower round without DP
  Flower overhead = Flower round / the same node computations called directly in one process
plus seconds per round and peak memory.

    .venv/bin/python benchmarks/round_time.py --data ml-100k --rounds 12 --users-per-node 472 64

Each path is measured ``--repeats`` times (direct, then Flower, in turn): the printed
seconds and ratios are medians over the repeats, the Flower overhead's also per repeat.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec.federated.inprocess import run_rounds
from fedrec.flower_compat import reuse_ray
from fedrec.privacy.calibration import resolved
from fedrec_app.simulations.simulate import simulate


def direct_round_seconds(cfg: FedConfig, rounds: int) -> float:
    """Median seconds of a round run in this process without Flower
    (:func:`fedrec.federated.inprocess.run_rounds`: every node's round, then the server's
    weighted mean and optimiser step, as the strategy does): the floor that Flower's
    engine is compared with."""
    fed = load_federation(resolved(cfg))
    run, times = None, []
    for _ in range(rounds):
        t = time.perf_counter()
        run = run_rounds(cfg, fed, rounds=1, start=run)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:] if len(times) > 1 else times)


def flower_round_seconds(cfg: FedConfig) -> float:
    """Median seconds of the training rounds through Flower (round 1, which starts
    Ray, and the final evaluation round are left out)."""
    with tempfile.TemporaryDirectory() as d:
        cfg = FedConfig(**{**cfg.__dict__, "out": d, "eval_every": 10_000})
        simulate(cfg)
        rows = [json.loads(x) for x in (Path(d) / "rounds.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows[1:-1] or rows[1:] or rows]  # fewer than 3 rounds: what there is
    return statistics.median(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--users-per-node", type=int, nargs="+", default=[472, 64])
    ap.add_argument("--noise-multiplier", type=float, default=1.0)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3,
                    help="measure each path this many times, direct and Flower in turn (a shared machine's speed "
                         "drifts over minutes): seconds and ratios are the medians of the repeats' (default: 3)")
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"--repeats {args.repeats}: must be at least 1")
    rows = []
    for upn in args.users_per_node:
        base = FedConfig(data=args.data, num_server_rounds=args.rounds, users_per_node=upn)
        dp = FedConfig(**{**base.__dict__, "noise_multiplier": args.noise_multiplier, "sample_rate": args.sample_rate})
        reps = []
        with reuse_ray():  # Ray starts once for the repeats
            for _ in range(args.repeats):  # each ratio from measurements taken one after the other
                m = {"direct_nodp": direct_round_seconds(base, args.rounds), "flower_nodp": flower_round_seconds(base),
                     "direct_dp": direct_round_seconds(dp, args.rounds), "flower_dp": flower_round_seconds(dp)}
                m.update(dp_overhead=m["flower_dp"] / m["flower_nodp"],
                         flower_overhead_dp=m["flower_dp"] / m["direct_dp"],
                         flower_overhead_nodp=m["flower_nodp"] / m["direct_nodp"])
                reps.append(m)
                print(json.dumps({"users_per_node": upn, "repeat": len(reps), **m}), flush=True)
        r = {"users_per_node": upn, "nodes": load_federation(base).n_nodes,
             **{k: statistics.median(m[k] for m in reps) for k in reps[0]},
             "flower_overhead_dp_repeats": [round(m["flower_overhead_dp"], 3) for m in reps]}
        rows.append(r)
        print(json.dumps(r), flush=True)
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"\n{args.data}, {args.rounds} rounds, DP: noise {args.noise_multiplier}, sample rate {args.sample_rate}; "
          f"medians of {args.repeats} repeats")
    print(f"{'users/node':>10} {'nodes':>5} {'direct':>8} {'direct+DP':>9} {'Flower':>8} {'Flower+DP':>9} "
          f"{'DP overhead':>11} {'Flower overhead (DP)':>20}")
    for r in rows:
        print(f"{r['users_per_node']:>10} {r['nodes']:>5} {r['direct_nodp']:>8.3f} {r['direct_dp']:>9.3f} "
              f"{r['flower_nodp']:>8.3f} {r['flower_dp']:>9.3f} {r['dp_overhead']:>11.2f} "
              f"{r['flower_overhead_dp']:>20.2f}  "
              f"(repeats: {', '.join(f'{x:.2f}' for x in r['flower_overhead_dp_repeats'])})")
    print(f"peak RSS (largest single process): {peak / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
