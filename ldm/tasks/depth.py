"""SD 2 depth-to-image: img2img whose U-Net also reads a depth map, [noisy latent 4, depth 1] in 5 channels.

The depth map is the user's: a grayscale image of the scene, brighter where nearer (MiDaS's relative inverse depth,
which the model was trained on; any affine scale of it gives the same input). The checkpoint's own MiDaS estimator
(`depth_model.*`) is not run, and nothing is downloaded for it. The map is prepared as the reference's depth2img
scripts (Stability-AI/stablediffusion, LatentDepth2ImageDiffusion) and diffusers' StableDiffusionDepth2ImgPipeline
prepare theirs: resized bicubically (align_corners False) to the latent's size, then each image's map scaled by its
own minimum and maximum to [-1, 1], 2 (d - min) / (max - min) - 1. It enters both sides of guidance alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.io.images import load_image
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.tasks.base import Conditioning, EditingError

DepthMap = Image.Image | str | Path | np.ndarray | torch.Tensor
FLAT = 1e-5  # a map whose range is at most this fraction of its magnitude holds no depth


class DepthMapError(EditingError):
    """A depth map that is missing, not wanted by the model, or unusable."""


def is_depth_model(model: LatentDiffusion) -> bool:
    """The kind whose extra input serves img2img (ldm.models.latent_diffusion.CONDITIONING): the depth map."""
    return model.kind.concat and model.kind.task == "img2img"


def check_depth_map(model: LatentDiffusion, depth_map: DepthMap | None) -> None:
    """Refuse, in one line, a depth model without a depth map and a depth map for any other model."""
    if is_depth_model(model) and depth_map is None:
        raise DepthMapError(
            "this depth model needs --depth-map DEPTH.png (depth_map= in Python): a grayscale depth map of the image, "
            "brighter nearer; the file's MiDaS estimator is not run here"
        )
    if depth_map is not None and not is_depth_model(model):
        raise DepthMapError(
            f"--depth-map needs a depth model (SD 2 depth, v2-midas-inference.yaml), not a "
            f"{model.conditioning_key!r} model ({model.kind.name})"
        )


def load_depth_map(depth_map: DepthMap) -> torch.Tensor:
    """A depth map as floats [1, 1, H, W]: an image or its file (read as grey: 16-bit grey scaled to 8 bits), a 2-D
    array, or a tensor [H, W], [1, H, W] or [1, 1, H, W] as it is."""
    if isinstance(depth_map, torch.Tensor):
        depth = depth_map.detach().float()
    elif isinstance(depth_map, np.ndarray):
        depth = torch.from_numpy(np.asarray(depth_map, dtype=np.float32))
    elif isinstance(depth_map, (str, Path)):
        depth = torch.from_numpy(np.asarray(load_image(depth_map, "L"), dtype=np.float32))
    elif isinstance(depth_map, Image.Image):
        depth = torch.from_numpy(np.asarray(depth_map.convert("L"), dtype=np.float32))
    else:
        raise DepthMapError(
            f"a depth map must be an image, a file, an array or a tensor, got {type(depth_map).__name__}"
        )
    while depth.ndim < 4:
        depth = depth[None]
    if depth.ndim != 4 or depth.shape[:2] != (1, 1) or min(depth.shape[-2:]) < 1:
        raise DepthMapError(f"a depth map must be one 2-D map [H, W], got shape {list(depth_map.shape)}")
    if not bool(torch.isfinite(depth).all()):
        raise DepthMapError("the depth map holds NaN or infinite values")
    return depth


def depth_condition(depth_map: DepthMap, latent_size: tuple[int, int]) -> torch.Tensor:
    """The U-Net's depth input [1, 1, h, w] in [-1, 1]: the map resized bicubically to the latent size (h, w), then
    scaled by its own minimum and maximum. A map of one value everywhere has no depth and is refused."""
    depth = F.interpolate(load_depth_map(depth_map), size=tuple(latent_size), mode="bicubic", align_corners=False)
    low, high = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    # Resizing a flat map leaves float rounding (~1e-7 of it), which the scaling would blow up to [-1, 1]: not depth.
    if bool((high - low <= FLAT * torch.maximum(high.abs(), low.abs())).any()):
        raise DepthMapError("the depth map holds one value everywhere; give one with near and far parts")
    return 2 * (depth - low) / (high - low) - 1


def with_depth(
    model: LatentDiffusion, conditioning: Conditioning, depth_map: DepthMap | None, latents: torch.Tensor
) -> Conditioning:
    """img2img's conditioning with the depth input for a depth model (checked: `check_depth_map`); for any other
    model, without a depth map, the conditioning as it is. latents: the batch's [B, C, h, w]."""
    check_depth_map(model, depth_map)
    if depth_map is None:
        return conditioning
    depth = depth_condition(depth_map, tuple(latents.shape[-2:])).to(model.device)
    return conditioning.with_inputs(concat=depth.expand(latents.shape[0], -1, -1, -1))
