"""Mixup and CutMix on batches, with label-smoothed soft targets."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

MODES = ("batch", "pair", "elem")


def smooth_one_hot(target: Tensor, num_classes: int, smoothing: float = 0.0) -> Tensor:
    """(B,) class indices -> (B, num_classes) float targets: 1 - smoothing + smoothing/N on the class,
    smoothing/N elsewhere."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device, dtype=torch.float32)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(img_h: int, img_w: int, lam: float, minmax: tuple[float, float] | None,
               rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of a box covering about 1-lam of the image (or sized in `minmax` fractions)."""
    if minmax is not None:
        ch = int(rng.integers(int(img_h * minmax[0]), int(img_h * minmax[1]) + 1))
        cw = int(rng.integers(int(img_w * minmax[0]), int(img_w * minmax[1]) + 1))
        y0, x0 = int(rng.integers(0, img_h - ch + 1)), int(rng.integers(0, img_w - cw + 1))
        return y0, y0 + ch, x0, x0 + cw
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(img_h * cut), int(img_w * cut)
    cy, cx = int(rng.integers(0, img_h)), int(rng.integers(0, img_w))
    y0, y1 = int(np.clip(cy - ch // 2, 0, img_h)), int(np.clip(cy + ch // 2, 0, img_h))
    x0, x1 = int(np.clip(cx - cw // 2, 0, img_w)), int(np.clip(cx + cw // 2, 0, img_w))
    return y0, y1, x0, x1


class Mixup:
    """Mix each batch with itself reversed: Mixup (blend whole images) or CutMix (paste a box),
    targets mixed by the same proportion and label-smoothed.

    With both alphas > 0 each batch (or element) uses CutMix with probability `switch_prob`.
    `prob` is the chance a batch (or element) is mixed at all. `mode`: 'batch' (one lambda per
    batch), 'pair' (one per pair i, B-1-i) or 'elem' (one per image). CutMix's lambda is corrected
    to the box area actually pasted. Call as `x, soft_target = mixup(x, target)`. In an odd-sized
    batch (one that lost an unreadable image) the middle image is its own partner, so it stays unmixed.
    """

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: tuple[float, float] | None = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = "batch", label_smoothing: float = 0.1, num_classes: int = 1000,
                 seed: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mixup mode {mode!r}; choose from {', '.join(MODES)}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        if cutmix_minmax is not None:
            cutmix_alpha = max(cutmix_alpha, 1.0)  # minmax boxes need CutMix switched on
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (or cutmix_minmax)")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1; got {num_classes}")
        self.mixup_alpha, self.cutmix_alpha, self.cutmix_minmax = mixup_alpha, cutmix_alpha, cutmix_minmax
        self.prob, self.switch_prob, self.mode = prob, switch_prob, mode
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        # numpy's generator seeded from torch's keeps runs repeatable under torch.manual_seed
        self._seed = seed

    def _rng(self) -> np.random.Generator:
        seed = self._seed if self._seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        if self._seed is not None:
            self._seed += 1
        return np.random.default_rng(seed)

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per sample: lambda (1 = unmixed) and whether CutMix is used."""
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random(n) < self.switch_prob
        elif self.cutmix_alpha > 0:
            use_cutmix[:] = True
        lam = np.where(use_cutmix, rng.beta(max(self.cutmix_alpha, 1e-6), max(self.cutmix_alpha, 1e-6), n),
                       rng.beta(max(self.mixup_alpha, 1e-6), max(self.mixup_alpha, 1e-6), n))
        lam = np.where(rng.random(n) < self.prob, lam, 1.0)
        return lam.astype(np.float32), use_cutmix

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        rng = self._rng()
        b, (h, w) = x.shape[0], x.shape[-2:]
        n = {"batch": 1, "pair": b // 2, "elem": b}[self.mode]
        lam, cut = self._draw(rng, n)
        if self.mode == "pair":  # partner i and B-1-i share one draw
            mid_lam, mid_cut = np.ones(b % 2, dtype=np.float32), np.zeros(b % 2, dtype=bool)
            lam = np.concatenate([lam, mid_lam, lam[::-1]])
            cut = np.concatenate([cut, mid_cut, cut[::-1]])
        elif self.mode == "batch":
            lam, cut = np.repeat(lam, b), np.repeat(cut, b)
        if b % 2:
            lam[b // 2] = 1.0  # its partner is itself: leave it exactly as it is
        flipped = x.flip(0).clone()
        out = x.clone()
        lam_used = np.ones(b, dtype=np.float32)
        # in batch mode every image gets the same box
        shared_box = cutmix_box(h, w, float(lam[0]), self.cutmix_minmax, rng) if self.mode == "batch" else None
        for i in range(b):
            if lam[i] == 1.0:
                continue
            if cut[i]:
                y0, y1, x0, x1 = shared_box or cutmix_box(h, w, float(lam[i]), self.cutmix_minmax, rng)
                out[i, :, y0:y1, x0:x1] = flipped[i, :, y0:y1, x0:x1]
                lam_used[i] = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
            else:
                out[i] = x[i] * float(lam[i]) + flipped[i] * (1.0 - float(lam[i]))
                lam_used[i] = lam[i]
        lam_t = torch.from_numpy(lam_used).to(x.device).view(-1, 1)
        y1 = smooth_one_hot(target, self.num_classes, self.label_smoothing)
        y2 = smooth_one_hot(target.flip(0), self.num_classes, self.label_smoothing)
        return out, y1 * lam_t + y2 * (1.0 - lam_t)
