"""One local deployment from start to end: :func:`deploy`.

Checks the run config against the app (nothing is started, and nothing is left
behind, if it is refused), plans the federation (one SuperNode per cohort of
users), writes each node's data, the TLS material and the node keys, starts the
SuperLink, registers the SuperNodes' public keys, starts the SuperNodes, submits
the app with ``flwr run APP fedrec-deploy --run-config RUN.toml --stream``, waits
for it, and stops every process it started (:class:`~.processes.Supervisor`),
also on errors, on Ctrl-C and on SIGTERM.  The outcome is a :class:`DeployResult`,
also written to ``WORKDIR/deploy.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedrec.results import check_run_dir

from .appdir import _app_config, _toml_value, _write_toml_table, write_app_dir
from .certificates import CertPaths, generate_certificates, generate_node_keys
from .errors import DeployError
from .processes import (
    HOST,
    TAG_ENV,
    Supervisor,
    _child_subreaper,
    _flower_bin,
    _port_open,
    _program,
    _tail,
    _wait_for,
    free_ports,
)

__all__ = ["CONNECTION", "DeployError", "DeployResult", "deploy", "plan_nodes"]

#: The name of the SuperLink connection in the deployment's ``FLWR_HOME/config.toml``.
CONNECTION = "fedrec-deploy"


def _say(msg: str) -> None:
    """One progress line of ``fedrec deploy`` on stdout."""
    print(f"[fedrec {time.strftime('%H:%M:%S')}] deploy: {msg}", flush=True)


# --------------------------------------------------------------------------
# the run config and the federation
# --------------------------------------------------------------------------


def plan_nodes(run_config: dict) -> int:
    """Number of SuperNodes for a run config, as the app computes it.

    Parameters
    ----------
    run_config
        Run-config keys (with or without their section).

    Returns
    -------
    int
        The number of user cohorts: users with training data / users-per-node, rounded up.
    """
    return _plan(run_config).n_nodes


def _plan(run_config: dict) -> Any:
    """The federation of this run config (validated; an unreachable epsilon fails here)."""
    from fedrec.config import FedConfig
    from fedrec.federated.algorithms import check_run
    from fedrec.federated.federation import load_federation
    from fedrec.privacy.calibration import resolved

    cfg = resolved(FedConfig.from_run_config(run_config))
    check_run(cfg)
    return load_federation(cfg)


def _choose_privacy(fused: dict, overrides: dict, fed: Any) -> tuple[dict, dict]:
    """With ``privacy-unit`` and ``epsilon`` in the run config: the chosen mechanism's
    settings as explicit run-config keys (the apps run them as given; the keys the user
    set keep their values), said in one line."""
    from fedrec.config import FedConfig, run_key
    from fedrec.presets import apply_choice

    cfg = FedConfig.from_run_config(fused)
    given = {run_key(k).split(".")[-1].replace("-", "_") for k in overrides}
    chosen, choice = apply_choice(cfg, fed.dataset.name, fed.dataset.n_users, given)
    if choice is None:
        return fused, overrides
    _say(f"privacy: {choice.line()}")
    changed = {run_key(f.name): getattr(chosen, f.name) for f in dataclasses.fields(chosen)
               if getattr(chosen, f.name) != getattr(cfg, f.name)}
    overrides = {**overrides, **changed}
    return {**fused, **changed}, overrides


def _parse_kv(items: list[str] | None) -> dict:
    """``--run-config 'k1=v1 k2="text"'`` (TOML values), as Flower parses it."""
    import tomllib

    out: dict = {}
    pattern = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
    for item in items or []:
        matches = pattern.findall(item)
        if not matches:
            raise DeployError(f"--run-config {item!r}: expected KEY=VALUE pairs")
        try:
            out.update(tomllib.loads("\n".join(f'"{k}" = {v}' for k, v in matches)))
        except tomllib.TOMLDecodeError:
            # a bare word: treat it as a string
            for k, v in matches:
                try:
                    out.update(tomllib.loads(f'"{k}" = {v}'))
                except tomllib.TOMLDecodeError:
                    out[k] = v
    return out


def _prepare(overrides: dict, *, out: Path, workdir: Path, app: str | Path | None, overwrite: bool,
             exact_evaluation: bool, max_nodes: int) -> tuple[Path, dict, dict, Any]:
    """Check the run config against the app and plan the federation, before anything starts.

    Returns ``(app directory, overrides, run config, federation)``: the overrides with
    their sections, ``out`` and the evaluation and privacy choices made explicit; the run
    config, the app's defaults with the overrides.  Bad input loses nothing and leaves
    nothing behind: what this created (``out``, ``workdir``) is removed before
    :class:`DeployError` is raised.
    """
    created = [d for d in (out, workdir) if not d.exists()]
    try:
        app_dir = Path(app).resolve() if app else write_app_dir(workdir / "app")
        from fedrec.config import run_key, sectioned_run_config

        defaults = _app_config(app_dir)
        overrides = sectioned_run_config(overrides)  # keys with or without their section
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise DeployError(f"run-config keys {unknown} are not in [tool.flwr.app.config] of "
                              f"{app_dir / 'pyproject.toml'}; Flower only overrides existing keys: {sorted(defaults)}")
        overrides[run_key("out")] = str(out)
        # evaluation replies are exact metric sums of a node's users: no epsilon covers them, so a
        # deployment runs without evaluation unless a test deployment asks for it
        if not exact_evaluation:
            if float(overrides.get(run_key("eval-every"), 0)) > 0:
                raise DeployError(f"--eval-every {overrides[run_key('eval-every')]}: evaluation replies are exact "
                                  "metric sums of each node's users on their held-out items, covered by no epsilon; a "
                                  "deployment runs without them (--eval-every 0, the default here) unless "
                                  "--exact-evaluation says so")
            overrides[run_key("eval-every")] = 0
        if str(overrides.get(run_key("reproducible-noise"), "")).lower() in ("true", "1", "yes"):
            raise DeployError("--reproducible-noise: a deployment draws every party's DP noise from its own secret "
                              "randomness; noise derived from the run's seed is for simulations only")
        fused = {**defaults, **overrides}
        try:
            check_run_dir(out, resume=bool(fused.get(run_key("resume"))), overwrite=overwrite)
        except ValueError as e:
            raise DeployError(str(e)) from None
        try:
            fed = _plan(fused)
            fused, overrides = _choose_privacy(fused, overrides, fed)  # --privacy UNIT --epsilon E
        except (ValueError, FileNotFoundError) as e:
            from fedrec.config import ConfigError
            from fedrec_app.simulations.cli.flags import config_flag

            if isinstance(e, ConfigError):
                raise DeployError(f"{config_flag(e.key)} {e.value}: {e.why}") from None
            raise DeployError(str(e).splitlines()[0]) from None
        n_nodes = fed.n_nodes
        if n_nodes > max_nodes:
            raise DeployError(f"{n_nodes} SuperNodes needed (users-per-node={fused.get(run_key('users-per-node'))}) "
                              f"but --max-nodes is {max_nodes}: raise --users-per-node or --max-nodes")
        if fused.get(run_key("secure-aggregation")):
            from fedrec_app.server.secure import check_nodes

            try:
                check_nodes(n_nodes, fused.get(run_key("users-per-node")), what="SuperNodes")
            except ValueError as e:
                raise DeployError(str(e)) from None
    except DeployError:
        for d in created:
            shutil.rmtree(d, ignore_errors=True)
        raise
    return app_dir, overrides, fused, fed


# --------------------------------------------------------------------------
# the deployment's environment, TLS material and Flower configuration
# --------------------------------------------------------------------------


def _flower_env(flwr_home: Path, tag: str) -> dict[str, str]:
    """The environment of every process of the deployment: this Python's programs first on
    PATH, its own Flower home, no telemetry, no update check, and the deployment's tag."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "PYTHONUNBUFFERED": "1",
        TAG_ENV: tag,
    })
    for k in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        env.pop(k, None)
    return env


def _tls_material(certs: str | Path | None, workdir: Path, n_nodes: int, *, secure: bool,
                  auth: bool) -> tuple[CertPaths | None, list[tuple[Path, Path]] | None]:
    """The certificates (``certs`` if given, else fresh ones in ``WORKDIR/certs``) and, with
    ``auth``, one key pair per SuperNode (``WORKDIR/keys``); ``(None, None)`` without TLS."""
    cert_paths = node_keys = None
    if secure:
        if certs:
            c = Path(certs).expanduser().resolve()
            cert_paths = CertPaths(c / "ca.crt", c / "server.crt", c / "server.key")
            missing = [str(p) for p in (cert_paths.ca, cert_paths.cert, cert_paths.key) if not p.is_file()]
            if missing:
                raise DeployError(f"--certs {c}: missing {missing} (need ca.crt, server.crt, server.key)")
        else:
            cert_paths = generate_certificates(workdir / "certs")
        if auth:
            node_keys = generate_node_keys(workdir / "keys", n_nodes)
    return cert_paths, node_keys


def _write_connection(flwr_home: Path, address: str, cert_paths: CertPaths | None, *, secure: bool) -> None:
    """``FLWR_HOME/config.toml``: the SuperLink connection :data:`CONNECTION` the ``flwr`` CLI uses."""
    conn = [f"[superlink]\ndefault = \"{CONNECTION}\"\n\n[superlink.{CONNECTION}]\naddress = \"{address}\"\n"]
    conn.append(f"root-certificates = {json.dumps(str(cert_paths.ca))}\n" if secure else "insecure = true\n")
    (flwr_home / "config.toml").write_text("".join(conn))


# --------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------


@dataclass
class DeployResult:
    """What a deployment did (also written to ``WORKDIR/deploy.json``).

    Parameters
    ----------
    ok
        The run completed, wrote its metrics, and every process was stopped.
    run_id, status
        Flower's run id and final status (``finished:completed``), where known.
    out, workdir
        The run directory and the deployment's directory (logs, certificates, keys, Flower home).
    n_nodes
        SuperNodes started.
    ports
        ``{"superlink": port, "supernodes": [port, ...]}``.
    secure, auth
        TLS, SuperNode authentication.
    seconds
        Wall time of the whole deployment.
    seen
        ``{pid: command}`` of every process of the deployment.
    survivors
        ``{pid: command}`` of the processes still alive after shutdown (should be empty).
    error
        Why the run failed, or None.
    """

    ok: bool
    run_id: str | None
    status: str | None
    out: Path
    workdir: Path
    n_nodes: int
    ports: dict
    secure: bool
    auth: bool
    seconds: float
    seen: dict = field(default_factory=dict)  # pid -> command of every process of the deployment
    survivors: dict = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict:
        """The result as JSON-ready values (paths and pids as strings)."""
        d = dict(self.__dict__)
        d["out"], d["workdir"] = str(self.out), str(self.workdir)
        d["seen"] = {str(k): v for k, v in self.seen.items()}
        d["survivors"] = {str(k): v for k, v in self.survivors.items()}
        return d


class _Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived during the deployment (the signal's name is the message)."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: turn the signal into :class:`_Interrupted`."""
    raise _Interrupted(signal.Signals(signum).name)


def _start_wall(t0_monotonic: float) -> float:
    """Wall-clock time (less a second) of the monotonic instant ``t0_monotonic``."""
    return time.time() - (time.monotonic() - t0_monotonic) - 1.0


# --------------------------------------------------------------------------
# the processes
# --------------------------------------------------------------------------


def _start_superlink(sup: Supervisor, *, insecure: bool, auth: bool, cert_paths: CertPaths | None, link_port: int,
                     address: str, logs: Path, startup_timeout: float) -> None:
    """Start the SuperLink (Control, Fleet and Runtime APIs on ``link_port``) and wait until it listens."""
    tls_link = ([] if insecure else
                ["--ssl-ca-certfile", str(cert_paths.ca), "--ssl-certfile", str(cert_paths.cert),
                 "--ssl-keyfile", str(cert_paths.key)])
    cmd = [_flower_bin("flower-superlink"), *(["--insecure"] if insecure else tls_link),
           "--host", HOST, "--port", str(link_port), "--disable-runtime-dependency-installation"]
    if auth:
        cmd.append("--enable-supernode-auth")
    sup.start("superlink", cmd, logs / "superlink.log")
    _wait_for(f"the SuperLink on {address}", lambda: _port_open(link_port), startup_timeout, sup,
              names=("superlink",))


def _register_nodes(sup: Supervisor, flwr: str, pubs: list[Path], logs: Path, workdir: Path, timeout: float,
                    parallel: int = 4) -> None:
    """``flwr supernode register KEY.pub fedrec-deploy`` for every key (a few at a time)."""
    for start in range(0, len(pubs), parallel):
        batch = []
        for p in range(start, min(start + parallel, len(pubs))):
            cmd = [flwr, "supernode", "register", str(pubs[p]), CONNECTION, "--name", f"fedrec-node-{p}",
                   "--format", "json"]
            batch.append((pubs[p], sup.start(f"register-{p}", cmd, logs / f"register-{p}.log", cwd=workdir,
                                             stdout_pipe=True)))
        for pub, proc in batch:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DeployError(f"flwr supernode register {pub} did not finish within {timeout:.0f}s") from None
            text = out.decode(errors="replace")
            with open(logs / f"register-{pubs.index(pub)}.log", "a") as f:
                f.write(text)
            if proc.returncode != 0 or '"success": true' not in text:
                raise DeployError(f"flwr supernode register {pub} failed ({proc.returncode}):\n{text[-2000:]}")


def _start_supernodes(sup: Supervisor, *, n_nodes: int, insecure: bool, auth: bool, cert_paths: CertPaths | None,
                      node_keys: list[tuple[Path, Path]] | None, address: str, node_ports: list[int], nodes: Path,
                      logs: Path, startup_timeout: float) -> None:
    """Start one SuperNode per user cohort (node ``P`` reads ``nodes/node-P.npz``) and wait until all connect."""
    tls_node = ["--insecure"] if insecure else ["--root-certificates", str(cert_paths.ca)]
    runtime_tls = ([] if insecure else
                   ["--ssl-certfile", str(cert_paths.cert), "--ssl-keyfile", str(cert_paths.key),
                    "--ssl-ca-certfile", str(cert_paths.ca)])
    for p in range(n_nodes):
        cmd = [_flower_bin("flower-supernode"), *tls_node, "--superlink", address,
               "--host", HOST, "--port", str(node_ports[p]), *runtime_tls,
               "--node-config", f"partition-id={p} num-partitions={n_nodes} "
                                 f"data-file=\"{nodes / f'node-{p}.npz'}\"",
               "--max-wait-time", str(int(startup_timeout))]
        if auth:
            cmd += ["--auth-supernode-private-key", str(node_keys[p][0])]
        sup.start(f"supernode-{p}", cmd, logs / f"supernode-{p}.log")

    waiting = set(range(n_nodes))

    def connected() -> bool:
        for p in sorted(waiting):
            if "SuperNode ID:" in (logs / f"supernode-{p}.log").read_text(errors="replace"):
                waiting.discard(p)
        return not waiting

    try:
        _wait_for(f"{n_nodes} SuperNodes to connect", connected, startup_timeout, sup)
    except DeployError as e:
        if waiting:
            first = min(waiting)
            raise DeployError(f"{e}: SuperNodes {sorted(waiting)} did not connect; "
                              f"{logs / f'supernode-{first}.log'}:\n{_tail(logs / f'supernode-{first}.log')}"
                              ) from None
        raise
    sup.tracked()
    _say(f"{n_nodes} SuperNodes connected (runtime API ports {node_ports[0]}..{node_ports[-1]})")


def _run_app(sup: Supervisor, result: DeployResult, *, flwr: str, app_dir: Path, run_toml: Path, overrides: dict,
             out: Path, logs: Path, workdir: Path, verbose: bool, timeout: float, t0: float) -> None:
    """``flwr run APP fedrec-deploy --run-config RUN.toml --stream`` until it ends; check that the run
    completed and wrote its metrics (else :class:`DeployError`), and record it in ``result``."""
    cmd = [flwr, "run", str(app_dir), CONNECTION, "--run-config", str(run_toml), "--stream"]
    _say("$ " + " ".join(cmd) + "   # run config: " +
         " ".join(f"{k}={_toml_value(v)}" for k, v in overrides.items()))
    runp = sup.start("flwr-run", cmd, logs / "flwr-run.log", cwd=app_dir, stdout_pipe=True)
    run_id: list[str] = []
    reader = threading.Thread(target=_pump, args=(runp, logs / "flwr-run.log", verbose, run_id), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    last_scan = 0.0
    while runp.poll() is None:
        if time.monotonic() >= deadline:
            raise DeployError(f"the run did not finish within --timeout {timeout:.0f}s")
        sup.check_alive()
        if time.monotonic() - last_scan > 1.0:
            sup.tracked()
            last_scan = time.monotonic()
        time.sleep(0.2)
    reader.join(timeout=10)
    result.run_id = run_id[0] if run_id else None
    if runp.returncode != 0:
        raise DeployError(f"flwr run exited with status {runp.returncode}; log {logs / 'flwr-run.log'}:\n"
                          f"{_tail(logs / 'flwr-run.log')}")
    if result.run_id:
        result.status = _run_status(sup, flwr, result.run_id, logs, workdir)
    metrics = out / "metrics.json"
    if result.status and not result.status.endswith("completed"):
        raise DeployError(f"run {result.run_id} ended as {result.status!r}; see {logs}")
    if not metrics.is_file() or metrics.stat().st_mtime < _start_wall(t0):
        raise DeployError(f"the run ended ({result.status}) without writing {metrics}; see {logs}")
    result.ok = True
    _say(f"run {result.run_id} {result.status}; wrote {metrics}")


def _pump(p: subprocess.Popen, log: Path, verbose: bool, run_id: list[str]) -> None:
    """Copy ``flwr run --stream`` output to its log; echo fedrec's own lines (all with verbose)."""
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    with open(log, "ab") as f:
        for raw in iter(p.stdout.readline, b""):
            f.write(raw)
            f.flush()
            line = ansi.sub("", raw.decode(errors="replace")).rstrip("\n")
            m = re.search(r"Successfully started run (\d+)", line)
            if m and not run_id:
                run_id.append(m.group(1))
            if verbose or "[fedrec " in line or "ERROR" in line or m:
                print(line, flush=True)


def _run_status(sup: Supervisor, flwr: str, run_id: str, logs: Path, workdir: Path) -> str | None:
    """The run's status as ``flwr ls`` reports it (``finished:completed``), or None if unreadable."""
    rc, text = sup.run_quick("flwr-ls", [flwr, "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                             logs / "flwr-ls.log", timeout=60, cwd=workdir)
    try:
        doc = json.loads(text[text.index("{"):])
        return str(doc["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return None


def _reap_adopted(sup: Supervisor, timeout: float) -> None:
    """Wait (bounded) until the deployment's adopted orphans are reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.reap()
        if not sup.adopted_zombies():
            return
        time.sleep(0.05)


def _report(result: DeployResult, sup: Supervisor, survivors: dict[int, str], t0: float, workdir: Path) -> None:
    """Complete ``result`` once everything is stopped, say how it ended, and write ``WORKDIR/deploy.json``."""
    result.seen = dict(sup.seen)
    result.survivors = survivors
    result.seconds = time.monotonic() - t0
    if survivors:
        result.ok = False
        msg = "processes still alive after shutdown: " + "; ".join(f"{p} {c}" for p, c in survivors.items())
        result.error = (result.error + "; " if result.error else "") + msg
        _say(msg)
    else:
        progs = sorted({_program(c) or "flwr" for c in result.seen.values()})
        _say(f"stopped all {len(result.seen)} processes ({', '.join(progs)}); {result.seconds:.1f}s in all")
    try:
        (workdir / "deploy.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    except OSError:
        pass


# --------------------------------------------------------------------------
# the deployment
# --------------------------------------------------------------------------


def deploy(
    overrides: dict,
    *,
    out: str | Path,
    app: str | Path | None = None,
    workdir: str | Path | None = None,
    insecure: bool = False,
    auth: bool = True,
    certs: str | Path | None = None,
    max_nodes: int = 128,
    startup_timeout: float = 120.0,
    timeout: float = 86400.0,
    shutdown_timeout: float = 5.0,
    verbose: bool = False,
    overwrite: bool = False,
    exact_evaluation: bool = False,
    on_ready: Callable[[dict], None] | None = None,
) -> DeployResult:
    """Start SuperLink + SuperNodes, run the app with ``overrides``, wait, stop everything.

    Parameters
    ----------
    overrides
        Run-config keys (with or without their section) over the app's ``[tool.flwr.app.config]``.
    out
        The run directory the ServerApp writes.
    app
        Flower app directory (default: the installed fedrec app, written to ``WORKDIR/app``).
    workdir
        Logs, certificates, keys, Flower home (default ``OUT/deploy``).
    insecure
        Plain HTTP and no SuperNode authentication (local tests only).
    auth
        SuperNode authentication (needs TLS: off with ``insecure``).
    certs
        Directory with ``ca.crt``, ``server.crt``, ``server.key`` (default: fresh ones).
    max_nodes
        Refuse to start more SuperNodes than this.
    startup_timeout
        Seconds for the SuperLink to listen and every SuperNode to connect.
    timeout
        Seconds for the whole run.
    shutdown_timeout
        Seconds between SIGTERM and SIGKILL at shutdown.
    verbose
        Echo all of Flower's run log, not only fedrec's lines.
    overwrite
        Replace a run already in ``out``.
    exact_evaluation
        Let nodes reply with exact metric sums (covered by no epsilon; test deployments).
    on_ready
        For tests: called once every SuperNode is connected, before the run, with the
        supervisor, the SuperLink address, the CA and the paths.

    Returns
    -------
    DeployResult
        Failures of the run itself are reported here (``ok`` False, ``error``).

    Raises
    ------
    DeployError
        On bad input, before any process is started.
    """
    t0 = time.monotonic()
    out = Path(out).expanduser().resolve()
    workdir = Path(workdir).expanduser().resolve() if workdir else out / "deploy"
    # bad input loses nothing and leaves nothing behind: what planning created goes if it fails
    app_dir, overrides, fused, fed = _prepare(overrides, out=out, workdir=workdir, app=app, overwrite=overwrite,
                                              exact_evaluation=exact_evaluation, max_nodes=max_nodes)
    from fedrec.config import run_key

    n_nodes = fed.n_nodes
    secure = not insecure
    if insecure and auth:
        auth = False  # Flower refuses SuperNode authentication without TLS
    logs = workdir / "logs"
    flwr_home = workdir / "flwr-home"
    for d in (workdir, logs, flwr_home, out):
        d.mkdir(parents=True, exist_ok=True)
    from fedrec.federated.federation import write_node_data, write_plan
    from fedrec.results import data_record, lock_run_dir, record_invocation

    run_lock = lock_run_dir(out)  # one fedrec process per run directory (the kernel drops it with the process)
    try:
        run_lock.__enter__()
    except ValueError as e:
        raise DeployError(str(e)) from None
    record_invocation(out, argv=["fedrec", *sys.argv[1:]], data=data_record(str(fused.get(run_key("data")))))
    # the users' data: private (0700), removed at the end, on errors and signals, and by a watcher if this
    # process is killed outright (fedrec.scratch)
    from fedrec.scratch import scratch_dir

    nodes_scratch = scratch_dir("fedrec-nodes-")
    nodes = Path(nodes_scratch.__enter__())
    write_node_data(fed, nodes)  # each SuperNode reads only its own users' data
    # the ServerApp reads the public plan, never the interactions
    overrides[run_key("federation-plan")] = str(write_plan(fed, nodes))

    tag = uuid.uuid4().hex
    env = _flower_env(flwr_home, tag)
    cert_paths, node_keys = _tls_material(certs, workdir, n_nodes, secure=secure, auth=auth)

    run_toml = workdir / "run-config.toml"
    _write_toml_table(run_toml, overrides)
    # ports: SuperLink (Control + Fleet + Runtime HTTP APIs), one Runtime API port per SuperNode
    ports = free_ports(1 + n_nodes)
    link_port, node_ports = ports[0], ports[1:]
    address = f"{HOST}:{link_port}"
    _write_connection(flwr_home, address, cert_paths, secure=secure)

    result = DeployResult(ok=False, run_id=None, status=None, out=out, workdir=workdir, n_nodes=n_nodes,
                          ports={"superlink": link_port, "supernodes": node_ports}, secure=secure, auth=bool(auth),
                          seconds=0.0)
    sup = Supervisor(env, tag, grace=min(shutdown_timeout, 5.0))

    old_subreaper = _child_subreaper(True)
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        # SIGINT explicitly: Python installs no KeyboardInterrupt handler when SIGINT arrives
        # inherited as ignored (a job started in the background)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old_handlers[sig] = signal.signal(sig, _raise_interrupt)
    _say(f"{n_nodes} SuperNodes for {fused.get(run_key('data'))} "
         f"(users-per-node={fused.get(run_key('users-per-node'))}), "
         f"{'TLS' if secure else 'INSECURE (no TLS)'}{' + SuperNode authentication' if auth else ''}; "
         f"SuperLink on {address}; logs in {logs}")
    try:
        try:
            # 1. SuperLink
            _start_superlink(sup, insecure=insecure, auth=auth, cert_paths=cert_paths, link_port=link_port,
                             address=address, logs=logs, startup_timeout=startup_timeout)

            # 2. register the SuperNodes' public keys (Control API, through the flwr CLI)
            flwr = _flower_bin("flwr")
            if auth:
                _register_nodes(sup, flwr, [pub for _, pub in node_keys], logs, workdir, startup_timeout)
                _say(f"registered {n_nodes} SuperNode public keys")

            # 3. SuperNodes, one per user cohort
            _start_supernodes(sup, n_nodes=n_nodes, insecure=insecure, auth=auth, cert_paths=cert_paths,
                              node_keys=node_keys, address=address, node_ports=node_ports, nodes=nodes, logs=logs,
                              startup_timeout=startup_timeout)
            if on_ready is not None:
                on_ready({"supervisor": sup, "address": address, "ca": cert_paths.ca if secure else None,
                          "workdir": workdir, "logs": logs, "n_nodes": n_nodes, "env": env})

            # 4. the run
            _run_app(sup, result, flwr=flwr, app_dir=app_dir, run_toml=run_toml, overrides=overrides, out=out,
                     logs=logs, workdir=workdir, verbose=verbose, timeout=timeout, t0=t0)
        except DeployError as e:
            result.error = str(e)
            _say(f"error: {e}")
        except (KeyboardInterrupt, _Interrupted) as e:
            result.error = f"interrupted ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
            _say(f"{result.error}: stopping every process")
    finally:
        if old_handlers:  # a second Ctrl-C must not cut the shutdown short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            survivors = sup.shutdown(shutdown_timeout)
            _reap_adopted(sup, 5.0)
        finally:
            if old_subreaper is False:
                _child_subreaper(False)
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
        nodes_scratch.__exit__(None, None, None)  # the users' data goes with the processes that read it
        run_lock.__exit__(None, None, None)
        _report(result, sup, survivors, t0, workdir)
    return result
