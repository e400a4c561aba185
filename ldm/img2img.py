"""Image-to-image: encode a picture, noise it to the strength's level, and sample back with a prompt.

strength 0 keeps the image (a VAE round trip), strength 1 ignores it (exactly txt2img with the
same seed); in between, higher strength keeps less of the input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ldm.editing import (WrongModelError, as_pil, check_strength, fit_image, prompt_lists, resolve_options,
                         sample_from, size_multiple)
from ldm.images import pil_to_tensor, tensor_to_pil
from ldm.model import LatentDiffusion
from ldm.pipeline import SamplingOptions, autocast, prompt_conditions


def prepare_image(model: LatentDiffusion, image: Image.Image | str | Path) -> Image.Image:
    """The RGB input at the size it will be processed at (nearest multiple of the model's size step)."""
    return fit_image(as_pil(image).convert("RGB"), size_multiple(model))


@torch.no_grad()
def img2img(model: LatentDiffusion, image: Image.Image | str | Path, prompt: str | list[str], strength: float = 0.75,
            negative_prompt: str | list[str] = "", seed: int = 0, options: SamplingOptions | None = None,
            callback: Callable[[dict], None] | None = None, progress: bool = True,
            **option_overrides: Any) -> list[Image.Image]:
    """One image per prompt, all from the same input; image i uses seed + i.

    The output has the input's size rounded to a multiple of 8 (a log line says when it differs).
    """
    check_strength(strength)
    if model.conditioning_key != "crossattn":
        raise WrongModelError(f"img2img needs a text-to-image model, not a {model.conditioning_key!r} one "
                              "(use inpaint for inpainting models, upscale for the upscaler)")
    options = resolve_options(options, option_overrides)
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    pixels = pil_to_tensor(prepare_image(model, image)).to(model.device)
    cond, uncond = prompt_conditions(model, prompts, negatives)
    with autocast(model.device, options.precision):
        x0 = model.encode_image(pixels).float().expand(len(prompts), -1, -1, -1)
        latents = sample_from(model, x0, strength, cond, uncond, options, seed, callback, progress)
        images = model.decode_latent(latents)
    return tensor_to_pil(images)
