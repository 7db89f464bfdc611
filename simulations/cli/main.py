"""The ``fedrec`` command line.  Subcommands are thin: they call library functions."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fedrec_app.simulations.cli.flags import add_config_args, config_flag, config_from_args, given_fields

__all__ = ["main", "build_parser", "subcommands", "UsageError"]


class UsageError(ValueError):
    """A bad command line (the message names the flag and the value)."""


def _log(msg: str) -> None:
    print(f"[fedrec {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p, ("data",), skip=("cold_users", "cold_items"))


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--ties", default="pessimistic", choices=["pessimistic", "random"],
                   help="tie rule of full ranking; ties never favour the model (default: pessimistic)")
    g.add_argument("--sampled-negatives", type=int, default=99,
                   help="negatives of the sampled metrics reported beside full ranking (0: off; default 99)")
    g.add_argument("--rank-consumed", action="store_true",
                   help="rank the user's consumed items too (not masked), where repeat consumption is legitimate; "
                        "by default only unseen items compete with the target")


def load_from_args(args):
    from fedrec.data import load_dataset, make_split
    from fedrec.federated.federation import reader_options

    cfg = config_from_args(args, ("data",))
    ds = load_dataset(cfg.data, format=cfg.format, min_rating=cfg.min_rating or None, kcore=cfg.kcore,
                      **dict(reader_options(cfg)))
    # ties ordered as a run of this seed orders them
    split = make_split(ds, kind=cfg.split, tie_seed=int(getattr(args, "seed", 0) or 0))
    return ds, split


def cmd_baseline(args) -> int:
    import torch

    from fedrec.results import check_run_dir, lock_run_dir

    if args.model == "private-mostpop" and not args.epsilon > 0:
        raise UsageError(f"--epsilon {args.epsilon}: private-mostpop needs an epsilon > 0")
    if not 0 < args.delta < 1:
        raise UsageError(f"--delta {args.delta}: must be in (0, 1)")
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    check_run_dir(out, overwrite=args.overwrite, resumable=False)
    with lock_run_dir(out):  # one process per directory; one that wrote nothing is removed again
        ds, split = load_from_args(args)  # bad data fails before anything is written
        return _fit_baseline(args, out, ds, split)


def _fit_baseline(args, out: Path, ds, split) -> int:
    import numpy as np

    from fedrec import baselines
    from fedrec.results import data_record, record_invocation, write_json, write_metrics

    _log(f"data {ds.summary()} split {split.summary()}")
    ev = dict(ties=args.ties, sampled_negatives=args.sampled_negatives, seed=args.seed,
              mask_consumed=not args.rank_consumed,
              item_popularity=np.asarray(split.train.sum(0)).ravel(), item_features=ds.item_genres)
    if args.model == "mostpop":
        res = baselines.fit_most_popular(split, **ev)
    elif args.model == "private-mostpop":
        res = baselines.fit_private_most_popular(split, epsilon=args.epsilon, delta=args.delta, **ev)
    elif args.model == "ease":
        lambdas = [float(x) for x in args.ease_lambdas.split(",")]
        res = baselines.fit_ease(split, lambdas=lambdas, progress=_log, **ev)
    elif _sequential(args.model):  # the same encoder, trained on pooled histories
        from fedrec.data.sequences import stage_histories
        from fedrec.federated.federation import build_model

        model = build_model(args.model, ds, dim=args.dim, seed=args.seed, max_len=args.seq_len)
        hist = {s: stage_histories(ds, split, s) for s in ("train", "valid", "test")}
        res = baselines.fit_sequential(
            model, split, hist, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size or 128,
            n_negatives=args.negatives, patience=args.patience, progress=_log, **ev)  # ev holds the seed
    else:  # the centralized counterpart of a federated model: the same score function (bpr-mf: MF's)
        from fedrec.federated.federation import build_model
        from fedrec.models.centralized import Centralized

        spec = "mf" if args.model == "bpr-mf" else args.model
        model = Centralized(build_model(spec, ds, dim=args.dim, seed=args.seed), ds.n_users, seed=args.seed)
        res = baselines.fit_centralized(
            model, split, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
            batch_size=args.batch_size or 1024, n_negatives=args.negatives, loss=args.loss,
            patience=args.patience, progress=_log, **ev)
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command_line")}
    record_invocation(out, argv=getattr(args, "command_line", sys.argv),
                      data=data_record(config_from_args(args, ("data",)).data))
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


def _sequential(spec: str) -> bool:
    from fedrec.models import federated_model_class, is_sequential

    if spec in ("mostpop", "private-mostpop", "ease", "bpr-mf"):
        return False
    try:
        return is_sequential(federated_model_class(spec))
    except ValueError as e:
        raise UsageError(str(e)) from None


#: Target epsilons: a flag given as 0 is refused (leaving it out is how a run goes without that mechanism).
_TARGET_EPSILONS = ("target_epsilon", "user_target_epsilon", "als_target_epsilon")  # fedrec.presets.CALIBRATED's keys


def _check_targets(given: dict) -> None:
    """A target epsilon given on the command line must be positive (one line otherwise)."""
    for name in _TARGET_EPSILONS:
        if name in given and not given[name] > 0:
            raise UsageError(f"{config_flag(name)} {given[name]}: must be > 0 (leave the flag out for a run without "
                             "that mechanism)")


def simulate_config(args):
    """The configuration ``fedrec simulate`` runs, and the recorded settings it changes.

    Without ``--resume``: the flags given over the config's defaults.  With ``--resume`` and a
    recorded run in ``--out``: the recorded configuration (``config.json``), so that the same run
    continues to its recorded end; a flag given again must agree with the record, or the
    change is refused unless ``--resume-with-changes`` asks for it (the change is then recorded
    in ``run.json``).  Returns ``(config, changed)``, ``changed`` mapping a key to
    ``[recorded, now]``."""
    import dataclasses
    import json

    from fedrec.config import FedConfig, options
    from fedrec.privacy.calibration import resolved
    from fedrec.presets import CALIBRATED

    given = given_fields(args)
    _check_targets(given)
    if "data" in given and Path(given["data"]).exists():
        given["data"] = str(Path(given["data"]).resolve())  # the record names the data wherever it is resumed from
    recorded_file = Path(args.out) / "config.json"
    if not (args.resume and recorded_file.is_file()):
        return FedConfig(**given), {}
    try:
        recorded = FedConfig.from_run_config(json.loads(recorded_file.read_text())["run_config"])
    except (ValueError, KeyError) as e:
        raise UsageError(f"{recorded_file}: not a fedrec run record ({e}); start the run again "
                         "with --overwrite") from None
    unset = {noise: 0.0 for target, noise in CALIBRATED.items() if target in given and noise not in given}
    wanted = dataclasses.replace(recorded, **unset, **given)  # a target given again is calibrated again
    now = resolved(wanted)
    changed = {f.name.replace("_", "-"): [getattr(recorded, f.name), getattr(now, f.name)]
               for f in options() if f.name not in ("resume", "out", "data")
               and getattr(recorded, f.name) != getattr(now, f.name)}
    if ("data" in given and Path(recorded.data).resolve() != Path(given["data"]).resolve()
            and recorded.data != given["data"]):
        changed["data"] = [recorded.data, given["data"]]
    if changed and not args.resume_with_changes:
        key, (was, new) = next(iter(changed.items()))
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UsageError(f"{config_flag(key)} {new}: the run in {args.out} was recorded with {was}{more}; "
                         "leave the flag out to continue the run as recorded, or add --resume-with-changes to "
                         "change it")
    return dataclasses.replace(now, resume=True, out=args.out), changed


def _with_mechanism_preset(cfg, given: set[str]):
    """A mechanism turned on by its own flags (``--target-epsilon 8`` alone) runs its preset
    for every setting not given (the non-private defaults learn nothing under its noise),
    said in one line."""
    from fedrec.presets import mechanism_preset, preset, with_preset

    name = mechanism_preset(cfg)
    if name is None:
        return cfg
    settings = {k: v for k, v in preset(name).items() if "epsilon" not in k and "noise-multiplier" not in k}
    filled = {k: v for k, v in settings.items() if k.replace("-", "_") not in given
              and getattr(cfg, k.replace("-", "_")) != v}
    if filled:
        _log(f"preset {name!r} for the settings not given (" + ", ".join(f"{config_flag(k)} {v}" for k, v in
             filled.items()) + "); flags given override it, and --privacy UNIT --epsilon E chooses the mechanism too")
    return with_preset(cfg, settings, given)


def cmd_simulate(args) -> int:
    from fedrec.federated.algorithms import check_run
    from fedrec_app.simulations.simulate import simulate

    if args.resume_with_changes and not args.resume:
        raise UsageError("--resume-with-changes: only with --resume")
    cfg, changed = simulate_config(args)
    check_run(cfg)  # what the model or its algorithm cannot run, in one line before anything starts
    if changed:
        _log("resuming with changes to the recorded run: " + ", ".join(
            f"{config_flag(k)} {was} -> {now}" for k, (was, now) in changed.items()))
        if "num-server-rounds" in changed and (cfg.dp or cfg.user_level):
            _log("the rounds already run keep their noise: the epsilon reported composes every round, so it is "
                 "not the target the recorded run was calibrated for")
    given = set(given_fields(args))
    if args.preset and not args.resume:  # a shipped preset or a tuned one (fedrec tune); flags given win
        from fedrec.presets import load_preset, with_preset

        name, settings = load_preset(args.preset)
        cfg = with_preset(cfg, settings, given)
        given |= {k.replace("-", "_") for k in settings}
        _log(f"preset {name!r} ({args.preset}): " + (", ".join(f"{config_flag(k)} {v}" for k, v in settings.items())
                                                    or "no settings") + "; flags given override it")
    if not args.resume:
        cfg = _with_mechanism_preset(cfg, given)
    summary = simulate(cfg, num_cpus=args.cpus, verbose=args.verbose, ray_address=args.ray_address,
                       overwrite=args.overwrite, changed=changed, argv=getattr(args, "command_line", None), given=given)
    picked = "evaluation off: the last round's model" if summary['selected_round'] is None else \
        f"selected round {summary['selected_round']} (on validation)"
    _log(f"{picked}; wrote {cfg.out}/metrics.json")
    return 0


def cmd_tune(args) -> int:
    from fedrec.config import FedConfig
    from fedrec.federated.algorithms import check_run
    from fedrec_app.simulations.studies.tune import parse_dimension, tune

    given = given_fields(args)
    _check_targets(given)
    cfg = _with_mechanism_preset(FedConfig(**given), set(given))
    check_run(cfg)
    space = dict(parse_dimension(v) for v in args.vary) if args.vary else None
    tune(cfg, out=Path(cfg.out), space=space, selection=args.selection, trials=args.trials,
         trials_mean=args.trials_mean, trials_shape=args.trials_shape, score_noise=args.score_noise,
         num_cpus=args.cpus, say=_log)
    return 0


def cmd_privacy(args) -> int:
    from fedrec.privacy.accounting import calibrate_noise, epsilon

    if (args.noise_multiplier is None) == (args.target_epsilon is None):
        raise UsageError("give exactly one of --noise-multiplier or --target-epsilon")
    for flag, v, ok, why in (("--sample-rate", args.sample_rate, 0 < args.sample_rate <= 1, "must be in (0, 1]"),
                             ("--steps", args.steps, args.steps >= 1, "must be >= 1"),
                             ("--delta", args.delta, 0 < args.delta < 1, "must be in (0, 1)"),
                             ("--noise-multiplier", args.noise_multiplier,
                              args.noise_multiplier is None or args.noise_multiplier > 0, "must be > 0"),
                             ("--target-epsilon", args.target_epsilon,
                              args.target_epsilon is None or args.target_epsilon > 0, "must be > 0")):
        if not ok:
            raise UsageError(f"{flag} {v}: {why}")
    common = dict(sample_rate=args.sample_rate, steps=args.steps, delta=args.delta)
    if args.noise_multiplier is not None:
        eps = epsilon(noise_multiplier=args.noise_multiplier, accountant=args.accountant, **common)
        print(f"epsilon = {eps:.4f} at delta = {args.delta:g} ({args.unit}-level; "
              f"noise multiplier {args.noise_multiplier}, "
              f"sample rate {args.sample_rate}, {args.steps} steps, {args.accountant} accountant)")
    else:
        try:
            sigma = calibrate_noise(target_epsilon=args.target_epsilon, delta=args.delta, sample_rate=args.sample_rate,
                                    steps=args.steps, accountant=args.accountant)
        except (ValueError, ArithmeticError) as e:
            raise UsageError(f"--target-epsilon {args.target_epsilon}: cannot be reached over {args.steps} steps at "
                             f"sample rate {args.sample_rate} and delta {args.delta:g}: {e}") from None
        print(f"noise multiplier = {sigma:.4f} reaches epsilon {args.target_epsilon} at delta = {args.delta:g} "
              f"({args.unit}-level; sample rate {args.sample_rate}, {args.steps} steps, {args.accountant} accountant)")
    return 0


def cmd_data(args) -> int:
    """`fedrec data list` and `fedrec data fetch NAME`."""
    from fedrec.data import bundled_path
    from fedrec.data.registry import REGISTRY, cached_dataset, data_root, fetch

    root = Path(args.root) if args.root else data_root()
    if args.action == "list":
        print(f"dataset cache: {root} (set FEDREC_DATA or --root to move it)")
        for entry in REGISTRY.values():
            where = cached_dataset(entry.name, root)
            state = (f"cached at {where}" if where
                     else ("bundled" if bundled_path(entry.name).is_dir() else "not fetched"))
            print(f"{entry.name:22s} {entry.size:>7s}  {state}\n{'':22s} terms: {entry.terms}\n"
                  f"{'':22s} checksum: {entry.checksum_source}")
        return 0
    if not args.name:
        raise UsageError("fedrec data fetch needs a dataset name; `fedrec data list` shows them")
    for name in args.name:
        fetch(name, root=root, mirror=args.mirror, force=args.force, say=_log)
    return 0


def cmd_run_default(args) -> int:
    """The main job of `make run`: the default study on bundled ml-latest-small."""
    return cmd_sweep(build_parser().parse_args(["sweep", "default", "--out", str(args.out)]))


def cmd_sweep(args) -> int:
    from fedrec.config import parse_overrides
    from fedrec_app.simulations.studies.study import STUDIES, run_study

    overrides = parse_overrides(args.set)
    if overrides and args.name == "stream":
        raise UsageError("--set is not available for the 'stream' sweep (its stages chain warm starts); use the "
                         "'models', 'sequential', 'frontier', 'attacks' or a study sweep")

    if args.name in ("models", "sequential"):  # one axis of models, each beside its centralized twin
        from fedrec_app.simulations.studies.models import MODELS, run_models
        from fedrec_app.simulations.studies.sequential import SEQUENTIAL, run_sequential

        run, default_models = (run_models, MODELS) if args.name == "models" else (run_sequential, SEQUENTIAL)
        report = run(Path(args.out), data=args.data, seeds=args.seeds or 3, rounds=args.rounds,
                     models=tuple(args.models or default_models), private=not args.no_private,
                     command=" ".join(["fedrec"] + sys.argv[1:]), overrides=overrides, say=_log)
        _log(f"report: {report}")
        return 0
    if args.name == "headline":
        from fedrec_app.simulations.studies.headline import run_headline

        report = run_headline(Path(args.out), data=args.data, seeds=args.seeds or 3, rounds=args.rounds,
                              command=" ".join(["fedrec"] + sys.argv[1:]), overrides=overrides, say=_log)
        _log(f"report: {report}")
        return 0
    if args.name == "attacks":
        from fedrec_app.simulations.attacks.poisoning import ATTACKS, DEFAULT_ATTACKS, _defences, run_attacks

        for name, given, known in (("--attacks", [a.split("+")[0] for a in args.attacks or ()], ATTACKS),
                                   ("--defences", args.defences, _defences())):
            bad = [x for x in (given or ()) if x not in known]
            if bad:
                raise ValueError(f"{name} {' '.join(bad)}: choose from {', '.join(known)}")
        report = run_attacks(Path(args.out), data=args.data, seeds=args.seeds or 1, rounds=args.rounds or 30,
                             fractions=tuple(args.fractions or (0.01, 0.05)),
                             attacks=tuple(args.attacks or DEFAULT_ATTACKS),
                             defences=tuple(args.defences or ("none", "row-bounds", "user-dp")), server=args.server,
                             command=" ".join(["fedrec"] + sys.argv[1:]), overrides=overrides, say=_log)
        _log(f"report: {report}")
        return 0
    if args.name == "stream":
        from fedrec_app.simulations.studies.stream import STREAM_PRIVACY, run_stream

        report = run_stream(Path(args.out), data=args.data, windows=args.windows, warmup=args.warmup,
                            warmup_rounds=args.warmup_rounds, rounds=args.rounds or 20, seeds=args.seeds or 1,
                            privacy=("non-private",) if args.no_private else
                            STREAM_PRIVACY + (("user-level-window",) if args.window_budget else ()),
                            command=" ".join(["fedrec"] + sys.argv[1:]), say=_log)
        _log(f"report: {report}")
        return 0
    if args.name == "frontier":
        from fedrec_app.simulations.studies.frontier import DEFAULT_MECHANISMS, run_frontier

        report = run_frontier(Path(args.out), data=args.data, mechanisms=tuple(args.mechanisms or DEFAULT_MECHANISMS),
                              epsilons=tuple(args.epsilons or (1.0, 2.0, 4.0, 8.0)),
                              populations=tuple(args.users or (0,)), seeds=args.seeds or 3, rounds=args.rounds,
                              command=" ".join(["fedrec"] + sys.argv[1:]), overrides=overrides, say=_log)
        _log(f"report: {report}")
        return 0
    if args.name in STUDIES:
        run_study(args.name, Path(args.out), data=args.data, seeds=args.seeds, rounds=args.rounds,
                  overrides=overrides, say=_log)
        return 0
    from fedrec_app.simulations.report.markdown import write_report
    from fedrec_app.simulations.studies.runner import run_cells
    from fedrec_app.simulations.studies.sweeps import SWEEPS

    if args.name not in SWEEPS:
        raise ValueError(f"unknown sweep {args.name!r}; choose one of {sorted(STUDIES) + sorted(SWEEPS)}")
    kwargs = {"data": args.data}
    if args.rounds:
        kwargs["rounds"] = args.rounds
    cells = SWEEPS[args.name](**kwargs)
    seeds = list(range(args.seeds or 1))
    out = Path(args.out)
    rows = run_cells(cells, seeds, out, overrides=overrides, say=_log)
    path = write_report(out, args.name, rows, command=" ".join(sys.argv), data=args.data)
    _log(f"report: {path}")
    return 0


def _add_fed_args(p: argparse.ArgumentParser) -> None:
    from fedrec.config import SECTIONS

    add_config_args(p, SECTIONS, required=("out",))
    g = p.add_argument_group("running")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a finished or partial run in --out (default: refuse; --resume continues it)")
    g.add_argument("--resume-with-changes", action="store_true",
                   help="with --resume: accept flags that differ from the recorded run (each change is recorded in "
                        "OUT/run.json; by default a resume continues the run exactly as recorded)")
    g.add_argument("--cpus", type=int, default=None, help="CPUs for the simulation engine (default: all)")
    g.add_argument("--ray-address", default=None,
                   help="run on an existing (multi-machine) Ray cluster, e.g. 'auto' on its head node "
                        "(docs/ray-cluster.md)")
    g.add_argument("--verbose", action="store_true", help="Flower's own logs")
    g.add_argument("--preset", default=None, metavar="NAME|FILE",
                   help="a shipped preset's name or a preset file (`fedrec tune` writes one): its settings for the "
                        "flags not given")


def cmd_track(args) -> int:
    from pathlib import Path

    from fedrec.tracking import log_run, log_tensorboard

    dirs = []
    for d in map(Path, args.runs):
        if (d / "metrics.json").is_file():
            dirs.append(d)
        elif (d / "runs").is_dir():  # a sweep: every finished run in it
            from fedrec_app.simulations.studies.runner import is_replaced

            dirs += sorted(r for r in (d / "runs").iterdir() if (r / "metrics.json").is_file() and not is_replaced(r))
        else:
            raise ValueError(f"{d}: neither a finished run (metrics.json) nor a sweep directory (runs/)")
    if not (args.mlflow or args.tensorboard):
        raise ValueError("give --mlflow URI or --tensorboard DIR (or both)")
    for d in dirs:
        if args.mlflow:
            rid = log_run(d, tracking_uri=args.mlflow, experiment=args.experiment)
            print(f"{d} -> MLflow run {rid}")
        if args.tensorboard:
            print(f"{d} -> TensorBoard {log_tensorboard(d, args.tensorboard)}")
    where = " and ".join(x for x in (args.mlflow and f"{args.mlflow}, experiment {args.experiment!r}",
                                     args.tensorboard and f"TensorBoard {args.tensorboard}") if x)
    print(f"logged {len(dirs)} run(s) to {where}")
    return 0


def _version() -> str:
    """fedrec's version and, in a git checkout, its commit."""
    import subprocess

    from fedrec import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__} ({commit})" if commit else __version__


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for (the git call costs time)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"fedrec {_version()}")
        parser.exit()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser, for ``parser`` as :func:`build_parser` builds it."""
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Privacy-preserving federated recommendation: Flower clients keep user embeddings local, "
                    "the server aggregates item parameters, Opacus provides differential privacy.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show fedrec's version (and git commit) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("baseline", help="centralized baselines (MostPop, EASE, BPR-MF, NCF) on the same splits",
                       description="Fit a centralized baseline on the train split, select on validation, "
                                   "report full-ranking metrics (and labelled sampled metrics) on validation and test.")
    _add_data_args(p)
    _add_eval_args(p)
    p.add_argument("--model", default="ease",
                   help="mostpop, private-mostpop (DP item counts at --epsilon), ease, bpr-mf, or a federated model "
                        "trained centrally: mf, gmf, mlp, neumf, two-tower, the sequential sasrec and gru4rec, "
                        "path/to/file.py:ClassName (default: ease)")
    p.add_argument("--epsilon", type=float, default=0.0,
                   help="private-mostpop: user-level epsilon of the one release (covers every interaction too)")
    p.add_argument("--delta", type=float, default=1e-5, help="private-mostpop: delta (default 1e-5)")
    p.add_argument("--out", required=True, help="output directory (metrics.json, config.json, id_map.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out (default: refuse)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--ease-lambdas", default="10,20,50,100,200,300,500,1000",
                   help="EASE: lambdas tried, picked on validation NDCG@10")
    p.add_argument("--dim", type=int, default=64, help="embedding dimension (default 64)")
    p.add_argument("--epochs", type=int, default=100, help="max epochs; the best on validation is kept (default 100)")
    p.add_argument("--patience", type=int, default=10, help="early stop after N epochs without validation gain")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay (default 0)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch size: pairs (default 1024), or training windows of a sequential model (default 128)")
    p.add_argument("--seq-len", type=int, default=50, help="sequential models: items of the history read (default 50)")
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

    p = sub.add_parser("tune", help="search a preset's settings on validation; writes a preset file",
                       description="Trials of `fedrec simulate` with settings drawn by Optuna, scored on validation "
                                   "NDCG@10; the best trial's settings go to OUT/preset.toml (`fedrec simulate "
                                   "--preset OUT/preset.toml`). For a private base run the selection is accounted by "
                                   "default (Papernot & Steinke: a secret random number of trials, random search, "
                                   "noisy scores; its epsilon is written with the preset); `--selection not-covered` "
                                   "runs a fixed number of adaptive (TPE) trials whose selection no epsilon covers.")
    from fedrec.config import SECTIONS

    add_config_args(p, SECTIONS, required=("out",))
    g = p.add_argument_group("search")
    g.add_argument("--selection", choices=("accounted", "not-covered"), default=None,
                   help="accounted (default for a private base run) or not-covered (default without DP)")
    g.add_argument("--trials", type=int, default=20, help="not-covered: the number of trials (default 20)")
    g.add_argument("--trials-mean", type=float, default=10.0,
                   help="accounted: the mean of the secret random number of trials (default 10)")
    g.add_argument("--trials-shape", type=float, default=0.0,
                   help="accounted: its distribution: 0 logarithmic (default), 1 geometric, other > 0 truncated "
                        "negative binomial, inf Poisson")
    g.add_argument("--score-noise", type=float, default=2.0,
                   help="accounted: noise multiplier of each trial's validation score (sum of per-user NDCG@10, "
                        "sensitivity 1; default 2)")
    g.add_argument("--vary", action="append", default=None, metavar="KEY=SPEC",
                   help="a setting to search instead of the default space: KEY=log:LOW:HIGH, KEY=float:LOW:HIGH, "
                        "KEY=int:LOW:HIGH or KEY=choice:A,B,C (repeat the flag; default: the space of the base run's "
                        "mechanism, see docs/guides/tuning.md)")
    g.add_argument("--cpus", type=int, default=None, help="CPUs for the simulation engine (default: all)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("privacy", help="epsilon for a mechanism, or the noise for a target epsilon (no training)",
                       description="Opacus accountant for the Poisson-subsampled Gaussian mechanism.")
    p.add_argument("--noise-multiplier", type=float, default=None,
                   help="noise std / clipping norm of each step: prints the epsilon it reaches")
    p.add_argument("--target-epsilon", type=float, default=None,
                   help="prints the smallest noise multiplier that stays within this epsilon")
    p.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate per step")
    p.add_argument("--steps", type=int, required=True, help="number of steps (compositions)")
    p.add_argument("--delta", type=float, default=1e-5, help="delta of the (epsilon, delta) guarantee (default 1e-5)")
    p.add_argument("--accountant", default="rdp", choices=["rdp", "prv", "gdp"], help="Opacus accountant (default rdp)")
    p.add_argument("--unit", default="interaction", choices=["interaction", "user"],
                   help="what one step's sample is: an interaction (client DP-SGD) or a user (server-side)")
    p.set_defaults(func=cmd_privacy)

    p = sub.add_parser("sweep", help="experiment sweeps with tables and a report (resumable)",
                       description="Run a named sweep of federated runs (cells x seeds) through Flower's simulation "
                                   "engine. Finished cells are kept and skipped when run again.")
    p.add_argument("name", help="'default' (the main study, ~15 min on 2 cores), 'full' (every level), 'population', "
                                "'models' (every model federated and centralized, non-private and epsilon 8 in "
                                "each unit), 'frontier' (every privacy mechanism x epsilon x seed beside its "
                                "non-private twin, MostPop and private MostPop), 'sequential' (SASRec and GRU4Rec "
                                "beside MF: accuracy, user-level epsilon 8, the zero-training user cold-start curve), "
                                "'attacks' (poisoning attacks x defences x malicious fraction: target exposure), "
                                "'stream' (rounds follow the timestamps: prequential NDCG@10 per window of a "
                                "continuing and a frozen model, drift, epsilon over time), 'headline' (the README's "
                                "headline table for --data: MostPop, EASE, federated MF, the chosen mechanism at "
                                "epsilon 8 in each unit beside private MostPop, federated and centralized SASRec and "
                                "GRU4Rec; OUT/headline.md), 'tiny' (smoke test) or 'dp-levels'")
    p.add_argument("--out", required=True, help="sweep directory (runs/, results.csv, results.json, plots, report.md)")
    p.add_argument("--data", default="ml-latest-small",
                   help="any dataset the loaders read (default: bundled ml-latest-small)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default: the study's, 3)")
    p.add_argument("--rounds", type=int, default=None, help="override the rounds of every cell")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every federated cell (repeatable; keys as `fedrec simulate` "
                        "spells them, e.g. --set server-lr=1e-3 --set user-sample-rate=0.02); the run records keep "
                        "it, so a sweep run again with other values reruns the cells (finished runs are kept aside)")
    p.add_argument("--models", nargs="+", default=None,
                   help="'models' and 'sequential': which models (models' default: mf gmf mlp neumf two-tower; "
                        "the sequential sasrec and gru4rec; path.py:Class works too)")
    p.add_argument("--fractions", nargs="+", type=float, default=None,
                   help="'attacks' only: malicious fractions of the users (default: 0.01 0.05)")
    p.add_argument("--attacks", nargs="+", default=None,
                   help="'attacks' only: which attacks: boost, fedrecattack, ahum (synthetic hard users), disguise "
                        "(popularity disguise) (targeted), cluster (untargeted "
                        "ClusterAttack-style); add +inflate to any (fedrecattack+inflate) for sample-size inflation "
                        "(default: boost fedrecattack)")
    p.add_argument("--server", choices=("adam", "fedavg"), default="adam",
                   help="'attacks' only: the server of every cell: adam (fedrec's default, Adam 5e-3) or fedavg (plain "
                        "FedAvg, server SGD lr 20, as in the attack papers) (default: adam)")
    p.add_argument("--defences", nargs="+", default=None,
                   help="'attacks' only: which defences (default: none row-bounds user-dp; also row-bounds+user-dp, "
                        "adam-eps, and Flower's robust strategies over nodes of 16 users: median trimmed-mean krum "
                        "multikrum bulyan)")
    p.add_argument("--no-private", action="store_true",
                   help="'models', 'sequential' and 'stream': the non-private cells only")
    p.add_argument("--windows", type=int, default=6, help="'stream' only: time windows after the warm-up (default 6)")
    p.add_argument("--warmup", type=float, default=0.5,
                   help="'stream' only: share of the interactions before the first window (default 0.5)")
    p.add_argument("--warmup-rounds", type=int, default=150,
                   help="'stream' only: rounds on the warm-up, after which --rounds (default 20 there) is the rounds "
                        "of each window (default 150)")
    p.add_argument("--window-budget", action="store_true",
                   help="'stream' only: also run user-level DP with a budget per window (epsilon 8 for each window's "
                        "rounds, composed over the windows) beside the budget over the whole stream")
    p.add_argument("--mechanisms", nargs="+", default=None,
                   help="'frontier' only: private-als (user- and interaction-level), dp-sgd (interaction-level), "
                        "dp-fedavg (user-level) (default: these three), dp-fest (both units: DP-SGD/DP-FedAvg on the "
                        "items the DP prior ranks highest), sasrec-dp-fedavg and sasrec-dp-fedadam (user-level, the "
                        "sequential SASRec; server SGD or Adam)")
    p.add_argument("--epsilons", nargs="+", type=float, default=None,
                   help="'frontier' only: target epsilons (default: 1 2 4 8)")
    p.add_argument("--users", nargs="+", type=int, default=None,
                   help="'frontier' only: population sizes, users drawn with a fixed seed and nested (default: all "
                        "users; 0 = all)")
    p.set_defaults(func=cmd_sweep)

    from fedrec_app import deploy

    p = sub.add_parser("deploy", help="run fedrec on Flower's deployment engine (SuperLink + SuperNodes) locally",
                       description="Start a SuperLink and one SuperNode per user cohort on localhost (TLS and "
                                   "SuperNode authentication unless --insecure), run the app with `flwr run`, "
                                   "and stop every process it started.")
    deploy.build_parser(p)
    p.set_defaults(func=deploy.run)

    p = sub.add_parser("data", help="list the datasets fedrec can fetch, or fetch one into the cache",
                       description="`fedrec data list` shows every registered dataset, its licence terms, its checksum "
                                   "source and whether it is cached; `fedrec data fetch NAME` downloads it from its "
                                   "publisher, verifies its checksum, shows its terms and unpacks it into the cache "
                                   "($FEDREC_DATA, default ~/.cache/fedrec), where --data NAME finds it.")
    p.add_argument("action", choices=["list", "fetch"], help="list or fetch")
    p.add_argument("name", nargs="*", help="fetch: dataset name(s), e.g. ml-100k ml-1m")
    p.add_argument("--root", default=None, help="dataset cache (default: $FEDREC_DATA or ~/.cache/fedrec)")
    p.add_argument("--mirror", default=None,
                   help="base URL of a mirror that serves the publisher's file names (default: the publisher)")
    p.add_argument("--force", action="store_true", help="fetch again even if the dataset is cached")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("track", help="log finished runs to MLflow or TensorBoard (config, per-round metrics, privacy)",
                       description="Log run directories (or every run of a sweep directory) to an MLflow tracking "
                                   "store: the config as parameters, every round's metrics at step = round (@ "
                                   "written _at_), the selected round's metrics and the privacy spent, the reports "
                                   "and plots as artefacts; and/or the same metrics as TensorBoard scalars. Never "
                                   "the nodes' state. Needs mlflow (pip install mlflow-skinny) or tensorboard.")
    p.add_argument("runs", nargs="+", help="run directories, or sweep directories (their runs/*)")
    p.add_argument("--mlflow", default="",
                   help="MLflow tracking URI, e.g. sqlite:///runs/mlflow.db (a local file, no server needed)")
    p.add_argument("--tensorboard", default="",
                   help="TensorBoard log directory: each run's scalars under DIR/<run name> (tensorboard --logdir DIR)")
    p.add_argument("--experiment", default="fedrec", help="MLflow experiment (default fedrec; created if missing)")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("run-default",
                       help="the main job: the default study (fedrec sweep default) on bundled ml-latest-small")
    p.add_argument("--out", default="runs/default", help="study directory (default runs/default)")
    p.set_defaults(func=cmd_run_default)
    return parser


#: Errors whose message is already the one line a user needs (it names the flag or file and the value).
_SELF_EXPLAINING = ("ValueError", "FileNotFoundError", "DataFormatError", "CheckpointError", "UsageError",
                    "RunDirError", "DeployError", "FetchError", "NodeFailure")


def error_line(e: BaseException) -> str:
    """One line for an error: a bad config value names its flag and value."""
    from fedrec.config import ConfigError

    first = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, ConfigError):
        return f"{config_flag(e.key)} {e.value}: {e.why}"
    if type(e).__name__ in _SELF_EXPLAINING:
        return first or type(e).__name__
    return f"{type(e).__name__}: {first} (FEDREC_DEBUG=1 shows the traceback)"


def main(argv: list[str] | None = None) -> int:
    import signal

    from fedrec_app.simulations.cli.console import ENGINE_CHATTER, console_log
    from fedrec_app.simulations.cli.signals import interruptible

    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["fedrec", *(sys.argv[1:] if argv is None else argv)]  # what run.json records
    previous = interruptible()
    logged = getattr(args, "out", None) if args.command in _LOGGED else None
    try:
        with console_log(logged, drop=() if getattr(args, "verbose", False) else ENGINE_CHATTER):  # OUT/log.txt
            return _run(args)
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


#: Commands whose run directory keeps a log of the console.
_LOGGED = ("simulate", "baseline", "sweep", "run-default", "deploy", "tune")


def _run(args) -> int:
    import os
    import signal
    import threading

    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        out = getattr(args, "out", None)
        resume = (f"; the last complete round is kept in {out}/checkpoint: run the same command with --resume to "
                  "continue" if out and (Path(out) / "checkpoint").is_dir() else "")
        if args.command in ("sweep", "run-default") and out and Path(out).is_dir():
            resume = ("; run the same command to continue: finished runs are kept and the interrupted one resumes "
                      "from its checkpoint")
        print(f"fedrec: interrupted ({signal.Signals(signum).name}){resume}", file=sys.stderr, flush=True)
        code = 128 + int(signum)
        if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            sys.stdout.flush()
            os._exit(code)  # a thread of a library still waits: do not wait for it
        return code
    except Exception as e:  # every error is one line (FEDREC_DEBUG=1: the traceback too)
        if os.environ.get("FEDREC_DEBUG"):
            raise
        print(f"fedrec: error: {error_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
