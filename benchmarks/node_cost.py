"""What one ClientApp message costs, split the way a deployment pays it, and a
node's peak memory: a node that reads its own data file against one that loads
the whole dataset (the old path), side by side in one run.

Each message runs in a fresh process, as Flower's deployment engine runs a
ClientApp (one ``flwr-clientapp`` process per message).  Per message:

- Flower's own cost: importing ``flwr.clientapp`` (what an empty ClientApp pays);
- importing torch and fedrec (a fixed cost of any torch ClientApp process);
- fedrec's set-up: reading the node's data (its file, or the whole dataset), the
  mechanism (sent by the server, or calibrated again for ``--target-epsilon``),
  building the model, loading the users' state ("setup MB": what it adds to the
  process's resident memory after the imports);
- the computation: one training round (interaction-level DP-SGD) and one
  evaluation (full ranking of all items for the node's users).

    .venv/bin/python benchmarks/node_cost.py --data ml-100k ../shared/data/ml-1m --users-per-node 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESSAGE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import flwr.clientapp  # Flower's own import (an empty ClientApp)
t1 = time.perf_counter()
import numpy as np
import torch
from fedrec.federated import node
from fedrec.config import FedConfig
from fedrec.federated.federation import init_global_params
tI = time.perf_counter()
def rss_mb():  # current resident memory (the peak is set by the imports)
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
mI = rss_mb()
rc, node_config, mechanism = json.loads(sys.argv[1])
cfg, fed, p = node.setup(rc, node_config, mechanism)
state = node.load_state({}, fed, p, cfg)
params = init_global_params(cfg, fed)
t2 = time.perf_counter()
m2 = rss_mb()
update, metrics, state = node.train_round(cfg, fed, p, state, global_params=params, server_round=1)
t3 = time.perf_counter()
node.evaluate_round(cfg, fed, p, state, global_params=params)
t4 = time.perf_counter()
print(json.dumps({"flower": t1 - t0, "imports": tI - t1, "setup": t2 - tI, "train": t3 - t2, "evaluate": t4 - t3,
                  "users": int(len(state.users)), "setup_mb": m2 - mI,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one_message(rc: dict, node_config: dict, mechanism: dict | None) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MESSAGE, json.dumps([rc, node_config, mechanism])],
                         capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    doc["process"] = time.perf_counter() - t
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["ml-100k"])
    ap.add_argument("--users-per-node", type=int, default=64)
    ap.add_argument("--target-epsilon", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from fedrec.config import FedConfig
    from fedrec.federated.federation import load_federation, write_node_data
    from fedrec.privacy.calibration import resolved

    rows = []
    for data in args.data:
        cfg = FedConfig(data=data, users_per_node=args.users_per_node, target_epsilon=args.target_epsilon,
                        sample_rate=0.5, num_server_rounds=60)
        t = time.perf_counter()
        run_cfg = resolved(cfg)
        fed = load_federation(run_cfg)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_node_data(fed, tmp, partitions=[0])[0]
            plan_s = time.perf_counter() - t
            rc = cfg.to_run_config()
            mech = {"noise-multiplier": run_cfg.noise_multiplier, "user-noise-multiplier": 0.0}
            modes = {"node file + server's mechanism (now)": ({"data-file": str(path), "partition-id": 0}, mech),
                     "whole dataset + calibration per message (before)": ({"partition-id": 0}, None)}
            for mode, (nc, m) in modes.items():
                runs = [one_message(rc, nc, m) for _ in range(args.repeats)]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                med.update(data=data, mode=mode, file_mb=path.stat().st_size / 2**20, plan_s=plan_s,
                           n_users=fed.dataset.n_users, nnz=int(fed.split.train.nnz))
                rows.append(med)
    print(f"\nper ClientApp message (median of {args.repeats} fresh processes), users-per-node "
          f"{args.users_per_node}, interaction-level DP at target epsilon {args.target_epsilon}:")
    print(f"{'data':<16} {'mode':<50} {'flower':>7} {'imports':>8} {'setup':>7} {'compute':>8} "
          f"{'setup/compute':>13} {'setup MB':>9} {'peak MB':>8}")
    for r in rows:
        comp = r["train"] + r["evaluate"]
        print(f"{Path(r['data']).name:<16} {r['mode']:<50} {r['flower']:7.2f} {r['imports']:8.2f} {r['setup']:7.2f} "
              f"{comp:8.2f} {r['setup'] / comp:12.0%} {r['setup_mb']:9.1f} {r['peak_mb']:8.0f}")
    print("\nnode file: " + "; ".join(f"{Path(r['data']).name} {r['file_mb']:.2f} MB ({r['users']} users of "
                                      f"{r['n_users']})" for r in rows[::2]))
    out = Path("runs") / "bench-node-cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
