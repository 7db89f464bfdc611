"""Command-line flags generated from the run configuration (one source of
defaults, help texts and choices: :class:`fedrec.config.FedConfig`'s fields).
Used by ``fedrec simulate``, ``fedrec deploy`` and ``fedrec baseline`` (data)."""

from __future__ import annotations

import argparse

__all__ = ["add_config_args", "config_flag", "config_from_args", "config_overrides", "given_fields"]


def add_config_args(p: argparse.ArgumentParser, sections: tuple[str, ...], *, skip: tuple[str, ...] = (),
                    required: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """Add a flag for every option of :class:`fedrec.config.FedConfig` in ``sections``:
    its default, help text and choices come from the config (one source).

    ``required``: field names whose flag must be given; ``defaults``: field name -> the
    default this command applies instead of the config's (shown in the help)."""
    defaults = defaults or {}
    from fedrec.config import SECTION_TABLES, SECTIONS, options

    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in sorted(options(), key=lambda f: SECTIONS.index(f.metadata["section"])):
        sec = f.metadata["section"]
        if sec not in sections or f.name in skip:
            continue
        g = groups.get(sec) or groups.setdefault(sec, p.add_argument_group(
            sec, f"run-config keys {SECTION_TABLES[sec]}.KEY ([tool.flwr.app.config.{SECTION_TABLES[sec]}])"))
        flag = config_flag(f.name)
        help_ = f.metadata["help"]
        if isinstance(f.default, bool):
            g.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_)
            continue
        default = defaults.get(f.name, f.default)
        if default != "" and f.name not in required:
            help_ += f" (default: {default})"
        g.add_argument(flag, dest=f.name, type=type(f.default), default=None, choices=f.metadata.get("choices"),
                       required=f.name in required,
                       metavar=None if f.metadata.get("choices") else flag[2:].upper().replace("-", "_"), help=help_)


def config_flag(key: str) -> str:
    """The command-line flag of a config key (``num-server-rounds`` -> ``--rounds``)."""
    from fedrec.config import options

    name = key.replace("-", "_")
    for f in options():
        if f.name == name:
            return f.metadata.get("flag") or "--" + key.replace("_", "-")
    return "--" + key.replace("_", "-")


def given_fields(args, sections: tuple[str, ...] | None = None) -> dict:
    """The config flags given on the command line (only those of ``sections`` when given),
    as :class:`~fedrec.config.FedConfig` field names and values."""
    from fedrec.config import options

    return {f.name: getattr(args, f.name) for f in options()
            if (sections is None or f.metadata["section"] in sections) and getattr(args, f.name, None) is not None}


def config_from_args(args, sections: tuple[str, ...] | None = None):
    """A :class:`~fedrec.config.FedConfig` of the config flags given on the command line
    (only those of ``sections`` when given); the rest keep the config's defaults."""
    from fedrec.config import FedConfig

    return FedConfig(**given_fields(args, sections))


def config_overrides(args, sections: tuple[str, ...] | None = None) -> dict:
    """The config flags given on the command line as run-config keys (dashed)."""
    return {name.replace("_", "-"): value for name, value in given_fields(args, sections).items()}
