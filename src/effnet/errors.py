"""Exceptions effnet raises for bad input; each message names the thing at fault."""


class EffnetError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback, and exits with
    `exit_code` (2: the input or a flag is wrong; subclasses for runtime failures use 1)."""

    exit_code = 2


class UnknownModelError(EffnetError, ValueError):
    """A model name that is not registered."""


class CheckpointError(EffnetError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class PretrainedUnavailableError(EffnetError, RuntimeError):
    """Pretrained weights that could not be found or fetched from any source."""


def first_line(error: BaseException, default: str = "") -> str:
    """The first line of an exception's message (libraries raise multi-line ones), or `default`."""
    text = str(error).strip()
    return text.splitlines()[0] if text else default
