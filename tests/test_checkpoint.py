"""Loading weight files: formats, wrappers, prefixes, and errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet.checkpoint import read_state_dict

NAME = "efficientnet_b1_pruned"


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in effnet.create_model(NAME).state_dict().items()}


def _same(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pth.tar", ".bin"])
def test_checkpoint_path_formats(tmp_path: Path, weights: dict, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    assert _same(effnet.create_model(NAME, checkpoint_path=str(path)), weights)


def test_training_checkpoint_prefers_ema_and_strips_prefixes(tmp_path: Path, weights: dict) -> None:
    ema = {f"module.{k}": v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    plain = {f"_orig_mod.{k}": v for k, v in weights.items()}
    torch.save({"epoch": 3, "state_dict": plain, "state_dict_ema": ema}, tmp_path / "ckpt.pth.tar")
    model = effnet.create_model(NAME, checkpoint_path=str(tmp_path / "ckpt.pth.tar"))
    assert torch.equal(model.conv_stem.weight, weights["conv_stem.weight"] + 1)
    assert _same(effnet.create_model(NAME).eval(), weights) is False
    sd = read_state_dict(tmp_path / "ckpt.pth.tar", use_ema=False)
    assert torch.equal(sd["conv_stem.weight"], weights["conv_stem.weight"])


def test_features_only_takes_a_full_checkpoint(tmp_path: Path, weights: dict) -> None:
    save_file(weights, str(tmp_path / "w.safetensors"))
    feats = effnet.create_model(NAME, features_only=True, checkpoint_path=str(tmp_path / "w.safetensors"))
    assert torch.equal(feats.conv_stem.weight, weights["conv_stem.weight"])
    pre = effnet.create_model(NAME, pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")))
    assert torch.equal(pre.blocks[6][1].conv_pwl.weight, weights["blocks.6.1.conv_pwl.weight"])


def test_shape_mismatch_lists_keys_with_both_shapes(tmp_path: Path) -> None:
    other = effnet.create_model("efficientnet_b2_pruned").state_dict()
    save_file(other, str(tmp_path / "b2.safetensors"))
    with pytest.raises(effnet.CheckpointError) as e:
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "b2.safetensors"))
    msg = str(e.value)
    assert "blocks.1.0.conv_pwl.weight: checkpoint (17, 54, 1, 1) vs model (12, 48, 1, 1)" in msg
    assert "shape mismatch" in msg and "efficientnet_b1_pruned" in msg and "more" in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path, weights: dict) -> None:
    sd = dict(weights)
    del sd["bn2.running_var"]
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(effnet.CheckpointError, match=r"missing(.|\n)*bn2\.running_var(.|\n)*unexpected(.|\n)*extra\.weight"):
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "w.safetensors"))


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"this is not a checkpoint at all", "not a PyTorch checkpoint"),
    (b"\x80\x04\x95", "not a PyTorch checkpoint|refused"),
])
def test_not_a_checkpoint(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(effnet.CheckpointError, match=match):
        effnet.create_model(NAME, checkpoint_path=str(path))


def test_corrupt_safetensors_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(effnet.CheckpointError, match="not a readable safetensors"):
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "bad.safetensors"))
    with pytest.raises(effnet.CheckpointError, match="does not exist"):
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "nope.pth"))


def test_checkpoint_holding_no_tensors(tmp_path: Path) -> None:
    torch.save({"epoch": 1, "args": {"lr": 0.1}}, tmp_path / "meta.pth")
    with pytest.raises(effnet.CheckpointError, match="contains no tensors"):
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "meta.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(effnet.CheckpointError, match="holds a list, not a state dict"):
        effnet.create_model(NAME, checkpoint_path=str(tmp_path / "list.pth"))


def test_local_dir_round_trip(tmp_path: Path, weights: dict) -> None:
    import json
    save_file(weights, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"architecture": NAME, "num_classes": 1000}))
    model = effnet.create_model(f"local-dir:{tmp_path}")
    assert _same(model, weights)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(effnet.UnknownModelError, match="not valid JSON"):
        effnet.create_model(f"local-dir:{tmp_path}")
    with pytest.raises(effnet.UnknownModelError, match="no config.json"):
        effnet.create_model(f"local-dir:{tmp_path / 'missing'}")
