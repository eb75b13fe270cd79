"""Command-line flags generated from the config schema (one flag per field, help from its metadata)."""

from __future__ import annotations

import argparse
import dataclasses

from .config import SECTIONS, load_config

# CLI flag prefix per section in `blockswap run`: --compact-hidden, --finetune-lr, --e2e-steps.
RUN_PREFIXES = {"compact": "compact-", "data": "", "finetune": "finetune-", "importance": "", "distill": "", "run": ""}


def cli_flags(prefixes: dict[str, str] | None = None) -> dict[str, tuple[str, dataclasses.Field]]:
    """Map ``--flag-name`` -> (section, field) for every field of the sections in ``prefixes``.

    A name that two sections share gets the section as prefix (``--distill-batch-size``).
    """
    prefixes = RUN_PREFIXES if prefixes is None else prefixes
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, prefix in prefixes.items():
        for f in dataclasses.fields(SECTIONS[section]):
            name = "--" + prefix + f.name.replace("_", "-")
            if name in out or (section == "distill" and f.name == "batch_size"):
                name = f"--{section}-{f.name.replace('_', '-')}"
            out[name] = (section, f)
    return out


def _field_type(type_name: str):
    """The argparse type of a config field: None for booleans; lists and weightings stay text (config parses them)."""
    if type_name.startswith(("tuple", "dict")):
        return str
    if "bool" in type_name:
        return None
    if "int" in type_name:
        return int
    if "float" in type_name:
        return float
    return str


def add_config_flags(
    parser: argparse.ArgumentParser, prefixes: dict[str, str], only: dict[str, tuple[str, ...]] | None = None
) -> None:
    """One flag per configuration field of the sections in ``prefixes`` (``only``: a subset of a section)."""
    group = parser.add_argument_group("configuration (override --config)")
    for flag, (section, f) in cli_flags(prefixes).items():
        if only and section in only and f.name not in only[section]:
            continue
        kind = _field_type(str(f.type))
        dest = f"cfg__{section}__{f.name}"
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        # argparse %-formats help text: a literal "50 %" in a field's help must not break `--help`
        help_text = f"{f.metadata.get('help', '')} [default: {_show(default)}]".replace("%", "%%")
        if kind is None:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=kind, default=None, help=help_text, metavar=f.name.upper())


def _show(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    return str(value)


def config_from_args(args: argparse.Namespace):
    """The resolved Config: ``--config`` YAML (if any) with the given flags on top."""
    overrides: dict[str, dict] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__")
            overrides.setdefault(section, {})[name] = value
    return load_config(getattr(args, "config", None), overrides)
