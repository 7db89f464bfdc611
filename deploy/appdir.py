"""The Flower app directory that ``flwr run`` submits, and the TOML a deployment writes.

:func:`write_app_dir` writes the fedrec app as a project directory (a
``pyproject.toml`` only) whose components are the installed ``fedrec_app``
modules and whose ``[tool.flwr.app.config]`` is :data:`fedrec.config.DEFAULTS`;
:func:`_app_config` reads such a directory's run config back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import DeployError

__all__ = ["COMPONENTS", "write_app_dir"]

#: The fedrec Flower app's components, as installed (``fedrec_app``, see pyproject.toml).
COMPONENTS = {"serverapp": "fedrec_app.server.app:app", "clientapp": "fedrec_app.clients.app:app"}


def write_app_dir(directory: str | Path) -> Path:
    """Write the fedrec Flower app as a project directory for ``flwr run``.

    Works from a source tree and from a plain ``pip install .`` alike.

    Parameters
    ----------
    directory
        Where ``pyproject.toml`` is written (created if needed).

    Returns
    -------
    Path
        ``directory``: its components are the installed ``fedrec_app`` modules
        (:data:`COMPONENTS`) and its ``[tool.flwr.app.config]`` is
        :data:`fedrec.config.DEFAULTS`.
    """
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
    """The run config (``[tool.flwr.app.config]``, keys with their section) of the Flower app in ``app``.

    Raises
    ------
    DeployError
        If ``app`` is not a Flower app (no ``pyproject.toml``, no ``[tool.flwr.app.components]``).
    """
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


def _toml_value(v: Any) -> str:
    """``v`` as a TOML value (bool, int, float; anything else as a basic string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".eE") or r in ("inf", "-inf", "nan") else r + ".0"
    return json.dumps(str(v))  # a TOML basic string


def _write_toml_table(path: Path, d: dict) -> None:
    """Write ``d`` to ``path`` as top-level TOML ``"key" = value`` lines (what ``flwr run --run-config FILE`` reads)."""
    path.write_text("".join(f'"{k}" = {_toml_value(v)}\n' for k, v in d.items()))
