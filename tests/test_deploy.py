"""``fedrec deploy``: Flower's deployment engine on localhost (SuperLink + one
SuperNode per user cohort), TLS and SuperNode authentication, and shutdown of
every process it started (after the run, and on Ctrl-C)."""

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedrec_app import deploy
from fedrec_app.deploy import cli, processes

DATA = "synthetic:3x30:1"  # 3 users -> 3 SuperNodes with users-per-node=1


def _ours(tmp_path: Path) -> dict[int, str]:
    """Live Flower processes started for this test (their environment names tmp_path:
    FLWR_HOME lives there), so that other people's Flower jobs on the machine do not count."""
    return deploy.flower_processes(env_marker=str(tmp_path))


def _all_flower() -> dict[int, str]:
    return deploy.flower_processes()


# --------------------------------------------------------------------------
# fast checks
# --------------------------------------------------------------------------


def test_certificates_chain_and_names(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    paths = deploy.generate_certificates(tmp_path / "certs")
    ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.subject
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert oct(paths.key.stat().st_mode & 0o777) == "0o600"
    assert not list((tmp_path / "certs").glob("ca.key"))  # the CA key is never written
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(paths.cert), str(paths.key))  # key matches


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # typer/click, imported by flwr.cli
def test_node_keys_are_what_flower_accepts(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    keys = deploy.generate_node_keys(tmp_path, 2)
    assert [p.name for p, _ in keys] == ["node-0", "node-1"]
    for priv, pub in keys:
        k = load_ssh_private_key(priv.read_bytes(), None)  # as flower-supernode loads it
        assert isinstance(k, ec.EllipticCurvePrivateKey) and k.curve.name == "secp384r1"
        assert try_load_public_key(pub)  # as `flwr supernode register` loads it
        assert oct(priv.stat().st_mode & 0o777) == "0o600"
    assert keys[0][1].read_bytes() != keys[1][1].read_bytes()


def test_parser_and_run_config():
    p = deploy.build_parser(argparse.ArgumentParser(prog="fedrec deploy"))
    args = p.parse_args(["--out", "x", "--data", DATA, "--users-per-node", "1", "--rounds", "2",
                         "--noise-multiplier", "1.0",
                         "--run-config", "seed=3 interaction-level.sample-rate=0.5", "--insecure"])
    # keys with or without their section; Flower gets them with it
    assert cli._overrides_from_args(args) == {
        "data.data": DATA, "federation.num-server-rounds": 2, "federation.users-per-node": 1,
        "interaction-level.noise-multiplier": 1.0, "federation.seed": 3, "interaction-level.sample-rate": 0.5,
    }
    assert args.insecure and not args.no_auth
    assert deploy.plan_nodes({"data": DATA, "users-per-node": 1}) == 3
    assert deploy.plan_nodes({"data": DATA, "users-per-node": 2}) == 2
    assert len(set(deploy.free_ports(5))) == 5


def test_bad_input_fails_before_starting_anything(tmp_path, capsys):
    before = set(_all_flower())
    # Flower only overrides keys that [tool.flwr.app.config] declares
    assert deploy.main(["--out", str(tmp_path / "a"), "--data", DATA, "--run-config", "no-such-key=8"]) == 2
    assert "no-such-key" in capsys.readouterr().err
    # 3 users on 1-user nodes is more than --max-nodes 2
    assert deploy.main(["--out", str(tmp_path / "b"), "--data", DATA, "--users-per-node", "1", "--max-nodes", "2"]) == 2
    assert "--max-nodes" in capsys.readouterr().err
    assert deploy.main(["--out", str(tmp_path / "c"), "--data", DATA, "--noise-multiplier", "-1"]) == 2
    assert "--noise-multiplier -1.0: must be >= 0" in capsys.readouterr().err
    assert deploy.main(["--out", str(tmp_path / "e"), "--data", DATA, "--eval-every", "5"]) == 2
    assert "--eval-every 5: evaluation replies are exact" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.json").write_text("{}")
    assert deploy.main(["--out", str(tmp_path / "d"), "--data", DATA]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "d" / "metrics.json").read_text() == "{}"
    # a deployment draws its DP noise from secret randomness only
    assert deploy.main(["--out", str(tmp_path / "g"), "--data", DATA, "--reproducible-noise"]) == 2
    assert "--reproducible-noise: a deployment draws" in capsys.readouterr().err
    # SecAgg+ needs 2+ SuperNodes: 3 users on one node of 3 is refused
    assert deploy.main(["--out", str(tmp_path / "f"), "--data", DATA, "--users-per-node", "3",
                        "--secure-aggregation"]) == 2
    assert "--secure-aggregation needs at least 2 SuperNodes" in capsys.readouterr().err
    # nothing is left behind by a refused deployment (the app directory it wrote is removed);
    # the existing run directory is kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["metrics.json"]
    assert set(_all_flower()) <= before


# --------------------------------------------------------------------------
# end to end on the deployment engine
# --------------------------------------------------------------------------


@pytest.mark.heavy  # `make test-heavy` (minutes: TLS, SuperNodes and DP end to end)
def test_secure_deployment_with_dp_completes_and_leaves_nothing(tmp_path, monkeypatch):
    """TLS + SuperNode authentication, 3 SuperNodes (one user each), 2 rounds, DP on."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never touch the user's ~/.flwr
    before = set(_all_flower())
    out = tmp_path / "run"
    checks = {}
    # a ratings file that disappears once the SuperNodes hold their node files: the ServerApp
    # (started after) runs from the federation plan and never opens the interactions
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    rows = [f"{u},{i},5.0,{1000 + 10 * k}" for u in range(1, 4)
            for k, i in enumerate(rng.choice(30, 9, replace=False) + 1)]
    (data / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")

    def on_ready(ctx):
        data.rename(tmp_path / "gone")
        # the SuperLink speaks TLS with a certificate of our CA, and only of our CA
        port = int(ctx["address"].rsplit(":", 1)[1])
        tls = ssl.create_default_context(cafile=str(ctx["ca"]))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            with tls.wrap_socket(s, server_hostname="127.0.0.1") as t:
                checks["peer"] = t.getpeercert()
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                ssl.create_default_context().wrap_socket(s, server_hostname="127.0.0.1")
        # a SuperNode whose public key was never registered is refused
        rogue_key = deploy.generate_node_keys(ctx["workdir"] / "rogue", 1)[0][0]
        cmd = [processes._flower_bin("flower-supernode"), "--root-certificates", str(ctx["ca"]),
               "--superlink", ctx["address"], "--port", str(deploy.free_ports(1)[0]), "--max-retries", "1",
               "--node-config", "partition-id=0 num-partitions=3", "--auth-supernode-private-key", str(rogue_key)]
        checks["rogue"] = ctx["supervisor"].start("rogue", cmd, ctx["logs"] / "rogue.log")

    t0 = time.perf_counter()
    res = deploy.deploy(
        {"data": str(data / "ratings.csv"), "num-server-rounds": 2, "users-per-node": 1, "noise-multiplier": 1.0,
         "sample-rate": 0.5, "eval-every": 2},
        out=out, startup_timeout=90, timeout=240, on_ready=on_ready, exact_evaluation=True,
    )
    seconds = time.perf_counter() - t0
    logs = out / "deploy" / "logs"
    assert res.ok, res.error
    assert res.secure and res.auth and res.n_nodes == 3 and res.status == "finished:completed"
    assert seconds < 240

    # the run: 3 nodes, 2 rounds, a privacy section
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["privacy"]["unit"] == "interaction-level" and doc["privacy"]["epsilon_max"] > 0
    assert doc["config"]["interaction-level"]["noise-multiplier"] == 1.0
    assert doc["config"]["federation"]["users-per-node"] == 1
    assert 0 <= doc["test"]["ndcg@10"] <= 1
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["nodes"] == 3 and recorded["dataset"]["source"].startswith("federation plan")
    assert not data.exists()
    # the users' node files went with the run; the directory records what ran
    assert not (out / "deploy" / "nodes").exists()
    ran = json.loads((out / "run.json").read_text())["invocations"]
    assert len(ran) == 1 and ran[0]["data"]["file"].endswith("ratings.csv") and len(ran[0]["data"]["sha256"]) == 64
    assert len((out / "rounds.csv").read_text().strip().splitlines()) == 3

    # TLS and authentication were really on
    assert "https://127.0.0.1" in (logs / "superlink.log").read_text()
    assert ("IP Address", "127.0.0.1") in checks["peer"]["subjectAltName"]
    for p in range(3):
        log = (logs / f"supernode-{p}.log").read_text()
        assert f"partition-id={p} num-partitions=3" in log and "--auth-supernode-private-key" in log
        assert "SuperNode ID:" in log
        assert '"success": true' in (logs / f"register-{p}.log").read_text()
    rogue_log = (logs / "rogue.log").read_text()
    assert "SuperNode ID:" not in rogue_log and "Failed to activate SuperNode" in rogue_log

    # every kind of process was started ... and none survives
    kinds = {processes._program(c) for c in res.seen.values()}
    assert set(deploy.FLOWER_PROGRAMS) <= kinds, kinds
    assert res.survivors == {}
    assert not _ours(tmp_path)
    new = set(_all_flower()) - before
    assert not (new & {int(p) for p in res.seen}), new
    saved = json.loads((out / "deploy" / "deploy.json").read_text())
    assert saved["ok"] and saved["survivors"] == {}


@pytest.mark.heavy  # `make test-heavy` (a deployment: SuperNodes, SecAgg+ and distributed DP end to end)
def test_a_deployment_with_distributed_dp_over_secagg(tmp_path, monkeypatch):
    """3 SuperNodes of one user each: every user clips, encodes and noises its own update and
    SecAgg+ releases only the sum; the run reports the distributed mechanism's epsilon."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    try:
        res = deploy.deploy(
            {"data": DATA, "num-server-rounds": 2, "users-per-node": 1, "secure-aggregation": True,
             "user-dp": "distributed", "user-noise-multiplier": 1.0, "user-clip": 0.1},
            out=out, insecure=True, startup_timeout=90, timeout=240)
    finally:
        _kill_ours(tmp_path)
    assert res.ok, res.error
    doc = json.loads((out / "metrics.json").read_text())
    unit = doc["privacy"]
    assert unit["unit"] == "user-level" and unit["mechanism"].startswith("distributed Skellam")
    assert unit["holds_against"].startswith("the server") and unit["epsilon"] > 0
    rows = (out / "rounds.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and all(float(r.split(",")[header.index("noise-shares")]) == 3 for r in rows[1:])
    assert res.survivors == {}


def _kill_ours(tmp_path: Path) -> None:
    """Clean up after a failed test: every process it started (tagged by tmp_path)."""
    for pid in _ours(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started in the background


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_ctrl_c_stops_every_process(tmp_path, how):
    """Insecure mode, stopped while the ServerApp runs: by SIGINT (Ctrl-C) that arrives with
    SIGINT inherited as ignored (Python then installs no KeyboardInterrupt handler), or by
    SIGKILL of `fedrec deploy` itself (its children must die with it)."""
    out = tmp_path / "run"
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"))
    before = set(_all_flower())
    cmd = [sys.executable, "-m", "fedrec_app.deploy", "--insecure", "--out", str(out), "--data", DATA,
           "--users-per-node", "1", "--rounds", "50", "--noise-multiplier", "1.0", "--sample-rate", "0.5",
           "--eval-every", "50", "--exact-evaluation"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_ignore_sigint)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the ServerApp (and the nodes' ClientApps) are up
            running = {processes._program(c) for c in _ours(tmp_path).values()}
            if {"flwr-serverapp", "flwr-clientapp"} <= running:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail(f"the run did not start: {sorted(running)}")
        seen = _ours(tmp_path)
        assert len([c for c in seen.values() if processes._program(c) == "flower-supernode"]) == 3
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        output, _ = proc.communicate(timeout=60)
        while _ours(tmp_path) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        stopped_in = time.monotonic() - t0
        print(f"{how}: every process gone {stopped_in:.1f} s after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = _ours(tmp_path)
        _kill_ours(tmp_path)
    assert not left, left
    assert stopped_in < 10, stopped_in  # the goal: within 10 s, under load (measured: see the README)
    assert not (set(_all_flower()) - before) & set(seen)
    assert not (out / "metrics.json").exists()
    assert not list((tmp_path / "tmp").glob("fedrec-nodes-*"))  # the users' node files, SIGKILL or not
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL
        return
    assert proc.returncode == 130, output
    assert "interrupted" in output and "stopped all" in output
    saved = json.loads((out / "deploy" / "deploy.json").read_text())
    assert not saved["ok"] and saved["error"].startswith("interrupted") and saved["survivors"] == {}


@pytest.mark.heavy  # a wheel built and installed, then a deployment: minutes
def test_non_editable_install_then_deploy_without_app(tmp_path):
    """`pip install .` (a wheel, not the source tree) and then `fedrec deploy` with no --app and
    no --out, from a directory that is not the project: the app comes from the installed
    fedrec_app package, and no generic top-level package (clients, server, deploy, simulations) is installed."""
    root = Path(__file__).resolve().parents[1]
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("fedrec", "clients", "server", "deploy", "simulations", "examples"):
        shutil.copytree(root / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(src)], check=True, capture_output=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    *map(str, wheels.glob("fedrec-*.whl"))], check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == \
        ["bin", "fedrec", "fedrec_app"]
    # the wheel carries the default dataset with its licence, and no dataset that may not ship
    bundled = target / "fedrec" / "datasets"
    assert sorted(p.name for p in bundled.iterdir() if p.is_dir() and p.name != "__pycache__") == ["ml-latest-small"]
    assert {"ratings.csv", "movies.csv", "README.txt"} <= {p.name for p in (bundled / "ml-latest-small").iterdir()}
    env = dict(os.environ, PYTHONPATH=str(target), HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    where = subprocess.run([sys.executable, "-c", "import fedrec, fedrec_app.server.app as a, "
                            "fedrec_app.clients.app as c, fedrec_app.examples.my_model as m; "
                            "print(fedrec.__file__, a.__file__, c.__file__, m.__file__)"],
                           env=env, cwd=work, capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(target)) for w in where), where
    cmd = [sys.executable, "-m", "fedrec_app.simulations.cli.main", "deploy", "--insecure", "--data", DATA,
           "--users-per-node", "2", "--rounds", "1"]
    try:
        r = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=400)
    finally:
        _kill_ours(tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((work / "runs" / "deploy" / "metrics.json").read_text())
    assert doc["config"]["federation"]["num-server-rounds"] == 1
    # a deployment releases no evaluation by default
    assert doc["config"]["evaluation"]["eval-every"] == 0 and not doc["test"]
    assert "evaluation off" in r.stdout
    app = (work / "runs" / "deploy" / "deploy" / "app" / "pyproject.toml").read_text()
    assert 'serverapp = "fedrec_app.server.app:app"' in app


@pytest.mark.heavy  # `make test-heavy` (minutes: TLS, SuperNodes and DP end to end)
def test_the_one_run_audit_through_fedrec_deploy(tmp_path, monkeypatch, shared_data):
    """The one-run audit against the deployed mechanism (SuperLink, a SuperNode of canary
    users, the servers' kept replies): the noisy round stays within its claim (at 99.9%
    confidence, so the test fails by chance at most once in a thousand runs) and the same
    round with the noise off (deterministic: no noise, no sampling), still claiming the
    noisy round's epsilon, is caught at 95%."""
    from fedrec.data import load_dataset, make_split
    from fedrec_app.simulations.attacks.audit import deploy_audit

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    train = make_split(load_dataset(str(shared_data("ml-100k")))).train
    kw = dict(noise_multiplier=8.0, m=60, guesses=20, timeout=240)
    caught = deploy_audit(train, out=tmp_path / "control", negative_control=True, **kw)
    assert caught["eps_lower"] > caught["eps_claimed"] > 0 and caught["correct"] >= 17
    real = deploy_audit(train, out=tmp_path / "mechanism", p=0.001, **kw)
    assert real["eps_lower"] <= real["eps_claimed"] and real["included"] == caught["included"]
    assert not _ours(tmp_path)


@pytest.mark.heavy
@pytest.mark.slow
def test_a_supernode_killed_mid_run_stops_everything_and_resumes(tmp_path):
    """SIGKILL of one SuperNode during round 2 or 3: the deployment stops in one line
    naming the node, leaves no process and no node file, keeps its finished rounds, and
    the same command with ``--resume`` ends the run with every round logged once."""
    out = tmp_path / "run"
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"))
    cmd = [sys.executable, "-m", "fedrec_app.deploy", "--insecure", "--out", str(out), "--data", DATA,
           "--users-per-node", "1", "--rounds", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    import threading

    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not any("round 1/4" in x for x in list(lines)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        nodes = [p for p, c in _ours(tmp_path).items() if processes._program(c) == "flower-supernode"]
        assert proc.poll() is None and len(nodes) == 3, "".join(lines)[-3000:]
        os.kill(nodes[0], signal.SIGKILL)
        code = proc.wait(120)
        time.sleep(0.5)
        log = "".join(lines)
        assert code == 1, log[-3000:]
        said = [x for x in lines if "deploy: error:" in x]
        assert len(said) == 1 and "was killed (SIGKILL)" in said[0], log[-3000:]
        assert "continues the run" in log
        assert not _ours(tmp_path) and not list((tmp_path / "tmp").glob("fedrec-nodes-*"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_ours(tmp_path)
    done = [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()]
    assert done == list(range(1, len(done) + 1)) and len(done) >= 1
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    try:
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    finally:
        _kill_ours(tmp_path)
    assert [json.loads(x)["round"] for x in (out / "rounds.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert json.loads((out / "metrics.json").read_text())["rounds"] == 4
