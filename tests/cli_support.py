"""Test helpers for the command line: run `effnet ARGV` in this process, check a refusal's message, and
fingerprint every file under a folder to show a command left the files it did not create alone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from effnet.cli import main


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str],
            caplog: pytest.LogCaptureFixture | None = None) -> tuple[int, str, str]:
    """Run `effnet ARGV`: (exit status, stdout, stderr plus any log records `caplog` caught); argparse's
    usage errors count as exit statuses too."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err + (caplog.text if caplog is not None else "")


def assert_error(err: str, *needles: str) -> str:
    """Exactly one error line, no traceback, holding every needle; returns the line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """sha256 of every regular file under `root` except those under a path in `skip` (a command's own output)."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not any(path == s or s in path.parents for s in skip):
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes
