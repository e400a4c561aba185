"""Degradations that turn a high-res training image into the upscaler's low-res input.

Real low-res images are blurry, noisy and JPEG-compressed, not just bicubically shrunk;
training on a random mix of these makes the upscaler robust to them. Every step is a pure
function of a PIL image (and a `numpy.random.Generator` for the random ones).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from ldm.core.errors import LdmError

RESAMPLERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "area": Image.BOX, "lanczos": Image.LANCZOS}


class DegradationError(LdmError, ValueError):
    pass


def downscale(image: Image.Image, factor: int = 4, resample: str = "bicubic") -> Image.Image:
    """Shrink by an integer factor; the size must divide so the x4 output matches the original exactly."""
    w, h = image.size
    if factor < 1 or w % factor or h % factor:
        raise DegradationError(f"image {w}x{h} is not divisible by the scale factor {factor}")
    if resample not in RESAMPLERS:
        raise DegradationError(f"unknown resampler {resample!r}; known: {', '.join(RESAMPLERS)}")
    return image.resize((w // factor, h // factor), RESAMPLERS[resample])


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    return image if sigma <= 0 else image.filter(ImageFilter.GaussianBlur(sigma))


def add_noise(image: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Gaussian noise with `std` in 0-255 pixel units."""
    if std <= 0:
        return image
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = arr + rng.normal(0.0, std, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode and decode as JPEG at the given quality (1-95) to add compression artefacts."""
    if not 1 <= quality <= 95:
        raise DegradationError(f"JPEG quality must be in [1, 95], got {quality}")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


@dataclass
class Degradation:
    """blur -> downscale -> noise -> JPEG, each applied with its probability at a random strength."""

    factor: int = 4
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    noise_prob: float = 0.4
    noise_std: tuple[float, float] = (1.0, 10.0)
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)
    resamplers: tuple[str, ...] = ("bicubic", "bilinear", "area")

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict[str, Any]]:
        """High-res RGB image -> (low-res image, the parameters drawn), so a sample can be reproduced."""
        params: dict[str, Any] = {}
        img = image.convert("RGB")
        if rng.random() < self.blur_prob:
            params["blur_sigma"] = float(rng.uniform(*self.blur_sigma))
            img = gaussian_blur(img, params["blur_sigma"])
        params["resample"] = self.resamplers[int(rng.integers(len(self.resamplers)))]
        img = downscale(img, self.factor, params["resample"])
        if rng.random() < self.noise_prob:
            params["noise_std"] = float(rng.uniform(*self.noise_std))
            img = add_noise(img, params["noise_std"], rng)
        if rng.random() < self.jpeg_prob:
            params["jpeg_quality"] = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            img = jpeg_roundtrip(img, params["jpeg_quality"])
        return img, params
