"""Progress bars (tqdm) for long loops, and printing that steps around them.

Bars go to stderr and only when stderr is a terminal: piped or redirected output, a log file or a
CI log gets none. `configure(False)` (the command line's `-q` or a log level above INFO) turns them
off everywhere; `configure(True)` forces them on (tests). Anything printed while a bar is on screen
goes through `echo` (tqdm.write), which clears the bar, prints, and redraws it, so text and bars
never share a line; effnet's log handler does the same.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm

_forced: bool | None = None  # None: bars exactly when stderr is a terminal


def configure(enabled: bool | None) -> None:
    """Turn bars on (True), off (False), or back to 'only on a terminal' (None)."""
    global _forced
    _forced = enabled


def enabled(stream: TextIO | None = None) -> bool:
    """Whether a bar would be shown now on `stream` (stderr by default)."""
    if _forced is not None:
        return _forced
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def bar(iterable: Iterable[Any] | None = None, *, total: int | float | None = None, desc: str | None = None,
        unit: str = "it", show: bool = True, force: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that disappears when done (leave=False) and is a silent no-op when bars
    are off or `show` is False (e.g. on every process but the first under torchrun); `force` shows it
    even when stderr is not a terminal (a caller that was asked for one explicitly)."""
    kwargs = dict(dict(leave=False, dynamic_ncols=True, mininterval=0.1), **kwargs)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not (show and (force or enabled())),
                file=sys.stderr, **kwargs)


def echo(text: str, *, file: TextIO | None = None, end: str = "\n") -> None:
    """`print(text, end=end, file=file)` that first clears any bar on screen and redraws it after."""
    file = file if file is not None else sys.stdout
    if getattr(tqdm, "_instances", None):
        tqdm.write(text, file=file, end=end)
    else:
        file.write(text + end)
    file.flush()
