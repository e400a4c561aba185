"""x4 super-resolution with the SD x4-upscaler layout, tiled so big images fit.

The upscaler's latent has the low-res image's size (an f=4 VAE makes the output 4x): the
U-Net sees [noisy latent, low-res RGB] and a noise-level label `y`. The low-res image is noised
to that level first (`model.low_scale`), as in training: higher levels let the model invent
more detail and forgive artefacts in the input.

Big images are processed in overlapping tiles: at *every* denoiser call the latent is split
into tiles, each tile is denoised with its piece of the low-res image, and the predictions are
blended with feathered weights (as in MultiDiffusion). Since all tiles agree on one latent at
every step, there is no seam to hide afterwards. The VAE decodes in tiles the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.core import defaults
from ldm.io.images import pil_to_tensor, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions, take_prompt_options
from ldm.models.tiling import blend_tiles, tile_starts
from ldm.sampling.options import SamplingOptions
from ldm.sampling.precision import Precision, autocast
from ldm.tasks.base import Conditioning, EditingError, check_task, resolve_options, sample_seeded
from ldm.tasks.editing import ImageTooSmallError, as_pil, expand_batch
from ldm.tasks.prompts import prompt_conditioning, prompt_lists
from ldm.tasks.results import Generated, settings_of

log = logging.getLogger("ldm")

# What the reference demo and diffusers use for the x4 upscaler.
MIN_SIZE = 8


class NoiseLevelError(EditingError):
    pass


class TileError(EditingError):
    pass


class BackProjectionError(EditingError):
    pass


def tiled_map(
    fn: Callable[[int, int, int, int], torch.Tensor],
    height: int,
    width: int,
    tile: int,
    overlap: int,
    scale: int = 1,
    norms: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Blend fn(y0, y1, x0, x1) over overlapping tiles of a height x width grid (ldm.models.tiling.blend_tiles).

    fn returns the tile's result at `scale` times its size; results are averaged with weights that
    fade linearly across each overlap, so a tile's border never shows as a step. `norms`: the network fn runs,
    whose group norms then share their statistics across the tiles.
    """
    if not 0 <= overlap < tile:
        raise TileError(f"tile overlap must be in [0, tile size {tile}), got {overlap}")
    return blend_tiles(
        lambda rows, cols: fn(rows.start, min(rows.stop, height), cols.start, min(cols.stop, width)),
        height,
        width,
        tile,
        overlap,
        scale,
        feather="nominal",
        norms=norms,
    )


class TiledDenoiser:
    """Task wrapper: runs a denoiser tile by tile when the latent is bigger than a tile (`concat` is cut alike).

    Under guidance, so each tile's conditional and unconditional predictions come from one call.
    """

    def __init__(self, inner: Callable, tile: int, overlap: int):
        self.inner, self.tile, self.overlap = inner, tile, overlap

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, concat: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h <= self.tile and w <= self.tile:
            return self.inner(x, sigma, concat=concat, **kwargs)
        concat = None if concat is None else expand_batch(concat, x.shape[0])

        def one(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            c = None if concat is None else concat[..., y0:y1, x0:x1]
            return self.inner(x[..., y0:y1, x0:x1], sigma, concat=c, **kwargs)

        return tiled_map(one, h, w, self.tile, self.overlap)


def decode_tiled(model: LatentDiffusion, latents: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """VAE decode, in blended tiles when the latent is bigger than a tile (decoder memory grows with area)."""
    h, w = latents.shape[-2:]
    if h <= tile and w <= tile:
        return model.decode_latent(latents)

    def one(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return model.decode_latent(latents[..., y0:y1, x0:x1])

    # The decoder's group norms share their statistics across the tiles (ldm.models.tiling.SharedGroupNormStats): a
    # first pass gathers them, the second decodes. Normalised tile by tile, each tile of a photo came out in its own
    # colours.
    return tiled_map(one, h, w, tile, overlap, scale=model.downscale, norms=model.vae)


def back_project(images: torch.Tensor, low: torch.Tensor, factor: int, iterations: int) -> torch.Tensor:
    """Iterative back-projection (Irani & Peleg, 1991): pull the output towards the one whose x`factor` shrink is
    the low-res input, keeping the detail that the model invented on top of it. Pixels in [-1, 1]:

        x <- clamp(x + up(low - down(x)))      (down: antialiased bicubic, as images are shrunk; up: bicubic)

    A diffusion upscaler's sample is one plausible image, not the closest one: its colours drift and grain
    appears where the model is unsure. Shrunk again, it should give back its input; this makes it do so.
    """
    import torch.nn.functional as F

    x, low = images.float(), low.float().to(images.device)
    for _ in range(iterations):
        down = F.interpolate(x, size=low.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
        x = (x + F.interpolate(low - down, size=x.shape[-2:], mode="bicubic", align_corners=False)).clamp(-1, 1)
    return x


def check_upscaler(model: LatentDiffusion) -> None:
    check_task(model, "upscale")


def low_res_condition(
    model: LatentDiffusion,
    low: torch.Tensor,
    noise_level: int | torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The upscaler U-Net's extra inputs: {"concat": the low-res image [B, 3, h, w] noised to the level,
    "y": that level [B]}. A level of None draws one per image (training); built here for inference and for
    training (ldm.training.editing) alike."""
    augmented, level = model.low_scale(low, noise_level, generator=generator, noise=noise)
    return {"concat": augmented, "y": level}


def prepare(
    model: LatentDiffusion,
    prompts: list[str],
    negatives: list[str],
    low: torch.Tensor,
    noise_level: int,
    seed: int,
    tile: int,
    overlap: int,
    tiled: bool,
    options: SamplingOptions | None = None,
    prompting: PromptOptions | None = None,
) -> Conditioning:
    """The upscaler's conditioning: the prompts (read as `prompting` says), the noise-augmented low-res image and
    its level, and tiles when the image is bigger than one tile."""
    # Noise drawn on the CPU from the seed, so the augmentation is the same on any device.
    eps = torch.randn(low.shape, generator=torch.Generator().manual_seed(seed))
    n = len(prompts)
    inputs = low_res_condition(model, low, noise_level, noise=eps)
    steps = options.steps if options is not None else defaults.TASK_SAMPLING["upscale"]["steps"]
    conditioning = prompt_conditioning(model, prompts, negatives, prompting, steps).with_inputs(
        concat=inputs["concat"].expand(n, -1, -1, -1), y=inputs["y"].expand(n)
    )
    if tiled:
        conditioning = replace(conditioning, wrap=lambda den, noise: TiledDenoiser(den, tile, overlap))
    return conditioning


@torch.no_grad()
def upscale(
    model: LatentDiffusion,
    image: Image.Image | str | Path,
    prompt: str | list[str] = "",
    negative_prompt: str | list[str] = "",
    noise_level: int = defaults.NOISE_LEVEL,
    seed: int = defaults.SEED,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    options: SamplingOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    back_projection: int | None = None,
    precision: str | Precision = "fp32",
    **option_overrides: Any,
) -> Generated:
    """Upscale `image` by the VAE's factor (4 for SD x4), one result per prompt (image i uses seed + i).

    `noise_level` (0 .. the model's max, 350 for SD) noises the low-res input the model sees.
    `tile_size`/`tile_overlap` are in low-res pixels (default: the model's training size, a quarter
    of it overlapping); images that fit in one tile run untiled. `back_projection`: iterations of
    `back_project` on the result (None: the model's own, its config's `upscale: {back_projection: N}`; 0: none,
    as the reference SD code). Keyword options are txt2img's (sampling options and how prompts are
    read); precision: the autocast, as txt2img's.
    """
    check_upscaler(model)
    prompting = take_prompt_options(option_overrides)
    precision = Precision.of(precision)
    if back_projection is None:
        back_projection = int(model.upscale_defaults.get("back_projection", 0))
    if not isinstance(back_projection, int) or back_projection < 0:
        raise BackProjectionError(f"back projection must be a whole number of iterations >= 0, got {back_projection!r}")
    if not 0 <= noise_level <= model.low_scale.max_noise_level:
        raise NoiseLevelError(f"noise level must be in [0, {model.low_scale.max_noise_level}], got {noise_level}")
    tile = tile_size or model.image_size
    overlap = tile // 4 if tile_overlap is None else tile_overlap
    if tile < 8 or not 0 <= overlap < tile:
        raise TileError(f"tile size must be >= 8 and overlap in [0, tile size); got {tile} and {overlap}")
    options = resolve_options(options, option_overrides, "upscale", model=model)
    if options.tiling:  # its tiles would each wrap on their own edges: no seamless picture
        raise TileError("seamless tiling (tiling=) is for txt2img, img2img, inpaint and walk, not for upscaling")
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    img = as_pil(image).convert("RGB")
    if min(img.size) < MIN_SIZE:
        raise ImageTooSmallError(
            f"image {img.width}x{img.height} is too small to upscale: each side needs {MIN_SIZE} px"
        )
    low = pil_to_tensor(img).to(model.device)
    tiled = max(img.size) > tile
    if tiled:
        log.info(
            "upscaling %dx%d in %d tiles of %d px (overlap %d)",
            img.width,
            img.height,
            len(tile_starts(img.height, tile, overlap)) * len(tile_starts(img.width, tile, overlap)),
            tile,
            overlap,
        )
    conditioning = prepare(model, prompts, negatives, low, noise_level, seed, tile, overlap, tiled, options, prompting)
    # The latent has the low-res image's size; sampling starts from pure noise (there is no latent to noise).
    shape = (len(prompts), model.latent_channels, img.height, img.width)
    with autocast(model.device, precision):
        latents = sample_seeded(
            model, conditioning, options, seed, shape, callback=callback, progress=progress, precision=precision
        )
        images = decode_tiled(model, latents, tile, overlap)
    if back_projection:
        images = back_project(images, low, model.downscale, back_projection)
    settings = settings_of(
        "upscale",
        options,
        model,
        prompts,
        negatives,
        precision,
        prompting=prompting,
        seed=seed,
        noise_level=noise_level,
        tile_size=tile,
        tile_overlap=overlap,
        tiled=tiled,
        height=img.height * model.downscale,
        width=img.width * model.downscale,
        back_projection=back_projection,
    )
    return Generated(tensor_to_pil(images), settings)
