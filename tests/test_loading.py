"""effnet.loading and the names the registry accepts: tagged names, hf-hub:, local-dir:, run folders,
training checkpoints alone, and the refusal to run random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet.errors import EffnetError, UnknownModelError
from effnet.hf_dir import save_hf_dir
from effnet.loading import load_model
from hub_cache import synthetic_weights, write_hub_cache

MODEL = "efficientnet_b1_pruned"
CLASSES = ["cat", "dog", "fish"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only contends for the cores


def test_tagged_names_as_in_timm() -> None:
    tagged = effnet.list_pretrained()
    assert tagged == sorted(f"{n}.in1k" for n in effnet.list_models())
    assert effnet.list_models(pretrained=True) == tagged
    assert effnet.list_models("*b1*", pretrained=True) == [f"{MODEL}.in1k", "tf_efficientnet_cc_b1_8e.in1k"]
    assert effnet.list_models("*.in1k") == [] and effnet.list_pretrained("*cc_b0*.in1k") == [
        "tf_efficientnet_cc_b0_4e.in1k", "tf_efficientnet_cc_b0_8e.in1k"]
    assert effnet.list_models(pretrained=True, include_tags=False) == effnet.list_models()
    assert effnet.is_model(MODEL) and effnet.is_model(f"{MODEL}.in1k") and not effnet.is_model("resnet50")
    cfg = effnet.get_pretrained_cfg(f"{MODEL}.in1k")
    assert cfg == effnet.get_pretrained_cfg(MODEL) and cfg.input_size == (3, 240, 240)
    assert cfg.hf_hub_id == f"timm/{MODEL}.in1k"
    assert effnet.get_pretrained_cfg("resnet50") is None
    with pytest.raises(UnknownModelError, match="no pretrained config"):
        effnet.get_pretrained_cfg("resnet50", allow_unregistered=False)
    with pytest.raises(UnknownModelError, match="unknown pretrained tag 'in22k'"):
        effnet.get_pretrained_cfg(f"{MODEL}.in22k")
    model = effnet.create_model(f"{MODEL}.in1k", num_classes=4)
    assert model.cfg.name == MODEL and model.num_classes == 4
    with pytest.raises(UnknownModelError, match="in22k"):
        effnet.create_model(f"{MODEL}.in22k")


def test_hf_hub_names(offline_hub: dict[str, Path], tmp_path: Path) -> None:
    hub_home = offline_hub["hf"]
    torch.manual_seed(0)
    trained = effnet.create_model(MODEL, num_classes=3).eval()
    folder = save_hf_dir(trained, tmp_path / "run", class_names=CLASSES,
                         pretrained_overlay=dict(input_size=(3, 48, 48), crop_pct=1.0))
    weights = write_hub_cache(hub_home, "me/pets", trained.state_dict())
    (weights.parent / "config.json").write_text((folder / "config.json").read_text())
    model = effnet.create_model("hf-hub:me/pets", pretrained=True).eval()
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(model(x), trained(x))
    assert model.pretrained_cfg["label_names"] == CLASSES and model.pretrained_cfg["input_size"] == (3, 48, 48)
    loaded = load_model("hf-hub:me/pets", device="cpu")  # a hub repo is weights: no --pretrained needed
    assert loaded.label_names == CLASSES and loaded.img_size == 48 and loaded.data_config["crop_pct"] == 1.0
    # timm's own repos: the registered config when config.json is not in the cache
    write_hub_cache(hub_home, f"timm/{MODEL}.in1k", synthetic_weights(MODEL))
    published = effnet.create_model(f"hf-hub:timm/{MODEL}.in1k", pretrained=True)
    assert published.num_classes == 1000
    assert torch.equal(published.state_dict()["conv_stem.weight"], synthetic_weights(MODEL)["conv_stem.weight"])
    with pytest.raises(UnknownModelError, match="hf-hub:me/absent"):
        effnet.create_model("hf-hub:me/absent")


def _training_checkpoint(path: Path, model: torch.nn.Module, **extra: object) -> Path:
    args = dict(model=MODEL, img_size=48, crop_pct=1.0, interpolation="bilinear", mean=[0.4] * 3, std=[0.2] * 3)
    torch.save(dict(state_dict=model.state_dict(), args=args, class_names=CLASSES, num_classes=3, **extra), path)
    return path


def test_checkpoint_alone_brings_model_classes_and_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = effnet.create_model(MODEL, num_classes=3).eval()
    ckpt = _training_checkpoint(tmp_path / "model_best.pth.tar", model)
    loaded = load_model(checkpoint=str(ckpt), device="cpu")
    assert loaded.name == MODEL and loaded.label_names == CLASSES and loaded.weights == str(ckpt)
    assert loaded.data_config == dict(input_size=(3, 48, 48), interpolation="bilinear", mean=(0.4,) * 3,
                                      std=(0.2,) * 3, crop_pct=1.0, crop_mode="center")
    x = torch.randn(1, 3, 48, 48)
    assert torch.equal(loaded.model(x), model(x))
    # flags typed on the command line win; the folder holding the checkpoint works as a model name
    over = load_model(str(tmp_path), overrides=dict(img_size=64, crop_pct=None), device="cpu")
    assert over.img_size == 64 and over.data_config["crop_pct"] == 1.0 and over.label_names == CLASSES


def test_best_weights_of_a_training_checkpoint(tmp_path: Path) -> None:
    raw, ema = effnet.create_model(MODEL, num_classes=3), effnet.create_model(MODEL, num_classes=3)
    path = tmp_path / "best.pth.tar"

    def stem(**kw: object) -> torch.Tensor:
        _training_checkpoint(path, raw, state_dict_ema=ema.state_dict(), **kw)
        return load_model(checkpoint=str(path), device="cpu", **({} if "best_weights" in kw else {})
                          ).model.state_dict()["conv_stem.weight"]
    assert torch.equal(stem(), ema.state_dict()["conv_stem.weight"])  # EMA first, as timm reads
    assert torch.equal(stem(best_weights="model"), raw.state_dict()["conv_stem.weight"])
    forced = load_model(checkpoint=str(path), use_ema=True, device="cpu").model.state_dict()["conv_stem.weight"]
    assert torch.equal(forced, ema.state_dict()["conv_stem.weight"])


def test_model_folder_in_every_form(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = effnet.create_model(MODEL, num_classes=3).eval()
    folder = save_hf_dir(trained, tmp_path / "run", class_names=CLASSES,
                         pretrained_overlay=dict(input_size=(3, 40, 40)))
    meta = json.loads((folder / "config.json").read_text())
    assert meta["label_names"] == CLASSES and meta["architecture"] == MODEL and meta["num_classes"] == 3
    x = torch.randn(1, 3, 40, 40)
    for kw in (dict(model=f"local-dir:{folder}"), dict(model=str(folder)), dict(checkpoint=str(folder))):
        loaded = load_model(**kw, device="cpu")
        assert loaded.label_names == CLASSES and loaded.img_size == 40, kw
        assert torch.equal(loaded.model(x), trained(x)), kw
    # the folder's architecture with other weights of the same shape
    other = effnet.create_model(MODEL, num_classes=3).eval()
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    swapped = load_model(f"local-dir:{folder}", str(tmp_path / "other.safetensors"), device="cpu")
    assert torch.equal(swapped.model(x), other(x)) and swapped.label_names == CLASSES


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(EffnetError, match="no weights for efficientnet_b1_pruned"):
        load_model(MODEL)
    assert load_model(MODEL, random_weights=True, device="cpu").weights is None
    plain = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in effnet.create_model(MODEL).state_dict().items()}, str(plain))
    with pytest.raises(EffnetError, match="does not say which model"):
        load_model(checkpoint=str(plain))
    with pytest.raises(EffnetError, match="does not exist"):
        load_model(MODEL, str(tmp_path / "absent.pth"))
    with pytest.raises(EffnetError, match="img-size"):
        load_model(MODEL, str(plain), overrides=dict(img_size=4))


def test_fine_tuning_starting_point_from_a_run(tmp_path: Path) -> None:
    from effnet.loading import starting_point
    folder = save_hf_dir(effnet.create_model(MODEL, num_classes=3), tmp_path / "run", class_names=CLASSES,
                         pretrained_overlay=dict(input_size=(3, 40, 40), crop_pct=1.0))
    expected = dict(img_size=40, crop_pct=1.0, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    weights = str(folder / "model.safetensors")
    assert starting_point(str(folder), None) == (MODEL, weights, expected)
    assert starting_point(None, str(folder)) == (MODEL, weights, expected)
    assert starting_point("tf_efficientnet_cc_b0_4e", None) == ("tf_efficientnet_cc_b0_4e", None, {})
    ckpt = _training_checkpoint(tmp_path / "elsewhere.pth.tar", effnet.create_model(MODEL, num_classes=3))
    model, path, settings = starting_point(None, str(ckpt))
    assert (model, path, settings["img_size"], settings["interpolation"]) == (MODEL, str(ckpt), 48, "bilinear")
