"""The ``fedrec deploy`` command line (also ``python -m fedrec_app.deploy``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DeployError
from .orchestrate import _parse_kv, deploy

__all__ = ["build_parser", "run", "main"]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``fedrec deploy``'s arguments to a parser.

    Parameters
    ----------
    parser
        The parser (``fedrec deploy``'s subparser); a new one if None.

    Returns
    -------
    argparse.ArgumentParser
        ``parser``, with a description if it had none.
    """
    if parser is None:
        parser = argparse.ArgumentParser(prog="fedrec deploy")
    if not parser.description:
        parser.description = (
            "Run fedrec on Flower's deployment engine on this machine: one SuperLink and one SuperNode per "
            "cohort of users (users-per-node), TLS and SuperNode authentication by default; every process "
            "is stopped at the end, on error and on Ctrl-C. Run-config options left out keep the app's "
            "[tool.flwr.app.config] defaults.")
    from fedrec.config import SECTIONS
    from fedrec_app.simulations.cli.flags import add_config_args

    parser.add_argument("--out", default="runs/deploy",
                        help="run directory written by the ServerApp (metrics.json, rounds.csv, ...; "
                             "default runs/deploy)")
    add_config_args(parser, tuple(s for s in SECTIONS if s != "outputs"),
                    defaults={"eval_every": 0})  # evaluation replies are covered by no epsilon: off unless asked
    g = parser.add_argument_group("more run config")
    g.add_argument("--run-config", action="append", default=None, metavar="'K=V ...'",
                   help="run-config overrides as TOML values (keys of [tool.flwr.app.config]); repeatable")
    g = parser.add_argument_group("deployment")
    g.add_argument("--insecure", action="store_true",
                   help="plain HTTP, no SuperNode authentication: for local tests only")
    g.add_argument("--no-auth", action="store_true", help="TLS but no SuperNode authentication")
    g.add_argument("--certs", default=None,
                   help="directory with ca.crt, server.crt, server.key to use (default: generate fresh ones)")
    g.add_argument("--app", default=None,
                   help="Flower app directory (default: the installed fedrec app, written to WORKDIR/app)")
    g.add_argument("--workdir", default=None, help="logs, certificates, keys, Flower home (default: OUT/deploy)")
    g.add_argument("--max-nodes", type=int, default=128, help="refuse to start more SuperNodes than this (default 128)")
    g.add_argument("--startup-timeout", type=float, default=120.0,
                   help="seconds for the SuperLink to listen and every SuperNode to connect (default 120)")
    g.add_argument("--timeout", type=float, default=86400.0, help="seconds for the whole run (default 86400)")
    g.add_argument("--shutdown-timeout", type=float, default=5.0,
                   help="seconds between SIGTERM and SIGKILL at shutdown (default 5)")
    g.add_argument("--verbose", action="store_true", help="echo all of Flower's run log, not only fedrec's lines")
    g.add_argument("--exact-evaluation", action="store_true",
                   help="let nodes reply with exact metric sums on their users' held-out items (not covered by any "
                        "epsilon: for test deployments; default: evaluation off, --eval-every 0)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (default: refuse; --run-config resume=true continues it)")
    return parser


def _overrides_from_args(args: argparse.Namespace) -> dict:
    """The run-config overrides of the parsed arguments: ``--run-config`` first, then the options."""
    from fedrec.config import SECTIONS, run_key, sectioned_run_config
    from fedrec_app.simulations.cli.flags import config_overrides

    o = sectioned_run_config(_parse_kv(args.run_config))
    o.update(sectioned_run_config(config_overrides(args, tuple(s for s in SECTIONS if s != "outputs"))))
    if run_key("out") in o:  # --out is the deployment's
        raise DeployError("give the run directory with --out, not --run-config out=...")
    return o


def run(args: argparse.Namespace) -> int:
    """Entry point of ``fedrec deploy``.

    Parameters
    ----------
    args
        Arguments parsed by a parser from :func:`build_parser`.

    Returns
    -------
    int
        0: the run completed and everything was stopped; 1: the run failed or a
        process survived; 2: bad arguments; 130: interrupted.
    """
    try:
        res = deploy(
            _overrides_from_args(args),
            out=args.out, app=args.app, workdir=args.workdir, insecure=args.insecure,
            auth=not (args.no_auth or args.insecure), certs=args.certs, max_nodes=args.max_nodes,
            startup_timeout=args.startup_timeout, timeout=args.timeout, shutdown_timeout=args.shutdown_timeout,
            verbose=args.verbose, overwrite=args.overwrite, exact_evaluation=args.exact_evaluation,
        )
    except DeployError as e:
        print(f"fedrec deploy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any process was started
        print("fedrec deploy: interrupted", file=sys.stderr)
        return 130
    if res.ok:
        return 0
    if (Path(args.out) / "checkpoint" / "checkpoint.npz").is_file():
        print(f"fedrec deploy: the finished rounds are kept in {Path(args.out) / 'checkpoint'}: the same command "
              "with --resume continues the run", file=sys.stderr)
    return 130 if res.error and res.error.startswith("interrupted") else 1


def main(argv: list[str] | None = None) -> int:
    """``fedrec deploy ARGV``: parse ``argv`` (default ``sys.argv[1:]``) and :func:`run` it; the exit status."""
    return run(build_parser().parse_args(argv))
