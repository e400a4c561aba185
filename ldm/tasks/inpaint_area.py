"""Inpainting only the masked area (A1111's "Inpaint area: Only masked"): where the crop goes and how it comes back.

A small hole in a large image is a few latent pixels when the whole image is inpainted; the model draws it with
the detail of a few pixels. Cropped around the mask (its bounding box plus `padding` px of context, grown to the
model's aspect ratio), resized to the model's own size, the hole is drawn there with all the model's detail and
the result is resized back into place. Only the mask's pixels are pasted, through the mask feathered inward
(ldm.core.masks.feather): every pixel outside the mask stays exactly as it was.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.core.masks import EmptyMaskError, feather
from ldm.io.images import pil_to_tensor

Box = tuple[int, int, int, int]  # x0, y0, x1, y1: pixels [x0, x1) x [y0, y1)


class MaskPaddingError(InvalidOptionError):
    pass


def mask_box(mask: np.ndarray) -> Box:
    """The bounding box of the mask's repainted pixels (>= 0.5)."""
    ys, xs = np.nonzero(mask >= 0.5)
    if len(xs) == 0:
        raise EmptyMaskError("the mask is empty: paint the area to repaint white")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """[lo, hi) grown evenly on both sides to `length`, shifted to stay inside [0, limit), cut at its size."""
    length = min(length, limit)
    lo -= (length - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - length)
    return lo, lo + length


def crop_box(mask: np.ndarray, padding: int, aspect: float) -> Box:
    """The crop around the mask: its box plus `padding` px on every side (inside the image), then grown on its
    shorter side towards the aspect ratio width / height (as far as the image allows), as A1111's crop region."""
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise MaskPaddingError(f"mask padding must be a whole number of pixels >= 0, got {padding!r}")
    height, width = mask.shape
    x0, y0, x1, y1 = mask_box(mask)
    x0, y0, x1, y1 = max(x0 - padding, 0), max(y0 - padding, 0), min(x1 + padding, width), min(y1 + padding, height)
    if (x1 - x0) / (y1 - y0) > aspect:
        y0, y1 = _grow(y0, y1, math.ceil((x1 - x0) / aspect), height)
    else:
        x0, x1 = _grow(x0, x1, math.ceil((y1 - y0) * aspect), width)
    return x0, y0, x1, y1


def processing_size(box: Box, native: int, multiple: int) -> tuple[int, int]:
    """(height, width) the crop is inpainted at: the model's native area (native x native) in the crop's shape, in
    whole steps of `multiple`."""
    width, height = box[2] - box[0], box[3] - box[1]
    scale = native / math.sqrt(width * height)
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def crop_inputs(
    image: Image.Image, mask: np.ndarray, box: Box, size: tuple[int, int]
) -> tuple[Image.Image, np.ndarray]:
    """The crop of the image (Lanczos) and of the mask (bilinear, thresholded later) at the processing size."""
    crop = image.crop(box).resize((size[1], size[0]), Image.Resampling.LANCZOS)
    x0, y0, x1, y1 = box
    small = Image.fromarray(mask[y0:y1, x0:x1].astype(np.float32)).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return crop, np.asarray(small, dtype=np.float32)


def paste_back(
    original: torch.Tensor, results: list[Image.Image], mask: np.ndarray, box: Box, radius: int
) -> torch.Tensor:
    """The results [n] resized into the box of `original` [1, 3, H, W] (in [-1, 1]), pasted through the mask
    feathered inward by `radius` px: outside the mask the original comes back bit for bit. Returns [n, 3, H, W]."""
    x0, y0, x1, y1 = box
    hard = torch.from_numpy((mask >= 0.5).astype(np.float32))[None, None].to(original.device)
    soft = feather(hard, radius)
    out = []
    for result in results:
        canvas = original.clone()
        back = result.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        canvas[..., y0:y1, x0:x1] = pil_to_tensor(back).to(original.device, original.dtype)
        out.append(canvas * soft + original * (1 - soft))
    return torch.cat(out)
