"""Ties in time, measured: how many there are, and what the order inside them does.

``python -m fedrec_app.simulations.studies.ties --data ml-100k --seeds 3 --out runs/ties-100k``
prints and writes (``ties.json``, ``ties.md``):

* the tie counts of the dataset (:func:`fedrec.data.tie_groups`);
* that the split does not depend on the file's row order: the same ratings with each
  tie group sorted by item id ascending, descending and shuffled give identical splits
  (checked, not assumed) and so identical metrics;
* MostPop and EASE (lambda picked on validation) under ``leave-last-out`` with the
  order inside ties drawn from each seed, mean and spread over the seeds, and under
  ``leave-last-group-out`` (the whole last tie group is the test set);
* the "next ids" heuristic (the 10 unseen items whose ids follow the last one in the
  history), which only an order inside ties that follows item ids can help: under the
  seeded order it scores the same on every row order of the file; with the file's
  order as the tie-break (what a reader gives, shown for reference) it does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "next_ids_ndcg", "reordered", "file_order_targets"]


def reordered(ds, how: str, seed: int = 0):
    """``ds`` with its rows in another order (as if the file were written so): each
    tie group of one user and one timestamp sorted by item id (``ascending``,
    ``descending``) or every row shuffled (``shuffled``).  Ids are unchanged (they are
    the sorted raw ids, whatever the row order)."""
    if how == "shuffled":
        order = np.random.default_rng(seed).permutation(ds.n_interactions)
    elif how in ("ascending", "descending"):
        sign = 1 if how == "ascending" else -1
        order = np.lexsort((sign * ds.item, ds.timestamp, ds.user))
    else:
        raise ValueError(f"unknown order {how!r}")
    return dataclasses.replace(ds, user=ds.user[order], item=ds.item[order], timestamp=ds.timestamp[order])


def file_order_targets(ds) -> tuple[dict, dict]:
    """Leave-last-out's test item and the history's last item per user when ties keep
    the file's row order (the tie-break this library does not use), for reference."""
    order = np.lexsort((np.arange(ds.n_interactions), ds.timestamp, ds.user))
    u, i = ds.user[order], ds.item[order]
    last = np.r_[u[1:] != u[:-1], True]
    before = np.r_[last[1:], False] & (np.r_[u[1:], -1] == u)
    keep = np.bincount(u, minlength=ds.n_users) >= 3
    test = {a: b for a, b in zip(u[last].tolist(), i[last].tolist()) if keep[a]}
    prev = {a: b for a, b in zip(u[before].tolist(), i[before].tolist()) if keep[a]}
    return test, prev


def next_ids_ndcg(ds, split=None, k: int = 10) -> float:
    """NDCG@k of "the k unseen items with the next ids above the history's last item"
    on leave-last-out's test items (``split``; ``None``: the file's order as tie-break,
    :func:`file_order_targets`).  Items the user has before the test are skipped."""
    from fedrec.data.sequences import stage_histories

    if split is None:
        import scipy.sparse as sp

        test, prev = file_order_targets(ds)
        seen = sp.csr_matrix((np.ones(ds.n_interactions), (ds.user, ds.item)), shape=(ds.n_users, ds.n_items))
        seen[list(test), list(test.values())] = 0  # every item but the test item is before it
        seen.eliminate_zeros()
    else:
        hist = stage_histories(ds, split, "test")
        test = {u: int(split.test.indices[split.test.indptr[u]]) for u in range(ds.n_users)
                if split.test.indptr[u + 1] > split.test.indptr[u]}
        prev = {u: int(hist.of(u)[-1]) for u in test}
        seen = split.train + split.valid
    gains = []
    for u, target in test.items():
        have = set(seen.indices[seen.indptr[u]:seen.indptr[u + 1]].tolist())
        guess = [j for j in range(prev[u] + 1, ds.n_items) if j not in have][:k]
        gains.append(1.0 / np.log2(guess.index(target) + 2) if target in guess else 0.0)
    return float(np.mean(gains)) if gains else 0.0


def _say(msg: str) -> None:
    print(f"[ties {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _same(a, b) -> bool:
    return all((getattr(a, s) != getattr(b, s)).nnz == 0 for s in ("train", "valid", "test"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedrec_app.simulations.studies.ties",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a dataset name or path (as fedrec simulate --data)")
    ap.add_argument("--min-rating", type=float, default=0.0, help="positives = ratings >= this (default: all)")
    ap.add_argument("--seeds", type=int, default=3, help="tie-order seeds 0..N-1 (default 3)")
    ap.add_argument("--ease-lambdas", default="10,20,50,100,200,300,500,1000",
                    help="EASE lambdas, picked on validation")
    ap.add_argument("--out", required=True, help="directory for ties.json and ties.md")
    args = ap.parse_args(argv)

    from fedrec import baselines
    from fedrec.data import load_dataset, make_split, tie_groups

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = load_dataset(args.data, min_rating=args.min_rating or None)
    counts = tie_groups(ds)
    _say(f"{ds.name}: {counts['tied_interactions']:.1%} of interactions share user and timestamp with another; "
         f"{counts['tied_last']:.1%} of users' last interactions are tied with the one before")
    invariant = {how: _same(make_split(ds, tie_seed=0), make_split(reordered(ds, how), tie_seed=0))
                 for how in ("ascending", "descending", "shuffled")}
    _say(f"the same split for every row order: {invariant}")
    heuristic = {"seeded, file as read": next_ids_ndcg(ds, make_split(ds, tie_seed=0)),
                 "seeded, ties sorted ascending": next_ids_ndcg(reordered(ds, "ascending"),
                                                               make_split(reordered(ds, "ascending"), tie_seed=0)),
                 "seeded, rows shuffled": next_ids_ndcg(reordered(ds, "shuffled"),
                                                        make_split(reordered(ds, "shuffled"), tie_seed=0)),
                 "file order as tie-break, file as read": next_ids_ndcg(ds),
                 "file order as tie-break, rows shuffled": next_ids_ndcg(reordered(ds, "shuffled"))}
    _say("next-ids heuristic NDCG@10: " + ", ".join(f"{k} {v:.4f}" for k, v in heuristic.items()))
    ev = dict(sampled_negatives=0, seed=0)
    lambdas = [float(x) for x in args.ease_lambdas.split(",")]
    rows = []
    for kind in ("leave-last-out", "leave-last-group-out"):
        for seed in range(args.seeds if kind == "leave-last-out" else 1):
            split = make_split(ds, kind=kind, tie_seed=seed)
            for name, fit in (("MostPop", lambda s: baselines.fit_most_popular(s, **ev)),
                              ("EASE", lambda s: baselines.fit_ease(s, lambdas=lambdas, **ev))):
                res = fit(split)
                rows.append({"split": kind, "tie_seed": seed, "model": name,
                             "test_ndcg@10": res.test.metrics["ndcg@10"],
                             "test_hr@10": res.test.metrics["hr@10"], "selected": res.selected})
                _say(f"{kind} seed {seed} {name}: test NDCG@10 {rows[-1]['test_ndcg@10']:.4f}")
    summary = {}
    for kind in ("leave-last-out", "leave-last-group-out"):
        for name in ("MostPop", "EASE"):
            v = [r["test_ndcg@10"] for r in rows if r["split"] == kind and r["model"] == name]
            summary[f"{kind}/{name}"] = {"mean": float(np.mean(v)),
                                         "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                         "seeds": v}
    doc = {"data": args.data, "dataset": ds.summary(), "ties": counts, "same_split_for_every_row_order": invariant,
           "next_ids_ndcg@10": heuristic, "rows": rows, "summary": summary, "seconds": time.perf_counter() - t0}
    (out / "ties.json").write_text(json.dumps(doc, indent=2))
    md = [f"Ties in time on {ds.name}: {counts['tied_interactions']:.1%} of interactions tied, "
          f"{counts['tied_last']:.1%} of last interactions tied with the one before.", "",
          "| split | model | test NDCG@10 (mean ± std over tie seeds) | seeds |", "|---|---|---|---|"]
    for key, s in summary.items():
        kind, name = key.split("/")
        md.append(f"| {kind} | {name} | {s['mean']:.4f} ± {s['std']:.4f} | "
                  + ", ".join(f"{x:.4f}" for x in s["seeds"]) + " |")
    md += ["", "| next-ids heuristic | NDCG@10 |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in heuristic.items()]
    (out / "ties.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    _say(f"wrote {out / 'ties.json'} and {out / 'ties.md'} in {doc['seconds']:.0f}s")
    return 0 if all(invariant.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
