"""Measuring inpainting and outpainting: a dedicated inpainting model against latent blending, same inputs.

For held-out images with their captions, a hole is cut (a centre box for inpainting, the right-hand band for
outpainting), each method fills it from the caption, and the result is judged:
- prompt accuracy: the judge CLIP's nearest real image has the caption (ldm.evaluation.report.Judge, as `ldm eval`);
- outside change: mean |result - input| where the mask keeps the input, in /255 (the paste-back makes it 0
  unless something is wrong);
- seam: the mean colour step |r_in - r_out| between 4-neighbour pixel pairs that straddle the mask border,
  in /255, beside the same step in the real image (a seam is a step the real image does not have);
- hole error: mean |result - real| inside the hole, in /255 (how close the fill is to the real emoji);
- detail: the variance of the Laplacian inside the hole (`laplacian_variance`), e.g. on a procedural photo-like
  image (`photo_like`) for inpainting only the masked area against the whole image (benchmarks/inpaint_area.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class EditCase:
    """One image to repaint: the real image, the input the method gets and the hole mask (1 = repaint)."""

    caption: str
    real: Image.Image
    mask: np.ndarray  # [H, W] of the real image's size


def centre_box_case(caption: str, real: Image.Image, fraction: float = 0.5) -> EditCase:
    w, h = real.size
    mask = np.zeros((h, w), np.float32)
    bh, bw = int(h * fraction), int(w * fraction)
    mask[(h - bh) // 2 : (h + bh) // 2, (w - bw) // 2 : (w + bw) // 2] = 1
    return EditCase(caption, real, mask)


def right_band_case(caption: str, real: Image.Image, width: int) -> EditCase:
    w, h = real.size
    mask = np.zeros((h, w), np.float32)
    mask[:, w - width :] = 1
    return EditCase(caption, real, mask)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def border_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (inside, outside) of the 4-neighbour pixel pairs that cross the mask's border."""
    hole = mask >= 0.5
    h, w = hole.shape
    index = np.arange(h * w).reshape(h, w)
    inside, outside = [], []
    for a, b in ((index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :])):
        ha, hb = hole.reshape(-1)[a], hole.reshape(-1)[b]
        inside += [a[ha & ~hb], b[hb & ~ha]]
        outside += [b[ha & ~hb], a[hb & ~ha]]
    return np.concatenate(inside), np.concatenate(outside)


def seam_step(image: Image.Image, mask: np.ndarray) -> float:
    """Mean colour step across the mask border, in /255 (see the module docstring)."""
    inside, outside = border_pairs(mask)
    if not len(inside):
        return 0.0
    flat = _pixels(image).reshape(-1, 3)
    return float(np.abs(flat[inside] - flat[outside]).mean() / 255)


def outside_change(result: Image.Image, given: Image.Image, mask: np.ndarray) -> float:
    keep = mask < 0.5
    return float(np.abs(_pixels(result) - _pixels(given))[keep].mean() / 255) if keep.any() else 0.0


def hole_error(result: Image.Image, real: Image.Image, mask: np.ndarray) -> float:
    hole = mask >= 0.5
    return float(np.abs(_pixels(result) - _pixels(real))[hole].mean() / 255) if hole.any() else 0.0


def judge_accuracy(judge, images: Sequence[Image.Image], captions: Sequence[str]) -> float:
    """Share of images whose nearest real image (judge CLIP features) has their caption."""
    from ldm.evaluation.report import pil_to_tensor

    feats = judge.features(pil_to_tensor(images))
    best = judge.nn.class_scores(feats).argmax(dim=1).tolist()
    return float(np.mean([judge.nn.classes[b] == c for b, c in zip(best, captions)]))


def evaluate_method(
    fill: Callable[[EditCase, int], Image.Image], cases: Sequence[EditCase], judge=None, seed: int = 0
) -> dict[str, float]:
    """Run `fill(case, seed)` (the repainted image, real-sized) on every case and average the measures."""
    results = [fill(case, seed + i) for i, case in enumerate(cases)]
    out = {
        "outside_change": float(np.mean([outside_change(r, c.real, c.mask) for r, c in zip(results, cases)])),
        "seam": float(np.mean([seam_step(r, c.mask) for r, c in zip(results, cases)])),
        "real_seam": float(np.mean([seam_step(c.real, c.mask) for c in cases])),
        "hole_error": float(np.mean([hole_error(r, c.real, c.mask) for r, c in zip(results, cases)])),
        "n": len(cases),
    }
    if judge is not None:
        out["prompt_top1"] = judge_accuracy(judge, results, [c.caption for c in cases])
    out["images"] = results  # type: ignore[assignment]
    return out


@torch.no_grad()
def real_accuracy(judge, cases: Sequence[EditCase]) -> float:
    """The judge's accuracy on the real images themselves, each left out of its own neighbours: the ceiling."""
    import torch.nn.functional as F

    from ldm.evaluation.report import pil_to_tensor

    feats = judge.features(pil_to_tensor([c.real for c in cases]))
    itself = (F.normalize(feats.float(), dim=-1) @ judge.nn.gallery.T).argmax(dim=1)  # the image in the real set
    best = judge.nn.class_scores(feats, itself).argmax(dim=1).tolist()
    return float(np.mean([judge.nn.classes[b] == c.caption for b, c in zip(best, cases)]))


def photo_like(size: int, seed: int = 0) -> Image.Image:
    """A photo-like test image: smooth colour fields, a fine stripe texture and soft noise (no file needed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.3 * np.sin(6 * x + 2 * c) * np.cos(4 * y - c) for c in range(3)], -1)
    img += 0.15 * np.sin(40 * (x + 0.3 * y))[..., None]
    blobs = Image.fromarray((rng.normal(0, 40, (size // 8, size // 8, 3)) + 128).clip(0, 255).astype(np.uint8))
    img += 0.08 * np.asarray(blobs.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    return Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8))


def laplacian_variance(image: Image.Image, mask: np.ndarray) -> float:
    """The variance of the 4-neighbour Laplacian of the grey image inside the mask (>= 0.5): high-frequency detail."""
    g = np.asarray(image.convert("RGB"), np.float64).mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap[mask[1:-1, 1:-1] >= 0.5].var())
