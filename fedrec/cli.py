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
        if args.model == "bpr-mf":
            model = build_model("mf", ds.n_users, ds.n_items, dim=args.dim, seed=args.seed)
        else:  # the centralized counterpart of a federated model: the same score function
            from fedrec.federation import build_model
            from fedrec.models.centralized import Centralized

            model = Centralized(build_model(args.model, ds, dim=args.dim, seed=args.seed), ds.n_users, seed=args.seed)
        res = baselines.fit_centralized(
            model, split, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
            batch_size=args.batch_size, n_negatives=args.negatives, loss=args.loss,
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


def cmd_simulate(args) -> int:
    from fedrec.config import FedConfig
    from fedrec.simulate import simulate

    overrides = {k: v for k, v in vars(args).items() if k in _FED_KEYS and v is not None}
    cfg = FedConfig(**overrides)
    summary = simulate(cfg, num_cpus=args.cpus, verbose=args.verbose, ray_address=args.ray_address)
    _log(f"selected round {summary['selected_round']} (on validation); wrote {cfg.out}/metrics.json")
    return 0


def cmd_privacy(args) -> int:
    from fedrec.privacy.accounting import calibrate_noise, epsilon

    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        raise ValueError("give exactly one of --noise-multiplier or --target-epsilon")
    common = dict(sample_rate=args.sample_rate, steps=args.steps, delta=args.delta)
    if args.noise_multiplier is not None:
        eps = epsilon(noise_multiplier=args.noise_multiplier, accountant=args.accountant, **common)
        print(f"epsilon = {eps:.4f} at delta = {args.delta:g} ({args.unit}-level; noise multiplier {args.noise_multiplier}, "
              f"sample rate {args.sample_rate}, {args.steps} steps, {args.accountant} accountant)")
    else:
        sigma = calibrate_noise(target_epsilon=args.target_epsilon, delta=args.delta, sample_rate=args.sample_rate,
                                steps=args.steps, accountant=args.accountant)
        print(f"noise multiplier = {sigma:.4f} reaches epsilon {args.target_epsilon} at delta = {args.delta:g} "
              f"({args.unit}-level; sample rate {args.sample_rate}, {args.steps} steps, {args.accountant} accountant)")
    return 0


def cmd_run_default(args) -> int:
    """The main job of `make run`: the default study on bundled ML-100K."""
    return cmd_sweep(build_parser().parse_args(["sweep", "default", "--out", str(args.out)]))


def cmd_sweep(args) -> int:
    from simulations.study import STUDIES, run_study

    if args.name == "models":
        from simulations.models import run_models

        from simulations.models import MODELS

        report = run_models(Path(args.out), data=args.data, seeds=args.seeds or 3, rounds=args.rounds,
                            models=tuple(args.models or MODELS), private=not args.no_private,
                            command=" ".join(["fedrec"] + sys.argv[1:]), say=_log)
        _log(f"report: {report}")
        return 0
    if args.name in STUDIES:
        run_study(args.name, Path(args.out), data=args.data, seeds=args.seeds, rounds=args.rounds, say=_log)
        return 0
    from simulations.report import write_report
    from simulations.runner import run_cells
    from simulations.sweeps import SWEEPS

    if args.name not in SWEEPS:
        raise ValueError(f"unknown sweep {args.name!r}; choose one of {sorted(STUDIES) + sorted(SWEEPS)}")
    kwargs = {"data": args.data}
    if args.rounds:
        kwargs["rounds"] = args.rounds
    cells = SWEEPS[args.name](**kwargs)
    seeds = list(range(args.seeds or 1))
    out = Path(args.out)
    rows = run_cells(cells, seeds, out, say=_log)
    path = write_report(out, args.name, rows, command=" ".join(sys.argv), data=args.data)
    _log(f"report: {path}")
    return 0


_FED_KEYS = {
    "data", "format", "min_rating", "kcore", "split", "dim", "num_server_rounds", "users_per_node",
    "fraction_train", "seed", "user_lr", "user_steps", "item_steps", "negatives", "noise_multiplier",
    "target_epsilon", "max_grad_norm", "sample_rate", "delta", "aggregation", "server_opt", "server_lr",
    "eval_every", "ties", "out", "budget_epsilon", "user_dp", "user_noise_multiplier", "user_target_epsilon",
    "user_clip", "user_sample_rate", "prior_noise", "min_replies", "round_timeout", "dropout_rate", "resume", "state_dir",
    "model", "init_std", "patience", "cold_items", "cold_users", "user_l2", "engine",
}


def _add_fed_args(p: argparse.ArgumentParser) -> None:
    from fedrec.config import DEFAULTS as D

    g = p.add_argument_group("data")
    g.add_argument("--data", default=D.data, help="'ml-100k' (bundled), 'synthetic:USERSxITEMS[:SEED]' or a path")
    g.add_argument("--format", default=D.format, choices=["auto", "ml-100k", "ml-1m", "ml-csv", "generic"])
    g.add_argument("--min-rating", type=float, default=D.min_rating, help="positives = rating >= this (0: all)")
    g.add_argument("--kcore", type=int, default=D.kcore)
    g.add_argument("--split", default=D.split, choices=["leave-last-out", "temporal-ratio"])
    g = p.add_argument_group("federation")
    g.add_argument("--rounds", dest="num_server_rounds", type=int, default=D.num_server_rounds,
                   help=f"server rounds (default {D.num_server_rounds})")
    g.add_argument("--users-per-node", type=int, default=D.users_per_node,
                   help=f"users simulated by one SuperNode, each with its own state and DP (default {D.users_per_node})")
    g.add_argument("--fraction-train", type=float, default=D.fraction_train, help="fraction of nodes per round")
    g.add_argument("--seed", type=int, default=D.seed)
    g.add_argument("--cpus", type=int, default=None, help="CPUs for the simulation engine (default: all)")
    g.add_argument("--ray-address", default=None,
                   help="run on an existing (multi-machine) Ray cluster, e.g. 'auto' on its head node "
                        "(docs/ray-cluster.md)")
    g.add_argument("--cold-users", type=float, default=D.cold_users,
                   help="fraction of users held out of training (user cold-start; default 0)")
    g.add_argument("--cold-items", type=float, default=D.cold_items,
                   help="fraction of items held out of training, ranked through item features (needs a feature-aware "
                        "model such as two-tower; default 0)")
    g = p.add_argument_group("model and local training")
    g.add_argument("--model", default=D.model,
                   help="mf (default), gmf, mlp, neumf, two-tower, or your own: path/to/file.py:ClassName "
                        "(a fedrec.models.FederatedModel; see examples/my_model.py)")
    g.add_argument("--dim", type=int, default=D.dim, help=f"embedding dimension (default {D.dim})")
    g.add_argument("--engine", default=D.engine, choices=["auto", "generic"],
                   help="auto: a model's hand-derived fast path where registered (MF); generic: the torch.func "
                        "engine for every model (default auto)")
    g.add_argument("--init-std", type=float, default=D.init_std, help=f"std of the initial parameters (default {D.init_std})")
    g.add_argument("--user-l2", type=float, default=D.user_l2, help="L2 penalty on the local state (default 0)")
    g.add_argument("--user-lr", type=float, default=D.user_lr, help=f"SGD rate of the local user embedding (default {D.user_lr})")
    g.add_argument("--user-steps", type=int, default=D.user_steps, help="user-embedding-only steps before item gradients")
    g.add_argument("--item-steps", type=int, default=D.item_steps, help="steps whose item gradients are released")
    g.add_argument("--negatives", type=int, default=D.negatives,
                   help="distinct negatives per positive, all in the positive's one clipped sample")
    g = p.add_argument_group("interaction-level differential privacy (per user, DP-SGD, Opacus RDP accountant)")
    g.add_argument("--noise-multiplier", type=float, default=D.noise_multiplier, help="0: no DP (default)")
    g.add_argument("--target-epsilon", type=float, default=D.target_epsilon,
                   help="calibrate the noise multiplier for this epsilon over the planned rounds")
    g.add_argument("--max-grad-norm", type=float, default=D.max_grad_norm,
                   help="per-sample clipping norm (one sample = one interaction with its negatives)")
    g.add_argument("--sample-rate", type=float, default=D.sample_rate,
                   help="Poisson sampling rate of a user's samples per step")
    g.add_argument("--delta", type=float, default=D.delta, help="delta of both units (default 1e-5)")
    g.add_argument("--prior-noise", type=float, default=D.prior_noise,
                   help="> 0: start item biases from a DP popularity prior (Gaussian noise of this std on the sum of "
                        "users' unit-norm item vectors; composed into both units' epsilon)")
    g.add_argument("--budget-epsilon", type=float, default=D.budget_epsilon,
                   help="a user declines a round that would take its interaction-level epsilon past this (0: none)")
    g = p.add_argument_group("user-level differential privacy (whole user updates clipped, noise on the sum; "
                             "Flower DP wrappers, Opacus RDP accountant)")
    g.add_argument("--user-dp", default=D.user_dp, choices=["off", "client", "server", "adaptive"],
                   help="where users' updates are clipped: on the node per user (client), by the server "
                        "(server, adaptive; one user per node)")
    g.add_argument("--user-noise-multiplier", type=float, default=D.user_noise_multiplier)
    g.add_argument("--user-target-epsilon", type=float, default=D.user_target_epsilon,
                   help="calibrate the user-level noise for this epsilon over the planned rounds")
    g.add_argument("--user-clip", type=float, default=D.user_clip, help=f"clip of a user's update (default {D.user_clip})")
    g.add_argument("--user-sample-rate", type=float, default=D.user_sample_rate,
                   help="Poisson probability that a user takes part in a round (default 1)")
    g = p.add_argument_group("fault tolerance")
    g.add_argument("--min-replies", type=int, default=D.min_replies,
                   help="fewer contributing replies leave the round's parameters unchanged (default 1)")
    g.add_argument("--round-timeout", type=float, default=D.round_timeout, help="seconds to wait for replies")
    g.add_argument("--dropout-rate", type=float, default=D.dropout_rate,
                   help="simulated probability that a node fails in a round (default 0)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="continue from OUT/checkpoint (same config) instead of starting over")
    g.add_argument("--state-dir", default=D.state_dir,
                   help="where nodes keep users' local state (default OUT/client-state)")
    g = p.add_argument_group("server")
    g.add_argument("--aggregation", default=D.aggregation, choices=["fedavg", "itemwise"])
    g.add_argument("--server-opt", default=D.server_opt, choices=["adam", "yogi", "sgd"])
    g.add_argument("--server-lr", type=float, default=D.server_lr)
    g.add_argument("--eval-every", type=int, default=D.eval_every, help="federated validation every N rounds")
    g.add_argument("--patience", type=int, default=D.patience,
                   help="stop after N evaluations without a better validation NDCG@10; --rounds is then the most "
                        "rounds (0: run every round)")
    g.add_argument("--ties", default=D.ties, choices=["pessimistic", "random"])
    g.add_argument("--out", required=True, help="run directory (config.json, rounds.csv, metrics.json, checkpoint/)")
    g.add_argument("--verbose", action="store_true", help="Flower's own logs")


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
    p.add_argument("--model", default="ease",
                   help="mostpop, ease, bpr-mf, or a federated model trained centrally: mf, gmf, mlp, neumf, two-tower, "
                        "path/to/file.py:ClassName (default: ease)")
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
    p.add_argument("--negatives", type=int, default=4, help="sampled negatives per positive (default 4)")
    p.add_argument("--loss", default="bpr", choices=["bpr", "bce"], help="loss (default bpr)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("simulate", help="federated training on Flower's simulation engine",
                       description="Federated training of any fedrec model (--model): each user's local state "
                                   "stays on its node, the server aggregates the global parameters. Defaults are "
                                   "the tuned ML-100K settings.")
    _add_fed_args(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("privacy", help="epsilon for a mechanism, or the noise for a target epsilon (no training)",
                       description="Opacus accountant for the Poisson-subsampled Gaussian mechanism.")
    p.add_argument("--noise-multiplier", type=float, default=None)
    p.add_argument("--target-epsilon", type=float, default=None)
    p.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate per step")
    p.add_argument("--steps", type=int, required=True, help="number of steps (compositions)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--accountant", default="rdp", choices=["rdp", "prv", "gdp"])
    p.add_argument("--unit", default="interaction", choices=["interaction", "user"],
                   help="what one step's sample is: an interaction (client DP-SGD) or a user (server-side)")
    p.set_defaults(func=cmd_privacy)

    p = sub.add_parser("sweep", help="experiment sweeps with tables and a report (resumable)",
                       description="Run a named sweep of federated runs (cells x seeds) through Flower's simulation "
                                   "engine. Finished cells are kept and skipped when run again.")
    p.add_argument("name", help="'default' (the main study, ~10 min on 2 cores), 'full' (every level), 'population', "
                                "'models' (every model federated and centralized, non-private and epsilon 8 in "
                                "each unit), 'tiny' (smoke test) or 'dp-levels'")
    p.add_argument("--out", required=True, help="sweep directory (runs/, results.csv, results.json, plots, report.md)")
    p.add_argument("--data", default="ml-100k", help="any dataset the loaders read (default: bundled ml-100k)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default: the study's, 3)")
    p.add_argument("--rounds", type=int, default=None, help="override the rounds of every cell")
    p.add_argument("--models", nargs="+", default=None,
                   help="'models' only: which models (default: mf gmf mlp neumf two-tower; path.py:Class works too)")
    p.add_argument("--no-private", action="store_true", help="'models' only: the non-private cells only")
    p.set_defaults(func=cmd_sweep)

    from fedrec import deploy

    p = sub.add_parser("deploy", help="run fedrec on Flower's deployment engine (SuperLink + SuperNodes) locally",
                       description="Start a SuperLink and one SuperNode per user cohort on localhost (TLS and "
                                   "SuperNode authentication unless --insecure), run the app with `flwr run`, "
                                   "and stop every process it started.")
    deploy.build_parser(p)
    p.set_defaults(func=deploy.run)

    p = sub.add_parser("run-default", help="the main job: the default study (fedrec sweep default) on bundled ML-100K")
    p.add_argument("--out", default="runs/default")
    p.set_defaults(func=cmd_run_default)
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
