"""Built-in sample images for the explorer and the editing pages, drawn with PIL.

Drawn, not shipped as files: nothing to download or keep in sync, and any size is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from ldm.core.errors import LdmError


class UnknownSampleError(LdmError, KeyError):
    pass


def smiley(size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    s = size / 64
    d.ellipse([4 * s, 4 * s, 60 * s, 60 * s], fill=(255, 204, 51), outline=(200, 140, 0), width=max(1, int(2 * s)))
    d.ellipse([20 * s, 20 * s, 27 * s, 30 * s], fill=(60, 40, 20))
    d.ellipse([37 * s, 20 * s, 44 * s, 30 * s], fill=(60, 40, 20))
    d.arc([16 * s, 24 * s, 48 * s, 50 * s], 20, 160, fill=(60, 40, 20), width=max(1, int(3 * s)))
    return img


def shapes(size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (40, 90, 160))
    d = ImageDraw.Draw(img)
    d.rectangle([0.1 * size, 0.55 * size, 0.45 * size, 0.9 * size], fill=(230, 60, 50))
    d.ellipse([0.5 * size, 0.1 * size, 0.9 * size, 0.5 * size], fill=(250, 220, 70))
    d.polygon([(0.55 * size, 0.9 * size), (0.75 * size, 0.55 * size), (0.95 * size, 0.9 * size)], fill=(60, 200, 90))
    return img


def gradient(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / max(1, size - 1)
    arr = np.stack([x, y, 1 - x * y], -1) * 255
    return Image.fromarray(arr.round().astype(np.uint8))


def checkerboard(size: int, squares: int = 8) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] * squares // size
    arr = np.where(((x + y) % 2 == 0)[..., None], 235, 20).repeat(3, -1)
    return Image.fromarray(arr.astype(np.uint8))


SAMPLES: dict[str, Callable[[int], Image.Image]] = {
    "smiley": smiley,
    "shapes": shapes,
    "gradient": gradient,
    "checkerboard": checkerboard,
}


def sample_image(name: str, size: int = 128) -> Image.Image:
    try:
        return SAMPLES[name](size)
    except KeyError:
        raise UnknownSampleError(f"no sample image {name!r}; known: {', '.join(SAMPLES)}") from None
