"""A deployment round's time, split side by side in one run: Flower's own cost
(the same deployment with an empty ClientApp that replies zeros) against the
fedrec ClientApp, with --target-epsilon set; the split of fedrec's part into
set-up and computation comes from benchmarks/node_cost.py (fresh processes,
as the deployment runs each message).

    .venv/bin/python benchmarks/deploy_split.py --data ml-100k --users-per-node 472 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
from pathlib import Path

EMPTY_CLIENT = '''"""An empty ClientApp: replies zeros of the shapes it was sent (Flower's own cost)."""
import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context) -> Message:
    arrays = {k: Array(np.zeros_like(v.numpy())) for k, v in msg.content["arrays"].items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays),
                               "metrics": MetricRecord({"num-examples": 0, "train-loss": 0.0})}), reply_to=msg)
'''


def round_seconds(out: Path) -> list[float]:
    with (out / "rounds.csv").open() as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--users-per-node", type=int, default=472)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target-epsilon", type=float, default=8.0)
    args = ap.parse_args()

    from fedrec_app import deploy

    overrides = {"data": args.data, "users-per-node": args.users_per_node, "num-server-rounds": args.rounds,
                 "target-epsilon": args.target_epsilon, "sample-rate": 0.5, "patience": 0}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        empty_app = deploy.write_app_dir(tmp / "empty-app")
        (empty_app / "empty_client.py").write_text(EMPTY_CLIENT)
        text = (empty_app / "pyproject.toml").read_text()
        (empty_app / "pyproject.toml").write_text(
            text.replace(deploy.COMPONENTS["clientapp"], "empty_client:app"))
        for name, app in (("empty ClientApp (Flower's own cost)", empty_app), ("fedrec ClientApp", None)):
            out = tmp / name.split()[0]
            res = deploy.deploy(dict(overrides), out=out, app=app, insecure=True)
            if not res.ok:
                raise SystemExit(f"{name}: {res.error}")
            secs = round_seconds(out)
            rows[name] = {"rounds": secs, "median_round_s": statistics.median(secs), "nodes": res.n_nodes}
            shutil.rmtree(out / "deploy" / "flwr-home", ignore_errors=True)
    e, f = (rows[k]["median_round_s"] for k in rows)
    print(f"\n{args.data}, {rows['fedrec ClientApp']['nodes']} SuperNodes (users-per-node {args.users_per_node}), "
          f"target epsilon {args.target_epsilon}, evaluation off; median seconds per round of {args.rounds}:")
    for k, r in rows.items():
        print(f"  {k:<40} {r['median_round_s']:7.2f} s   rounds: {', '.join(f'{x:.2f}' for x in r['rounds'])}")
    print(f"  fedrec's part (set-up + computation)     {f - e:7.2f} s   ({f / e:.2f}x the empty ClientApp)")
    out = Path("runs") / "bench-deploy-split.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
