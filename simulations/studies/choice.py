"""The mechanism fedrec chooses for a unit and an epsilon, measured against private MostPop.

``python -m fedrec_app.simulations.studies.choice --data ml-100k --seeds 3 --out runs/choice-100k``
runs ``fedrec simulate --privacy UNIT --epsilon E`` (nothing else given) for each unit,
epsilon and seed, and ``fedrec baseline --model private-mostpop --epsilon E`` on the same
splits, and writes ``choice.json`` and ``choice.md``: test NDCG@10 (full ranking) of the
chosen mechanism beside private MostPop's, mean and standard deviation over the seeds
(each seed draws the order inside timestamp ties too).  Every DP draw is secret, so a
rerun is another draw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "run_choice"]


def _say(msg: str) -> None:
    print(f"[choice {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _mean_sd(xs) -> tuple[float, float]:
    xs = np.asarray(list(xs), dtype=float)
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def run_choice(data: str, out: Path, *, seeds: int = 3, epsilons=(8.0, 4.0, 2.0, 1.0),
               units=("user-level", "interaction-level")) -> list[dict]:
    """Every (unit, epsilon, seed) run of the chosen mechanism and private MostPop; finished
    runs (their ``metrics.json``) are read, not run again."""
    from fedrec import baselines
    from fedrec.config import FedConfig
    from fedrec.federated.federation import load_federation
    from fedrec.flower_compat import reuse_ray
    from fedrec_app.simulations.simulate import simulate

    rows = []
    with reuse_ray():
        for seed in range(seeds):
            split = None
            for unit in units:
                for eps in epsilons:
                    run = out / "runs" / f"{unit}-eps{eps:g}-s{seed}"
                    if not (run / "metrics.json").is_file():
                        cfg = FedConfig(data=data, privacy_unit=unit, epsilon=float(eps), seed=seed, out=str(run))
                        simulate(cfg, num_cpus=2, overwrite=True,
                                 given={"data", "privacy_unit", "epsilon", "seed", "out"})
                    doc = json.loads((run / "metrics.json").read_text())
                    chosen = json.loads((run / "run.json").read_text())["invocations"][-1]["privacy_choice"]
                    if split is None:
                        split = load_federation(FedConfig(data=data, seed=seed)).split
                    floor = baselines.fit_private_most_popular(split, epsilon=float(eps), seed=seed)
                    rows.append({"unit": unit, "epsilon": eps, "seed": seed, "preset": chosen["preset"],
                                 "test_ndcg@10": doc["test"]["ndcg@10"], "test_hr@10": doc["test"]["hr@10"],
                                 "privacy": doc.get("privacy", {}),
                                 "private_mostpop_ndcg@10": floor.test.metrics["ndcg@10"]})
                    _say(f"{unit} eps {eps:g} seed {seed}: {chosen['preset']} {rows[-1]['test_ndcg@10']:.4f} "
                         f"(private MostPop {rows[-1]['private_mostpop_ndcg@10']:.4f})")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| unit | epsilon | chosen preset | test NDCG@10 | private MostPop (same epsilon) | difference | seeds |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["unit"], r["epsilon"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for unit, eps in keys:
        rs = [r for r in rows if r["unit"] == unit and r["epsilon"] == eps]
        m, s = _mean_sd(r["test_ndcg@10"] for r in rs)
        fm, fs = _mean_sd(r["private_mostpop_ndcg@10"] for r in rs)
        presets = ", ".join(sorted({r["preset"] for r in rs}))
        lines.append(f"| {unit} | {eps:g} | {presets} | {m:.4f} ± {s:.4f} | {fm:.4f} ± {fs:.4f} | {m - fm:+.4f} "
                     f"| {len(rs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedrec_app.simulations.studies.choice",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset (a name, path or synthetic spec)")
    p.add_argument("--out", required=True, help="directory for runs/, choice.json, choice.md")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 4.0, 2.0, 1.0], help="target epsilons")
    p.add_argument("--units", nargs="+", default=["user-level", "interaction-level"], help="privacy units")
    a = p.parse_args(argv)
    out = Path(a.out)
    t = time.perf_counter()
    rows = run_choice(a.data, out, seeds=a.seeds, epsilons=tuple(a.epsilons), units=tuple(a.units))
    out.mkdir(parents=True, exist_ok=True)
    (out / "choice.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    text = table(rows)
    (out / "choice.md").write_text(text + f"\n\n{len(rows)} runs, {time.perf_counter() - t:.0f} s\n")
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
