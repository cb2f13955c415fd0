"""Range and choice checks shared by command-line flags and YAML config values, so a bad value gets
the same message wherever it came from, and the parser refuses it before any work starts.

`Rule.parse(value)` turns a flag's text or a YAML value into the setting's type and returns it, or
raises ValueError with a message such as "must be in [0, 1), got 1.5". `arg_type(rule)` wraps it as
an argparse `type=` (argparse then prints "argument --drop: must be in [0, 1), got 1.5").
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Rule:
    """A setting's type (int, float, str or bool) and allowed values."""

    kind: type = float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself not allowed
    hi_open: bool = False
    choices: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return {int: "an integer", float: "a finite number", bool: "true or false"}.get(self.kind, "text")

    def parse(self, value: Any) -> Any:
        """`value` (text from the command line, or a YAML value) as this rule's type, checked."""
        v = self._convert(value)
        if self.choices and v not in self.choices:
            raise ValueError(f"must be {self.describe()}, got {_show(value)}")
        if self.kind in (int, float):
            bad = ((self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)))
                   or (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi))))
            if bad:
                raise ValueError(f"must be {self.describe()}, got {_show(value)}")
        return v

    def _convert(self, value: Any) -> Any:
        kind = self.kind
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError(f"must be true or false, got {_show(value)}")
        if kind is str:
            if isinstance(value, str):
                return value
            raise ValueError(f"must be {self.describe() if self.choices else 'text'}, got {_show(value)}")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"must be {'an integer' if kind is int else 'a number'}, got {_show(value)}")
        if kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"must be an integer, got {_show(value)}")
                return int(value)
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"must be an integer, got {_show(value)}") from None
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {_show(value)}") from None
        if not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {_show(value)}")
        return v


def _show(value: Any) -> str:
    """A value as the user typed it: numbers bare (text from a flag or a number from YAML alike)."""
    if isinstance(value, str):
        try:
            float(value)
            return value
        except ValueError:
            return repr(value)
    return repr(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def arg_type(rule: Rule) -> Callable[[str], Any]:
    """An argparse `type=` that converts and checks a flag's text with `rule`."""
    def convert(text: str) -> Any:
        try:
            return rule.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = rule.kind.__name__  # argparse names the type in its own messages
    return convert


def unit(open_hi: bool = False) -> Rule:
    """A probability or rate in [0, 1] (or [0, 1))."""
    return Rule(float, 0.0, 1.0, hi_open=open_hi)


def positive(kind: type = float) -> Rule:
    """A float > 0, or an int >= 1."""
    return Rule(kind, 0, None, lo_open=True) if kind is float else Rule(kind, 1)


def at_least(lo: float, kind: type = float) -> Rule:
    """A number >= lo."""
    return Rule(kind, lo)


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# flags several commands share (training, prediction, validation), one rule each
COMMON: dict[str, Rule] = dict(
    img_size=Rule(int, 8, 32768), crop_pct=Rule(float, 0.0, 1.0, lo_open=True),
    interpolation=Rule(str, choices=INTERPOLATIONS), mean=Rule(float), std=positive(),
    num_classes=positive(int), batch_size=positive(int), workers=Rule(int, 0, 1024), in_chans=Rule(int, 1, 4096),
)


def check_sequence(flag: str, values: Sequence[float] | None, *, length: Sequence[int] | None = None,
                   ordered: bool = False) -> str | None:
    """A problem with a multi-value flag (its count or order), or None."""
    if values is None:
        return None
    if length is not None and len(values) not in length:
        counts = " or ".join(str(n) for n in sorted(set(length)))
        return f"{flag} takes {counts} value(s), got {len(values)}"
    if ordered and len(values) == 2 and values[0] > values[1]:
        return f"{flag} needs MIN MAX with MIN <= MAX, got {' '.join(_num(v) for v in values)}"
    return None


def total_memory_bytes() -> int | None:
    """Physical memory of this machine, or None when the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_problem(what: str, needed: float, hint: str) -> str | None:
    """A message when `needed` bytes clearly exceed this machine's memory (GPU memory included)."""
    total = total_memory_bytes()
    if total is None:
        return None
    try:
        import torch
        if torch.cuda.is_available():
            total += sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken CUDA set-up only means we cannot count its memory
        pass
    if needed <= total:
        return None
    return (f"{what} would need at least {needed / 2**30:,.1f} GiB of memory, more than this machine's "
            f"{total / 2**30:,.1f} GiB; {hint}")
