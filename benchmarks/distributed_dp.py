"""Distributed DP over SecAgg+ against plain SecAgg+ and central DP, side by side in one run.

The same federation through Flower's simulation engine three times: plain SecAgg+ (no DP),
``--user-dp distributed`` (each user's Skellam share, summed by SecAgg+; then with discrete
Gaussian shares), and
central DP-FedAvg (``--user-dp client``: users clipped on their node, the server adds the
noise).  Prints the steady seconds per round of each (rounds after the first, which
includes Ray's start), the ratios, and what one client sends per round: the length of its
vector, the bits per coordinate the field needs, and the bytes Flower's messages carry.

    .venv/bin/python benchmarks/distributed_dp.py --data ml-100k --rounds 4
    .venv/bin/python benchmarks/distributed_dp.py --data ../shared/data/ml-1m --dim 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrec.config import FedConfig
from fedrec.federated.federation import federated_model, load_federation
from fedrec.privacy.distributed import auto_quantization_range, distributed_mechanism
from fedrec_app.simulations.simulate import simulate


def _seconds(cfg: FedConfig, out: Path) -> list[float]:
    simulate(replace(cfg, out=str(out)), overwrite=True)
    return [json.loads(x)["seconds"] for x in (out / "rounds.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--users-per-node", type=int, default=64)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--noise-multiplier", type=float, default=1.0, help="user-level noise multiplier (both DPs)")
    p.add_argument("--skip-discrete-gaussian", action="store_true", help="leave out the discrete Gaussian run")
    a = p.parse_args(argv)
    base = FedConfig(data=a.data, num_server_rounds=a.rounds, users_per_node=a.users_per_node, dim=a.dim,
                     eval_every=0, user_sample_rate=0.5)
    dp = dict(user_noise_multiplier=a.noise_multiplier, user_clip=0.1)
    runs = {
        "plain SecAgg+": replace(base, secure_aggregation=True),
        "distributed DP over SecAgg+": replace(base, secure_aggregation=True, user_dp="distributed", **dp),
        "  (discrete Gaussian shares)": replace(base, secure_aggregation=True, user_dp="distributed",
                                                ddp_noise="discrete-gaussian", **dp),
        "central DP-FedAvg": replace(base, user_dp="client", **dp),
    }
    if a.skip_discrete_gaussian:
        del runs["  (discrete Gaussian shares)"]
    fed = load_federation(base)
    dim = int(sum(np.prod(s) for s in federated_model(base, fed).global_shapes().values()))
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, cfg) in enumerate(runs.items()):
            seconds[name] = float(np.median(_seconds(cfg, Path(tmp) / str(i))[1:]))
    mech = distributed_mechanism(runs["distributed DP over SecAgg+"], n_users=fed.n_users, n_nodes=fed.n_nodes,
                                 dim=dim)
    q_plain = auto_quantization_range(fed.n_nodes)
    print(f"{a.data}: {fed.n_users} users on {fed.n_nodes} nodes, dim {a.dim}, {a.rounds} rounds, user sample "
          f"rate 0.5, noise {a.noise_multiplier} (median s/round of rounds 2-{a.rounds})")
    ref = seconds["plain SecAgg+"]
    for name, s in seconds.items():
        print(f"  {name:30s} {s:7.2f} s/round   {s / ref:5.2f}x plain SecAgg+")
    print(f"  one client's vector per round: {dim} values (plain SecAgg+, central DP), {mech.padded_dim} "
          f"(distributed: padded for the rotation)")
    print(f"  bits per coordinate: plain SecAgg+ {int(np.log2(q_plain))} (quantisation), distributed "
          f"{mech.bits} (field 2**{mech.bits}, gamma {mech.gamma:.3g}); Flower's SecAgg+ sends int64 masked "
          f"values: {8 * (dim + 1)} vs {8 * (mech.padded_dim + 1)} bytes; central DP sends float32: {4 * dim}")
    print(f"  distributed epsilon after {a.rounds} rounds (delta {mech.delta:g}): {mech.epsilon(a.rounds):.2f}, "
          f"noise shares sized for {mech.min_users} of {mech.max_users} users")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
