"""The rules every file effnet writes follows, in one place.

- A file appears under its final name only once complete: it is written to a hidden temporary
  name in the same folder (`.NAME.effnet-tmp-PID-XXXX`), flushed, then renamed. Temporaries left by
  a process that no longer runs are removed the next time anything is written to that folder.
- Written files get the permissions any other file the user creates gets (0666 minus the umask).
- An output path that is one of the command's inputs, a device, a FIFO, a socket, a folder or a
  symbolic link is refused with a message naming the flag.
- A new run never writes into an existing one: `new_run_dir` picks `DIR`, else `DIR-1`, `DIR-2`, ...
- Disk full, read-only or unwritable folders become an `OutputError` naming the file.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from .errors import EffnetError

TEMP_MARK = ".effnet-tmp-"
_TEMP_NAME = re.compile(r"^\..+\.effnet-tmp-(\d+)-[^/]+$")


class OutputError(EffnetError, OSError):
    """An output that could not be written (disk full, unwritable folder); exit status 1 (a runtime
    failure). Still an OSError, for callers that catch those."""

    exit_code = 1


class OutputPathError(EffnetError):
    """An output path that names something effnet must not replace; a usage error (exit status 2)."""


def file_mode() -> int:
    """0666 minus the process umask: what open() gives a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def describe_os_error(e: OSError, path: str | os.PathLike | None = None, verb: str = "write") -> str:
    """One line for a failed file operation, with what to do about it."""
    where = str(path if path is not None else (e.filename or "the output"))
    what = e.strerror or str(e)
    hints = {
        errno.ENOSPC: "free some space or write somewhere else",
        errno.EDQUOT: "free some space or write somewhere else",
        errno.EACCES: "check the folder's permissions or write somewhere else",
        errno.EPERM: "check the folder's permissions or write somewhere else",
        errno.EROFS: "the file system is read-only; write somewhere else",
        errno.ENOENT: "check the path",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "give a file name, not a folder",
        errno.ENAMETOOLONG: "use a shorter name",
    }
    hint = hints.get(e.errno or 0)
    return f"cannot {verb} {where!r}: {what}" + (f"; {hint}" if hint else "")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove temporaries of interrupted writes in `folder` whose writing process is gone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_file(path: str | os.PathLike, *, flag: str = "--output",
                      inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """`path` if effnet may write a file there; an OutputPathError naming `flag` otherwise.

    Refused: a folder, a symbolic link, a device, FIFO or socket, a file that is one of `inputs` (or
    an existing file inside an input folder, such as a model folder), and a path whose folder does
    not exist or is not writable.
    """
    path = Path(path).expanduser()
    shown = f"{flag} {str(path)!r}"
    if path.is_symlink():
        raise OutputPathError(f"{shown} is a symbolic link; give the real file name or a new one")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputPathError(f"{shown} is a folder; give a file name inside it")
        if not stat.S_ISREG(mode):
            raise OutputPathError(f"{shown} is a device, FIFO or socket, not a regular file; give a file name")
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser()
        in_folder = source.is_dir() and path.exists() and source.resolve() in path.resolve().parents
        if _same_file(path, source) or in_folder:
            raise OutputPathError(f"{shown} is one of this command's inputs ({str(source)!r}); "
                                  "give a new file name")
    parent = path.parent
    if not parent.is_dir():
        raise OutputPathError(f"{shown}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{shown}: folder {str(parent)!r} is not writable")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], *, keep_suffix: bool = False) -> Path:
    """Have `write(tmp_name)` fill a temporary file beside `path`, then rename it into place.

    The temporary ends in `.tmp`, or in `path`'s suffix with `keep_suffix` (for writers that pick
    the format from the name). A crash, a full disk or an exception leaves `path` as it was.
    OSErrors become an OutputError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-",
                                   suffix=path.suffix if keep_suffix else ".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(describe_os_error(e, path)) from e
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(describe_os_error(e, path)) from e
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def write_stream(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """`atomic_write` for writers that take an open binary file."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)
    return atomic_write(path, fill)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` atomically."""
    return write_stream(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save atomically."""
    import torch
    return write_stream(path, lambda f: torch.save(obj, f))


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy `src` to `dst` atomically."""
    def fill(f: BinaryIO) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, f, 1 << 20)
    return write_stream(dst, fill)


def _holds_something(folder: Path) -> bool:
    try:
        return any(True for _ in os.scandir(folder))
    except OSError:
        return True


def new_run_dir(path: str | os.PathLike, *, flag: str = "--output") -> tuple[Path, bool]:
    """A folder for a new run at `path`, created now: `path` itself when it does not exist or is
    empty, else the first free numbered sibling `path-1`, `path-2`, ... Returns (folder, renumbered)."""
    base = Path(path).expanduser()
    if base.is_symlink() and not base.is_dir():
        raise OutputPathError(f"{flag} {str(base)!r} is a symbolic link to something that is not a folder")
    if base.exists() and not base.is_dir():
        raise OutputPathError(f"{flag} {str(base)!r} is a file, not a folder; give a folder name")
    candidate, n = base, 0
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate, n > 0
        except FileExistsError:
            if candidate.is_dir() and not _holds_something(candidate):
                return candidate, n > 0
        except OSError as e:
            raise OutputError(describe_os_error(e, candidate)) from e
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")


def fresh_dir(path: str | os.PathLike, *, flag: str = "--output") -> Path:
    """`new_run_dir`, with a warning when the folder had to be renumbered."""
    folder, renumbered = new_run_dir(path, flag=flag)
    if renumbered:
        logging.getLogger(__name__).warning(f"{path} already holds files (an earlier run?); writing to {folder} "
                                            "instead")
    return folder
