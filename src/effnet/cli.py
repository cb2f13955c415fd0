"""The `effnet` command: one subcommand per module in effnet.tools.

Each tool module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Exit status: 0 success, 1 some inputs failed (the rest still ran), 2 usage or setup errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import EffnetError

# Subcommands, in the order `effnet --help` lists them.
TOOLS = ("list", "info", "predict", "embed", "train", "finetune", "validate", "prune", "upcycle", "routing", "benchmark",
         "export")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (imports every tool module)."""
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-CondConv and pruned EfficientNet.")
    parser.add_argument("--version", action="version", version=f"effnet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in TOOLS:
        module = importlib.import_module(f"effnet.tools.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from . import __version__
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m effnet`."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except EffnetError as e:
        print(f"effnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"effnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
