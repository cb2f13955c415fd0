"""Writes tests/fixtures/transforms/: two small real photos and the reference implementation's
evaluation-transform outputs on them, for tests/test_transforms.py.

Run with the reference environment's Python (it has timm but not scikit-learn, so the photos that
scikit-learn ships are read from the project's .venv, or from --photos DIR):
    /root/.cache/effnet-reference/bin/python scripts/make_transform_fixtures.py

Each reference output t (float32, 3xHxW) is stored losslessly as uint8 pixels u with
t == (u / 255 - mean) / std bit for bit (checked here), which keeps the fixtures small.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "transforms"
PHOTOS = ("china.jpg", "flower.jpg")
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# name -> create_transform keyword arguments (evaluation)
CONFIGS = {
    "bicubic224_c0875": dict(input_size=(3, 224, 224), interpolation="bicubic", crop_pct=0.875,
                             mean=INCEPTION[0], std=INCEPTION[1]),
    "bilinear240_c0882": dict(input_size=(3, 240, 240), interpolation="bilinear", crop_pct=0.882,
                              mean=IMAGENET[0], std=IMAGENET[1]),
    "squash_bicubic160_c09": dict(input_size=(3, 160, 160), interpolation="bicubic", crop_pct=0.9,
                                  crop_mode="squash", mean=IMAGENET[0], std=IMAGENET[1]),
    "nonsquare_bicubic_129x171": dict(input_size=(3, 129, 171), interpolation="bicubic", crop_pct=0.95,
                                      mean=INCEPTION[0], std=INCEPTION[1]),
    "odd_bilinear_225_c1": dict(input_size=(3, 225, 225), interpolation="bilinear", crop_pct=1.0,
                                mean=IMAGENET[0], std=IMAGENET[1]),
    "border_bicubic_144": dict(input_size=(3, 144, 144), interpolation="bicubic", crop_pct=0.9,
                               crop_mode="border", mean=IMAGENET[0], std=IMAGENET[1]),
    "upscale_lanczos_288_c1": dict(input_size=(3, 288, 288), interpolation="lanczos", crop_pct=1.0,
                                   mean=INCEPTION[0], std=INCEPTION[1]),
}


def copy_photos(src_dir: Path) -> None:
    """Downscaled copies (longer side 320) of scikit-learn's sample photos, if not there yet."""
    for name in PHOTOS:
        dst = OUT / name
        if dst.exists():
            continue
        with Image.open(src_dir / name) as img:
            img = img.convert("RGB")
            img.thumbnail((320, 320), Image.Resampling.LANCZOS)
            img.save(dst, quality=90)


def encode(t: torch.Tensor, mean: tuple, std: tuple) -> np.ndarray:
    """uint8 pixels reproducing `t` exactly through (u / 255 - mean) / std."""
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    u = torch.round((t * s + m) * 255).clamp(0, 255).to(torch.uint8)
    back = u.to(torch.float32).div(255).sub(m).div(s)
    if not torch.equal(back, t):
        raise SystemExit(f"uint8 encoding is lossy: max diff {(back - t).abs().max().item()}")
    return u.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    found = glob.glob(str(ROOT / ".venv/lib/python3*/site-packages/sklearn/datasets/images"))
    parser.add_argument("--photos", type=Path, default=Path(found[0]) if found else None,
                        help="folder holding scikit-learn's china.jpg and flower.jpg")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not all((OUT / p).exists() for p in PHOTOS):
        if args.photos is None:
            raise SystemExit("cannot find scikit-learn's sample photos; pass --photos DIR")
        copy_photos(args.photos)
    arrays, meta = {}, {}
    for photo in PHOTOS:
        with Image.open(OUT / photo) as img:
            img = img.convert("RGB")
        for name, kw in CONFIGS.items():
            t = create_transform(**kw, is_training=False)(img)
            key = f"{Path(photo).stem}/{name}"
            arrays[key] = encode(t, kw["mean"], kw["std"])
            meta[key] = dict(shape=list(t.shape), sum=float(t.double().sum()), abs_sum=float(t.double().abs().sum()))
    fd, tmp = tempfile.mkstemp(dir=OUT, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT / "reference.npz")
    doc = dict(configs={k: {**v, "input_size": list(v["input_size"])} for k, v in CONFIGS.items()}, outputs=meta)
    fd, tmp = tempfile.mkstemp(dir=OUT, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, OUT / "configs.json")
    print(f"wrote {len(arrays)} reference outputs to {OUT}")


if __name__ == "__main__":
    main()
