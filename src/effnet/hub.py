"""Fetching weight files: the Hugging Face hub cache and hash-checked URL downloads.

URL downloads land in torch's hub checkpoint folder (`torch.hub.get_dir()/checkpoints`, which
follows TORCH_HOME) and are verified against the sha256 prefix in the file name
(`name-<hex>.pth`). A download is written to a temporary file in the same folder and only
renamed into place once it is complete and verified, so the cache never holds a partial or
corrupt file. Hugging Face files go through `huggingface_hub.hf_hub_download` and its own cache
(HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE). HF_HUB_OFFLINE also stops URL downloads, so one switch
keeps effnet off the network; cached files and file:// URLs still work.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

import torch

from . import outputs
from . import progress as bars
from .extras import install_hint

_LOG = logging.getLogger(__name__)
DOWNLOAD_TIMEOUT = 30.0  # seconds a network read may stall before the download is abandoned
PROBE_TIMEOUT = 3.0  # seconds one connection attempt may take before the network counts as unreachable
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # preferred first
_CHUNK = 1 << 20
_HASH_SUFFIX = re.compile(r"^([0-9a-f]+)(\.|$)")


class DownloadError(OSError):
    """A source that could not deliver a usable file; the message says why."""


def checkpoint_dir() -> Path:
    """torch's hub checkpoint folder (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache_dir() -> Path | None:
    """The Hugging Face hub cache folder, or None when huggingface_hub is not installed."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network access (URL downloads honour it too)."""
    try:
        from huggingface_hub import constants
        if constants.HF_HUB_OFFLINE:
            return True
    except ImportError:
        pass
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_PROBES: dict[tuple[str, int], str | None] = {}


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why `url`'s server cannot be reached (name lookup and a TCP connection, `timeout` seconds at
    most), or None when it can. One probe per host and port per process, so effnet decides "no
    network" once and quickly instead of sitting through a client's retries."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    try:
        key = (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except ValueError:
        return f"{url!r} has an invalid port"
    if key not in _PROBES:
        _PROBES[key] = _probe(*key, timeout)
    return _PROBES[key]


def _probe(host: str, port: int, timeout: float) -> str | None:
    # the name lookup ignores socket timeouts, so it runs in a thread that may be abandoned
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host}:{port} unreachable ({e.strerror or type(e).__name__})")

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return result[0] if result else f"{host}:{port} did not answer within {timeout:g}s"


def set_aside(path: Path, digest: str) -> Path:
    """Rename a cached file whose hash does not match its name out of the way (never delete what a
    user may have put there); returns the new name."""
    aside = path.with_name(f"{path.name}.sha256-{digest[:8]}.mismatch")
    os.replace(path, aside)
    _LOG.warning(f"{path} does not match the sha256 prefix in its name (its sha256 begins {digest[:8]}); "
                 f"renamed it to {aside.name} and looking for the right file")
    return aside


def hash_prefix(filename: str) -> str | None:
    """The sha256 prefix a published file name carries after its last '-', e.g. 'x-4362b6b2.pth'."""
    if "-" not in filename:
        return None
    m = _HASH_SUFFIX.match(filename.rsplit("-", 1)[1])
    return m.group(1) if m else None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def url_filename(url: str) -> str:
    """The file name a URL's cached copy gets (the last path component)."""
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name or name in {".", ".."}:
        raise DownloadError(f"URL {url!r} does not end in a file name")
    return name


def cached_url_path(url: str) -> Path:
    """Where `download_url` keeps the file for `url`."""
    return checkpoint_dir() / url_filename(url)


def download_url(url: str, *, timeout: float | None = None, progress: bool | None = None) -> Path:
    """The cached copy of `url`, downloading it first if needed.

    A cached copy is re-hashed before use; one that no longer matches its name's sha256 prefix
    is renamed aside (`NAME.sha256-XXXXXXXX.mismatch`, with a warning) and fetched again. The
    server is probed once first (`unreachable`), so no network is reported within seconds.
    Raises DownloadError saying what went wrong (unreachable, HTTP error, timeout, truncated body,
    hash mismatch); nothing is left in the cache then.
    `progress=None` shows a progress bar only when stderr is a terminal (and not with `effnet -q`).
    """
    dest = cached_url_path(url)
    expected = hash_prefix(dest.name)
    aside = None
    try:
        if dest.is_file():
            digest = sha256_of(dest)
            if expected is None or digest.startswith(expected):
                return dest
            aside = set_aside(dest, digest)
        is_local = urllib.parse.urlparse(url).scheme == "file"
        moved = f"; the cached file with the wrong hash was renamed to {aside}" if aside else ""
        if offline() and not is_local:
            raise DownloadError(f"not in the cache ({dest}) and HF_HUB_OFFLINE is set, so it was not "
                                f"downloaded{moved}")
        why = unreachable(url)
        if why:
            raise DownloadError(f"not in the cache ({dest}), and no network ({why}){moved}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _download_to(url, dest, expected, DOWNLOAD_TIMEOUT if timeout is None else timeout,
                     bars.enabled() if progress is None else progress)
    except DownloadError:
        raise
    except OSError as e:  # an unwritable or full cache folder, not a network problem
        raise DownloadError(f"cannot use the cache folder {dest.parent}: {e}") from None
    return dest


def _download_to(url: str, dest: Path, expected: str | None, timeout: float, progress: bool) -> None:
    # named as effnet.outputs names temporaries, so one left by a killed download is cleaned up later
    outputs.clean_stale_temps(dest.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}{outputs.TEMP_MARK}{os.getpid()}-", suffix=".partial",
                                    dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _fetch(url, out, timeout, progress, dest.name)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and not digest.startswith(expected):
            raise DownloadError(f"hash mismatch: sha256 of the download is {digest[:16]}..., but the "
                                f"file name {dest.name!r} says it starts with {expected}; not cached")
        os.chmod(tmp, outputs.file_mode())  # mkstemp's 0600 would differ from every other file the user has
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(url: str, out: BinaryIO, timeout: float, progress: bool, label: str) -> str:
    """Stream `url` into `out`; return the hex sha256. Refuses bodies shorter than Content-Length."""
    request = urllib.request.Request(url, headers={"User-Agent": "effnet"})
    h = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with bars.bar(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, show=progress,
                          force=progress) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"HTTP error {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DownloadError(f"no response within {timeout:g}s (timed out)") from None
        raise DownloadError(f"unreachable: {reason}") from None
    except (socket.timeout, TimeoutError):
        raise DownloadError(f"the server stopped sending for {timeout:g}s after {received} bytes "
                            f"(timed out); partial download discarded") from None
    except (ConnectionError, OSError) as e:  # connection reset, IncompleteRead, ...
        raise DownloadError(f"download interrupted after {received} bytes ({type(e).__name__}: {e}); "
                            f"partial download discarded") from None
    if total is not None and received != total:
        raise DownloadError(f"truncated download: received {received} of {total} bytes; "
                            f"partial download discarded")
    if received == 0:
        raise DownloadError("the server sent an empty file")
    return h.hexdigest()


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub (HF_ENDPOINT) cannot be reached, or None (see `unreachable`)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return unreachable(constants.ENDPOINT)


def hf_hub_weights(repo_id: str) -> tuple[Path | None, list[str]]:
    """The first of model.safetensors / pytorch_model.bin that huggingface_hub can supply.

    Returns (path or None, why each file could not be had). Uses hf_hub_download with its normal
    cache and offline handling.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, [f"huggingface_hub is not installed ({install_hint('hub')}), source skipped"]
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars
    if not bars.enabled():  # `effnet -q`, or stderr is not a terminal: no bars from huggingface_hub either
        disable_progress_bars()

    from . import __version__
    failures: dict[str, list[str]] = {}
    # one quick probe instead of huggingface_hub's retries: without network, read the cache only
    no_network = None if offline() else hub_unreachable()
    cache_only = no_network is not None
    for filename in HF_FILENAMES:
        try:
            path = hf_hub_download(repo_id, filename, library_name="effnet", library_version=__version__,
                                   local_files_only=cache_only)
            return Path(path), []
        except LocalEntryNotFoundError as e:
            cache_only = True  # once the hub proved unreachable, asking again only repeats its retries
            why = ("not in the local cache and HF_HUB_OFFLINE is set" if offline() else
                   "not in the local cache, and no network" if no_network else
                   f"not in the local cache and the hub could not be reached"
                   f"{f' ({_first_line(e.__cause__)})' if e.__cause__ else ''}")
        except Exception as e:  # huggingface_hub raises many unrelated types; all mean "not here"
            why = _first_line(e)
        failures.setdefault(why, []).append(filename)
    return None, [f"{', '.join(names)}: {why}" for why, names in failures.items()]


def hf_hub_file(repo_id: str, filename: str) -> tuple[Path | None, str]:
    """One file of a hub repo through huggingface_hub's cache: (path, "") or (None, why not)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None, "huggingface_hub is not installed (pip install 'effnet[hub]')"
    from . import __version__
    no_network = None if offline() else hub_unreachable()
    try:
        return Path(hf_hub_download(repo_id, filename, library_name="effnet", library_version=__version__,
                                    local_files_only=no_network is not None)), ""
    except Exception as e:  # huggingface_hub raises many unrelated types; all mean "not here"
        return None, ("not in the local cache and HF_HUB_OFFLINE is set" if offline() else
                      f"not in the local cache, and no network ({no_network})" if no_network else _first_line(e))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
