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
    assert (ROOT / "docs" / "index.md").read_text() == want, "run `python tests/test_docs.py` to regenerate docs/index.md"


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


if __name__ == "__main__":
    (ROOT / "docs" / "index.md").write_text(readme_as_index((ROOT / "README.md").read_text()))
    print("wrote docs/index.md")


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


def test_every_documented_command_parses():
    """Each ``fedrec`` line of a code block in the README and the docs parses as written; each
    ``--option`` an inline ``fedrec SUBCOMMAND ...`` span names is an option of that subcommand."""
    import contextlib
    import io

    from fedrec_app.simulations.cli import build_parser, subcommands

    blocks, bad = 0, []
    for page in _doc_pages():
        text = page.read_text()
        for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in re.split(r"&&|;|\|", line):
                    argv = _fedrec_words(part)
                    if argv is None:
                        continue
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
