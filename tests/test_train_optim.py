"""Optimiser, schedule, EMA, loss and config semantics, checked against hand computations."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from effnet.train import (RECIPES, ConfigError, LabelSmoothingCrossEntropy, ModelEma, RMSpropTF, Scheduler,
                          SoftTargetCrossEntropy, TrainConfig, add_train_arguments, config_from_args, param_groups)
from effnet.train.optim import create_optimizer, weight_decay
from effnet.train.scheduler import create_scheduler, warmup_epochs


def test_rmsproptf_matches_tf_update_by_hand() -> None:
    lr, decay, mom, eps, wd = 0.1, 0.9, 0.9, 1e-3, 0.01
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = RMSpropTF([p], lr=lr, decay=decay, momentum=mom, eps=eps, weight_decay=wd)
    grads = [[0.5, -1.0], [0.1, 0.2], [-0.3, 0.0]]
    # TF: ms starts at 1; eps inside the sqrt; lr inside the momentum buffer; L2 gradient wd * p
    w, ms, buf = [1.0, -2.0], [1.0, 1.0], [0.0, 0.0]
    for step, g in enumerate(grads):
        if step == 2:
            lr = 0.05
            for group in opt.param_groups:
                group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        for i in range(2):
            gi = g[i] + wd * w[i]
            ms[i] = decay * ms[i] + (1 - decay) * gi * gi
            buf[i] = mom * buf[i] + lr * gi / math.sqrt(ms[i] + eps)
            w[i] -= buf[i]
        assert p.detach().tolist() == pytest.approx(w, rel=1e-12, abs=1e-15)
    # torch's RMSprop (eps outside the sqrt, square average from 0) takes another path
    a = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    a.grad, b.grad = torch.tensor(grads[0], dtype=torch.float64), torch.tensor(grads[0], dtype=torch.float64)
    RMSpropTF([a], lr=0.1, eps=eps).step()
    torch.optim.RMSprop([b], lr=0.1, alpha=decay, eps=eps, momentum=mom).step()
    assert (a - b).abs().min().item() > 0.1


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups([model], 1e-5)
    assert decay["weight_decay"] == 1e-5 and no_decay["weight_decay"] == 0.0
    assert {tuple(p.shape) for p in decay["params"]} == {(4, 3, 3, 3), (2, 4)}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias


def _sched(kind: str, **kw: float) -> Scheduler:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    return Scheduler(opt, base_lr=0.256, steps_per_epoch=10, epochs=100, kind=kind, **kw)


def test_step_schedule_warmup_then_097_every_24_epochs() -> None:
    s = _sched("step", warmup_epochs=1.0, warmup_lr=1e-6, decay_epochs=2.4, decay_rate=0.97)
    assert s.lr_at(0) == pytest.approx(1e-6)
    assert s.lr_at(5) == pytest.approx(1e-6 + (0.256 - 1e-6) * 0.5)
    assert s.lr_at(10) == pytest.approx(0.256)
    assert s.lr_at(23) == pytest.approx(0.256)  # decays every 24 steps (2.4 epochs of 10 steps)
    assert s.lr_at(24) == pytest.approx(0.256 * 0.97)
    assert s.lr_at(480) == pytest.approx(0.256 * 0.97 ** 20)
    for _ in range(24):
        s.step()
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.256 * 0.97)
    state = s.state_dict()
    s2 = _sched("step", warmup_epochs=1.0, warmup_lr=1e-6)
    s2.load_state_dict(state)
    assert s2.optimizer.param_groups[0]["lr"] == pytest.approx(0.256 * 0.97)


def test_cosine_schedule() -> None:
    s = _sched("cosine", warmup_epochs=10.0, warmup_lr=0.0, min_lr=0.001)
    assert s.lr_at(100) == pytest.approx(0.256)
    assert s.lr_at(100 + 450) == pytest.approx(0.001 + 0.5 * (0.256 - 0.001))
    assert s.lr_at(1000) == pytest.approx(0.001)


def test_ema_decay_warms_up_like_tf() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay min(0.9999, 2/11)
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(1 - (2 / 11) * (3 / 12))


def test_losses() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    target = torch.tensor([0, 2])
    logp = logits.log_softmax(-1)
    expected = -(0.9 * logp[[0, 1], target] + 0.1 * logp.mean(-1)).mean()
    assert LabelSmoothingCrossEntropy(0.1)(logits, target).item() == pytest.approx(expected.item())
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    assert SoftTargetCrossEntropy()(logits, soft).item() == pytest.approx(-(soft * logp).sum(-1).mean().item())


def _parse(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_paper_recipe_scales_lr_to_global_batch() -> None:
    cfg = _parse(["--recipe", "paper", "--batch-size", "64"])
    assert (cfg.opt, cfg.sched, cfg.decay_rate, cfg.decay_epochs, cfg.aa) == ("rmsproptf", "step", 0.97, 2.4,
                                                                             "original")
    assert (cfg.smoothing, cfg.weight_decay, cfg.bn_momentum, cfg.epochs) == (0.1, 1e-5, 0.01, 350)
    assert cfg.scaled_lr(64) == pytest.approx(0.256 * 64 / 2048)
    assert cfg.scaled_lr(128) == pytest.approx(0.016)  # two processes of 64
    assert _parse(["--recipe", "paper", "--lr", "0.1"]).scaled_lr(64) == 0.1
    assert set(RECIPES["paper"]) <= set(TrainConfig().to_dict())


def test_default_warmup_is_at_most_a_tenth_of_the_run() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for epochs, expected in ((5, 0.5), (20, 2.0), (300, 5.0)):
        cfg = _parse(["--epochs", str(epochs)])
        assert cfg.warmup_epochs is None and warmup_epochs(cfg) == expected
        sched = create_scheduler(cfg, opt, 0.1, steps_per_epoch=10)
        assert sched.warmup_steps == round(expected * 10)
        assert sched.lr_at(sched.warmup_steps) == pytest.approx(0.1)  # the cosine starts at the full rate
    typed = _parse(["--epochs", "5", "--warmup-epochs", "5"])
    assert warmup_epochs(typed) == 5.0  # a typed value is kept, however long
    assert warmup_epochs(_parse(["--recipe", "paper", "--epochs", "5"])) == 5.0


def test_digits_bring_their_data_settings_and_flags_still_win(tmp_path: Path) -> None:
    cfg = _parse(["--dataset", "digits"])
    assert (cfg.no_aug, cfg.crop_pct, cfg.train_interpolation) == (True, 1.0, "bicubic")
    assert _parse(["--dataset", "digits", "--crop-pct", "0.9"]).crop_pct == 0.9
    # the published recipe is complete: it keeps its augmentation on any data
    paper = _parse(["--dataset", "digits", "--recipe", "paper"])
    assert (paper.no_aug, paper.crop_pct, paper.aa, paper.head_init_scale) == (False, None, "original", 1.0)
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nno_aug: false\n")
    from_file = _parse(["--config", str(path)])
    assert (from_file.no_aug, from_file.crop_pct) == (False, 1.0)
    plain = _parse([])
    assert (plain.no_aug, plain.crop_pct, plain.scale, plain.batch_size, plain.opt) == (False, None, (0.08, 1.0),
                                                                                           32, "adamw")


def test_default_rate_and_decay_follow_the_optimiser() -> None:
    adamw = _parse([])
    assert adamw.scaled_lr(32) == pytest.approx(0.016 * math.sqrt(32 / 256))  # timm's sqrt rule for Adam
    assert adamw.scaled_lr(1024) == pytest.approx(0.032)
    assert weight_decay(adamw) == 0.05
    sgd = _parse(["--opt", "sgd"])
    assert sgd.scaled_lr(32) == pytest.approx(0.1 * 32 / 256) and weight_decay(sgd) == 2e-5
    assert _parse(["--opt", "sgd", "--lr-base", "0.2"]).scaled_lr(512) == pytest.approx(0.4)
    assert weight_decay(_parse(["--weight-decay", "0.1", "--opt", "sgd"])) == 0.1
    model = nn.Linear(3, 2)
    groups = create_optimizer(adamw, [model], 1e-3).param_groups
    assert isinstance(create_optimizer(adamw, [model], 1e-3), torch.optim.AdamW)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_config_file_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nopt: adamw\nscale: [0.5, 1.0]\nbatch-size: 16\n")
    cfg = _parse(["--recipe", "paper", "--config", str(path), "--epochs", "9"])
    assert (cfg.epochs, cfg.opt, cfg.scale, cfg.batch_size, cfg.decay_rate) == (9, "adamw", (0.5, 1.0), 16, 0.97)
    path.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        _parse(["--config", str(path)])
    with pytest.raises(SystemExit):  # refused as the flags are parsed, by the rule a YAML value gets too
        _parse(["--lr", "-1"])
    path.write_text("lr: -1\n")
    with pytest.raises(ConfigError, match="--lr must be > 0, got -1"):
        _parse(["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        _parse(["--config", str(tmp_path / "missing.yaml")])
