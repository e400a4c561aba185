"""Edit page logic: reading uploads and masks; the editing itself is ldm.tasks.img2img / inpaint / upscale."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ldm.core.masks import MaskError, mask_from_image
from ldm.io.images import InvalidImageError, open_image


def read_image(data: bytes, mode: str = "RGB") -> Image.Image:
    """An uploaded file's bytes -> PIL; anything unreadable is an InvalidImageError with a plain message."""
    if not data:
        raise InvalidImageError("the uploaded file is empty")
    return open_image(data, mode)


def read_mask(data: bytes) -> np.ndarray:
    """An uploaded mask (white = repaint; or opaque strokes on a transparent layer) -> [H, W] in [0, 1]."""
    return mask_from_image(read_image(data, mode=""))


def mask_from_strokes(rgba: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The drawing canvas's RGBA pixels (strokes on a transparent background) -> a mask at the image's (w, h).

    The canvas may be displayed at another size than the image; the strokes are scaled to it.
    """
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise MaskError(f"expected an RGBA drawing, got an array of shape {rgba.shape}")
    alpha = Image.fromarray(rgba[..., 3].astype(np.uint8), "L")
    if alpha.size != size:
        alpha = alpha.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(alpha, dtype=np.float32) / 255.0
