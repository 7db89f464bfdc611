"""Imports point inward: the library (fedrec) knows nothing of the apps or the
experiments, and Flower internals are touched in one module only."""

from __future__ import annotations

import ast
import tomllib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_NAMES = ("fedrec_app", "clients", "server", "deploy", "simulations")
#: package folder -> top-level names its modules must not import
FORBIDDEN = {
    "fedrec": APP_NAMES,
    "clients": ("fedrec_app.server", "fedrec_app.deploy", "fedrec_app.simulations", "server", "deploy", "simulations"),
    "server": ("fedrec_app.deploy", "fedrec_app.simulations", "deploy", "simulations"),
    # a deployment starts the ClientApp through Flower, by name (deploy.appdir.COMPONENTS), never by import
    "deploy": ("fedrec_app.clients", "clients", "server", "simulations"),
}
#: Flower modules that are not public API; only fedrec/flower_compat.py may import them
FLOWER_INTERNALS = ("flwr.simulation.run_simulation", "flwr.server.superlink")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path`` (``from . import x`` resolved to the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names]
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            out.append((n.lineno, n.module))
        elif isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", "")) == "import_module" \
                and n.args and isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str):
            out.append((n.lineno, n.args[0].value))
    return out


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def test_imports_point_inward():
    bad = [v for pkg, forb in FORBIDDEN.items() for v in violations(pkg, forb)]
    assert not bad, "imports that point outward:\n" + "\n".join(bad)


def test_flower_internals_only_in_flower_compat():
    bad = [v for pkg in ("fedrec", "clients", "server", "deploy", "simulations")
           for v in violations(pkg, FLOWER_INTERNALS)
           if not v.startswith("fedrec/flower_compat.py")]
    assert not bad, "Flower internals outside fedrec/flower_compat.py:\n" + "\n".join(bad)


def test_the_check_finds_an_outward_import(tmp_path, monkeypatch):
    """The check itself can fail: a library module importing the app is reported."""
    pkg = tmp_path / "fedrec"
    pkg.mkdir()
    (pkg / "bad.py").write_text("import os\nfrom fedrec_app.server.run import run_server\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("fedrec", APP_NAMES) == ["fedrec/bad.py:2 imports fedrec_app.server.run"]


def import_graph(package: str = "fedrec") -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, at any depth of the file (function-level
    imports included; ``from a.b import c`` counts as ``a.b.c`` where that is a module, else ``a.b``)."""
    mods = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path

    def module_of(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for n in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = here.split(".")[:len(here.split(".")) - (n.level - 1)]
                    base = ".".join(parts + ([n.module] if n.module else []))
                deps |= {module_of(f"{base}.{a.name}") for a in n.names}
            elif isinstance(n, ast.Import):
                deps |= {module_of(a.name) for a in n.names}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_library_has_no_import_cycle():
    """Not even through imports inside functions: each module of ``fedrec`` can be read
    knowing only the modules below it."""
    graph = import_graph("fedrec")
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph was read
    assert not import_cycles(graph), "import cycles in fedrec:\n" + "\n".join(map(" <-> ".join, import_cycles(graph)))


def test_the_check_finds_an_import_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "fedrec"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from fedrec.b import g\n")
    (pkg / "b.py").write_text("from fedrec.sub import f as g\n")
    (pkg / "c.py").write_text("import fedrec.b\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_cycles(import_graph("fedrec")) == [["fedrec.b", "fedrec.sub", "fedrec.sub.a"]]


def test_app_packages_install_under_fedrec_app():
    """No generic top-level package names (clients, server, deploy, simulations, examples) are installed."""
    import tomllib

    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = doc["tool"]["setuptools"]["packages"]
    assert all(p.split(".")[0] in ("fedrec", "fedrec_app") for p in packages), packages
    assert doc["tool"]["setuptools"]["package-dir"] == {
        "fedrec_app.clients": "clients", "fedrec_app.server": "server", "fedrec_app.deploy": "deploy",
        "fedrec_app.simulations": "simulations", "fedrec_app.examples": "examples"}
    comps = doc["tool"]["flwr"]["app"]["components"]
    assert comps == {"serverapp": "fedrec_app.server.app:app", "clientapp": "fedrec_app.clients.app:app"}


def test_wire_keys_are_spelled_only_in_the_protocol_module():
    """Every key of a message between server and nodes is a constant of
    fedrec.federated.protocol: no other module of the library, the app or the
    experiments spells one."""
    from fedrec.federated import protocol

    keys = [protocol.SERVER_ROUND, protocol.MECHANISM_PREFIX, protocol.TRAINED_ITEMS, protocol.LEGACY,
            protocol.PARAM_KEYS, protocol.ANALYTICS, protocol.NUM_EXAMPLES, protocol.TEST_TOPK,
            protocol.EXPOSURE_PREFIX, protocol.ITEM_COUNTS]
    home = ROOT / "fedrec" / "federated" / "protocol.py"
    found = []
    for folder in ("fedrec", "server", "clients", "deploy", "simulations"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == home:
                continue
            text = path.read_text()
            for key in keys:
                for quote in ('"', "'"):
                    # a whole key as a literal, or a prefix key starting one (f"mechanism/{name}")
                    spelled = f"{quote}{key}" if key.endswith(("/", "-")) else f"{quote}{key}{quote}"
                    if spelled in text:
                        found.append(f"{path.relative_to(ROOT)}: {key!r}")
    assert not found, found


def test_ruff_finds_nothing():
    """The linter CI runs ([tool.ruff] in pyproject.toml) passes on every source tree."""
    import shutil
    import subprocess
    import sys

    import pytest

    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    res = subprocess.run([ruff, "check", "fedrec", "server", "clients", "deploy", "simulations", "tests",
                          "benchmarks", "examples"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]


def test_every_library_package_is_installed():
    """A package missing from ``[tool.setuptools] packages`` works in a clone (editable) and is
    absent from a wheel: every directory of ``fedrec/`` with an ``__init__.py`` is listed."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(doc["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fedrec").rglob("__init__.py")}
    assert found - listed == set(), f"not installed by a wheel: {sorted(found - listed)}"
