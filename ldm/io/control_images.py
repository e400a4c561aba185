"""Control images for ControlNets, made from ordinary images: edge maps as white lines on black, the form
lllyasviel's canny / scribble / lineart ControlNets are trained on, and the tile and inpaint ControlNets' images.

- "canny": OpenCV's cv2.Canny of the RGB image, as the original ControlNet's annotator calls it (thresholds 100 and
  200 by default; on a colour image OpenCV takes, at each pixel, the channel of the largest Sobel gradient). One
  pixel wide.
- "lineart": every pixel whose gradient magnitude, after a light blur (sigma 1), is over `low`: all the lines
  of a drawing, two or three pixels wide, with no thinning.
- "scribble": Canny's edges of a blurred image (sigma 2), thickened to about 5 pixels: what a quick user sketch
  looks like.
- "tile" (ControlNet 1.1's tile model): the image taken down by `factor` (OpenCV's area resize) and brought back
  up by cv2.pyrUp doublings, as lllyasviel's gradio_tile.py does (factor 8, three pyrUps): a blurred image whose
  colours and layout the model keeps while it redraws the details.
- "inpaint" (ControlNet 1.1's inpaint model): the image in [0, 1] with the pixels to repaint (mask over one half)
  set to -1, as lllyasviel's gradio_inpaint.py and diffusers' make_inpaint_condition build it. A PNG cannot hold
  -1, so the file form is RGBA, transparent where masked, marked as an inpaint control image in its "ldm" text
  chunk; ldm.models.controlnet.Control turns those transparent pixels into -1 for the hint encoder.

Depth is not offered: every usable monocular depth estimator (MiDaS, DPT, ZoeDepth, Depth Anything) is a trained
network whose weights would have to be downloaded, and no classical no-download method gives depth a depth
ControlNet would accept. Everything here runs on the CPU, deterministic, with no trained weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.io.images import load_image

PREPROCESSORS = ("canny", "lineart", "scribble")  # edge maps: made from the image alone, also on the fly in training
IMAGE_TYPES = ("tile", "inpaint")  # the image itself, blurred or with a hole: inpaint needs a mask too
CONTROL_TYPES = PREPROCESSORS + IMAGE_TYPES
CANNY_LOW, CANNY_HIGH = 100.0, 200.0  # the original ControlNet's gradio demo defaults
TILE_FACTOR = 8  # lllyasviel's gradio_tile.py: the image at 1/8 of its size, then three pyrUps
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's and OpenCV's RGB -> grey
MASKED = -1.0  # what the inpaint ControlNet's hint holds at the pixels to repaint
INPAINT_MARK = {"control": "inpaint"}  # the "ldm" PNG text chunk of an inpaint control image file

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def check_preprocessor(kind: str, known: tuple[str, ...] = PREPROCESSORS) -> None:
    if kind not in known:
        raise InvalidOptionError(f"unknown control image type {kind!r}; known: {', '.join(known)}")


def check_thresholds(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise InvalidOptionError(f"edge thresholds must satisfy 0 <= low <= high, got {low} and {high}")


def grey(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 1] -> [B, 1, H, W] luma on OpenCV's 0-255 scale (the thresholds' scale)."""
    weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True) * 255.0


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of [B, 1, H, W], borders replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def sobel(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gx, gy) of [B, 1, H, W], borders replicated."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    kx = _SOBEL_X.to(image.device).view(1, 1, 3, 3)
    return F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8, as OpenCV takes images."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).cpu().numpy())


def canny(images: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = 0.0) -> torch.Tensor:
    """cv2.Canny's edges of [B, 3, H, W] RGB in [0, 1] (as 8-bit RGB, the annotator's input): [B, 1, H, W] bool.
    `sigma` > 0 blurs first (cv2.Canny does not)."""
    check_thresholds(low, high)
    import cv2  # here, not at the top: OpenCV's import is paid by the commands that make control images alone

    maps = []
    for image in images:
        array = to_uint8(image)
        if sigma > 0:
            array = cv2.GaussianBlur(array, (0, 0), sigma)
        maps.append(torch.from_numpy(cv2.Canny(array, low, high) > 0))
    return torch.stack(maps)[:, None].to(images.device)


def check_tile_factor(factor: float) -> None:
    if not (math.isfinite(factor) and factor >= 1):
        raise InvalidOptionError(f"the tile factor must be a number of at least 1, got {factor}")


def tile(images: torch.Tensor, factor: float = TILE_FACTOR) -> torch.Tensor:
    """The tile ControlNet's image of [B, 3, H, W] in [0, 1]: taken down by `factor` (cv2.INTER_AREA), brought back
    up by cv2.pyrUp doublings while they fit, then to H x W exactly (bicubic): for factor 8 and sizes that are
    multiples of 8, exactly gradio_tile.py's 1/8 area resize and three pyrUps."""
    check_tile_factor(factor)
    import cv2

    out = []
    for image in images:
        array = to_uint8(image)
        height, width = array.shape[:2]
        size = (max(1, int(width / factor)), max(1, int(height / factor)))
        small = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
        while small.shape[0] * 2 <= height and small.shape[1] * 2 <= width:
            small = cv2.pyrUp(small)
        if small.shape[:2] != (height, width):
            small = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        out.append(torch.from_numpy(small).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out).to(images.device)


def inpaint_hint(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpaint ControlNet's hint: [B, 3, H, W] in [0, 1] with MASKED (-1) where `mask` ([B or 1, 1, H, W] or
    [H, W], 1 = repaint) is over one half, as diffusers' make_inpaint_condition and gradio_inpaint.py make it."""
    mask = mask.to(images.device, torch.float32)
    while mask.ndim < 4:
        mask = mask[None]
    if mask.shape[-2:] != images.shape[-2:]:
        raise InvalidOptionError(
            f"the inpaint mask is {mask.shape[-1]}x{mask.shape[-2]} px, the image {images.shape[-1]}x{images.shape[-2]}"
        )
    return torch.where(mask > 0.5, torch.full_like(images.float(), MASKED), images.float())


def control_images(
    images: torch.Tensor, kind: str = "canny", low: float = CANNY_LOW, high: float = CANNY_HIGH
) -> torch.Tensor:
    """Control images of a batch [B, 3, H, W] RGB in [0, 1]: [B, 3, H, W], edge maps in {0, 1} (white lines on
    black), tile images in [0, 1]. Inpaint control images need a mask: inpaint_hint."""
    check_preprocessor(kind, PREPROCESSORS + ("tile",))
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidOptionError(f"control images are made from [B, 3, H, W] RGB batches, got {list(images.shape)}")
    if kind == "tile":
        return tile(images)
    if kind == "canny":
        edges = canny(images, low, high)
    elif kind == "lineart":
        check_thresholds(low, high)
        gx, gy = sobel(blur(grey(images), 1.0))
        edges = (gx.abs() + gy.abs()) > low
    else:  # scribble
        edges = canny(images, low, high, sigma=2.0)
        edges = F.max_pool2d(edges.float(), 5, stride=1, padding=2) > 0
    return edges.float().expand(-1, 3, -1, -1).contiguous()


def _rgb_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image (transparency over white) -> [1, 3, H, W] in [0, 1]."""
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def control_image(
    image: Image.Image,
    kind: str = "canny",
    low: float = CANNY_LOW,
    high: float = CANNY_HIGH,
    mask: Image.Image | np.ndarray | None = None,
    factor: float = TILE_FACTOR,
) -> Image.Image:
    """The control image of a PIL image (transparency over white), of the same size: RGB; for "inpaint", which
    needs `mask` (white = repaint: a PIL image or [H, W] in [0, 1], at the image's size), RGBA, transparent where
    masked (see inpaint_control_pixels)."""
    check_preprocessor(kind, CONTROL_TYPES)
    batch = _rgb_tensor(image)
    if kind == "inpaint":
        if mask is None:
            raise InvalidOptionError("an inpaint control image needs a mask (white = repaint)")
        if isinstance(mask, Image.Image):
            mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        repaint = np.asarray(mask, dtype=np.float32) > 0.5
        if repaint.shape != (image.height, image.width):
            raise InvalidOptionError(
                f"the mask is {repaint.shape[-1]}x{repaint.shape[0]} px, the image {image.width}x{image.height}"
            )
        rgb = (batch[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        alpha = np.where(repaint, 0, 255).astype(np.uint8)[..., None]
        return Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")
    out = tile(batch, factor)[0] if kind == "tile" else control_images(batch, kind, low, high)[0]
    return Image.fromarray((out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


def is_inpaint_control(image: Image.Image) -> bool:
    """Whether a PIL image opened from a file is an inpaint control image (its "ldm" text chunk says so)."""
    try:
        return json.loads(image.info.get("ldm", "{}")) == INPAINT_MARK
    except (TypeError, ValueError):
        return False


def inpaint_control_pixels(image: Image.Image) -> torch.Tensor:
    """An inpaint control image (RGBA, transparent = repaint) -> [1, 3, H, W]: its RGB in [0, 1], MASKED (-1) where
    its alpha is under one half: the value the inpaint ControlNet's hint encoder was trained with there."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(rgba[..., :3]).permute(2, 0, 1)[None]
    repaint = torch.from_numpy(rgba[..., 3] < 0.5)[None, None]
    return inpaint_hint(pixels, repaint)


def read_control_image(path: str | Path) -> Image.Image:
    """A control image file as Control takes it: an inpaint control image as it is (RGBA, its mark kept), any other
    as RGB with transparency over white (ldm.io.images.load_image)."""
    image = load_image(path, mode="")
    return image if is_inpaint_control(image) else load_image(path)
