"""Fine-tuning from a (synthetic) pretrained checkpoint to a new class count, from Python and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet.train import TrainConfig, build_loaders, fit
from effnet.train.runner import build_train_model
from train_fixtures import TINY_FLAGS, TINY_MODEL, make_image_folder, run_effnet


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000-class checkpoint standing in for the published weights."""
    torch.manual_seed(123)
    model = effnet.create_model(TINY_MODEL)
    path = tmp_path_factory.mktemp("pre") / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("classifier.")}


def test_finetune_from_python(tmp_path: Path, pretrained: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3)
    cfg = TrainConfig(model=TINY_MODEL, data_dir=str(data), img_size=32, batch_size=4, workers=0, epochs=1,
                      lr=0.01, warmup_epochs=0, initial_checkpoint=str(pretrained), pretrained=True)
    train_loader, val_loader, classes = build_loaders(cfg)
    model = build_train_model(cfg, len(classes), finetune=True)
    assert model.get_classifier().out_features == 3
    start = effnet.checkpoint.read_state_dict(pretrained)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in _backbone(start).items())
    metrics = fit(model, train_loader, val_loader, cfg, tmp_path / "out")
    assert metrics["count"] == 6 and 0 <= metrics["eval_top1"] <= 100
    after = model.state_dict()
    assert not torch.equal(after["conv_stem.weight"], start["conv_stem.weight"])
    ckpt = torch.load(tmp_path / "out" / "last.pth.tar", weights_only=True)
    assert ckpt["class_names"] == classes and ckpt["state_dict"]["classifier.weight"].shape[0] == 3


def test_finetune_cli_with_frozen_backbone(tmp_path: Path, pretrained: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2)
    out = tmp_path / "out"
    proc = run_effnet(["finetune", *TINY_FLAGS, "--checkpoint", str(pretrained), "--data-dir", str(data),
                       "--epochs", "1", "--freeze-epochs", "1", "--output", str(out)])
    assert "new classifier for 2 classes" in proc.stderr
    sd = torch.load(out / "last.pth.tar", weights_only=True)["state_dict"]
    start = effnet.checkpoint.read_state_dict(pretrained)
    # frozen: weights and BatchNorm statistics of the backbone untouched, the new classifier trained
    unchanged = [k for k, v in _backbone(start).items() if torch.equal(v, sd[k])]
    assert len(unchanged) == len(_backbone(start))
    assert sd["classifier.weight"].shape == (2, start["classifier.weight"].shape[1])
    assert (out / "summary.csv").read_text().count("\n") == 2

    # the fine-tuned checkpoint validates with the class count it carries
    proc = run_effnet(["validate", "--model", TINY_MODEL, "--checkpoint", str(out / "model_best.pth.tar"),
                       "--data-dir", str(data), "--img-size", "32", "--workers", "0", "--format", "json"])
    assert '"num_classes": 2' in proc.stdout


def test_finetune_checkpoint_of_another_architecture_is_a_clear_error(tmp_path: Path, pretrained: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    proc = run_effnet(["finetune", *TINY_FLAGS, "--model", "efficientnet_b2_pruned", "--checkpoint",
                       str(pretrained), "--data-dir", str(data), "--epochs", "1"], check=False)
    assert proc.returncode == 2 and "does not fit" in proc.stderr and "Traceback" not in proc.stderr
