"""Classes named on the command line: a shipped name, ``package.module:ClassName`` (an
importable module) or ``path/to/file.py:ClassName`` (a user's file).  Models
(:func:`fedrec.models.federated_model_class`) and training algorithms
(:func:`fedrec.federated.algorithms.algorithm_class`) are found this way, so a plug-in
is also found inside a Flower actor, which imports what the name says."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

__all__ = ["load_class"]


def load_class(spec: str, *, what: str, shipped: dict[str, type], base: type) -> type:
    """The subclass of ``base`` that ``spec`` names; a bad name is a one-line ``ValueError``
    that starts with ``what`` and the name."""
    if spec in shipped:
        return shipped[spec]
    if ":" in spec and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", spec.split(":", 1)[0]):
        module_name, name = spec.split(":", 1)
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # noqa: BLE001 - report any import failure in one line
            raise ValueError(f"{what} {spec!r}: importing {module_name} failed: {type(e).__name__}: {e}") from None
        where = module_name
    else:
        if ":" not in spec or not spec.split(":", 1)[0].endswith(".py"):
            raise ValueError(f"{what} {spec!r}: choose one of {sorted(shipped)}, or give path/to/file.py:ClassName "
                             "or package.module:ClassName")
        path, name = spec.rsplit(":", 1)
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise ValueError(f"{what} {spec!r}: no file {file}")
        mod_name = f"fedrec_user_{what.replace(' ', '_')}_{abs(hash(str(file)))}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - report any import failure in one line
                raise ValueError(f"{what} {spec!r}: importing {file} failed: {type(e).__name__}: {e}") from None
            sys.modules[mod_name] = module
        where = file
    cls = getattr(module, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ValueError(f"{what} {spec!r}: {where} has no {base.__name__} subclass named {name!r}")
    return cls
