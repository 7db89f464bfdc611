"""EASE's lambda search, side by side in one run: a general inverse per lambda (what fedrec
did before), a Cholesky inverse per lambda, and one eigendecomposition of the user Gram
matrix serving every lambda (Woodbury; used when fewer users have data than there are items).

Prints seconds per route for the same lambdas, the ratios to the general inverse, and the
largest difference of the weights from the general inverse's.

    .venv/bin/python benchmarks/ease.py --data ml-latest-small --lambdas 100 300 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedrec.baselines import ease_weights
from fedrec.data import load_dataset, make_split


def general_inverse(train, lam: float) -> np.ndarray:
    """The former route: ``np.linalg.inv`` of ``X'X + lam I``."""
    g = (train.T @ train).toarray().astype(np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="ml-latest-small")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[100.0, 300.0, 1000.0])
    ap.add_argument("--skip-inverse", action="store_true", help="leave out the slow general inverse")
    args = ap.parse_args()
    split = make_split(load_dataset(args.data))
    users = int((np.diff(split.train.indptr) > 0).sum())
    print(f"{args.data}: {users} users with data, {split.n_items} items, lambdas {args.lambdas}")
    times, weights = {}, {}
    routes = [("cholesky", lambda: dict(ease_weights(split.train, args.lambdas, method="cholesky")))]
    if users < split.n_items:
        routes.append(("woodbury", lambda: dict(ease_weights(split.train, args.lambdas, method="woodbury"))))
    if not args.skip_inverse:
        routes.insert(0, ("general inverse", lambda: {lam: general_inverse(split.train, lam) for lam in args.lambdas}))
    for name, run in routes:
        t = time.perf_counter()
        weights[name] = run()
        times[name] = time.perf_counter() - t
    base = "general inverse" if not args.skip_inverse else "cholesky"
    for name in times:
        diff = max(float(np.abs(weights[name][lam] - weights[base][lam]).max()) for lam in args.lambdas)
        print(f"{name:16s} {times[name]:8.1f} s   {times[base] / times[name]:5.1f}x faster than {base}   "
              f"max |B - B_{base.split()[0]}| {diff:.1e}")


if __name__ == "__main__":
    main()
