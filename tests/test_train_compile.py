"""`--compile` (timm's `--torchcompile`): the flag and its YAML value, and a compiled run whose
checkpoints, EMA and resume look exactly like an eager run's (plain key names, no `_orig_mod.`)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import effnet
from effnet.config import ModelConfig, PretrainedCfg
from effnet.model import EfficientNet
from effnet.train import ConfigError, TrainConfig, add_train_arguments, build_loaders, config_from_args, fit
from train_fixtures import TINY_MODEL, make_image_folder


def _parse(*argv: str) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(["--model", TINY_MODEL, *argv]))


def test_compile_flag_spellings_and_yaml(tmp_path: Path) -> None:
    assert _parse().compile is None
    assert _parse("--compile").compile == "inductor"
    assert _parse("--torchcompile").compile == "inductor"  # timm's spelling
    assert _parse("--compile", "aot_eager", "--epochs", "3").compile == "aot_eager"
    with pytest.raises(SystemExit):
        _parse("--compile", "tensorrt")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("compile: true\n")
    assert _parse("--config", str(yaml_file)).compile == "inductor"
    yaml_file.write_text("compile: nvfuser\n")
    with pytest.raises(ConfigError, match="--compile 'nvfuser'"):
        _parse("--config", str(yaml_file))


def _cfg(data: Path, **kw: object) -> TrainConfig:
    settings: dict[str, object] = dict(model=TINY_MODEL, data_dir=str(data), img_size=32, batch_size=4, workers=0,
                                       epochs=1, lr=0.01, warmup_epochs=0, seed=3, model_ema=True,
                                       model_ema_decay=0.9)
    return TrainConfig(**{**settings, **kw})


def _keys_are_plain(sd: dict[str, torch.Tensor]) -> bool:
    return bool(sd) and not any("_orig_mod" in k or k.startswith("module.") for k in sd)


@pytest.mark.slow  # dynamo traces the model twice (fit, then the resumed fit): about a minute
def test_compiled_run_saves_plain_keys_and_resumes(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    cfg = _cfg(data, compile="eager")  # the torch.compile wrapper and dynamo's tracing, without codegen
    train_loader, val_loader, classes = build_loaders(cfg)
    torch.manual_seed(0)
    model = effnet.create_model(TINY_MODEL, num_classes=len(classes))
    out = tmp_path / "run"
    fit(model, train_loader, val_loader, cfg, out)
    ckpt = torch.load(out / "last.pth.tar", weights_only=True)
    assert _keys_are_plain(ckpt["state_dict"]) and _keys_are_plain(ckpt["state_dict_ema"])
    assert _keys_are_plain(load_file(str(out / "model.safetensors")))
    assert ckpt["args"]["compile"] == "eager"
    # the EMA followed the trained weights (decay 0.9, capped lower for the first updates)
    trained, ema = ckpt["state_dict"]["conv_stem.weight"], ckpt["state_dict_ema"]["conv_stem.weight"]
    start = effnet.create_model(TINY_MODEL, num_classes=len(classes)).state_dict()["conv_stem.weight"]
    assert not torch.equal(ema, start) and not torch.equal(ema, trained)

    resumed = _cfg(data, compile="eager", epochs=2, resume=str(out / "last.pth.tar"))
    metrics = fit(effnet.create_model(TINY_MODEL, num_classes=len(classes)), train_loader, val_loader, resumed, out)
    assert metrics["epoch"] == 1 and metrics["step"] == 4
    assert _keys_are_plain(torch.load(out / "last.pth.tar", weights_only=True)["state_dict"])


def test_an_already_compiled_model_is_saved_with_plain_keys(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data")
    cfg = _cfg(data, model_ema=False, compile="eager")  # without it, inductor: minutes on 2 cores
    train_loader, val_loader, classes = build_loaders(cfg)
    model = effnet.create_model(TINY_MODEL, num_classes=len(classes))
    compiled = torch.compile(model, backend="eager")
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    before = model.conv_stem.weight.detach().clone()
    fit(compiled, train_loader, val_loader, cfg, tmp_path / "run")
    assert not torch.equal(model.conv_stem.weight, before)  # the caller's model is the one trained
    assert _keys_are_plain(torch.load(tmp_path / "run" / "last.pth.tar", weights_only=True)["state_dict"])


@pytest.mark.slow  # inductor compiles forward and backward: about a minute and a half on 2 cores
def test_inductor_training_step_is_as_accurate_as_eager() -> None:
    """One training step under inductor gives eager's loss and gradients, judged against float64: on a
    well-conditioned batch both fp32 paths are within a few 1e-6 of it (about 2.5e-6 eager, 4e-6 inductor).
    Tiny runs (4 images at 32 px) are chaotic: there float32 and float64 eager training already part
    after three steps, which is why a whole run is not compared."""
    cfg = ModelConfig("tiny_static", width_mult=0.25, depth_mult=0.25,
                      pretrained=PretrainedCfg(input_size=(3, 64, 64), pool_size=(2, 2)))
    torch.manual_seed(0)
    model = EfficientNet(cfg, num_classes=5, drop_path_rate=0.1).train()
    x, y = torch.randn(8, 3, 64, 64), torch.arange(8) % 5

    def step(net: torch.nn.Module, params: torch.nn.Module, dtype: torch.dtype) -> tuple[float, torch.Tensor]:
        torch.manual_seed(1)  # the same drop-path draws on every path
        params.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x.to(dtype)), y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.double().flatten() for p in params.parameters()])

    reference = copy.deepcopy(model).double()
    loss64, grad64 = step(reference, reference, torch.float64)
    eager = copy.deepcopy(model)
    loss_eager, grad_eager = step(eager, eager, torch.float32)
    compiled = copy.deepcopy(model)
    # static shapes: after another test's compile in the same process, dynamo would otherwise trace this
    # model with symbolic sizes, and inductor's simplification of the 'SAME' padding then takes many minutes
    loss_compiled, grad_compiled = step(torch.compile(compiled, dynamic=False), compiled, torch.float32)

    def err(g: torch.Tensor) -> float:
        return float((g - grad64).norm() / grad64.norm())
    assert abs(loss_eager - loss64) < 1e-5 and abs(loss_compiled - loss64) < 1e-5
    assert err(grad_eager) < 2e-5
    assert err(grad_compiled) < max(4 * err(grad_eager), 2e-5)
