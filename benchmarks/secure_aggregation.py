"""Secure aggregation against the plain pipeline, side by side in one run.

The same configuration through Flower's simulation engine twice: plain FedAvg in the
clear, and ``--secure-aggregation`` (Flower's SecAgg+).  Prints the steady seconds per
round of each (rounds after the first, which includes Ray's start), their ratio, and
round 1's ``max |secure - plain|`` (both rounds start from the same parameters) against
the quantisation bound.

    .venv/bin/python benchmarks/secure_aggregation.py --data ml-100k --rounds 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedrec.config import FedConfig
from fedrec.federated.federation import load_federation
from fedrec_app.server import secure, strategy
from fedrec_app.simulations.simulate import simulate


def _run(cfg: FedConfig, out: Path, secure_on: bool) -> tuple[list[float], dict]:
    first = {}
    if secure_on:
        from flwr.common import parameters_to_ndarrays

        orig = secure.SecureAggregation.aggregate_fit

        def tap(self, rnd, results, failures):
            if rnd == 1 and results:
                first.update(zip(self.shapes, parameters_to_ndarrays(results[0][1].parameters)))
            return orig(self, rnd, results, failures)

        secure.SecureAggregation.aggregate_fit = tap
    else:
        orig = strategy.MeanOfUpdates.aggregate_train

        def tap(self, rnd, replies):
            arrays, metrics = orig(self, rnd, replies)
            if rnd == 1 and arrays is not None:
                first.update({k: arrays[k].numpy() for k in arrays.keys()})
            return arrays, metrics

        strategy.MeanOfUpdates.aggregate_train = tap
    try:
        simulate(replace(cfg, secure_aggregation=secure_on, out=str(out)), overwrite=True)
    finally:
        if secure_on:
            secure.SecureAggregation.aggregate_fit = orig
        else:
            strategy.MeanOfUpdates.aggregate_train = orig
    rows = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows], first


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="ml-100k")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--users-per-node", type=int, default=64)
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="interaction-level DP on the nodes")
    a = p.parse_args(argv)
    cfg = FedConfig(data=a.data, num_server_rounds=a.rounds, users_per_node=a.users_per_node, eval_every=0,
                    noise_multiplier=a.noise_multiplier, sample_rate=0.5 if a.noise_multiplier else 1.0)
    fed = load_federation(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        plain_s, plain = _run(cfg, Path(tmp) / "plain", False)
        secure_s, agg = _run(cfg, Path(tmp) / "secure", True)
    weights = [len(c) for c in fed.cohorts]
    q = secure.auto_quantization_range(fed.n_nodes)
    bound = secure.quantization_bound(weights, clipping_range=cfg.secagg_clip, quantization_range=q,
                                      max_weight=max(weights))
    err = max(float(np.abs(np.asarray(agg[k], np.float64) - plain[k]).max()) for k in agg if k in plain)
    ps, ss = float(np.median(plain_s[1:])), float(np.median(secure_s[1:]))
    print(f"{a.data}: {fed.n_users} users on {fed.n_nodes} nodes, {a.rounds} rounds, noise {a.noise_multiplier}")
    print(f"   plain FedAvg: {ps:.2f} s/round (median of rounds 2-{a.rounds})")
    print(f"  SecAgg+      : {ss:.2f} s/round   secure/plain {ss / ps:.2f}x")
    print(f"  round 1 max |secure - plain| = {err:.2g} (bound {bound:.2g}; Q = 2**{int(np.log2(q))}, "
          f"C = {cfg.secagg_clip})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
