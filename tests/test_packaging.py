"""The base install tells the truth: `pip install .` with no extras, in a fresh venv, runs the commands
that need no extra (list, train on class folders, predict), and a command that needs an extra says in
one line which one to install. Slow: it builds a venv (torch comes from the wheel on disk when there is
one, as in `make install`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import REPO, TINY_FLAGS, TINY_MODEL, make_image_folder

pytestmark = pytest.mark.slow

EXTRA_MODULES = ("sklearn", "matplotlib", "onnx", "onnxruntime", "huggingface_hub", "tensorboard", "mlflow")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding torch and `pip install .` (no extras) from a copy of the source tree."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # torch first and at this environment's version, so pip takes the CPU wheel on disk, as `make install` does
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True, timeout=900)
    subprocess.run([*pip, str(source)], check=True, timeout=900)
    return venv


def effnet(venv: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    clean.update(OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([str(venv / "bin" / "effnet"), *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, extra: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert f"pip install 'effnet[{extra}]'" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_base_install_has_no_extras_and_ships_its_metadata(base: Path) -> None:
    code = ("import importlib.metadata as m, importlib.util as u, json; "
            f"print(json.dumps([[n for n in {EXTRA_MODULES!r} if u.find_spec(n)], "
            "[str(f) for f in m.files('effnet')], m.metadata('effnet').get_all('License-Expression')]))")
    proc = subprocess.run([str(base / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    import json
    present, files, license_ = json.loads(proc.stdout)
    assert present == []
    assert "effnet/py.typed" in files and any(f.endswith("licenses/LICENSE") for f in files)
    assert license_ == ["Apache-2.0"]


def test_base_install_lists_trains_and_predicts(base: Path, tmp_path: Path) -> None:
    assert "efficientnet_b1_pruned" in effnet(base, "list", cwd=tmp_path).stdout
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, val_per_class=2)
    run = tmp_path / "run"
    proc = effnet(base, "-q", "train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "1", "--output", str(run),
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (run / "args.yaml").is_file() and (run / "model_best.pth.tar").is_file()
    image = str(data / "val" / "class0" / "0.png")
    proc = effnet(base, "predict", "--model", TINY_MODEL, "--checkpoint", str(run / "model_best.pth.tar"),
                  "--img-size", "32", image, cwd=tmp_path)
    assert proc.returncode == 0 and image in proc.stdout, proc.stderr


def test_commands_that_need_an_extra_name_it(base: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, val_per_class=2)
    tiny = [*TINY_FLAGS, "--epochs", "1", "--output", str(tmp_path / "run")]
    one_line_error(effnet(base, "-q", "train", *tiny, "--dataset", "digits", cwd=tmp_path), "digits")
    one_line_error(effnet(base, "-q", "train", *tiny, "--data-dir", str(data), "--log-tensorboard", cwd=tmp_path),
                   "tensorboard")
    weights = tmp_path / "w.safetensors"
    code = (f"import effnet; from safetensors.torch import save_file; m = effnet.create_model({TINY_MODEL!r}); "
            f"save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {str(weights)!r})")
    subprocess.run([str(base / "bin" / "python"), "-c", code], check=True)
    one_line_error(effnet(base, "export", "--model", TINY_MODEL, "--checkpoint", str(weights), "--format", "onnx",
                          "--output", str(tmp_path / "m.onnx"), cwd=tmp_path), "export")
    assert not (tmp_path / "m.onnx").exists()
    # published weights: with huggingface_hub absent the message names the hub extra among what it tried
    proc = effnet(base, "predict", "--model", TINY_MODEL, "--pretrained", str(data / "val" / "class0" / "0.png"),
                  cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch")})
    assert proc.returncode == 2 and "pip install 'effnet[hub]'" in proc.stderr and "Traceback" not in proc.stderr
