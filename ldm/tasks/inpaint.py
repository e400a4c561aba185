"""Inpainting and outpainting: repaint the white area of a mask, keep the rest.

Two modes:
- "model": a dedicated inpainting model (conditioning_key "hybrid", SD 2 inpainting). Its U-Net
  sees [noisy latent, mask at latent size, latent of the image with the hole greyed out].
- "blend": any text-to-image model. Before every denoiser call the known region of x is replaced
  by the original latent re-noised to the current sigma, and the prediction there by the
  original latent, so the sampler only invents the hole, consistent with its surroundings.
Both end with a pixel-space paste-back of the kept area through a feathered mask, so kept
pixels come back exactly and the seam is soft.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.core import defaults
from ldm.core.masks import EmptyMaskError, border_mask, check_mask, feather, mask_from_image
from ldm.io.images import InvalidImageError, load_image, pil_to_tensor, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions, take_prompt_options
from ldm.models.seamless import seamless
from ldm.sampling.options import SamplingOptions
from ldm.sampling.precision import Precision, autocast
from ldm.sampling.samplers import check_strength
from ldm.tasks.base import Conditioning, EditingError, check_task, resolve_options
from ldm.tasks.editing import as_pil, expand_batch, fit_image, size_multiple
from ldm.tasks.inpaint_area import crop_box, crop_inputs, paste_back, processing_size
from ldm.tasks.prompts import prompt_conditioning, prompt_lists
from ldm.tasks.results import Generated, Settings, settings_of
from ldm.tasks.sdxl_handoff import (
    DEFAULT_SWITCH,
    RefinerError,
    SDXLMicro,
    check_sdxl_options,
    refiner_record,
    sample_handed_off,
)

log = logging.getLogger("ldm")

INPAINT_MODES = ("auto", "model", "blend")
SIDES = ("left", "right", "top", "bottom")


class InpaintModeError(EditingError):
    pass


def resolve_mode(model: LatentDiffusion, mode: str = "auto") -> str:
    """ "model" for a dedicated inpainting model, "blend" for any other text-to-image model."""
    if mode not in INPAINT_MODES:
        raise InpaintModeError(f"unknown inpainting mode {mode!r}; known: {', '.join(INPAINT_MODES)}")
    check_task(model, "inpaint")
    dedicated = model.kind.concat
    if mode == "model" and not dedicated:
        raise InpaintModeError("mode 'model' needs an inpainting model (conditioning_key hybrid); use mode 'blend'")
    if mode == "auto":
        return "model" if dedicated else "blend"
    return mode


def as_mask(mask: Image.Image | str | Path | np.ndarray) -> np.ndarray:
    """[H, W] float mask in [0, 1] from a PIL image, a file (L, RGB or RGBA alpha) or an array."""
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2:
            raise InvalidImageError(f"a mask array must be 2-D [H, W], got shape {mask.shape}")
        return mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    if isinstance(mask, (str, Path)):
        mask = load_image(mask, "RGBA")  # RGBA keeps the alpha; L and RGB come back opaque
    return mask_from_image(mask)


class BlendDenoiser:
    """Task wrapper: the known latents follow the original image's noising trajectory.

    Before the inner denoiser runs, x in the known region is replaced by x0 + sigma * noise (the start
    noise); its prediction there is replaced by x0. Under guidance, so both halves see the same blend.
    """

    def __init__(self, inner: Callable, x0: torch.Tensor, noise: torch.Tensor, keep: torch.Tensor):
        self.inner, self.x0, self.noise, self.keep = inner, x0, noise, keep

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        b = x.shape[0]
        x0, noise, keep = (expand_batch(t, b) for t in (self.x0, self.noise, self.keep))
        s = sigma.reshape(-1, 1, 1, 1) if sigma.numel() == b else sigma.reshape(1, 1, 1, 1).expand(b, 1, 1, 1)
        x = torch.lerp(x, x0 + s.to(x.dtype) * noise, keep)
        denoised = self.inner(x, sigma, **kwargs)
        return torch.lerp(denoised, x0.to(denoised.dtype), keep.to(denoised.dtype))


def masked_image_condition(
    model: LatentDiffusion, images: torch.Tensor, masks: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The inpainting U-Net's extra input [mask at latent size, latent of the image with the hole greyed out].

    As SD 2 inpainting was trained: the hole (mask >= 0.5) is 0 in [-1, 1], the mask resized nearest. Built here
    for inference and for training (ldm.training.editing) alike. images [B, 3, H, W], masks [B, 1, H, W] binary.
    """
    masked = model.encode_image(images * (masks < 0.5))
    return torch.cat([F.interpolate(masks, size=masked.shape[-2:]), masked.to(dtype)], 1)


def prepare(
    model: LatentDiffusion,
    prompts: list[str],
    negatives: list[str],
    mode: str,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    x0: torch.Tensor,
    options: SamplingOptions | None = None,
    prompting: PromptOptions | None = None,
    micro: SDXLMicro | None = None,
) -> Conditioning:
    """Inpainting's conditioning: the prompts (read as `prompting` says; an SDXL model's micro-conditionings `micro`),
    plus the masked image for an inpainting model ("model") or the blend of the known latents for any other
    ("blend")."""
    steps = options.steps if options is not None else defaults.STEPS
    size = tuple(pixels.shape[-2:])
    sides = None if micro is None else micro.sides(*size)
    conditioning = prompt_conditioning(model, prompts, negatives, prompting, steps, size, micro=sides)
    if model.kind.concat:
        concat = masked_image_condition(model, pixels, mask).expand(len(prompts), -1, -1, -1)
        conditioning = conditioning.with_inputs(concat=concat)
    if mode == "blend":
        # A latent pixel is known only if none of its image pixels is to be repainted.
        keep = 1 - F.max_pool2d(mask, model.downscale)
        conditioning = replace(conditioning, wrap=lambda den, noise: BlendDenoiser(den, x0, noise, keep))
    return conditioning


def _prepare(
    model: LatentDiffusion, image: Image.Image | str | Path, mask: Image.Image | str | Path | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels [1, 3, H, W] in [-1, 1], binary mask [1, 1, H, W]) at the processing size."""
    img = as_pil(image).convert("RGB")
    m = as_mask(mask)
    check_mask(m, img.size)
    img = fit_image(img, size_multiple(model))
    if img.size != (m.shape[1], m.shape[0]):
        m = np.asarray(Image.fromarray(m).resize(img.size, Image.Resampling.BILINEAR), dtype=np.float32)
        if not (m >= 0.5).any():
            raise EmptyMaskError("the mask vanished when resized to the processing size; paint a larger area")
    pixels = pil_to_tensor(img).to(model.device)
    return pixels, torch.from_numpy((m >= 0.5).astype(np.float32))[None, None].to(model.device)


@torch.no_grad()
def inpaint(
    model: LatentDiffusion,
    image: Image.Image | str | Path,
    mask: Image.Image | str | Path | np.ndarray,
    prompt: str | list[str],
    negative_prompt: str | list[str] = "",
    seed: int = defaults.SEED,
    strength: float = defaults.STRENGTH["inpaint"],
    mode: str = "auto",
    feather_radius: int | None = None,
    options: SamplingOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
    inpaint_area: str = defaults.INPAINT_AREA,
    mask_padding: int = defaults.MASK_PADDING,
    refiner: LatentDiffusion | None = None,
    switch: float = DEFAULT_SWITCH,
    micro: SDXLMicro | None = None,
    refiner_micro: SDXLMicro | None = None,
    **option_overrides: Any,
) -> Generated:
    """Repaint the mask's white area (>= 0.5) of `image` following the prompt; image i uses seed + i.

    strength < 1 starts the hole from the noised original instead of pure noise. `feather_radius`
    (px, default: the VAE's downscale factor) softens the paste-back edge inside the hole.
    `resolve_mode(model, mode)` tells which mode runs. Keyword options are txt2img's (sampling options and how
    prompts are read); precision: the autocast, as txt2img's. inpaint_area "masked"
    (A1111's "Only masked"): only a crop around the mask (`mask_padding` px of context, grown to the model's square)
    is inpainted, at the model's own size, and pasted back into the image at its own size (ldm.tasks.inpaint_area);
    "whole": the whole image. SDXL models take img2img's `micro`, `refiner`, `switch` and `refiner_micro`: the
    refiner (a text-to-image model, so it blends the known area) finishes below the switch and decodes.
    """
    check_strength(strength)
    precision = Precision.of(precision)
    mode = resolve_mode(model, mode)
    check_sdxl_options(model, micro, refiner, switch, refiner_micro)
    handing = {"refiner": refiner, "switch": switch, "micro": micro, "refiner_micro": refiner_micro}
    if inpaint_area not in defaults.INPAINT_AREAS:
        raise EditingError(f"unknown inpaint area {inpaint_area!r}; known: {', '.join(defaults.INPAINT_AREAS)}")
    if inpaint_area == "masked":
        inner = (negative_prompt, seed, strength, mode, feather_radius, options, callback, progress, precision)
        return inpaint_masked_area(model, image, mask, prompt, mask_padding, *inner, **handing, **option_overrides)
    prompting = take_prompt_options(option_overrides)
    options = resolve_options(options, option_overrides, model=model)
    if refiner is not None and options.tiling:
        raise RefinerError("the refiner hand-off is not implemented with seamless tiling")
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    pixels, m = _prepare(model, image, mask)
    radius = model.downscale if feather_radius is None else int(feather_radius)
    longest = max(pixels.shape[-2:])
    if not 0 <= radius <= longest:  # a wider ramp means nothing, and its blur kernel grows with the square
        raise EditingError(f"feather must be in [0, {longest}] px (the image's longer side), got {radius}")
    n = len(prompts)
    with seamless(model, options.tiling), autocast(model.device, precision):
        x0 = model.encode_image(pixels).float()
        conditioning = prepare(model, prompts, negatives, mode, pixels, m, x0, options, prompting, micro)
        handed = {}
        if refiner is not None:  # its own latent of the image to blend, as diffusers' refiner inpainting pipeline
            refiner_micro = refiner_micro or micro or SDXLMicro()
            known = refiner.encode_image(pixels).float()
            refined = prepare(refiner, prompts, negatives, "blend", pixels, m, known, options, prompting, refiner_micro)
            handed = {"refiner": refiner, "refiner_conditioning": refined, "switch": switch}
        start = x0.expand(n, -1, -1, -1)
        latents, refiner_steps = sample_handed_off(
            model, conditioning, options, seed, start, strength, **handed, callback=callback, progress=progress,
            precision=precision,
        )  # fmt: skip
        decoded = (refiner or model).decode_latent(latents).float()
    record = {**(micro.record() if micro is not None else {})}
    if refiner is not None:
        record.update(refiner_record(refiner, switch, refiner_steps, refiner_micro))
    soft = feather(m, radius)
    out = decoded.clamp(-1, 1) * soft + pixels * (1 - soft)
    return Generated(
        tensor_to_pil(out),
        settings_of(
            "inpaint",
            options,
            model,
            prompts,
            negatives,
            precision,
            prompting=prompting,
            seed=seed,
            strength=strength,
            inpaint_mode=mode,
            feather_radius=radius,
            height=pixels.shape[-2],
            width=pixels.shape[-1],
            **record,
        ),
    )


def inpaint_masked_area(
    model: LatentDiffusion,
    image: Image.Image | str | Path,
    mask: Image.Image | str | Path | np.ndarray,
    prompt: str | list[str],
    mask_padding: int,
    negative_prompt: str | list[str],
    seed: int,
    strength: float,
    mode: str,
    feather_radius: int | None,
    options: SamplingOptions | None,
    callback: Callable[[dict], None] | None,
    progress: bool,
    precision: str | Precision,
    **option_overrides: Any,
) -> Generated:
    """`inpaint` of the crop around the mask at the model's size, pasted back through the mask feathered inward
    (`feather_radius` px of the image, default: the VAE's factor at the crop's scale); the image keeps its size."""
    img = as_pil(image).convert("RGB")
    m = as_mask(mask)
    check_mask(m, img.size)
    box = crop_box(m, mask_padding, aspect=1.0)  # the models here are trained on squares
    size = processing_size(box, model.default_image_size, size_multiple(model))
    crop, crop_mask = crop_inputs(img, m, box, size)
    made = inpaint(
        model, crop, crop_mask, prompt, negative_prompt, seed, strength, mode, 0, options, callback, progress,
        precision, **option_overrides,
    )  # fmt: skip
    scale = (box[2] - box[0]) / size[1]
    radius = max(1, round(model.downscale * scale)) if feather_radius is None else int(feather_radius)
    if not 0 <= radius <= max(img.size):
        raise EditingError(f"feather must be in [0, {max(img.size)}] px (the image's longer side), got {radius}")
    out = paste_back(pil_to_tensor(img).to(model.device), list(made), m, box, radius)
    area = {"feather_radius": radius, "height": img.height, "width": img.width, "inpaint_area": "masked"}
    settings = Settings(
        {**made.settings, **area, "mask_padding": mask_padding}, made.settings.prompts, made.settings.negatives
    )
    return Generated(tensor_to_pil(out), settings)


def parse_extend(spec: str) -> dict[str, int]:
    """ "left=64,right=32" -> {"left": 64, "right": 32, "top": 0, "bottom": 0}."""
    sides = dict.fromkeys(SIDES, 0)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in sides or not value.strip().isdigit():
            raise EditingError(f"bad --extend entry {part!r}; use e.g. left=64,right=64 (sides: {', '.join(SIDES)})")
        sides[name.strip()] = int(value)
    if not any(sides.values()):
        raise EditingError("nothing to extend: give at least one side a positive width, e.g. right=64")
    return sides


def extend_canvas(
    image: Image.Image, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, multiple: int = 8, seed: int = 0
) -> tuple[Image.Image, np.ndarray, dict[str, int]]:
    """(larger canvas, mask of the new area, the widths actually added).

    The new area holds the edge colours smeared outward plus noise: a neutral start that matches
    the image's palette. The canvas is grown (never resized) to a multiple of `multiple`, so the
    original pixels stay exactly in place; extra pixels go to an extended side (right/bottom first).
    """
    if min(left, right, top, bottom) < 0:
        raise EditingError("extension widths must be >= 0")
    if not any((left, right, top, bottom)):
        raise EditingError("nothing to extend: give at least one side a positive width")
    w, h = image.size
    pad = {"left": left, "right": right, "top": top, "bottom": bottom}
    for total, (first, second) in ((w + left + right, ("right", "left")), (h + top + bottom, ("bottom", "top"))):
        extra = -total % multiple
        if extra:
            side = first if pad[first] or not pad[second] else second
            pad[side] += extra
    if pad != {"left": left, "right": right, "top": top, "bottom": bottom}:
        log.info("extended by %s so the canvas is a multiple of %d", pad, multiple)
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    arr = np.pad(arr, ((pad["top"], pad["bottom"]), (pad["left"], pad["right"]), (0, 0)), mode="edge")
    mask = border_mask(arr.shape[0], arr.shape[1], pad["left"], pad["right"], pad["top"], pad["bottom"])
    noise = np.random.default_rng(seed).normal(0, 24.0, arr.shape).astype(np.float32)
    arr = np.clip(arr + noise * mask[..., None] + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr), mask, pad


def outpaint(
    model: LatentDiffusion,
    image: Image.Image | str | Path,
    prompt: str | list[str],
    left: int = 0,
    right: int = 0,
    top: int = 0,
    bottom: int = 0,
    negative_prompt: str | list[str] = "",
    seed: int = defaults.SEED,
    **inpaint_kwargs: Any,
) -> Generated:
    """Extend the canvas on the chosen sides by that many pixels and inpaint the new area; the settings say so
    (task "outpaint", `extend`), as `ldm outpaint` writes them."""
    canvas, mask, added = extend_canvas(as_pil(image), left, right, top, bottom, size_multiple(model), seed)
    made = inpaint(model, canvas, mask, prompt, negative_prompt, seed, **inpaint_kwargs)
    made.settings.update(outpaint_record(added))
    return made


def outpaint_record(added: dict[str, int]) -> dict[str, str]:
    """What an outpainting's settings add to inpaint's: its task, and the pixels added per side ("left=64,top=32")."""
    return {"task": "outpaint", "extend": ",".join(f"{k}={v}" for k, v in added.items() if v)}
