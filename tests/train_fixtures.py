"""Tiny image folders and a synthetic 'pretrained' checkpoint for the training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = "efficientnet_b1_pruned"
# flags of a run that takes a few seconds: 32 px, 4 images a step, single-threaded
TINY_FLAGS = ["--model", TINY_MODEL, "--img-size", "32", "--batch-size", "4", "--workers", "0",
              "--warmup-epochs", "0.5", "--lr", "0.01", "--seed", "3"]


def make_image_folder(root: Path, classes: int = 2, per_class: int = 4, val_per_class: int = 2, size: int = 12,
                      seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png: class c is brighter in channel c % 3."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 100, (size, size, 3)).astype(np.uint8)
                arr[..., c % 3] += 120
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


def run_effnet(args: list[str], timeout: float = 240, prefix: list[str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """`python -m effnet ARGS` (or `python PREFIX... ARGS`) with one thread, so runs are repeatable and
    do not fight over the cores."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, *(prefix or ["-m", "effnet"]), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def fake_run(folder: Path, model: str, class_names: list[str], img_size: int = 32, seed: int = 0) -> Path:
    """A run folder as `effnet train` leaves it, without training: randomly initialised weights of
    `model` for `class_names`, saved as model_best.pth.tar (with the run's settings) and as config.json +
    model.safetensors, preprocessing at `img_size` with crop 1.0 and mean/std 0.5."""
    import torch

    import effnet
    from effnet.train import TrainConfig
    from effnet.train.artifact import write_model_folder
    torch.manual_seed(seed)
    net = effnet.create_model(model, num_classes=len(class_names)).eval()
    cfg = TrainConfig(model=model, img_size=img_size, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3,
                      class_names=list(class_names))
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dict(arch=model, state_dict=net.state_dict(), args=cfg.to_dict(), class_names=list(class_names),
                    num_classes=len(class_names), best_weights="model"), folder / "model_best.pth.tar")
    write_model_folder(net, folder, cfg, class_names)
    return folder
