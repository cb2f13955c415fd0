"""A step whose batch unreadable files shrank below two images is skipped (BatchNorm cannot train on one
value per channel), counted and logged; under torchrun every rank skips it together instead of hanging."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import effnet
from effnet.data.samples import Batch, Unreadable
from effnet.train import TrainConfig, fit
from train_fixtures import TINY_MODEL, run_effnet


def _batch(n: int, seed: int, lost: int = 0) -> Batch:
    """n random 32 px images of 2 classes, as a loader returns them after dropping `lost` unreadable files."""
    g = torch.Generator().manual_seed(seed)
    gone = [Unreadable(100 + i, f"bad{i}.png", f"bad{i}.png: cannot identify image file") for i in range(lost)]
    return Batch(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 2, gone)


def _cfg() -> TrainConfig:
    return TrainConfig(model=TINY_MODEL, img_size=32, batch_size=4, workers=0, epochs=1, lr=0.01, warmup_epochs=0,
                       seed=3)


def test_one_image_batch_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = effnet.create_model(TINY_MODEL, num_classes=2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # what the step would hit
        model.train()(_batch(1, 0)[0])
    train = [_batch(4, 1), _batch(1, 2, lost=3), _batch(0, 3, lost=4), _batch(4, 4)]
    with caplog.at_level(logging.WARNING):
        metrics = fit(model, train, [_batch(4, 9)], _cfg(), tmp_path / "run")
    assert metrics["step"] == 4 and metrics["train_skipped"] == 7
    assert "skipping step 2 (epoch 1)" in caplog.text
    assert "skipped 2 step(s) in epoch 1" in caplog.text
    ckpt = torch.load(tmp_path / "run" / "last.pth.tar", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["scheduler"]


# rank 1's first batch lost all its images, rank 0's none: both must skip that step and train the next
TWO_RANKS = """
import sys
sys.path.insert(0, TESTS)
import torch
import effnet
from effnet.train import TrainConfig, fit
from effnet.train.distributed import init_distributed
from test_train_small_batches import _batch, _cfg

info = init_distributed("cpu")
first = _batch(0, 1, lost=4) if info.rank == 1 else _batch(4, 1)
torch.manual_seed(0)
model = effnet.create_model("efficientnet_b1_pruned", num_classes=2)
metrics = fit(model, [first, _batch(4, 2 + info.rank)], [_batch(2, 9 + info.rank)], _cfg(), sys.argv[1])
total = sum(p.double().sum().item() for p in model.parameters())
print(f"rank {info.rank} step {metrics['step']} weights {total:.12e}")
"""


def test_torchrun_ranks_skip_a_step_together(tmp_path: Path) -> None:
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS.replace("TESTS", repr(str(Path(__file__).parent))))
    proc = run_effnet(["--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "run")],
                      prefix=["-m", "torch.distributed.run"], timeout=120)
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(" weights")[0] for line in lines] == ["rank 0 step 2", "rank 1 step 2"]
    assert lines[0].split("weights ")[1] == lines[1].split("weights ")[1]  # one update, the same on both
    assert "skipping step 1 (epoch 1)" in proc.stderr
