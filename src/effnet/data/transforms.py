"""Image preprocessing on Pillow and torch: the evaluation pipeline (resize, centre crop, normalise)
and the training pipeline (random resized crop, flips, colour jitter, Auto/RandAugment, erasing).

Randomness comes from Python's `random` (image ops) and torch's generator (erasing noise), so
seeding both makes a pipeline repeatable.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import Tensor

from .augment import augment_transform
from .config import CROP_MODES, DEFAULT_CROP_PCT, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

_PIL_MODES = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS,
}
RANDOM_INTERPOLATION = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def pil_interpolation(name: str) -> Image.Resampling:
    """The Pillow resampling filter called `name` ('bilinear', 'bicubic', ...)."""
    if name not in _PIL_MODES:
        raise ValueError(f"unknown interpolation {name!r}; choose from {', '.join(_PIL_MODES)} (or 'random' "
                         "for training)")
    return _PIL_MODES[name]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from an int or a sequence ending in height, width."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


def resize_shorter(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale so the shorter side is `size` (the longer one truncated, keeping the aspect ratio)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def resize_keep_ratio(img: Image.Image, size: tuple[int, int], resample: Image.Resampling,
                      longest: float) -> Image.Image:
    """Scale by one factor so the shorter (longest=0) or longer (longest=1) side fits `size` (h, w)."""
    w, h = img.size
    ratio_h, ratio_w = h / size[0], w / size[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    new_h, new_w = round(h / ratio), round(w / ratio)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, size: tuple[int, int], fill: int | tuple[int, ...] = 0) -> Image.Image:
    """Crop the centre (h, w) region, padding with `fill` first where the image is smaller."""
    crop_h, crop_w = size
    w, h = img.size
    if crop_w > w or crop_h > h:
        left, top = max(crop_w - w, 0) // 2, max(crop_h - h, 0) // 2
        padded = Image.new(img.mode, (max(w, crop_w), max(h, crop_h)), fill)
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
        if (w, h) == (crop_w, crop_h):
            return img
    # Python's round (half to even) picks the same pixel as the reference for odd margins
    top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


class EvalResizeCrop:
    """Resize then centre-crop to `size` (h, w), as the weights were evaluated.

    crop_mode 'center': shorter side to size/crop_pct, then crop; 'squash': both sides to
    size/crop_pct (aspect ratio not kept), then crop; 'border': longer side to size/crop_pct,
    then pad with the mean colour and crop.
    """

    def __init__(self, size: int | Sequence[int], crop_pct: float | None = None, crop_mode: str | None = None,
                 interpolation: str = "bilinear", mean: Sequence[float] = IMAGENET_DEFAULT_MEAN) -> None:
        self.size = _pair(size)
        self.crop_pct = crop_pct or DEFAULT_CROP_PCT
        if self.crop_pct <= 0:
            raise ValueError(f"crop_pct must be > 0; got {crop_pct}")
        self.crop_mode = crop_mode or "center"
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"unknown crop_mode {crop_mode!r}; choose from {', '.join(CROP_MODES)}")
        self.resample = pil_interpolation(interpolation)
        self.fill = tuple(round(255 * v) for v in mean)
        self.scale_size = tuple(math.floor(s / self.crop_pct) for s in self.size)
        self.interpolation = interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.crop_mode == "squash":
            sh, sw = self.scale_size
            if img.size != (sw, sh):
                img = img.resize((sw, sh), self.resample)
            return center_crop(img, self.size)
        if self.crop_mode == "border":
            img = resize_keep_ratio(img, self.scale_size, self.resample, longest=1.0)
            return center_crop(img, self.size, fill=self.fill)
        if self.scale_size[0] == self.scale_size[1]:
            img = resize_shorter(img, self.scale_size[0], self.resample)
        else:
            img = resize_keep_ratio(img, self.scale_size, self.resample, longest=0.0)
        return center_crop(img, self.size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, crop_pct={self.crop_pct}, "
                f"crop_mode={self.crop_mode!r}, interpolation={self.interpolation!r})")


class ToTensorNormalize:
    """PIL RGB image -> float32 (C, H, W) tensor in [0, 1], then (x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.mean = torch.tensor(tuple(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(tuple(std), dtype=torch.float32).view(-1, 1, 1)
        if (self.std == 0).any():
            raise ValueError(f"std must be non-zero; got {tuple(std)}")

    def __call__(self, img: Image.Image) -> Tensor:
        arr = np.array(img, dtype=np.uint8, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        x = torch.from_numpy(arr).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return x.sub(self.mean).div(self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class RandomResizedCrop:
    """Crop a random area (fraction `scale` of the image, aspect ratio in `ratio`) and resize it to
    `size` (h, w); 'random' interpolation picks bilinear or bicubic per image."""

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), interpolation: str = "bilinear") -> None:
        self.size = _pair(size)
        if scale[0] > scale[1] or ratio[0] > ratio[1] or scale[0] <= 0 or ratio[0] <= 0:
            raise ValueError(f"scale and ratio must be positive (min, max) ranges; got {scale}, {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.interpolation = interpolation
        self.resample = RANDOM_INTERPOLATION if interpolation == "random" else (pil_interpolation(interpolation),)

    def get_params(self, img: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop; a centre crop when ten tries fail."""
        w, h = img.size
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = random.uniform(*self.scale) * area
            aspect = math.exp(random.uniform(*log_ratio))
            cw = int(round(math.sqrt(target_area * aspect)))
            ch = int(round(math.sqrt(target_area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, ch, cw = self.get_params(img)
        resample = random.choice(self.resample)
        return img.crop((left, top, left + cw, top + ch)).resize((self.size[1], self.size[0]), resample)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation!r})")


class RandomFlip:
    """Mirror left-right (or top-bottom with `vertical`) with probability `p`."""

    def __init__(self, p: float = 0.5, vertical: bool = False) -> None:
        self.p, self.vertical = p, vertical

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() < self.p:
            return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM if self.vertical else Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, vertical={self.vertical})"


class ColorJitter:
    """Random brightness, contrast, saturation (factor in [1-x, 1+x]) and hue shift (in [-h, h] of a
    turn), applied in a random order."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.0) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"color jitter {name} must be >= 0; got {v}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"color jitter hue must be in [0, 0.5]; got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @staticmethod
    def _factor(x: float) -> float:
        return random.uniform(max(0.0, 1.0 - x), 1.0 + x)

    def __call__(self, img: Image.Image) -> Image.Image:
        order = [0, 1, 2, 3]
        random.shuffle(order)
        for i in order:
            if i == 0 and self.brightness:
                img = ImageEnhance.Brightness(img).enhance(self._factor(self.brightness))
            elif i == 1 and self.contrast:
                img = ImageEnhance.Contrast(img).enhance(self._factor(self.contrast))
            elif i == 2 and self.saturation:
                img = ImageEnhance.Color(img).enhance(self._factor(self.saturation))
            elif i == 3 and self.hue:
                img = adjust_hue(img, random.uniform(-self.hue, self.hue))
        return img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation}, hue={self.hue})")


def adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` turns (-0.5..0.5) in HSV space."""
    h, s, v = img.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    hue += np.uint8(int(shift * 255) % 256)  # wraps around the colour circle
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


class RandomErasing:
    """Erase random rectangles of a normalised (C, H, W) tensor with probability `probability`.

    mode 'const' fills zeros (the mean colour), 'rand' one random normal colour per rectangle,
    'pixel' per-pixel normal noise. Each image gets 1..`count` rectangles of total area
    min_area..max_area of the image and aspect ratio in [min_aspect, 1/min_aspect].
    """

    MODES = ("const", "rand", "pixel")

    def __init__(self, probability: float = 0.5, mode: str = "pixel", count: int = 1, min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown random-erasing mode {mode!r}; choose from {', '.join(self.MODES)}")
        if count < 1:
            raise ValueError(f"random-erasing count must be >= 1; got {count}")
        self.probability, self.mode, self.count = probability, mode, count
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, x: Tensor) -> Tensor:
        if random.random() > self.probability:
            return x
        x = x.clone()
        chans, img_h, img_w = x.shape[-3:]
        count = random.randint(1, self.count)
        for _ in range(count):
            for _attempt in range(10):
                area = random.uniform(self.min_area, self.max_area) * img_h * img_w / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if w < img_w and h < img_h:
                    top, left = random.randint(0, img_h - h), random.randint(0, img_w - w)
                    x[..., top:top + h, left:left + w] = self._fill((chans, h, w), x.dtype)
                    break
        return x

    def _fill(self, shape: tuple[int, int, int], dtype: torch.dtype) -> Tensor:
        if self.mode == "pixel":
            return torch.randn(shape, dtype=dtype)
        if self.mode == "rand":
            return torch.randn((shape[0], 1, 1), dtype=dtype)
        return torch.zeros((shape[0], 1, 1), dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.probability}, mode={self.mode!r}, count={self.count})"


def _jitter_args(color_jitter: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(color_jitter, (int, float)):
        return (float(color_jitter),) * 3
    values = tuple(float(v) for v in color_jitter)
    if len(values) not in (3, 4):
        raise ValueError(f"color_jitter takes 1, 3 or 4 values (brightness, contrast, saturation[, hue]); "
                         f"got {color_jitter!r}")
    return values


def create_transform(input_size: int | Sequence[int], is_training: bool = False, no_aug: bool = False,
                     scale: Sequence[float] | None = None, ratio: Sequence[float] | None = None,
                     hflip: float = 0.5, vflip: float = 0.0, color_jitter: float | Sequence[float] | None = 0.4,
                     auto_augment: str | None = None, interpolation: str = "bilinear",
                     mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD,
                     re_prob: float = 0.0, re_mode: str = "pixel", re_count: int = 1,
                     crop_pct: float | None = None, crop_mode: str | None = None) -> Compose:
    """A PIL image -> normalised tensor pipeline, with timm's arguments and semantics.

    Evaluation (`is_training=False`): resize by 1/crop_pct, centre crop (see `EvalResizeCrop`),
    to tensor, normalise. Training: RandomResizedCrop(scale, ratio), flips, then AutoAugment /
    RandAugment (`auto_augment`, e.g. 'original', 'v0', 'rand-m9-mstd0.5') or colour jitter
    (not both), to tensor, normalise, random erasing. `no_aug` trains on resize + centre crop.
    `input_size` is an int, (H, W) or (C, H, W).
    """
    size = _pair(input_size)
    final = [ToTensorNormalize(mean, std)]
    if not is_training or no_aug:
        if interpolation == "random":
            interpolation = "bilinear"
        if is_training:  # no_aug: resize shorter side to the crop size, no 1/crop_pct margin
            return Compose([EvalResizeCrop(size, 1.0, "center", interpolation, mean), *final])
        return Compose([EvalResizeCrop(size, crop_pct, crop_mode, interpolation, mean), *final])
    ops: list[Callable[[Any], Any]] = [RandomResizedCrop(size, scale or (0.08, 1.0), ratio or (3 / 4, 4 / 3),
                                                         interpolation)]
    if hflip > 0:
        ops.append(RandomFlip(hflip))
    if vflip > 0:
        ops.append(RandomFlip(vflip, vertical=True))
    if auto_augment:
        resample = None if interpolation == "random" else pil_interpolation(interpolation)
        ops.append(augment_transform(auto_augment, img_size=min(size), mean=mean, resample=resample))
    elif color_jitter:
        ops.append(ColorJitter(*_jitter_args(color_jitter)))
    ops.extend(final)
    if re_prob > 0:
        ops.append(RandomErasing(re_prob, mode=re_mode, count=re_count))
    return Compose(ops)
