"""`blockswap <subcommand>`: parse, call the library, print. User errors -> one line, exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, cli_flags, load_config


class UsageError(Exception):
    """A user-caused error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _field_type(type_name: str):
    if "bool" in type_name:
        return None
    if "int" in type_name:
        return int
    if "float" in type_name:
        return float
    return str


def add_config_flags(parser: argparse.ArgumentParser, sections: Sequence[str]) -> None:
    """One flag per configuration field of ``sections``, help text from the dataclass metadata."""
    group = parser.add_argument_group("configuration (override --config)")
    for flag, (section, f) in cli_flags().items():
        if section not in sections:
            continue
        kind = _field_type(str(f.type))
        dest = f"cfg__{section}__{f.name}"
        help_text = f"{f.metadata.get('help', '')} [default: {f.default}]"
        if kind is None:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=kind, default=None, help=help_text, metavar=f.name.upper())


def config_from_args(args: argparse.Namespace):
    """The resolved Config: ``--config`` YAML (if any) with the given flags on top."""
    overrides: dict[str, dict] = {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__")
            overrides.setdefault(section, {})[name] = value
    return load_config(getattr(args, "config", None), overrides)


def _blocks_arg(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks must be comma-separated integers, got {text!r}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="blockswap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("measure", help="parameters, GMACs and latency before/after substitution")
    src = m.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="hub id or local folder of a classifier")
    src.add_argument("--arch", help="built-in architecture with random weights (offline), e.g. bert-base-uncased")
    which = m.add_mutually_exclusive_group()
    which.add_argument("--substitute", type=int, help="substitute this many blocks (the last N)")
    which.add_argument("--blocks", type=_blocks_arg, help="substitute these block indices, e.g. 0,3,5")
    m.add_argument("--baseline", help="also report cuts against this built-in architecture (e.g. bert-base-uncased)")
    m.add_argument("--seq-len", type=int, default=128, help="sequence length [default: 128]")
    m.add_argument("--batch", type=int, default=1, help="batch size [default: 1]")
    m.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    m.add_argument("--repeats", type=int, default=10, help="timed repeats for latency [default: 10]")
    m.add_argument("--json", help="also write the measurements to this JSON file")
    add_config_flags(m, ["compact"])

    m.set_defaults(handler=_cmd_measure)
    return parser


def _cmd_measure(args: argparse.Namespace) -> int:
    from . import workflows

    cfg = config_from_args(args)
    for name in ("seq_len", "batch", "repeats"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    result = workflows.measure_command(
        model=args.model,
        arch=args.arch,
        substitute_n=args.substitute,
        blocks=args.blocks,
        baseline=args.baseline,
        compact=cfg.compact,
        seq_len=args.seq_len,
        batch=args.batch,
        with_latency=not args.no_latency,
        repeats=args.repeats,
    )
    print(workflows.format_measure_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    from .adapters import UnsupportedModelError
    from .export import ModelLoadError

    return (UsageError, ConfigError, UnsupportedModelError, ModelLoadError)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args = _build_parser().parse_args(argv)
        return args.handler(args)
    except _user_errors() as e:
        print(f"blockswap: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockswap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
