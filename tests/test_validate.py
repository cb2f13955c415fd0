"""`effnet validate`: JSON like timm's, class count from the checkpoint or the data, local-dir models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from train_fixtures import TINY_MODEL, make_image_folder, run_effnet


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("val")
    data = make_image_folder(root / "data", classes=3, val_per_class=3)
    torch.manual_seed(0)
    model = effnet.create_model(TINY_MODEL, num_classes=3)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 1}, root / "ckpt.pth.tar")
    return root, data, sd


def test_validate_json_with_class_count_from_checkpoint(setup: tuple[Path, Path, dict]) -> None:
    root, data, _ = setup
    proc = run_effnet(["validate", "--model", TINY_MODEL, "--checkpoint", str(root / "ckpt.pth.tar"),
                       "--data-dir", str(data), "--img-size", "32", "--batch-size", "4", "--workers", "0",
                       "--format", "json"])
    result = json.loads(proc.stdout)
    assert {"model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct",
            "interpolation", "loss", "count", "img_per_sec"} <= set(result)
    assert result["count"] == 9 and result["num_classes"] == 3 and result["img_size"] == 32
    assert result["top1"] + result["top1_err"] == pytest.approx(100) and result["top5"] == 100.0


def test_validate_local_dir_model_matches_checkpoint(setup: tuple[Path, Path, dict]) -> None:
    root, data, sd = setup
    folder = root / "hub"
    folder.mkdir(exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": TINY_MODEL, "num_classes": 3}))
    common = ["--data-dir", str(data / "val"), "--img-size", "32", "--workers", "0", "--format", "json"]
    a = json.loads(run_effnet(["validate", "--model", f"local-dir:{folder}", *common]).stdout)
    b = json.loads(run_effnet(["validate", "--model", TINY_MODEL, "--checkpoint", str(root / "ckpt.pth.tar"),
                               *common]).stdout)
    assert (a["top1"], a["loss"], a["count"]) == (b["top1"], b["loss"], b["count"])


def test_validate_text_on_digits(setup: tuple[Path, Path, dict]) -> None:
    root, _, sd = setup
    torch.manual_seed(0)
    model = effnet.create_model(TINY_MODEL, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(root / "digits.safetensors"))
    proc = run_effnet(["validate", "--model", TINY_MODEL, "--checkpoint", str(root / "digits.safetensors"),
                       "--dataset", "digits", "--img-size", "32", "--workers", "0"])
    assert "top-1" in proc.stdout and "359 images" in proc.stdout


def test_validate_errors(setup: tuple[Path, Path, dict]) -> None:
    root, data, _ = setup
    proc = run_effnet(["validate", "--model", TINY_MODEL, "--data-dir", str(data)], check=False)
    assert proc.returncode == 2 and "no weights" in proc.stderr
    proc = run_effnet(["validate", "--model", TINY_MODEL, "--checkpoint", str(root / "missing.pth"),
                       "--data-dir", str(data)], check=False)
    assert proc.returncode == 2 and "missing.pth" in proc.stderr and "Traceback" not in proc.stderr
