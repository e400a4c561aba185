"""Steps the image-editing tasks share: input checks, sizing, batch spreading.

img2img, inpainting and upscaling all start from a user image of any size; what they hand the
sampler (their `Conditioning`) and how it runs are ldm.tasks.base'.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from PIL import Image

from ldm.io.images import InvalidImageError, load_image
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.samplers import InvalidStrengthError
from ldm.tasks.base import EditingError

log = logging.getLogger("ldm")


StrengthError = InvalidStrengthError  # the one strength error, under the name editing callers know


class ImageTooSmallError(InvalidImageError):
    pass


def as_pil(image: Image.Image | str | Path, mode: str = "RGB") -> Image.Image:
    """A PIL image, or a path read with `load_image` (which names unreadable files clearly)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(image, mode)
    raise InvalidImageError(f"expected a PIL image or a path, got {type(image).__name__}")


def size_multiple(model: LatentDiffusion) -> int:
    """Pixel sizes must be whole latents (VAE) and multiples of 8 (what users and other tools expect)."""
    return math.lcm(8, model.downscale)


def fit_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest multiple of `multiple` per side; an image smaller than one multiple is an error."""
    if width < multiple or height < multiple:
        raise ImageTooSmallError(f"image {width}x{height} is too small: each side needs at least {multiple} px")
    return round(width / multiple) * multiple, round(height / multiple) * multiple


def fit_image(
    image: Image.Image, multiple: int, what: str = "image", resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """Resize to the nearest multiple-of-`multiple` size, saying so, since the output then has that size."""
    size = fit_size(*image.size, multiple)
    if size == image.size:
        return image
    log.info("resized %s %dx%d to %dx%d (sides must be multiples of %d)", what, *image.size, *size, multiple)
    return image.resize(size, resample)


def expand_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a per-image tensor to a denoiser batch (guidance may run cond and uncond as one batch)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise EditingError(f"cannot spread a batch of {t.shape[0]} over {batch}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))
