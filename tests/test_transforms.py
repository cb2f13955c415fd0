"""Preprocessing: eval transforms equal the reference's on real photos; training ops, augmentation
strings and Mixup behave (shapes, ranges, determinism, clear errors)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import effnet
from effnet.data import (AugmentConfigError, AutoAugment, ColorJitter, Mixup, RandAugment, RandomErasing,
                         RandomResizedCrop, create_transform, parse_augment, resolve_data_config,
                         resolve_model_data_config)
from effnet.data.augment import OP_NAMES, AugmentOp, RAND_OPS_INCREASING

FIXTURES = Path(__file__).parent / "fixtures" / "transforms"
REFERENCE = np.load(FIXTURES / "reference.npz")
CONFIGS = json.loads((FIXTURES / "configs.json").read_text())["configs"]


def photo(name: str) -> Image.Image:
    with Image.open(FIXTURES / f"{name}.jpg") as img:
        return img.convert("RGB")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("key", sorted(REFERENCE.files))
def test_eval_transform_matches_reference(key: str) -> None:
    photo_name, config = key.split("/")
    kw = CONFIGS[config]
    out = create_transform(**kw)(photo(photo_name))
    mean = torch.tensor(kw["mean"]).view(-1, 1, 1)
    std = torch.tensor(kw["std"]).view(-1, 1, 1)
    ref = torch.from_numpy(REFERENCE[key]).to(torch.float32).div(255).sub(mean).div(std)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == tuple(ref.shape) == (3, *kw["input_size"][1:])
    assert (out - ref).abs().max().item() <= 1e-6


def test_fixture_photos_are_real_photos() -> None:
    for name in ("china", "flower"):
        img = photo(name)
        assert max(img.size) == 320 and img.size[0] * img.size[1] > 50_000
        assert np.asarray(img).std() > 20  # texture, not a flat synthetic image


def test_resolve_data_config_from_model_and_overrides() -> None:
    model = effnet.build_model(effnet.get_config("efficientnet_b1_pruned"))
    cfg = resolve_model_data_config(model)
    pc = model.pretrained_cfg
    assert cfg == dict(input_size=tuple(pc["input_size"]), interpolation=pc["interpolation"], mean=tuple(pc["mean"]),
                       std=tuple(pc["std"]), crop_pct=pc["crop_pct"], crop_mode=pc["crop_mode"])
    assert effnet.resolve_data_config(model=model) == cfg
    over = resolve_data_config(dict(img_size=96, interpolation="bilinear", mean=[0.3], crop_pct=1.0,
                                    crop_mode="squash"), model=model)
    assert over["input_size"] == (3, 96, 96) and over["interpolation"] == "bilinear"
    assert over["mean"] == (0.3, 0.3, 0.3) and over["std"] == tuple(pc["std"])
    assert over["crop_pct"] == 1.0 and over["crop_mode"] == "squash"
    assert resolve_data_config(dict(input_size=(3, 100, 120)), model=model)["input_size"] == (3, 100, 120)
    # an explicit pretrained_cfg wins over the model's
    assert resolve_data_config(model=model, pretrained_cfg=dict(input_size=(3, 64, 64)))["input_size"] == (3, 64, 64)


def test_resolve_data_config_defaults_and_errors() -> None:
    cfg = resolve_data_config({"img_size": 32})
    assert cfg == dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), crop_pct=0.875, crop_mode="center")
    with pytest.raises(ValueError, match="at least one"):
        resolve_data_config()
    with pytest.raises(ValueError, match="mean has 2 values"):
        resolve_data_config({"mean": (0.1, 0.2)})
    with pytest.raises(ValueError, match="input_size"):
        resolve_data_config({"input_size": (224, 224)})


def test_create_transform_argument_errors() -> None:
    with pytest.raises(ValueError, match="crop_mode 'middle'"):
        create_transform(32, crop_mode="middle")
    with pytest.raises(ValueError, match="interpolation 'cubic'"):
        create_transform(32, interpolation="cubic")
    with pytest.raises(ValueError, match="random-erasing mode"):
        create_transform(32, is_training=True, re_prob=0.5, re_mode="noise")
    with pytest.raises(ValueError, match="color_jitter"):
        create_transform(32, is_training=True, color_jitter=(0.1, 0.2))


def test_eval_sizes_and_padding() -> None:
    small = Image.new("RGB", (20, 10), (255, 0, 0))
    out = create_transform((3, 31, 47), crop_pct=1.0)(small)  # upscales, non-square target
    assert out.shape == (3, 31, 47)
    border = create_transform(40, crop_mode="border", crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = border(small)  # 40x20 after resize, padded top and bottom with the mean colour (0 after normalising)
    assert x.shape == (3, 40, 40)
    assert torch.allclose(x[:, 0], torch.full((3, 40), (128 / 255 - 0.5) / 0.5), atol=1e-6)
    assert torch.allclose(x[0, 20], torch.ones(40))


def test_training_transform_shape_range_and_determinism() -> None:
    t = create_transform(48, is_training=True, interpolation="random", auto_augment="rand-m9-mstd0.5-inc1",
                         re_prob=0.5, re_mode="pixel", re_count=2)
    img = photo("china")
    seed_all(3)
    a = [t(img) for _ in range(4)]
    seed_all(3)
    b = [t(img) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])
    for x in a:
        assert x.shape == (3, 48, 48) and torch.isfinite(x).all()
    plain = create_transform((40, 56), is_training=True, color_jitter=0.4, mean=(0.5,) * 3, std=(0.5,) * 3)
    y = plain(img)
    assert y.shape == (3, 40, 56) and y.min() >= -1.0 - 1e-6 and y.max() <= 1.0 + 1e-6
    noaug = create_transform(32, is_training=True, no_aug=True, interpolation="random")
    assert torch.equal(noaug(img), noaug(img))


def test_random_resized_crop_params_within_ranges() -> None:
    img = Image.new("RGB", (300, 200))
    rrc = RandomResizedCrop(64, interpolation="random")
    seed_all(0)
    areas, ratios, filters = [], [], set()
    for _ in range(300):
        top, left, h, w = rrc.get_params(img)
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
        areas.append(w * h / (300 * 200))
        ratios.append(w / h)
    assert min(areas) >= 0.08 * 0.9 and max(areas) <= 1.0
    assert min(ratios) >= 0.75 * 0.95 and max(ratios) <= 4 / 3 * 1.05
    assert max(areas) > 0.8 and min(areas) < 0.2  # the whole range is used
    for _ in range(30):
        filters.add(random.choice(rrc.resample))
    assert filters == {Image.Resampling.BILINEAR, Image.Resampling.BICUBIC}
    assert rrc(img).size == (64, 64)


def test_flip_and_color_jitter() -> None:
    img = photo("flower").resize((32, 24))
    flipped = create_transform(24, is_training=True, hflip=1.0, color_jitter=None, scale=(1, 1), ratio=(4 / 3, 4 / 3))
    base = create_transform(24, is_training=True, hflip=0.0, color_jitter=None, scale=(1, 1), ratio=(4 / 3, 4 / 3))
    seed_all(0)
    a = flipped(img)
    seed_all(0)
    b = base(img)
    assert a.shape == b.shape == (3, 24, 24)
    assert torch.allclose(a, b.flip(-1), atol=2 / 255)
    cj = ColorJitter(0.4, 0.4, 0.4, 0.1)
    seed_all(1)
    out = cj(img)
    assert out.size == img.size and out.mode == "RGB" and not np.array_equal(np.asarray(out), np.asarray(img))
    assert np.array_equal(np.asarray(ColorJitter(0, 0, 0, 0)(img)), np.asarray(img))
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.7)


def test_random_erasing_modes() -> None:
    x = torch.ones(3, 40, 40)
    seed_all(0)
    const = RandomErasing(1.0, mode="const")(x)
    assert (const == 0).any() and (const == 1).any() and torch.equal(x, torch.ones(3, 40, 40))
    erased = (const == 0).all(0)
    assert 0.02 * 1600 * 0.5 <= erased.sum() <= 1600 / 3 * 1.5
    pixel = RandomErasing(1.0, mode="pixel")(x)
    assert (pixel != 1).sum() > 10 and len(torch.unique(pixel)) > 10
    rand = RandomErasing(1.0, mode="rand")(x)
    assert len(torch.unique(rand[0])) == 2  # one random colour per rectangle
    assert torch.equal(RandomErasing(0.0)(x), x)
    seed_all(5)
    multi = [RandomErasing(1.0, mode="const", count=3)(x) for _ in range(3)]
    seed_all(5)
    assert all(torch.equal(m, RandomErasing(1.0, mode="const", count=3)(x)) for m in multi)


def test_rand_augment_parsing() -> None:
    ra = parse_augment("rand-m9-mstd0.5")
    assert isinstance(ra, RandAugment) and ra.num_ops == 2 and len(ra.ops) == 15
    assert all(op.magnitude == 9 and op.magnitude_std == 0.5 and op.prob == 0.5 for op in ra.ops)
    inc = parse_augment("rand-m7-n3-inc1-p0.8-mmax8")
    assert inc.num_ops == 3 and [op.name for op in inc.ops] == list(RAND_OPS_INCREASING)
    assert all(op.prob == 0.8 and op.magnitude_max == 8 for op in inc.ops)
    assert parse_augment("rand-mstd101").ops[0].magnitude_std == math.inf
    assert parse_augment("rand").ops[0].magnitude == 10


def test_auto_augment_parsing() -> None:
    for name in ("original", "originalr", "v0", "v0r"):
        aa = parse_augment(name)
        assert isinstance(aa, AutoAugment) and len(aa.policy) == 25
        assert all(len(sub) == 2 for sub in aa.policy)
    assert [(op.name, op.prob, op.magnitude) for op in parse_augment("original").policy[0]] == \
        [("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)]
    assert all(op.magnitude_std == 0.5 for sub in parse_augment("v0-mstd0.5").policy for op in sub)


@pytest.mark.parametrize("bad, match", [
    ("", "non-empty"), ("rnd-m9", "unknown augmentation 'rnd-m9'"), ("rand-m", "cannot read section 'm'"),
    ("rand-x9", "unknown RandAugment section 'x'"), ("rand-m9-n0", "n >= 1"), ("original-m9", "AutoAugment section"),
    ("rand-m9.5.1", "m needs a number"), ("rand-n2.5", "n needs an integer"), ("autoaugment", "unknown augmentation"),
])
def test_bad_augment_strings(bad: str, match: str) -> None:
    with pytest.raises(AugmentConfigError, match=match) as e:
        parse_augment(bad)
    assert isinstance(e.value, effnet.EffnetError)


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_keeps_size_and_mode(name: str) -> None:
    img = photo("china").resize((40, 30))
    seed_all(0)
    for m in (0, 5, 10):
        out = AugmentOp(name, prob=1.0, magnitude=m)(img)
        assert out.size == img.size and out.mode == "RGB"


def test_auto_augment_in_pipeline_is_deterministic() -> None:
    t = create_transform(32, is_training=True, auto_augment="original", interpolation="bicubic")
    img = photo("flower")
    seed_all(7)
    a = torch.stack([t(img) for _ in range(6)])
    seed_all(7)
    b = torch.stack([t(img) for _ in range(6)])
    assert torch.equal(a, b) and a.shape == (6, 3, 32, 32)


def test_mixup_targets_and_shapes() -> None:
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).clone()
    y = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    mx, soft = Mixup(mixup_alpha=1.0, label_smoothing=0.1, num_classes=5)(x, y)
    assert mx.shape == x.shape and soft.shape == (4, 5)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    assert (soft >= 0.1 / 5 - 1e-6).all()
    # batch mode: image i is blended with image 3-i; smoothed one-hot is 0.92 on, 0.02 off
    lam = (soft[:, :4].diagonal() - 0.02) / 0.9
    assert torch.allclose(lam, lam[0].expand(4)) and 0 < lam[0] < 1
    assert torch.allclose(mx[:, 0, 0, 0], lam * torch.arange(4.0) + (1 - lam) * torch.arange(3.0, -1, -1), atol=1e-5)
    assert torch.allclose(soft[0, 3], (1 - lam[0]) * 0.9 + 0.02)


def test_cutmix_lambda_matches_box_area() -> None:
    x = torch.cat([torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16)])
    y = torch.tensor([0, 1])
    for seed in range(5):
        torch.manual_seed(seed)
        mx, soft = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)(x, y)
        pasted = mx[0, 0].mean().item()  # fraction of image 0 covered by image 1's box
        assert soft[0, 1].item() == pytest.approx(pasted, abs=1e-6)


def test_mixup_modes_determinism_and_errors() -> None:
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6) % 3
    for mode in ("batch", "pair", "elem"):
        mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, num_classes=3)
        torch.manual_seed(1)
        a = mix(x, y)
        torch.manual_seed(1)
        b = mix(x, y)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.allclose(a[1].sum(1), torch.ones(6))
    unmixed = Mixup(prob=0.0, label_smoothing=0.0, num_classes=3)(x, y)
    assert torch.equal(unmixed[0], x) and torch.equal(unmixed[1].argmax(1), y)
    for mode in ("batch", "pair", "elem"):  # an odd batch (an unreadable image left out): the middle stays as is
        odd_x, odd_t = Mixup(num_classes=3, mode=mode, label_smoothing=0.0)(x[:5], y[:5])
        assert odd_x.shape == x[:5].shape and torch.equal(odd_x[2], x[2]) and odd_t[2].argmax() == y[2]
    with pytest.raises(ValueError, match="mode"):
        Mixup(mode="row")
    with pytest.raises(ValueError, match="mixup_alpha > 0"):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)
