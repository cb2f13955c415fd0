"""Optional native CPU kernels, built on first use with the machine's C compiler.

effnet runs without them: every op here has a pure-PyTorch formulation in `effnet.layers`, which is
what runs when no compiler is found, the build fails, the platform is not Linux on x86-64, or
`EFFNET_NATIVE=0` is set. With them, training on the CPU takes its depthwise convolutions from
`depthwise.c` (see there and `effnet.kernels.depthwise` for what and why); inference is unchanged.

The library is compiled once per machine (`-O3 -march=native -fopenmp`, a few seconds) into
`$EFFNET_CACHE` (default `~/.cache/effnet`)`/kernels/`, under a name that hashes the source, the
compiler and the CPU's instruction sets, so a home folder shared between machines keeps one build
per kind of CPU. A build is written to a temporary file and renamed into place, so a concurrent or
interrupted build never leaves a broken library behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch  # loaded first: the library links libgomp, and must share the copy torch has loaded

_LOG = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("depthwise.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
_SYMBOLS = ("effnet_dw_fwd", "effnet_dw_bwd_data", "effnet_dw_bwd_weight")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason: str | None = None  # why the library is not available, once a load was tried


def cache_dir() -> Path:
    """Where built libraries go: $EFFNET_CACHE/kernels, else ~/.cache/effnet/kernels."""
    root = os.environ.get("EFFNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "effnet")
    return Path(root) / "kernels"


def enabled() -> bool:
    """False when the user switched the kernels off with EFFNET_NATIVE=0 (read at each call)."""
    return os.environ.get("EFFNET_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    return shutil.which(cc) if cc else (shutil.which("cc") or shutil.which("gcc"))


def _build(cc: str) -> Path:
    """The built library for this source, compiler and CPU: from the cache, or compiled now."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    out = cache_dir() / f"effnet_depthwise-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise OSError(f"{Path(cc).name} failed: {first}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int
    geometry = [i] * 10  # B, H, W, C, Ho, Wo, k, s, pad_top, pad_left
    lib.effnet_dw_fwd.argtypes = [i, p, p, p, p, i, *geometry, i]
    lib.effnet_dw_bwd_data.argtypes = [i, p, p, p, i, *geometry, i]
    lib.effnet_dw_bwd_weight.argtypes = [i, p, p, p, i, *geometry, i]
    for name in _SYMBOLS:
        getattr(lib, name).restype = i


def load() -> ctypes.CDLL | None:
    """The native library, building it on the first call; None (and `status()` says why) when it is
    switched off or cannot be built here. Never raises."""
    global _lib, _reason
    if not enabled():
        return None
    if _lib is not None or _reason is not None:
        return _lib
    with _lock:
        if _lib is not None or _reason is not None:
            return _lib
        if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
            _reason = f"not built for {platform.system()} on {platform.machine()} (Linux on x86-64 only)"
        elif not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):
            _reason = f"torch {torch.__version__} has no torch.library.custom_op (2.4 or newer needed)"
        elif (cc := _compiler()) is None:
            _reason = "no C compiler found (set CC, or install gcc)"
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc)))
                _declare(lib)
                _lib = lib
                _LOG.debug("effnet native kernels: %s", lib._name)
            except (OSError, subprocess.SubprocessError, AttributeError) as e:
                _reason = f"build failed: {e}"
        if _reason is not None:
            _LOG.debug("effnet native kernels unavailable: %s", _reason)
    return _lib


def loaded() -> ctypes.CDLL | None:
    """The library if a previous `load()` succeeded and the kernels are enabled; never builds (safe
    while torch.compile traces)."""
    return _lib if enabled() else None


def library() -> ctypes.CDLL:
    """The library for an op already chosen (in a compiled graph, say), whatever EFFNET_NATIVE says now:
    the variable decides what new calls take, not what a traced graph runs. Builds it if needed."""
    lib = _lib or load()
    if lib is None:
        raise RuntimeError(f"effnet native kernels: {status()}")
    return lib


def status() -> str:
    """One line: whether the native kernels are in use, and if not, why."""
    if not enabled():
        return "off (EFFNET_NATIVE=0)"
    lib = load()
    return "on" if lib is not None else f"off ({_reason})"


def wanted(x: torch.Tensor, weight: torch.Tensor, per_sample: bool) -> bool:
    """Whether a depthwise conv of `x` should run natively: on the CPU, channels-last, fp32 or bf16 (autocast
    included), outside TorchScript, FX, ONNX export and jit tracing, with the library loaded (built on the
    first eager call; torch.compile uses it once it is). A per-sample (CondConv) conv always does, a static
    one only while autograd records it (training): oneDNN's static forward is as fast, and fuses."""
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor) or x.dim() != 4 or x.device.type != "cpu":
        return False
    if not per_sample and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    if (loaded() if torch.compiler.is_compiling() else load()) is None:
        return False
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    # channels-last, told by the channel stride alone: under torch.compile with dynamic shapes a full
    # contiguity test is a symbolic expression per conv, and a graph of them swamps the compiler. A 1x1 map
    # is both layouts at once, so an NCHW model keeps PyTorch's convs there too.
    return dtype in (torch.float32, torch.bfloat16) and x.stride(1) == 1 and x.shape[1] > 1 \
        and x.shape[2] * x.shape[3] > 1
