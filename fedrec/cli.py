"""The ``fedrec`` command line.  Subcommands are thin: they call library functions."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


def _log(msg: str) -> None:
    print(f"[fedrec {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="ml-100k",
                   help="'ml-100k' (bundled, default), 'synthetic:USERSxITEMS[:SEED]', or a path to "
                        "an ML-100K/ML-1M directory, a MovieLens ratings.csv, or a generic CSV/TSV/Parquet file")
    g.add_argument("--format", default="auto", choices=["auto", "ml-100k", "ml-1m", "ml-csv", "generic"],
                   help="input format (default: detected)")
    g.add_argument("--user-col", default="user", help="generic files: user id column (default: user)")
    g.add_argument("--item-col", default="item", help="generic files: item id column (default: item)")
    g.add_argument("--rating-col", default=None, help="generic files: optional rating column")
    g.add_argument("--timestamp-col", default=None, help="generic files: optional timestamp column (else row order)")
    g.add_argument("--sep", default=None, help="generic files: field separator (default: sniffed)")
    g.add_argument("--duplicates", default="error", choices=["error", "first", "last"],
                   help="what to do with repeated (user, item) pairs (default: error)")
    g.add_argument("--min-rating", type=float, default=None,
                   help="implicit feedback = ratings >= this (default: every rating is a positive)")
    g.add_argument("--kcore", type=int, default=0, help="iterative k-core filter (default: none)")
    g.add_argument("--split", default="leave-last-out", choices=["leave-last-out", "temporal-ratio"],
                   help="chronological split (default: leave-last-out: valid = 2nd-to-last, test = last)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--ties", default="pessimistic", choices=["pessimistic", "random"],
                   help="tie rule of full ranking; ties never favour the model (default: pessimistic)")
    g.add_argument("--sampled-negatives", type=int, default=99,
                   help="negatives of the sampled metrics reported beside full ranking (0: off; default 99)")


def load_from_args(args):
    from fedrec.data import load_dataset, make_split

    opts = {}
    if args.format in ("generic", "auto"):
        opts = dict(user_col=args.user_col, item_col=args.item_col, rating_col=args.rating_col,
                    timestamp_col=args.timestamp_col, sep=args.sep)
        opts = {k: v for k, v in opts.items() if v is not None and not (k in ("user_col", "item_col") and v in ("user", "item"))}
    if args.duplicates != "error":
        opts["duplicates"] = args.duplicates
    ds = load_dataset(args.data, format=args.format, min_rating=args.min_rating, kcore=args.kcore, **opts)
    split = make_split(ds, kind=args.split)
    return ds, split


def cmd_baseline(args) -> int:
    import numpy as np
    import torch

    from fedrec import baselines
    from fedrec.models import build_model
    from fedrec.results import write_json, write_metrics

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds, split = load_from_args(args)
    _log(f"data {ds.summary()} split {split.summary()}")
    ev = dict(ties=args.ties, sampled_negatives=args.sampled_negatives, seed=args.seed,
              item_popularity=np.asarray(split.train.sum(0)).ravel(), item_features=ds.item_genres)
    if args.model == "mostpop":
        res = baselines.fit_most_popular(split, **ev)
    elif args.model == "ease":
        lambdas = [float(x) for x in args.ease_lambdas.split(",")]
        res = baselines.fit_ease(split, lambdas=lambdas, progress=_log, **ev)
    else:
        name = {"bpr-mf": "mf"}.get(args.model, args.model)
        model = build_model(name, ds.n_users, ds.n_items, dim=args.dim, seed=args.seed)
        res = baselines.fit_centralized(
            model, split, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
            batch_size=args.batch_size, n_negatives=args.negatives, loss=args.loss, seed=args.seed,
            patience=args.patience, progress=_log, **ev)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config["dataset"] = ds.summary()
    config["split_summary"] = split.summary()
    write_json(out / "config.json", config)
    ds.save_id_maps(out)
    if res.history:
        write_json(out / "history.json", res.history)
    write_metrics(out, validation=res.valid.metrics, test=res.test.metrics, config=config, seed=args.seed,
                  extra={"model": args.model, "selected": res.selected, "seconds": res.seconds,
                         "groups": {"test": res.test.groups}})
    keys = ["hr@10", "ndcg@10", "recall@20", "mrr", "sampled_hr@10", "sampled_ndcg@10"]
    _log(f"{args.model} selected {res.selected} in {res.seconds:.1f}s")
    for stage, r in (("valid", res.valid), ("test", res.test)):
        _log(f"{stage:5s} " + "  ".join(f"{k} {r.metrics[k]:.4f}" for k in keys if k in r.metrics))
    _log(f"wrote {out / 'metrics.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Privacy-preserving federated recommendation: Flower clients keep user embeddings local, "
                    "the server aggregates item parameters, Opacus provides differential privacy.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("baseline", help="centralized baselines (MostPop, EASE, BPR-MF, NCF) on the same splits",
                       description="Fit a centralized baseline on the train split, select on validation, "
                                   "report full-ranking metrics (and labelled sampled metrics) on validation and test.")
    _add_data_args(p)
    _add_eval_args(p)
    p.add_argument("--model", default="ease", choices=["mostpop", "ease", "bpr-mf", "mf", "gmf", "mlp", "neumf"],
                   help="baseline (default: ease)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, config.json, id_map.json)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--ease-lambdas", default="50,100,200,300,500,1000",
                   help="EASE: lambdas tried, picked on validation NDCG@10")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    p.add_argument("--epochs", type=int, default=100, help="max epochs; the best on validation is kept (default 100)")
    p.add_argument("--patience", type=int, default=10, help="early stop after N epochs without validation gain")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    p.add_argument("--batch-size", type=int, default=1024, help="batch size (default 1024)")
    p.add_argument("--negatives", type=int, default=1, help="sampled negatives per positive (default 1)")
    p.add_argument("--loss", default="bpr", choices=["bpr", "bce"], help="loss (default bpr)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(func=cmd_baseline)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        from fedrec.data.readers import DataFormatError

        if isinstance(e, (DataFormatError, ValueError, FileNotFoundError)):
            print(f"fedrec: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
