"""`torchrun --nproc_per_node 2 -m effnet train` on CPU (gloo): trains, validates, one set of outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from train_fixtures import TINY_FLAGS, make_image_folder, run_effnet


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, per_class=8, val_per_class=3)
    out = tmp_path / "out"
    proc = run_effnet(["--standalone", "--nproc_per_node", "2", "-m", "effnet", "train", *TINY_FLAGS,
                       "--data-dir", str(data), "--epochs", "2", "--output", str(out), "--opt", "rmsproptf",
                       "--model-ema"], prefix=["-m", "torch.distributed.run"], timeout=300)
    assert "2 process(es)" in proc.stderr  # progress is logged to stderr
    assert proc.stderr.count("epoch 2/2:") == 1  # only rank 0 logs and writes
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert sorted(p.name for p in out.iterdir()) == ["args.yaml", "config.json", "last.pth.tar",
                                                     "model.safetensors", "model_best.pth.tar", "summary.csv",
                                                     "summary.png"]
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 2 and len(ckpt["rng_state_ranks"]) == 2
    # 16 training images, 2 ranks x batch 4: 2 steps an epoch; lr scaled to the global batch of 8
    assert ckpt["step"] == 4
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    # validation covered all 6 images once across the ranks: accuracy is a multiple of 1/6
    top1 = float(rows[-1]["eval_top1"])
    assert any(abs(top1 - 100 * k / 6) < 1e-3 for k in range(7))
