"""AutoAugment and RandAugment on Pillow images, configured by timm-style strings.

'original' / 'originalr' / 'v0' / 'v0r' name AutoAugment ImageNet policies (optionally '-mstd0.5');
'rand-m9-mstd0.5' is RandAugment (sections: m magnitude 0-10, n ops per image, p probability of
each op, mstd magnitude noise (>100: uniform), mmax magnitude ceiling, inc1 severity-increasing ops).
"""

from __future__ import annotations

import math
import random
import re
from typing import Any, Callable, Sequence

from PIL import Image, ImageEnhance, ImageOps

from ..errors import EffnetError

LEVEL_DENOM = 10.0  # magnitudes run 0..10
_RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


class AugmentConfigError(EffnetError, ValueError):
    """An AutoAugment / RandAugment string that cannot be parsed."""


def _negate_half(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _affine(img: Image.Image, data: tuple[float, ...], fill: tuple[int, ...], resample: Any) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=resample, fillcolor=fill)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


# name -> (apply(img, arg, fill, resample), level(magnitude, hparams) -> arg, or None for no argument)
Op = Callable[[Image.Image, Any, tuple, Any], Image.Image]
_OPS: dict[str, tuple[Op, Callable[[float, dict], Any] | None]] = {}


def _register(names: Sequence[str], level: Callable[[float, dict], Any] | None) -> Callable[[Op], Op]:
    def deco(fn: Op) -> Op:
        for name in names:
            _OPS[name] = (fn, level)
        return fn
    return deco


def _enhance_level(m: float, _: dict) -> float:
    return m / LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing_level(m: float, _: dict) -> float:
    return max(0.1, 1.0 + _negate_half(m / LEVEL_DENOM * 0.9))


_register(["AutoContrast"], None)(lambda img, _a, _f, _r: ImageOps.autocontrast(img))
_register(["Equalize"], None)(lambda img, _a, _f, _r: ImageOps.equalize(img))
_register(["Invert"], None)(lambda img, _a, _f, _r: ImageOps.invert(img))
_register(["Rotate"], lambda m, _: _negate_half(m / LEVEL_DENOM * 30.0))(
    lambda img, deg, fill, rs: img.rotate(deg, resample=rs, fillcolor=fill))


def _posterize(img: Image.Image, bits: int, _fill: tuple, _resample: Any) -> Image.Image:
    if bits >= 8:
        return img
    if bits <= 0:  # keeping no bits leaves black (Pillow only accepts 1..8)
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


_register(["Posterize"], lambda m, _: int(m / LEVEL_DENOM * 4))(_posterize)
_register(["PosterizeIncreasing"], lambda m, _: 4 - int(m / LEVEL_DENOM * 4))(_posterize)
_register(["PosterizeOriginal"], lambda m, _: int(m / LEVEL_DENOM * 4) + 4)(_posterize)
_solarize: Op = lambda img, thresh, _f, _r: ImageOps.solarize(img, thresh)  # noqa: E731
_register(["Solarize"], lambda m, _: min(256, int(m / LEVEL_DENOM * 256)))(_solarize)
_register(["SolarizeIncreasing"], lambda m, _: 256 - min(256, int(m / LEVEL_DENOM * 256)))(_solarize)
_register(["SolarizeAdd"], lambda m, _: min(128, int(m / LEVEL_DENOM * 110)))(
    lambda img, add, _f, _r: _solarize_add(img, add))
for _name, _enh in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                    ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):
    _apply: Op = lambda img, f, _f, _r, e=_enh: e(img).enhance(f)  # noqa: E731
    _register([_name], _enhance_level)(_apply)
    _register([_name + "Increasing"], _enhance_increasing_level)(_apply)
_shear_level = lambda m, _: _negate_half(m / LEVEL_DENOM * 0.3)  # noqa: E731
_register(["ShearX"], _shear_level)(lambda img, s, fill, rs: _affine(img, (1, s, 0, 0, 1, 0), fill, rs))
_register(["ShearY"], _shear_level)(lambda img, s, fill, rs: _affine(img, (1, 0, 0, s, 1, 0), fill, rs))
_translate_abs = lambda m, hp: _negate_half(m / LEVEL_DENOM * float(hp["translate_const"]))  # noqa: E731
_register(["TranslateX"], _translate_abs)(lambda img, px, fill, rs: _affine(img, (1, 0, px, 0, 1, 0), fill, rs))
_register(["TranslateY"], _translate_abs)(lambda img, px, fill, rs: _affine(img, (1, 0, 0, 0, 1, px), fill, rs))
_translate_rel = lambda m, hp: _negate_half(m / LEVEL_DENOM * hp["translate_pct"])  # noqa: E731
_register(["TranslateXRel"], _translate_rel)(
    lambda img, pct, fill, rs: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill, rs))
_register(["TranslateYRel"], _translate_rel)(
    lambda img, pct, fill, rs: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill, rs))

OP_NAMES = tuple(sorted(_OPS))


class AugmentOp:
    """One named operation applied with probability `prob` at `magnitude` (0-10), with optional
    Gaussian magnitude noise (`magnitude_std`; infinite means uniform in [0, magnitude])."""

    def __init__(self, name: str, prob: float = 0.5, magnitude: float = 10, hparams: dict | None = None) -> None:
        if name not in _OPS:
            raise AugmentConfigError(f"unknown augmentation op {name!r}; known: {', '.join(OP_NAMES)}")
        self.name, self.prob, self.magnitude = name, prob, magnitude
        self.apply, self.level = _OPS[name]
        hp = dict(translate_const=250, translate_pct=0.45, img_mean=(128, 128, 128), resample=None)
        hp.update(hparams or {})
        self.hparams = hp
        self.fill = tuple(hp["img_mean"])
        self.magnitude_std = float(hp.get("magnitude_std") or 0.0)
        self.magnitude_max = hp.get("magnitude_max") or LEVEL_DENOM

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        m = self.magnitude
        if self.magnitude_std == math.inf:
            m = random.uniform(0, m)
        elif self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        m = max(0.0, min(m, self.magnitude_max))
        arg = self.level(m, self.hparams) if self.level is not None else None
        resample = self.hparams["resample"] or random.choice(_RANDOM_RESAMPLE)
        return self.apply(img, arg, self.fill, resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


# AutoAugment's ImageNet policy (Cubuk et al. 2019, as in the TF EfficientNet reference):
# 25 sub-policies of two (op, probability, magnitude) steps.
_POLICY_ORIGINAL = """
PosterizeOriginal .4 8 Rotate .6 9 | Solarize .6 5 AutoContrast .6 5 | Equalize .8 8 Equalize .6 3
PosterizeOriginal .6 7 PosterizeOriginal .6 6 | Equalize .4 7 Solarize .2 4 | Equalize .4 4 Rotate .8 8
Solarize .6 3 Equalize .6 7 | PosterizeOriginal .8 5 Equalize 1 2 | Rotate .2 3 Solarize .6 8
Equalize .6 8 PosterizeOriginal .4 6 | Rotate .8 8 Color .4 0 | Rotate .4 9 Equalize .6 2
Equalize 0 7 Equalize .8 8 | Invert .6 4 Equalize 1 8 | Color .6 4 Contrast 1 8 | Rotate .8 8 Color 1 2
Color .8 8 Solarize .8 7 | Sharpness .4 7 Invert .6 8 | ShearX .6 5 Equalize 1 9 | Color .4 0 Equalize .6 3
Equalize .4 7 Solarize .2 4 | Solarize .6 5 AutoContrast .6 5 | Invert .6 4 Equalize 1 8
Color .6 4 Contrast 1 8 | Equalize .8 8 Equalize .6 3
"""
# The TF reference's 'v0' policy (the one its AutoAugment default trains with).
_POLICY_V0 = """
Equalize .8 1 ShearY .8 4 | Color .4 9 Equalize .6 3 | Color .4 1 Rotate .6 8 | Solarize .8 3 Equalize .4 7
Solarize .4 2 Solarize .6 2 | Color .2 0 Equalize .8 8 | Equalize .4 8 SolarizeAdd .8 3
ShearX .2 9 Rotate .6 8 | Color .6 1 Equalize 1 2 | Invert .4 9 Rotate .6 0 | Equalize 1 9 ShearY .6 3
Color .4 7 Equalize .6 0 | Posterize .4 6 AutoContrast .4 7 | Solarize .6 8 Color .6 9
Solarize .2 4 Rotate .8 9 | Rotate 1 7 TranslateYRel .8 9 | ShearX 0 0 Solarize .8 4 | ShearY .8 0 Color .6 4
Color 1 0 Rotate .6 2 | Equalize .8 4 Equalize 0 8 | Equalize 1 4 AutoContrast .6 2
ShearY .4 7 SolarizeAdd .6 7 | Posterize .8 2 Solarize .6 10 | Solarize .6 8 Equalize .6 1
Color .8 6 Rotate .4 5
"""


def _parse_policy(text: str, rename: dict[str, str]) -> list[list[tuple[str, float, float]]]:
    policy = []
    for sub in text.replace("\n", "|").split("|"):
        t = sub.split()
        if not t:
            continue
        policy.append([(rename.get(t[i], t[i]), float(t[i + 1]), float(t[i + 2])) for i in range(0, len(t), 3)])
    return policy


# 'r' variants swap in Posterize whose severity increases with magnitude.
POLICIES = {
    "original": _parse_policy(_POLICY_ORIGINAL, {}),
    "originalr": _parse_policy(_POLICY_ORIGINAL, {"PosterizeOriginal": "PosterizeIncreasing"}),
    "v0": _parse_policy(_POLICY_V0, {}),
    "v0r": _parse_policy(_POLICY_V0, {"Posterize": "PosterizeIncreasing"}),
}
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_INCREASING = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}
RAND_OPS_INCREASING = tuple(n + "Increasing" if n in _INCREASING else n for n in RAND_OPS)


class AutoAugment:
    """Apply one randomly chosen sub-policy (a short list of `AugmentOp`s) per image."""

    def __init__(self, policy: list[list[AugmentOp]], name: str = "") -> None:
        self.policy, self.name = policy, name

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in random.choice(self.policy):
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self.policy)} sub-policies)"


class RandAugment:
    """Apply `num_ops` ops drawn uniformly (with replacement) from `ops` to each image."""

    def __init__(self, ops: list[AugmentOp], num_ops: int = 2, config: str = "") -> None:
        self.ops, self.num_ops, self.config = ops, num_ops, config

    def __call__(self, img: Image.Image) -> Image.Image:
        for op in random.choices(self.ops, k=self.num_ops):
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, n={self.num_ops}, ops={[op.name for op in self.ops]})"


def _sections(config: str) -> tuple[str, list[tuple[str, str]]]:
    """'rand-m9-mstd0.5' -> ('rand', [('m', '9'), ('mstd', '0.5')])."""
    head, *rest = config.split("-")
    out = []
    for part in rest:
        match = re.fullmatch(r"([a-z]+)(\d[\d.]*|inf)", part)
        if not match:
            raise AugmentConfigError(f"augmentation {config!r}: cannot read section {part!r} "
                                     "(expected a key followed by a number, e.g. m9 or mstd0.5)")
        out.append((match.group(1), match.group(2)))
    return head, out


def _number(config: str, key: str, text: str, kind: type) -> Any:
    try:
        return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except ValueError:
        raise AugmentConfigError(f"augmentation {config!r}: {key} needs {'an integer' if kind is int else 'a number'}"
                                 f", got {text!r}") from None


def parse_augment(config: str, hparams: dict | None = None) -> AutoAugment | RandAugment:
    """Build the AutoAugment or RandAugment transform a config string names."""
    if not isinstance(config, str) or not config:
        raise AugmentConfigError(f"augmentation config must be a non-empty string; got {config!r}")
    hparams = dict(hparams or {})
    head, sections = _sections(config)
    if head == "rand":
        magnitude, num_ops, prob, increasing = LEVEL_DENOM, 2, 0.5, False
        for key, val in sections:
            if key == "m":
                magnitude = _number(config, key, val, float)
            elif key == "n":
                num_ops = _number(config, key, val, int)
            elif key == "p":
                prob = _number(config, key, val, float)
            elif key == "mstd":
                mstd = _number(config, key, val, float)
                hparams["magnitude_std"] = math.inf if mstd > 100 else mstd
            elif key == "mmax":
                hparams["magnitude_max"] = _number(config, key, val, float)
            elif key == "inc":
                increasing = bool(_number(config, key, val, int))
            else:
                raise AugmentConfigError(f"augmentation {config!r}: unknown RandAugment section {key!r} "
                                         "(known: m, n, p, mstd, mmax, inc)")
        if not 0 <= magnitude <= 30 or num_ops < 1 or not 0 <= prob <= 1:
            raise AugmentConfigError(f"augmentation {config!r}: need magnitude in [0, 30], n >= 1, p in [0, 1]")
        names = RAND_OPS_INCREASING if increasing else RAND_OPS
        return RandAugment([AugmentOp(n, prob, magnitude, hparams) for n in names], num_ops, config)
    if head in POLICIES:
        for key, val in sections:
            if key != "mstd":
                raise AugmentConfigError(f"augmentation {config!r}: unknown AutoAugment section {key!r} "
                                         "(known: mstd)")
            hparams["magnitude_std"] = _number(config, key, val, float)
        policy = [[AugmentOp(n, p, m, hparams) for n, p, m in sub] for sub in POLICIES[head]]
        return AutoAugment(policy, config)
    raise AugmentConfigError(f"unknown augmentation {config!r}: use an AutoAugment policy "
                             f"({', '.join(POLICIES)}, e.g. 'original-mstd0.5') or RandAugment ('rand-m9-mstd0.5')")


def augment_transform(config: str, img_size: int, mean: Sequence[float],
                      resample: Image.Resampling | None = None) -> AutoAugment | RandAugment:
    """The transform `create_transform(auto_augment=config)` uses: translations scale with the
    image size, areas rotated or sheared in are filled with the mean colour."""
    hparams = dict(translate_const=int(img_size * 0.45),
                   img_mean=tuple(min(255, round(255 * v)) for v in mean), resample=resample)
    return parse_augment(config, hparams)
