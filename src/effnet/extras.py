"""Optional dependencies: import one, or fail with a single line naming the extra that provides it.

The base install (`pip install effnet`) runs every command that needs nothing more: training on class
folders, prediction, validation, embeddings, listing. A feature that needs a heavier package calls
`require` at the point of use, so the message names the feature, the package and the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import EffnetError

# import name -> the name pip knows it by, where the two differ
PIP_NAMES = {"sklearn": "scikit-learn", "yaml": "pyyaml", "python_multipart": "python-multipart"}

# extra -> the import names it provides (pyproject.toml's [project.optional-dependencies], by import name)
EXTRAS: dict[str, tuple[str, ...]] = {
    "digits": ("sklearn",),
    "plots": ("matplotlib",),
    "export": ("onnx", "onnxruntime"),
    "int8": ("torchao",),
    "hub": ("huggingface_hub",),
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow",),
    "serve": ("starlette", "uvicorn", "python_multipart"),
}


class MissingExtraError(EffnetError, ImportError):
    """An optional package is not installed; the message names the extra to install."""


def install_hint(extra: str) -> str:
    """The pip command that installs `extra` (quoted for shells that glob brackets)."""
    return f"pip install 'effnet[{extra}]'"


def require(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import `module` (dotted names allowed) or raise MissingExtraError, e.g.
    "ONNX export needs onnx, which is not installed: pip install 'effnet[export]'".

    Only a missing top-level package is reported this way; an ImportError from inside an installed
    package (a broken install, an incompatible version) is re-raised with its own message, naming
    the package, so it is not mistaken for a missing extra.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    top = module.split(".")[0]
    package = PIP_NAMES.get(top, top)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name != top:  # the package is there, but too old or broken
            raise MissingExtraError(f"{package} is installed but cannot import {e.name} ({e}); "
                                    f"{install_hint(extra)} installs a version effnet supports") from None
        raise MissingExtraError(f"{purpose or module} needs {package}, which is not installed: "
                                f"{install_hint(extra)}") from None
    except ImportError as e:
        raise MissingExtraError(f"{package} is installed but does not import ({e}); "
                                f"{install_hint(extra)} installs a version effnet supports") from None
