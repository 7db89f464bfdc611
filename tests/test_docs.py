"""The documentation: the README is a front page, the docs site builds with --strict, and
its home page is the README (regenerate with ``python tests/test_docs.py``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_as_index(text: str) -> str:
    """The docs site's home page: the README with its links made relative to ``docs/``."""
    return re.sub(r"\]\(docs/", "](", text)


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; long material goes under docs/"
    text = "\n".join(lines)
    assert "make run" in text and "make test" in text
    assert "../shared" not in text  # no paths a user does not have


def test_the_docs_home_page_is_the_readme():
    want = readme_as_index((ROOT / "README.md").read_text())
    assert (ROOT / "docs" / "index.md").read_text() == want, \
        "run `python tests/test_docs.py` to regenerate docs/index.md"


def test_every_readme_link_to_the_docs_exists():
    for target in re.findall(r"\]\((docs/[^)#\s]+)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).is_file(), target


def test_the_docs_build_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    if not Path(mkdocs).exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[test]' installs it)")
    res = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_the_configuration_reference_is_generated_from_the_config():
    from fedrec_app.simulations.cli.flags import config_reference

    assert (ROOT / "docs" / "reference" / "configuration.md").read_text() == config_reference(), \
        "run `python tests/test_docs.py` to regenerate docs/reference/configuration.md"


if __name__ == "__main__":
    from fedrec_app.simulations.cli.flags import config_reference

    (ROOT / "docs" / "index.md").write_text(readme_as_index((ROOT / "README.md").read_text()))
    (ROOT / "docs" / "reference").mkdir(exist_ok=True)
    (ROOT / "docs" / "reference" / "configuration.md").write_text(config_reference())
    print("wrote docs/index.md and docs/reference/configuration.md")


def _doc_pages() -> list[Path]:
    """The README and the docs pages that describe fedrec as it is (not the changelog's history,
    nor ``docs/index.md``, the README's copy)."""
    return [ROOT / "README.md"] + [p for p in sorted((ROOT / "docs").rglob("*.md"))
                                   if p.name not in ("index.md", "changelog.md")]


def _fedrec_words(command: str) -> list[str] | None:
    """The arguments of a ``fedrec`` command line (environment assignments dropped), or None."""
    import shlex

    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    return words[1:] if words and words[0] in ("fedrec", ".venv/bin/fedrec") else None


#: The shell blocks of a page: ```` ``` ````, ```` ```bash ````, ```` ```sh ```` or ```` ```console ```` fences.
SHELL_FENCES = ("", "bash", "sh", "console")
#: A comment on the line before a block: its commands are not run by
#: :func:`test_the_documented_commands_run_on_tiny_data`, for the reason it gives.
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")


def _blocks(text: str) -> list[tuple[str, str, str | None]]:
    """Every fenced block of ``text``: (language, body, the reason of a ``<!-- not run: ... -->``
    comment on the line before it, or None)."""
    out = []
    for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.search(before)
        out.append((m.group(1), m.group(2), reason.group(1) if reason else None))
    return out


def _block_commands(text: str):
    """The ``fedrec`` command lines of the page's shell blocks, as (reason not run, argv)."""
    for lang, body, reason in _blocks(text):
        if lang not in SHELL_FENCES:
            continue
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            for part in re.split(r"&&|;|\|", line):
                argv = _fedrec_words(part.lstrip("$ "))
                if argv is not None:
                    yield reason, argv


def test_every_documented_command_parses():
    """Each ``fedrec`` line of a code block in the README and the docs parses as written; each
    ``--option`` an inline ``fedrec SUBCOMMAND ...`` span names is an option of that subcommand."""
    import contextlib
    import io

    from fedrec_app.simulations.cli.main import build_parser, subcommands

    blocks, bad = 0, []
    for page in _doc_pages():
        text = page.read_text()
        for _, argv in _block_commands(text):
            blocks += 1
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    build_parser().parse_args(argv)
                except SystemExit:
                    bad.append(f"{page.relative_to(ROOT)}: fedrec {' '.join(argv)}: "
                               + err.getvalue().strip().splitlines()[-1])
        subs = subcommands(build_parser())
        inline = re.sub(r"\s*\n\s*", " ", re.sub(r"```.*?```", "", text, flags=re.S))
        for span in re.findall(r"`(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?fedrec ([a-z-]+)([^`]*)`", inline):
            sub, rest = span
            if sub not in subs:
                bad.append(f"{page.relative_to(ROOT)}: `fedrec {sub}`: no such subcommand")
                continue
            known = set(subs[sub]._option_string_actions)
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
                if flag not in known:
                    bad.append(f"{page.relative_to(ROOT)}: `fedrec {sub} ...{flag}`: no such option")
    assert blocks >= 20 and not bad, "\n".join(bad)


#: The data every documented command runs on here (:func:`_tiny`): a small synthetic population.
TINY_DATA = "synthetic:120x60:0"
#: The most rounds (simulate, sweeps) and epochs (baseline) a documented command runs here.
TINY_ROUNDS = 2


def _documented_blocks() -> list[tuple[str, str | None, list[list[str]]]]:
    """Each shell block with ``fedrec`` commands: (page:line, the reason it is not run or None, its commands)."""
    out = []
    for page in _doc_pages():
        text = page.read_text()
        for lang, body, reason in _blocks(text):
            commands = [argv for r, argv in _block_commands(f"```{lang}\n{body}```")]
            if commands:
                line = text[:text.index(body)].count("\n") + 1
                out.append((f"{page.relative_to(ROOT)}:{line}", reason, commands))
    return out


def _options_of(argv: list[str]) -> set[str]:
    """The options of the (sub)command ``argv`` runs."""
    import argparse

    from fedrec_app.simulations.cli.main import build_parser, subcommands

    parser = subcommands(build_parser())[argv[0]]
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):  # fedrec sweep NAME
        parser = subcommands(parser)[argv[1]]
    return set(parser._option_string_actions)


def _tiny(argv: list[str], tmp: Path) -> list[str]:
    """``argv`` on tiny data: its data becomes :data:`TINY_DATA` (given or not, where the
    command reads data), except for ``--privacy UNIT --epsilon E``, whose choice is made for
    the data it names (the bundled ml-latest-small is kept); rounds, epochs, windows, seeds,
    epsilons and a search's trials are capped (and set where the command takes them; a
    frontier at epsilon 8); paths under ``/tmp/`` move under ``tmp`` (``runs/...`` is
    relative: the test runs in ``tmp``)."""
    keep_data = "--privacy" in argv
    caps = {"--rounds": TINY_ROUNDS, "--epochs": TINY_ROUNDS, "--warmup-rounds": TINY_ROUNDS, "--windows": 2,
            "--seeds": 1, "--trials": 2, "--trials-mean": 2}
    out, words, i = [], list(argv), 0
    while i < len(words):
        w = words[i]
        if w == "--data" and i + 1 < len(words):
            out += [w, words[i + 1] if keep_data or words[i + 1].startswith("synthetic:") else TINY_DATA]
            i += 2
        elif w in caps and i + 1 < len(words):
            out += [w, str(min(int(words[i + 1]), caps[w]))]
            i += 2
        elif w == "--epsilons":  # the first epsilon of the list only
            j = i + 1
            while j < len(words) and not words[j].startswith("--"):
                j += 1
            out += words[i:i + 2]
            i = j
        else:
            out.append(f"{tmp}/" + w[len("/tmp/"):] if w.startswith("/tmp/") else w)
            i += 1
    known = _options_of(out)
    for flag, cap in caps.items():
        if flag in known and flag not in out:
            out += [flag, str(cap)]
    if "--data" in known and "--data" not in out and not keep_data:
        out += ["--data", TINY_DATA]
    if out[:2] == ["sweep", "frontier"] and "--epsilons" not in out:
        out += ["--epsilons", "8"]
    return out


@pytest.mark.slow  # one Ray for every run (tests/conftest.py)
@pytest.mark.heavy  # about 10 minutes on 2 cores: `make test-heavy` and CI
@pytest.mark.parametrize("where, reason, commands", _documented_blocks(), ids=[w for w, _, _ in _documented_blocks()])
def test_the_documented_commands_run_on_tiny_data(where, reason, commands, tmp_path, monkeypatch):
    """The ``fedrec`` commands of each shell block of the README and the docs run in order to
    exit 0, on tiny data (:func:`_tiny`), in an empty directory, unless the line before the
    block says ``<!-- not run: why -->``."""
    from fedrec_app.simulations.cli.main import main

    if reason:
        pytest.skip(f"not run: {reason}")
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        argv = _tiny(argv, tmp_path)
        assert main(argv) == 0, f"{where}: fedrec {' '.join(argv)}"


@pytest.mark.slow
def test_the_python_example_of_the_federated_training_guide_runs(tmp_path, monkeypatch):
    """The guide's one Python block runs as written (from a scratch directory, on synthetic data)."""
    text = (ROOT / "docs" / "guides" / "federated-training.md").read_text()
    blocks = [body for lang, body, _ in _blocks(text) if lang == "python"]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "federated-training.md", "exec"), {})
    assert (tmp_path / "runs" / "from-python" / "metrics.json").is_file()
