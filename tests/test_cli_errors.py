"""Bad input answers in one line naming the flag or file and the value, and loses nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from fedrec_app.simulations.cli.main import main

DATA = "synthetic:12x20:1"
#: A line Ray forwards from an actor of an earlier simulation in the session ("(ClientAppActor
#: pid=123) ... Manually terminating ...") arrives on this process's stderr whenever Ray's log
#: monitor gets to it; it is not the CLI's.
RAY_FORWARDED = re.compile(r"\((\w+ )?pid=\d+(, ip=[^)]*)?\)|^\S*\(raylet")


def _error(capsys, argv) -> str:
    """Run the CLI; it must fail with status 2 and exactly one line on stderr."""
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "UserWarning" not in line and not line.startswith("  warnings.warn")
           and not RAY_FORWARDED.search(line)]
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("fedrec: error: ")
    return err[0]


def test_bad_values_name_the_flag_not_the_config_key(capsys):
    line = _error(capsys, ["simulate", "--out", "unused", "--data", DATA, "--rounds", "0"])
    assert line == "fedrec: error: --rounds 0: must be >= 1"
    line = _error(capsys, ["simulate", "--out", "unused", "--data", DATA, "--users-per-node", "0"])
    assert line == "fedrec: error: --users-per-node 0: must be >= 1"
    line = _error(capsys, ["simulate", "--out", "unused", "--data", DATA, "--model", "nope"])
    assert line.startswith("fedrec: error: --model nope: choose one of")


def test_unreachable_target_epsilon_names_the_flag(capsys, tmp_path):
    line = _error(capsys, ["simulate", "--out", str(tmp_path / "r"), "--data", DATA, "--rounds", "3",
                           "--target-epsilon", "0.0001"])
    assert line.startswith("fedrec: error: --target-epsilon 0.0001: cannot be reached")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, flag", [
    (["--sample-rate", "1.5", "--steps", "10", "--noise-multiplier", "1"], "--sample-rate 1.5"),
    (["--sample-rate", "0.1", "--steps", "0", "--noise-multiplier", "1"], "--steps 0"),
    (["--sample-rate", "0.1", "--steps", "10", "--target-epsilon", "0.00001"], "--target-epsilon 1e-05"),
])
def test_privacy_bad_values(capsys, argv, flag):
    line = _error(capsys, ["privacy"] + argv)
    assert line.startswith(f"fedrec: error: {flag}:"), line
    assert "math domain" not in line


def test_existing_run_directory_survives_a_second_simulate(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test": {"ndcg@10": 0.5}}')
    (out / "rounds.csv").write_text("round\n1\n")
    line = _error(capsys, ["simulate", "--out", str(out), "--data", DATA, "--rounds", "1"])
    assert f"--out {out} already holds a run" in line and "--overwrite" in line
    assert (out / "metrics.json").read_text() == '{"test": {"ndcg@10": 0.5}}'
    assert (out / "rounds.csv").read_text() == "round\n1\n"


def _checkpoint(out, cfg):
    from fedrec.federated.optim import OptState
    from fedrec_app.server.checkpoint import save_checkpoint

    save_checkpoint(out / "checkpoint", cfg=cfg, server_round=1, params={"item_bias": np.zeros(20, np.float32)},
                    opt_state=OptState(), best=None)
    return out / "checkpoint" / "checkpoint.npz"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_bad_checkpoint_on_resume_is_one_line(capsys, tmp_path, damage):
    from fedrec.config import FedConfig

    out = tmp_path / "run"
    path = _checkpoint(out, FedConfig(data=DATA, seed=1 if damage == "foreign" else 0, out=str(out)))
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage" * 50)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = _error(capsys, ["simulate", "--out", str(out), "--data", DATA, "--rounds", "2", "--resume"])
    assert str(path) in line
    assert "allow_pickle" not in line
    if damage == "foreign":
        assert "seed=1 there, 0 here" in line
    else:
        assert "not a readable fedrec checkpoint" in line


def test_baseline_leaves_no_directory_behind_on_error(capsys, tmp_path):
    out = tmp_path / "b"
    line = _error(capsys, ["baseline", "--data", str(tmp_path / "missing.csv"), "--out", str(out)])
    assert "missing.csv" in line
    assert not out.exists()


def test_baseline_refuses_to_overwrite(capsys, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    line = _error(capsys, ["baseline", "--data", DATA, "--model", "mostpop", "--out", str(out)])
    assert "already holds a run" in line
    assert main(["baseline", "--data", DATA, "--model", "mostpop", "--out", str(out), "--overwrite"]) == 0
    assert "ndcg@10" in json.loads((out / "metrics.json").read_text())["test"]


def test_help_imports_neither_torch_nor_flower():
    """`fedrec --help` answers without importing torch or Flower (it used to take 6.9 s)."""
    code = ("import sys; from fedrec_app.simulations.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'flwr', 'opacus', 'ray') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_every_option_of_every_command_has_help_text():
    import argparse

    from fedrec_app.simulations.cli.main import build_parser, subcommands

    parser = build_parser()
    sub = subcommands(parser)
    missing = [f"fedrec {name} {'/'.join(a.option_strings) or a.dest}"
               for name, p in sub.items() for a in p._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, missing
    rounds = next(a for a in sub["simulate"]._actions if "--rounds" in a.option_strings)
    assert rounds.metavar == "ROUNDS" and "NUM_SERVER_ROUNDS" not in sub["simulate"].format_help()


def test_private_mostpop_needs_an_epsilon(capsys, tmp_path):
    out = tmp_path / "pm"
    line = _error(capsys, ["baseline", "--data", DATA, "--model", "private-mostpop", "--out", str(out)])
    assert "--epsilon 0.0" in line and not out.exists()
    assert main(["baseline", "--data", DATA, "--model", "private-mostpop", "--epsilon", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected"]["epsilon"] <= 2.0 and "user-level" in metrics["selected"]["unit"]


def test_secure_aggregation_on_one_node_is_one_line(capsys, tmp_path):
    line = _error(capsys, ["simulate", "--data", DATA, "--users-per-node", "12", "--secure-aggregation",
                           "--out", str(tmp_path / "s")])
    assert "--secure-aggregation needs at least 2 nodes" in line and "gives 1" in line
    line = _error(capsys, ["simulate", "--data", DATA, "--secure-aggregation", "--user-dp", "client",
                           "--user-noise-multiplier", "1", "--out", str(tmp_path / "s")])
    assert "--secure-aggregation" in line and "user-level DP" in line


@pytest.mark.parametrize("argv, words", [
    (["--attacks", "nope"], "--attacks nope: choose from boost, fedrecattack"),
    (["--defences", "none", "nope"], "--defences nope: choose from none, row-bounds"),
])
def test_attack_sweep_names_an_unknown_attack_or_defence(capsys, tmp_path, argv, words):
    line = _error(capsys, ["sweep", "attacks", "--data", DATA, "--out", str(tmp_path / "a")] + argv)
    assert line.startswith(f"fedrec: error: {words}"), line
    assert not (tmp_path / "a").exists()  # nothing started


def test_device_refusals_name_the_flag_and_start_nothing(capsys, tmp_path):
    """A device that is not one, a GPU that PyTorch does not see, a sequential model on a GPU:
    one line each, before any engine starts, and no run directory."""
    import torch

    base = ["simulate", "--data", DATA, "--rounds", "1"]
    line = _error(capsys, base + ["--out", str(tmp_path / "a"), "--device", "gpu"])
    assert line == "fedrec: error: --device gpu: choose 'cpu', 'cuda' or 'cuda:N'"
    line = _error(capsys, base + ["--out", str(tmp_path / "b"), "--device", "cuda", "--model", "sasrec"])
    assert line.startswith("fedrec: error: --device cuda: sequential models train on the CPU only")
    if not torch.cuda.is_available():
        line = _error(capsys, base + ["--out", str(tmp_path / "c"), "--device", "cuda"])
        assert "PyTorch sees no GPU" in line
    line = _error(capsys, base + ["--out", str(tmp_path / "d"), "--device", "cuda:0"])
    assert "cuda" in line  # no GPU: not seen; a GPU: Ray gives each actor its own, so cuda:N is refused
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_an_out_that_cannot_be_written_fails_before_the_data_is_read(capsys, tmp_path):
    """``--out /proc/x``: said at once, naming the flag and the reason, before loading anything."""
    import time

    t = time.perf_counter()
    line = _error(capsys, ["simulate", "--out", "/proc/fedrec-run", "--data", str(tmp_path / "missing.csv")])
    assert line.startswith("fedrec: error: --out /proc/fedrec-run: cannot write the run directory there"), line
    assert time.perf_counter() - t < 10


def test_a_baseline_in_a_used_directory_offers_only_what_it_can_do(capsys, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    line = _error(capsys, ["baseline", "--data", DATA, "--model", "mostpop", "--out", str(out)])
    assert "--overwrite" in line and "--resume" not in line


@pytest.mark.parametrize("flag", ["--target-epsilon", "--user-target-epsilon", "--als-target-epsilon"])
def test_a_target_epsilon_of_zero_is_refused_not_run_without_privacy(capsys, tmp_path, flag):
    line = _error(capsys, ["simulate", "--out", str(tmp_path / "r"), "--data", DATA, flag, "0"])
    assert line == f"fedrec: error: {flag} 0.0: must be > 0 (leave the flag out for a run without that mechanism)"
    assert not (tmp_path / "r").exists()


def test_data_errors_name_flags_not_python_arguments(capsys, tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("user,item\n1,1\n1,2\n2,1\n2,2\n1,1\n")
    line = _error(capsys, ["baseline", "--data", str(path), "--model", "mostpop", "--out", str(tmp_path / "a")])
    assert "--duplicates first" in line and "duplicates='first'" in line.split("in Python")[1]
    path.write_text("user,item\n1,1\n1,2\n2,1\n2,2\n")
    line = _error(capsys, ["baseline", "--data", str(path), "--model", "mostpop", "--min-rating", "4",
                           "--out", str(tmp_path / "b")])
    assert line.startswith(f"fedrec: error: --min-rating 4.0: {path} has no ratings"), line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _shown_defaults(action) -> list[str]:
    """The default a help text shows: its last ``(default ...)``."""
    return re.findall(r"\(default:? ([^);]+)[);]", " ".join((action.help or "").split()))[-1:]


def test_every_default_a_help_text_shows_is_the_default_the_command_applies():
    """The help is read against behaviour: a default shown in ``--help`` is the value the
    command uses when the flag is left out (for run-config flags, the config's default or
    the command's own, as ``fedrec deploy`` turns evaluation off)."""
    from fedrec.config import DEFAULTS
    from fedrec_app.simulations.cli.main import build_parser, subcommands

    applied = {"deploy": {"eval_every": 0}}  # what deploy() sets when the flag is left out
    parser = build_parser()
    sub = subcommands(parser)
    wrong, checked = [], 0
    for name, p in sub.items():
        for a in p._actions:
            for shown in _shown_defaults(a):
                word = shown.split()[0].rstrip(",")
                if a.default is None and hasattr(DEFAULTS, a.dest):  # a run-config flag
                    actual = applied.get(name, {}).get(a.dest, getattr(DEFAULTS, a.dest))
                else:
                    actual = a.default
                if actual is None or isinstance(actual, bool) or actual == "":
                    continue  # "default: all", "(default: sniffed)": said in words
                if isinstance(actual, str) and actual in shown:
                    checked += 1
                    continue
                try:
                    same = float(word) == float(actual) if not isinstance(actual, str) else word == actual
                except ValueError:
                    same = False
                checked += 1
                if not same:
                    wrong.append(f"fedrec {name} {a.option_strings[0] if a.option_strings else a.dest}: "
                                 f"help says {shown!r}, the command applies {actual!r}")
    assert checked > 50
    assert not wrong, "\n".join(wrong)
