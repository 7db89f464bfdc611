"""Rounds of a large synthetic population through Flower's simulation engine, with
the peak memory of the whole process tree (driver, Ray and every actor).

    .venv/bin/python benchmarks/scale.py --data synthetic:138000x27000:0:144 --rounds 3 --users-per-node 69000
    .venv/bin/python benchmarks/scale.py --rounds 3 --users-per-node 69000 --device cuda   # on a GPU machine

Prints seconds per round (from the run's ``rounds.jsonl``), the final evaluation
and the peak resident memory summed over all processes of the run, sampled
every 0.5 s from ``/proc``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tree_rss_mib(root: int) -> tuple[float, dict[str, float]]:
    """Resident memory of ``root`` and all its descendants (MiB), from /proc, and
    the same per process name (``comm``: the driver, Ray's processes, each actor)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            pages = int((d / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        pid = int(d.name)
        children.setdefault(ppid, []).append(pid)
        rss[pid] = (pages, stat.split("(", 1)[1].rsplit(")", 1)[0])
    total, todo, per = 0, [root], {}
    mib = os.sysconf("SC_PAGE_SIZE") / 2**20
    while todo:
        p = todo.pop()
        pages, name = rss.get(p, (0, "?"))
        total += pages
        key = f"{name} ({p})" if p != root else f"driver {name} ({p})"
        per[key] = pages * mib
        todo.extend(children.get(p, []))
    return total * mib, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic:138000x27000:0:144", help="synthetic:USERSxITEMS:SEED:PER_USER")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--users-per-node", type=int, default=69000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--noise-multiplier", type=float, default=1.0, help="interaction-level DP (0: off)")
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--device", default="cpu", help="where the cohort engine computes: cpu or cuda (the actors "
                    "share the GPUs)")
    args = ap.parse_args()
    # generate/cache the dataset first, so its one-off cost is not counted in round 1
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c",
                    f"from fedrec.data import load_dataset; print(load_dataset({args.data!r}).summary())"],
                   check=True)
    print(f"dataset ready in {time.perf_counter() - t:.0f}s", flush=True)
    out = Path(args.out or tempfile.mkdtemp(prefix="fedrec-scale-"))
    cmd = [sys.executable, "-m", "fedrec_app.simulations.cli.main", "simulate", "--data", args.data,
           "--rounds", str(args.rounds),
           "--users-per-node", str(args.users_per_node), "--dim", str(args.dim), "--eval-every", "100000",
           "--out", str(out), "--device", args.device]
    if args.noise_multiplier > 0:
        cmd += ["--noise-multiplier", str(args.noise_multiplier), "--sample-rate", str(args.sample_rate)]
    print(" ".join(cmd), flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak, at_peak = 0.0, {}
    while proc.poll() is None:
        total, per = tree_rss_mib(proc.pid)
        if total > peak:
            peak, at_peak = total, per
        time.sleep(0.5)
    wall = time.perf_counter() - t
    if proc.returncode:
        sys.exit(f"simulation failed with exit code {proc.returncode}")
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    print(f"\n{args.data}: {int(rows[0].get('users', 0))} users/round, {args.users_per_node} users per node")
    for r in rows:
        print(f"round {r['round']}: {r['seconds']:.1f}s" + (" (includes Ray start)" if r["round"] == 1 else "")
              + (" (includes the full-ranking evaluation of every user)" if "test/ndcg@10" in r else ""))
    print(f"wall {wall:.0f}s; peak memory of the whole process tree {peak:.0f} MiB ({peak / 1024:.2f} GiB)")
    print("at the peak: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])
                                      if v >= 20) + " MiB")


if __name__ == "__main__":
    main()
