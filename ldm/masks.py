"""Inpainting masks: reading user masks, feathering, and random masks for training.

Convention everywhere: a mask is float32 in [0, 1] with 1 (white) = repaint, 0 (black) = keep.
Random masks are pure functions of a `numpy.random.Generator`, so a data loader can make
them reproducible per sample by seeding the generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ldm.core.errors import LdmError

MASK_KINDS = ("box", "stroke", "border")


class MaskError(LdmError, ValueError):
    """A mask that cannot be used (wrong size, nothing to repaint, bad parameters)."""


class MaskSizeError(MaskError):
    pass


class EmptyMaskError(MaskError):
    pass


def mask_from_image(image: Image.Image) -> np.ndarray:
    """A PIL mask -> [H, W] float32 in [0, 1] (1 = repaint).

    L and RGB masks use their brightness. RGBA masks use their alpha (paint opaque strokes on a
    transparent layer), unless the alpha is opaque everywhere: then it was just a saved RGB image.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0
        if alpha.min() < 1.0:
            return alpha
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def check_mask(mask: np.ndarray, size: tuple[int, int]) -> None:
    """Raise when a mask does not fit an image of PIL size (width, height) or repaints nothing."""
    if mask.shape != (size[1], size[0]):
        raise MaskSizeError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
    if not (mask >= 0.5).any():
        raise EmptyMaskError("the mask is empty (all black): nothing to repaint; white marks the area to repaint")


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soften a binary [B, 1, H, W] mask's edge over `radius` pixels, inward only.

    The ramp lies inside the repainted area (mask x box-blurred mask), so every kept pixel stays
    exactly 0: pasting back keeps the original there bit for bit, and the seam fades inside the hole.
    """
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    padded = F.pad(mask, (radius,) * 4, mode="replicate")  # image borders are not edges of the hole
    return (mask * F.avg_pool2d(padded, k, stride=1)).clamp(0, 1)


def border_mask(height: int, width: int, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0) -> np.ndarray:
    """1 on the given outer bands (the area outpainting fills), 0 inside."""
    if min(left, right, top, bottom) < 0:
        raise MaskError("border widths must be >= 0")
    if left + right >= width or top + bottom >= height:
        raise MaskError(f"borders {left}+{right} x {top}+{bottom} leave nothing of a {width}x{height} image")
    mask = np.zeros((height, width), np.float32)
    mask[:top] = 1
    mask[height - bottom :] = 1
    mask[:, :left] = 1
    mask[:, width - right :] = 1
    return mask


def random_box_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    count: tuple[int, int] = (1, 3),
    size: tuple[float, float] = (0.1, 0.5),
) -> np.ndarray:
    """Union of `count` axis-aligned rectangles, each side a random fraction `size` of the image side."""
    mask = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        h = max(1, int(rng.uniform(*size) * height))
        w = max(1, int(rng.uniform(*size) * width))
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        mask[y : y + h, x : x + w] = 1
    return mask


def random_stroke_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    strokes: tuple[int, int] = (1, 4),
    vertices: tuple[int, int] = (4, 12),
    thickness: tuple[float, float] = (0.03, 0.12),
) -> np.ndarray:
    """Free-form brush strokes (LaMa-style random polylines with round joints)."""
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    side = min(height, width)
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        brush = max(1, int(rng.uniform(*thickness) * side))
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        points = [(x, y)]
        for _ in range(int(rng.integers(vertices[0], vertices[1] + 1))):
            angle = rng.uniform(0, 2 * np.pi)
            step = rng.uniform(0.05, 0.25) * side
            x = float(np.clip(x + step * np.cos(angle), 0, width - 1))
            y = float(np.clip(y + step * np.sin(angle), 0, height - 1))
            points.append((x, y))
        draw.line(points, fill=255, width=brush, joint="curve")
        r = brush / 2  # round caps, so strokes do not end in hard squares
        for px, py in (points[0], points[-1]):
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


def random_border_mask(
    height: int, width: int, rng: np.random.Generator, size: tuple[float, float] = (0.1, 0.4)
) -> np.ndarray:
    """An outpainting mask: one to four random sides masked, each a random fraction of the image."""
    sides = rng.permutation(4)[: int(rng.integers(1, 5))]
    widths = [0, 0, 0, 0]  # left, right, top, bottom
    for s in sides:
        widths[s] = max(1, int(rng.uniform(*size) * (width if s < 2 else height)))
    return border_mask(height, width, *widths)


def random_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    kinds: Sequence[str] = MASK_KINDS,
    weights: Sequence[float] | None = None,
    full_prob: float = 0.0,
) -> np.ndarray:
    """One random training mask of a randomly chosen kind.

    `full_prob` masks the whole image now and then, so an inpainting model also learns plain
    text-to-image (as SD 2 inpainting training did).
    """
    unknown = [k for k in kinds if k not in MASK_KINDS]
    if unknown or not kinds:
        raise MaskError(f"unknown mask kinds {unknown}; known: {', '.join(MASK_KINDS)}")
    if rng.random() < full_prob:
        return np.ones((height, width), np.float32)
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    kind = kinds[int(rng.choice(len(kinds), p=p))]
    make = {"box": random_box_mask, "stroke": random_stroke_mask, "border": random_border_mask}[kind]
    mask = make(height, width, rng)
    if not mask.any():  # a degenerate draw; a training mask must repaint something
        mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = 1
    return mask
