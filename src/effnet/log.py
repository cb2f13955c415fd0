"""Logging for the command line: effnet's modules log through `logging.getLogger(__name__)`; the
`effnet` command routes those records to stderr with `setup_logging`.

Informational lines (a run's progress: epochs, metrics, where files went) print as they are;
warnings and errors carry the command's prefix ("effnet train: ..."). Every line goes through
tqdm.write, so it never lands in the middle of a progress bar. `--log-level` sets the threshold,
`-q/--quiet` means warnings and errors only, and no progress bars. Results a command exists to
produce (predictions, tables, JSON) are not log records: they go to stdout whatever the level.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from . import progress

LOGGER_NAME = "effnet"
LEVELS = ("debug", "info", "warning", "error")


class TqdmHandler(logging.Handler):
    """Writes records with tqdm.write (clearing and redrawing any bar) to a stream, stderr by default,
    looked up at each record so a redirected sys.stderr is honoured."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            progress.echo(self.format(record), file=self.stream if self.stream is not None else sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never take the program down
            self.handleError(record)


class CommandFormatter(logging.Formatter):
    """INFO and DEBUG as the bare message; WARNING and above prefixed with `prefix`."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.levelno <= logging.DEBUG:
            text += "\n" + self.formatException(record.exc_info)
        return f"{self.prefix}{text}" if record.levelno >= logging.WARNING else text


def setup_logging(level: str | int = "info", *, quiet: bool = False, prefix: str = "",
                  stream: TextIO | None = None) -> logging.Logger:
    """Configure the `effnet` logger for a command: one TqdmHandler (replacing any earlier one set
    up here), threshold `level` (WARNING when `quiet`), progress bars off when quiet or above INFO.
    Returns the logger."""
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"unknown log level {level!r}; choose from {', '.join(LEVELS)}")
        level = getattr(logging, level.upper())
    if quiet:
        level = max(level, logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    for old in [h for h in logger.handlers if isinstance(h, TqdmHandler)]:
        logger.removeHandler(old)
    handler = TqdmHandler(stream)
    handler.setFormatter(CommandFormatter(prefix))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the command owns stderr; a root handler would print every line twice
    progress.configure(False if level > logging.INFO else None)
    return logger


def ensure_logging() -> None:
    """For library use (e.g. `effnet.train.fit` from a script): show INFO lines on stderr unless the
    application configured logging itself (a handler on the `effnet` logger or on the root logger)."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers or logging.getLogger().handlers:
        return
    setup_logging("info")


def add_logging_arguments(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """`--log-level LEVEL` and `-q/--quiet`. With `suppress`, they are left out of the namespace
    unless typed, so a subcommand's copy does not override the same flags given before it."""
    default = argparse.SUPPRESS
    parser.add_argument("--log-level", choices=LEVELS, type=str.lower,
                        default=default if suppress else "info", metavar="LEVEL",
                        help=f"messages shown: {', '.join(LEVELS)} (default: info)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default if suppress else False,
                        help="warnings and errors only, no progress bars")
