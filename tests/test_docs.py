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
