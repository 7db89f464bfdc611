"""``fedrec deploy``: run the fedrec Flower app on Flower's deployment engine, locally.

Starts one ``flower-superlink`` and N ``flower-supernode`` processes on
127.0.0.1 (ports picked free), binds SuperNode ``P`` to cohort ``P`` of the
users through its node config (``partition-id=P num-partitions=N``), submits
the app with ``flwr run APP fedrec-deploy --run-config RUN.toml --stream``,
waits for the run to finish and then stops every process it started, also on
errors, on Ctrl-C and on SIGTERM.

Secure by default:

* TLS: a fresh CA and a server certificate for ``127.0.0.1``/``localhost``
  signed by it (``cryptography``); the SuperLink serves its Control, Fleet and
  Runtime APIs over HTTPS with them; SuperNodes and the ``flwr`` CLI verify it
  with the CA (``--root-certificates`` / ``root-certificates``); each
  SuperNode's local Runtime API (towards its ClientApp processes) is TLS too.
* SuperNode authentication: the SuperLink runs with
  ``--enable-supernode-auth``; one EC P-384 key pair per SuperNode; every
  public key is registered with ``flwr supernode register`` before the node
  starts with ``--auth-supernode-private-key``.  A node whose key is not
  registered is refused.

``--insecure`` (plain HTTP, no authentication) is for local tests only.

Processes.  Every process is started in its own session, with a unique tag
(``FEDREC_DEPLOY_ID``) in its environment that Flower's own children
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``) inherit, even
those started in a new session.  Shutdown: SIGTERM to every started process
group and every tagged process (found in ``/proc``), then SIGKILL after a
grace period; finally ``/proc`` is scanned again and any survivor is reported
(exit status 1).  See ``docs/deploy.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedrec.results import check_run_dir

__all__ = [
    "main",
    "run",
    "build_parser",
    "deploy",
    "DeployError",
    "DeployResult",
    "Supervisor",
    "CertPaths",
    "generate_certificates",
    "generate_node_keys",
    "free_ports",
    "plan_nodes",
    "flower_processes",
    "FLOWER_PROGRAMS",
    "TAG_ENV",
    "CONNECTION",
]

TAG_ENV = "FEDREC_DEPLOY_ID"
CONNECTION = "fedrec-deploy"
FLOWER_PROGRAMS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp")
HOST = "127.0.0.1"


class DeployError(RuntimeError):
    """The deployment could not be started or did not finish."""


def _say(msg: str) -> None:
    print(f"[fedrec {time.strftime('%H:%M:%S')}] deploy: {msg}", flush=True)


# --------------------------------------------------------------------------
# certificates and keys
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPaths:
    ca: Path  # CA certificate (PEM): what clients trust
    cert: Path  # server certificate (PEM) for 127.0.0.1 / localhost, signed by the CA
    key: Path  # server private key (PEM, PKCS#8)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate_certificates(directory: str | Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                          days: int = 30) -> CertPaths:
    """A self-signed CA and a server certificate for ``hosts`` signed by it.

    Writes ``ca.crt``, ``server.crt`` and ``server.key`` (mode 0600) to
    ``directory``.  The CA's private key is used once and never written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    not_before, not_after = now - _dt.timedelta(hours=1), now + _dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec deploy local CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrec")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    san: list[x509.GeneralName] = []
    for h in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            san.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertPaths(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return paths


def generate_node_keys(directory: str | Path, n: int) -> list[tuple[Path, Path]]:
    """One EC P-384 key pair per SuperNode, OpenSSH format (what Flower reads):
    ``node-P`` (private, 0600) and ``node-P.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for p in range(n):
        k = ec.generate_private_key(ec.SECP384R1())
        priv, pub = d / f"node-{p}", d / f"node-{p}.pub"
        _write_private(priv, k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                    serialization.PublicFormat.OpenSSH) + b" fedrec-node-%d\n" % p)
        out.append((priv, pub))
    return out


# --------------------------------------------------------------------------
# ports, processes
# --------------------------------------------------------------------------


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct TCP ports that are free on ``host`` right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, comm) from /proc, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    lpar, rpar = raw.find("("), raw.rfind(")")
    rest = raw[rpar + 2:].split()
    return int(rest[1]), rest[0], raw[lpar + 1:rpar]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X")


def _all_pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:  # pragma: no cover - not Linux
        return []


def _program(cmd: str) -> str | None:
    """Which Flower program a command line runs (or None)."""
    for part in cmd.split()[:3]:
        base = os.path.basename(part)
        if base in FLOWER_PROGRAMS:
            return base
    for name in FLOWER_PROGRAMS:  # e.g. "[flwr-serverapp]" or a renamed process title
        if name in cmd.split(" ", 1)[0]:
            return name
    return None


def flower_processes(env_marker: str | None = None) -> dict[int, str]:
    """Live (non-zombie) Flower processes on this machine: ``{pid: command line}``.

    With ``env_marker``, only those whose environment contains that string.
    """
    out = {}
    for pid in _all_pids():
        cmd = _cmdline(pid)
        if not cmd or _program(cmd) is None or not _alive(pid):
            continue
        if env_marker is not None and env_marker.encode() not in _environ(pid):
            continue
        out[pid] = cmd
    return out


@dataclass
class _Started:
    name: str
    popen: subprocess.Popen
    log: Path
    logfile: object


class Supervisor:
    """Starts processes (each in its own session, tagged through the environment),
    records every descendant it sees, and stops them all again."""

    def __init__(self, env: dict[str, str], tag: str, *, guard: bool = True, grace: float = 5.0):
        self.env = env
        self.tag = tag
        # each process runs under fedrec_app.simulations.guard: it dies with this process, with its descendants
        self.guard = guard and sys.platform.startswith("linux")
        self.grace = grace
        self.marker = f"{TAG_ENV}={tag}".encode()
        self.started: list[_Started] = []
        self.seen: dict[int, str] = {}  # every tagged/descendant process observed: pid -> command
        self._lock = threading.Lock()

    # -- starting --------------------------------------------------------
    def start(self, name: str, cmd: list[str], log: Path, *, cwd: str | Path | None = None,
              stdout_pipe: bool = False) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(log, "ab")  # noqa: SIM115 - closed in shutdown()
        logfile.write(("$ " + " ".join(cmd) + "\n").encode())
        logfile.flush()
        guarded = [sys.executable, "-m", "fedrec_app.simulations.guard", str(os.getpid()), str(self.grace), "--",
                   *cmd] if self.guard else cmd
        popen = subprocess.Popen(
            guarded,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: no terminal signals, killpg-able
        )
        with self._lock:
            self.started.append(_Started(name, popen, log, logfile))
            self.seen[popen.pid] = " ".join(cmd)
        return popen

    def run_quick(self, name: str, cmd: list[str], log: Path, *, timeout: float,
                  cwd: str | Path | None = None) -> tuple[int, str]:
        """Run a short command (tracked like the others) and return (exit code, output)."""
        p = self.start(name, cmd, log, cwd=cwd, stdout_pipe=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_tree(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)
            raise DeployError(f"{name} did not finish within {timeout:.0f}s: {' '.join(cmd)}") from None
        text = out.decode(errors="replace")
        with open(log, "a") as f:
            f.write(text)
        return p.returncode, text

    # -- bookkeeping -----------------------------------------------------
    def tracked(self) -> dict[int, str]:
        """Live processes that belong to this deployment: the started ones, their
        descendants (by parent pid) and every process carrying the tag."""
        table: dict[int, tuple[int, str]] = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is not None and st[1] not in ("Z", "X"):
                table[pid] = (st[0], st[1])
        roots = {s.popen.pid for s in self.started if s.popen.returncode is None}
        ours = {pid for pid in roots if pid in table}
        for pid in table:
            if pid not in ours and self.marker in _environ(pid):
                ours.add(pid)
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(ours)
        while stack:
            for c in children.get(stack.pop(), []):
                if c not in ours:
                    ours.add(c)
                    stack.append(c)
        me = os.getpid()
        ours.discard(me)
        out = {pid: _cmdline(pid) for pid in ours}
        with self._lock:
            self.seen.update({p: c for p, c in out.items() if c})
        return out

    def check_alive(self, names: tuple[str, ...] = ("superlink", "supernode")) -> None:
        """Raise if a long-running process (SuperLink, SuperNode) has exited."""
        for s in self.started:
            if s.name.split("-")[0] in names and s.popen.poll() is not None:
                killed = _signal_name(s.popen.returncode)
                if killed:  # stopped from outside: its log says nothing of why
                    raise DeployError(f"{s.name} was killed ({killed}); log {s.log}")
                raise DeployError(f"{s.name} exited with status {s.popen.returncode}; log {s.log}:\n{_tail(s.log)}")

    # -- stopping --------------------------------------------------------
    def _signal_tree(self, pid: int, sig: int) -> None:
        for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
            try:
                target()
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def shutdown(self, grace: float = 15.0) -> dict[int, str]:
        """Stop everything: SIGTERM (process groups first, newest first: the CLI,
        the SuperNodes, then the SuperLink), SIGKILL after ``grace`` seconds.
        Returns the processes still alive afterwards (should be empty)."""
        victims = self.tracked()
        for s in reversed(self.started):
            if s.popen.poll() is None:
                self._signal_tree(s.popen.pid, signal.SIGTERM)
        for pid in victims:
            _kill(pid, signal.SIGTERM)
        left = self._wait_gone(grace)
        if left:
            for s in self.started:
                if s.popen.poll() is None:
                    self._signal_tree(s.popen.pid, signal.SIGKILL)
            for pid in left:
                _kill(pid, signal.SIGKILL)
            left = self._wait_gone(10.0)
        for s in self.started:
            if s.popen.poll() is None:
                try:
                    s.popen.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
            if s.popen.stdout is not None:
                s.popen.stdout.close()
            try:
                s.logfile.close()
            except OSError:
                pass
        return left

    def reap(self) -> None:
        """Reap our own children: the started processes and adopted orphans
        (zombies whose parent is this process, seen as part of the deployment)."""
        for s in self.started:
            s.popen.poll()
        own = {s.popen.pid for s in self.started}
        for pid in self.adopted_zombies():
            if pid not in own:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def adopted_zombies(self) -> list[int]:
        """Exited Flower processes of this deployment re-parented to us, not yet reaped."""
        me = os.getpid()
        out = []
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is None or st[0] != me or st[1] != "Z":
                continue
            if pid in self.seen or any(name[:15] == st[2] for name in FLOWER_PROGRAMS):
                out.append(pid)
        return out

    def _wait_gone(self, timeout: float) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            left = self.tracked()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)


def _child_subreaper(on: bool | None = None) -> bool | None:
    """Linux ``PR_{GET,SET}_CHILD_SUBREAPER``: with it on, orphaned descendants
    (a SuperNode's ``flower-superexec`` once the SuperNode has exited) are
    re-parented to this process, which reaps them, instead of to init.  Returns
    the previous setting (None where unsupported)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        old = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(old), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return None
        if on is not None and libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return None
        return bool(old.value)
    except (OSError, AttributeError):
        return None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(code: int | None) -> str:
    """The signal that ended a process with exit status ``code`` (negative from Popen;
    ``128 + signal`` from the guard that starts it), or ''."""
    if code is None or code == 0:
        return ""
    for n in (-code, code - 128):
        if n in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSEGV, signal.SIGABRT):
            return signal.Signals(n).name
    return ""


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + ln for ln in lines[-n:])


def _wait_for(what: str, cond, timeout: float, sup: Supervisor, *, names=("superlink", "supernode"),
              poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        sup.check_alive(names)
        if time.monotonic() >= deadline:
            raise DeployError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------


#: The fedrec Flower app's components, as installed (``fedrec_app``, see pyproject.toml).
COMPONENTS = {"serverapp": "fedrec_app.server.app:app", "clientapp": "fedrec_app.clients.app:app"}


def write_app_dir(directory: str | Path) -> Path:
    """Write the fedrec Flower app as a project directory (a ``pyproject.toml``
    only) for ``flwr run``: its components are the installed ``fedrec_app``
    modules and its ``[tool.flwr.app.config]`` is :data:`fedrec.config.DEFAULTS`.
    Works from a source tree and from a plain ``pip install .`` alike."""
    from importlib.metadata import PackageNotFoundError, version

    from fedrec.config import DEFAULTS, nested_run_config, run_key

    try:
        v = version("fedrec")
    except PackageNotFoundError:  # a source tree that was never installed
        v = "0.0.0"
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    lines = ["[project]", 'name = "fedrec-app"', f'version = "{v}"',
             'description = "fedrec Flower app (components installed with fedrec)"', 'license = "Apache-2.0"',
             "dependencies = []", "", "[tool.flwr.app]", 'publisher = "fedrec"', "", "[tool.flwr.app.components]"]
    lines += [f'{k} = "{ref}"' for k, ref in COMPONENTS.items()]
    for table, values in nested_run_config({**DEFAULTS.to_run_config(), run_key("out"): "runs/flwr"}).items():
        lines += ["", f"[tool.flwr.app.config.{table}]"] + [f"{k} = {_toml_value(val)}" for k, val in values.items()]
    (d / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return d


def _app_config(app: Path) -> dict:
    import tomllib

    pyproject = app / "pyproject.toml"
    if not pyproject.is_file():
        raise DeployError(f"{app} is not a Flower app: no pyproject.toml (use --app)")
    with pyproject.open("rb") as f:
        doc = tomllib.load(f)
    try:
        doc["tool"]["flwr"]["app"]["components"]
    except KeyError:
        raise DeployError(f"{pyproject} has no [tool.flwr.app.components]: not a Flower app (use --app)") from None
    from fedrec.config import sectioned_run_config

    return sectioned_run_config(doc["tool"]["flwr"]["app"].get("config", {}))


def plan_nodes(run_config: dict) -> int:
    """Number of SuperNodes = number of user cohorts for this run config
    (users with training data / users-per-node, rounded up), as the app computes it."""
    return _plan(run_config).n_nodes


def _plan(run_config: dict):
    """The federation of this run config (validated; an unreachable epsilon fails here)."""
    from fedrec.config import FedConfig
    from fedrec.federated.algorithms import check_run
    from fedrec.federation import load_federation
    from fedrec.privacy.calibration import resolved

    cfg = resolved(FedConfig.from_run_config(run_config))
    check_run(cfg)
    return load_federation(cfg)


def _choose_privacy(fused: dict, overrides: dict, fed) -> tuple[dict, dict]:
    """With ``privacy-unit`` and ``epsilon`` in the run config: the chosen mechanism's
    settings as explicit run-config keys (the apps run them as given; the keys the user
    set keep their values), said in one line."""
    import dataclasses

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


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".eE") or r in ("inf", "-inf", "nan") else r + ".0"
    return json.dumps(str(v))  # a TOML basic string


def _write_toml_table(path: Path, d: dict) -> None:
    path.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in d.items()))


# --------------------------------------------------------------------------
# the deployment
# --------------------------------------------------------------------------


@dataclass
class DeployResult:
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
        d = dict(self.__dict__)
        d["out"], d["workdir"] = str(self.out), str(self.workdir)
        d["seen"] = {str(k): v for k, v in self.seen.items()}
        d["survivors"] = {str(k): v for k, v in self.survivors.items()}
        return d


class _Interrupted(BaseException):
    pass


def _flower_bin(name: str) -> str:
    p = Path(sys.executable).parent / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"{name} not found next to {sys.executable} nor on PATH (is flwr installed?)")
    return found


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
    """Start SuperLink + SuperNodes, run the app with ``overrides`` (run-config keys),
    wait, stop everything.  Raises :class:`DeployError` on bad input; failures of
    the run itself are reported in the result (``ok`` False, ``error``).

    ``on_ready`` (for tests) is called once every SuperNode is connected, before
    the run, with the supervisor, the SuperLink address, the CA and the paths."""
    t0 = time.monotonic()
    out = Path(out).expanduser().resolve()
    workdir = Path(workdir).expanduser().resolve() if workdir else out / "deploy"
    # bad input loses nothing and leaves nothing behind: what planning created goes if it fails
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
            from fedrec_app.simulations.flags import config_flag

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
    secure = not insecure
    if insecure and auth:
        auth = False  # Flower refuses SuperNode authentication without TLS
    logs = workdir / "logs"
    flwr_home = workdir / "flwr-home"
    for d in (workdir, logs, flwr_home, out):
        d.mkdir(parents=True, exist_ok=True)
    from fedrec.federation import write_node_data, write_plan
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

    # TLS material and node keys
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

    run_toml = workdir / "run-config.toml"
    _write_toml_table(run_toml, overrides)
    # ports: SuperLink (Control + Fleet + Runtime HTTP APIs), one Runtime API port per SuperNode
    ports = free_ports(1 + n_nodes)
    link_port, node_ports = ports[0], ports[1:]
    address = f"{HOST}:{link_port}"
    conn = [f"[superlink]\ndefault = \"{CONNECTION}\"\n\n[superlink.{CONNECTION}]\naddress = \"{address}\"\n"]
    conn.append(f"root-certificates = {json.dumps(str(cert_paths.ca))}\n" if secure else "insecure = true\n")
    (flwr_home / "config.toml").write_text("".join(conn))

    result = DeployResult(ok=False, run_id=None, status=None, out=out, workdir=workdir, n_nodes=n_nodes,
                          ports={"superlink": link_port, "supernodes": node_ports}, secure=secure, auth=bool(auth),
                          seconds=0.0)
    sup = Supervisor(env, tag, grace=min(shutdown_timeout, 5.0))
    tls_link = ([] if not secure else
                ["--ssl-ca-certfile", str(cert_paths.ca), "--ssl-certfile", str(cert_paths.cert),
                 "--ssl-keyfile", str(cert_paths.key)])

    def _raise_interrupt(signum, frame):
        raise _Interrupted(signal.Signals(signum).name)

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
            cmd = [_flower_bin("flower-superlink"), *(["--insecure"] if insecure else tls_link),
                   "--host", HOST, "--port", str(link_port), "--disable-runtime-dependency-installation"]
            if auth:
                cmd.append("--enable-supernode-auth")
            sup.start("superlink", cmd, logs / "superlink.log")
            _wait_for(f"the SuperLink on {address}", lambda: _port_open(link_port), startup_timeout, sup,
                      names=("superlink",))

            # 2. register the SuperNodes' public keys (Control API, through the flwr CLI)
            flwr = _flower_bin("flwr")
            if auth:
                _register_nodes(sup, flwr, [pub for _, pub in node_keys], logs, workdir, startup_timeout)
                _say(f"registered {n_nodes} SuperNode public keys")

            # 3. SuperNodes, one per user cohort
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
            if on_ready is not None:
                on_ready({"supervisor": sup, "address": address, "ca": cert_paths.ca if secure else None,
                          "workdir": workdir, "logs": logs, "n_nodes": n_nodes, "env": env})

            # 4. the run
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
    return result


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


def _reap_adopted(sup: Supervisor, timeout: float) -> None:
    """Wait (bounded) until the deployment's adopted orphans are reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.reap()
        if not sup.adopted_zombies():
            return
        time.sleep(0.05)


def _start_wall(t0_monotonic: float) -> float:
    return time.time() - (time.monotonic() - t0_monotonic) - 1.0


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
    rc, text = sup.run_quick("flwr-ls", [flwr, "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
                             logs / "flwr-ls.log", timeout=60, cwd=workdir)
    try:
        doc = json.loads(text[text.index("{"):])
        return str(doc["runs"][0]["status"])
    except (ValueError, KeyError, IndexError):
        return None


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``fedrec deploy``'s arguments to ``parser`` (a new one if None)."""
    if parser is None:
        parser = argparse.ArgumentParser(prog="fedrec deploy")
    if not parser.description:
        parser.description = (
            "Run fedrec on Flower's deployment engine on this machine: one SuperLink and one SuperNode per "
            "cohort of users (users-per-node), TLS and SuperNode authentication by default; every process "
            "is stopped at the end, on error and on Ctrl-C. Run-config options left out keep the app's "
            "[tool.flwr.app.config] defaults.")
    from fedrec.config import SECTIONS
    from fedrec_app.simulations.flags import add_config_args

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


def _overrides_from_args(args) -> dict:
    from fedrec.config import SECTIONS
    from fedrec_app.simulations.flags import config_overrides

    from fedrec.config import run_key, sectioned_run_config

    o = sectioned_run_config(_parse_kv(args.run_config))
    o.update(sectioned_run_config(config_overrides(args, tuple(s for s in SECTIONS if s != "outputs"))))
    if run_key("out") in o:  # --out is the deployment's
        raise DeployError("give the run directory with --out, not --run-config out=...")
    return o


def run(args) -> int:
    """Entry point of ``fedrec deploy`` (args from :func:`build_parser`).
    0: the run completed and everything was stopped; 1: the run failed or a process
    survived; 2: bad arguments; 130: interrupted."""
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
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
