"""The `effnet` command: one subcommand per module in effnet.tools.

Each tool module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Exit status: 0 success, 1 some inputs failed or a runtime failure (disk full, out of memory), 2 usage or
setup errors. Errors caused by input or environment print as one line; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import traceback
from typing import Sequence

from .errors import EffnetError, first_line
from .log import add_logging_arguments, setup_logging
from .process import use_huge_pages

# Subcommands, in the order `effnet --help` lists them.
TOOLS = ("list", "info", "predict", "embed", "train", "finetune", "validate", "prune", "upcycle", "routing", "benchmark",
         "export", "push", "serve")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (imports every tool module)."""
    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet-CondConv and pruned EfficientNet.")
    parser.add_argument("--version", action="version", version=f"effnet {_version()}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    add_logging_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in TOOLS:
        module = importlib.import_module(f"effnet.tools.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        add_logging_arguments(p, suppress=True)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from . import __version__
    return __version__


DEBUG_HELP = "on an error, show the full Python traceback (for bug reports)"
# OSErrors that come from the environment (files, folders, disks), not from a bug in effnet
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                      errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EMFILE, errno.EIO, errno.EEXIST,
                      errno.ENXIO, errno.ETXTBSY, errno.ELOOP}


def error_line(e: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an exception that reached the command line."""
    from .outputs import describe_os_error
    if isinstance(e, EffnetError):
        return str(e), int(getattr(e, "exit_code", 2))
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
        return describe_os_error(e, verb="use"), 1
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        first = first_line(e, "out of memory")
        return (f"out of memory ({first}); lower --batch-size or --img-size, or use a machine with more "
                "memory"), 1
    detail = first_line(e)
    return (f"internal error {type(e).__name__}{': ' + detail if detail else ''} (a bug in effnet; run again "
            "with --debug for the traceback and report it)"), 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m effnet`."""
    use_huge_pages()  # before any model is built (see effnet.process)
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, quiet=args.quiet, prefix=f"effnet {args.command}: ")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"effnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place every error becomes a message
        if args.debug:
            traceback.print_exc()
        message, code = error_line(e)
        print(f"effnet {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
