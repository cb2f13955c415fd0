"""A training run is a complete artifact: from its folder alone, with no repeated flags, predict prints
its class names, validate reproduces its best top-1 at its size, export writes an ONNX file whose
metadata is enough to use it (the README's onnxruntime snippet runs here), and timm loads it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from effnet.cli import main
from effnet.loading import load_model
from cli_support import run_cli
from train_fixtures import TINY_FLAGS, make_image_folder

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- onnx-usage:start -->", "<!-- onnx-usage:end -->"
CLASSES = ["class0", "class1", "class2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only contends for the cores


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the tiny model on generated 40 px images, trained and validated at 32 px."""
    root = tmp_path_factory.mktemp("artifact")
    data = make_image_folder(root / "data", classes=3, per_class=6, val_per_class=3, size=40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only contend for the cores
    try:
        assert main(["train", *TINY_FLAGS, "--data-dir", str(data), "--epochs", "1", "--output",
                     str(root / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def cli(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """`effnet ARGV`'s stdout; it must succeed."""
    code, out, err = run_cli(list(argv), capsys)
    assert code == 0, err
    return out


def test_run_folder_is_a_model_folder(run: Path) -> None:
    meta = json.loads((run / "config.json").read_text())
    assert meta["architecture"] == "efficientnet_b1_pruned" and meta["num_classes"] == 3
    assert meta["label_names"] == CLASSES
    pre = meta["pretrained_cfg"]
    assert pre["input_size"] == [3, 32, 32] and pre["crop_pct"] == 0.882 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3 and pre["hf_hub_id"] is None
    assert {"args.yaml", "summary.csv", "model_best.pth.tar", "model.safetensors"} <= {p.name for p in run.iterdir()}


def test_predict_and_validate_from_the_folder(run: Path, capsys: pytest.CaptureFixture) -> None:
    image = str(run.parent / "data" / "val" / "class1" / "0.png")
    text = cli(capsys, "predict", "-m", str(run), image, "--topk", "3")
    assert {line.split()[1] for line in text.splitlines()[1:]} == set(CLASSES)
    feats = run.parent / "feats.npy"
    cli(capsys, "embed", "-m", str(run), image, "--output", str(feats))
    assert (run.parent / "feats.labels.txt").read_text().strip() in CLASSES
    result = json.loads(cli(capsys, "validate", "--checkpoint", str(run / "model_best.pth.tar"), "--data-dir",
                            str(run.parent / "data"), "--workers", "0", "--format", "json"))
    rows = list(csv.DictReader((run / "summary.csv").open()))
    assert result["img_size"] == 32 and result["crop_pct"] == 0.882 and result["num_classes"] == 3
    assert abs(result["top1"] - max(float(r["eval_top1"]) for r in rows)) < 1e-3
    assert result["count"] == 9


def readme_onnx_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(START) + len(START):text.index(END)]
    return re.findall(r"^```python[ \t]*\n(.*?)^```", section, flags=re.S | re.M)[0]


def test_export_onnx_with_metadata_and_the_readme_snippet(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    import onnx
    onnx_path = tmp_path / "model.onnx"
    cli(capsys, "export", "-m", str(run), "--format", "onnx", "--output", str(onnx_path))
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["input_size"]) == [3, 32, 32] and json.loads(meta["label_names"]) == CLASSES
    assert json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.5] * 3
    assert meta["interpolation"] == "bicubic" and float(meta["crop_pct"]) == 0.882
    assert meta["model_name"] == f"local-dir:{run}" and meta["effnet_version"]
    # a photo-like image of another size, so resize and crop both matter
    Image.linear_gradient("L").resize((50, 37)).convert("RGB").save(tmp_path / "image.jpg", quality=95)
    expected = json.loads(cli(capsys, "predict", "-m", str(run), str(tmp_path / "image.jpg"), "--format", "json",
                              "--topk", "3"))[0]["topk"]
    proc = subprocess.run([sys.executable, "-c", readme_onnx_block()], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = {label: (float(prob), float(logit)) for label, prob, _, logit in map(str.split, proc.stdout.splitlines())}
    assert sorted(got) == CLASSES, proc.stdout  # ties may order differently: compare per class
    assert all(abs(got[e["label"]][0] - e["prob"]) < 1e-4 for e in expected), (got, expected)
    # the logits too (probabilities of a barely trained model saturate): same preprocessing, same numbers
    loaded = load_model(str(run), device="cpu")
    with torch.no_grad():
        logits = loaded.model(loaded.transform(Image.open(tmp_path / "image.jpg"))[None])[0]
    for i, name in enumerate(CLASSES):
        assert abs(got[name][1] - float(logits[i])) <= 1e-4 * float(logits.abs().max()), (got, logits)


def test_timm_loads_the_run_folder(run: Path) -> None:
    timm = pytest.importorskip("timm")
    ours = load_model(f"local-dir:{run}", device="cpu").model
    theirs = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    assert theirs.num_classes == 3 and tuple(theirs.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert list(theirs.pretrained_cfg["label_names"]) == CLASSES
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


def test_model_folder_holds_the_weights_that_validated_best(tmp_path: Path) -> None:
    import effnet
    from effnet.checkpoint import read_state_dict
    from effnet.train import TrainConfig, build_loaders, fit
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, val_per_class=3)
    cfg = TrainConfig(model="efficientnet_b1_pruned", data_dir=str(data), img_size=32, batch_size=4, workers=0,
                      epochs=1, lr=0.05, warmup_epochs=0, model_ema=True, model_ema_decay=0.5, eval_metric="loss")
    train_loader, val_loader, classes = build_loaders(cfg)
    fit(effnet.create_model(cfg.model, num_classes=2), train_loader, val_loader, cfg, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "model_best.pth.tar", weights_only=True)
    row = ckpt["history"][-1]
    chosen = "ema" if row["ema_loss"] <= row["eval_loss"] else "model"
    assert ckpt["best_weights"] == chosen and ckpt["best_metric"] == min(row["ema_loss"], row["eval_loss"])
    saved = read_state_dict(tmp_path / "run" / "model.safetensors")
    expected = ckpt["state_dict_ema" if chosen == "ema" else "state_dict"]
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    assert not all(torch.equal(ckpt["state_dict"][k], ckpt["state_dict_ema"][k]) for k in expected)
