"""Control images for ControlNets, made from ordinary images: edge maps as white lines on black, the form
lllyasviel's canny / scribble / lineart ControlNets are trained on.

- "canny": Canny's detector (Canny 1986) as OpenCV's cv2.Canny computes it (which the original ControlNet's
  annotator calls with thresholds 100 and 200): 3x3 Sobel gradients of the grey image (0-255), their L1
  magnitude |gx| + |gy|, non-maximum suppression along the gradient direction (quantised to 0, 45, 90, 135
  degrees), then hysteresis: pixels over `high` are edges, pixels over `low` are edges where connected to one.
  One pixel wide.
- "lineart": every pixel whose gradient magnitude, after a light blur (sigma 1), is over `low`: all the lines
  of a drawing, two or three pixels wide, with no thinning.
- "scribble": Canny's edges of a blurred image (sigma 2), thickened to about 5 pixels: what a quick user sketch
  looks like.

Depth is not offered: every usable monocular depth estimator (MiDaS, DPT, ZoeDepth, Depth Anything) is a trained
network whose weights would have to be downloaded, and no classical no-download method gives depth a depth
ControlNet would accept. Everything here is plain torch on the CPU, deterministic, with no trained weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.core.errors import InvalidOptionError

PREPROCESSORS = ("canny", "lineart", "scribble")
CANNY_LOW, CANNY_HIGH = 100.0, 200.0  # the original ControlNet's gradio demo defaults
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's and OpenCV's RGB -> grey

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def check_preprocessor(kind: str) -> None:
    if kind not in PREPROCESSORS:
        raise InvalidOptionError(f"unknown control image type {kind!r}; known: {', '.join(PREPROCESSORS)}")


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
    """(gx, gy) of [B, 1, H, W], borders replicated (OpenCV's Canny reflects; on 1-pixel borders the two differ)."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    kx = _SOBEL_X.to(image.device).view(1, 1, 3, 3)
    return F.conv2d(padded, kx), F.conv2d(padded, kx.transpose(-1, -2))


def _shifted(values: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """values[y + dy, x + dx] at (y, x), zero outside the image."""
    padded = F.pad(values, (1, 1, 1, 1))
    height, width = values.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


def thin(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Non-maximum suppression: True where the magnitude is a maximum across the edge (along the gradient,
    quantised to 4 directions); ties go to the first of the two pixels, as OpenCV's (> on one side, >= on the other)."""
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = (((angle + 22.5) // 45.0) % 4).long()  # 0: horizontal gradient, 1: 45 deg, 2: vertical, 3: 135 deg
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    # y grows downwards: a gradient at 45 degrees (gx > 0, gy > 0) points right and down.
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = _shifted(magnitude, dy, dx), _shifted(magnitude, -dy, -dx)
        keep |= (sector == index) & (magnitude > behind) & (magnitude >= ahead)
    return keep


def hysteresis(strong: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """The weak pixels 8-connected (through weak pixels) to a strong one, the strong ones included."""
    edges = strong & weak
    while True:
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny(images: torch.Tensor, low: float = CANNY_LOW, high: float = CANNY_HIGH, sigma: float = 0.0) -> torch.Tensor:
    """Canny's edges of [B, 3, H, W] RGB in [0, 1]: [B, 1, H, W] bool. `sigma` > 0 blurs first (cv2.Canny does not)."""
    check_thresholds(low, high)
    image = grey(images)
    if sigma > 0:
        image = blur(image, sigma)
    gx, gy = sobel(image)
    magnitude = gx.abs() + gy.abs()
    thinned = thin(magnitude, gx, gy)
    return hysteresis(thinned & (magnitude > high), thinned & (magnitude > low))


def control_images(
    images: torch.Tensor, kind: str = "canny", low: float = CANNY_LOW, high: float = CANNY_HIGH
) -> torch.Tensor:
    """Control images of a batch [B, 3, H, W] RGB in [0, 1]: [B, 3, H, W] in {0, 1}, white lines on black."""
    check_preprocessor(kind)
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidOptionError(f"control images are made from [B, 3, H, W] RGB batches, got {list(images.shape)}")
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


def control_image(
    image: Image.Image, kind: str = "canny", low: float = CANNY_LOW, high: float = CANNY_HIGH
) -> Image.Image:
    """The control image of a PIL image (transparency over white): an RGB image of the same size."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    batch = torch.from_numpy(array).permute(2, 0, 1)[None]
    out = control_images(batch, kind, low, high)[0]
    return Image.fromarray((out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")
