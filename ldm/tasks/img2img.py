"""Image-to-image: encode a picture, noise it to the strength's level, and sample back with a prompt.

strength 0 keeps the image (a VAE round trip), strength 1 ignores it (exactly txt2img with the
same seed); in between, higher strength keeps less of the input. A depth model (SD 2 depth) also reads a depth
map of the image (`depth_map`, ldm.tasks.depth).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.io.images import pil_to_tensor, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions, take_prompt_options
from ldm.models.seamless import seamless
from ldm.sampling.options import SamplingOptions
from ldm.sampling.precision import Precision, autocast
from ldm.sampling.samplers import check_strength, strength_steps
from ldm.tasks.base import Conditioning, check_task, resolve_options, sample_seeded
from ldm.tasks.depth import DepthMap, check_depth_map, with_depth
from ldm.tasks.editing import as_pil, fit_image, size_multiple
from ldm.tasks.prompts import prompt_conditioning, prompt_lists
from ldm.tasks.results import Generated, settings_of


def prepare_image(model: LatentDiffusion, image: Image.Image | str | Path) -> Image.Image:
    """The RGB input at the size it will be processed at (nearest multiple of the model's size step)."""
    return fit_image(as_pil(image).convert("RGB"), size_multiple(model))


def prepare(
    model: LatentDiffusion,
    prompts: list[str],
    negatives: list[str],
    options: SamplingOptions | None = None,
    size: tuple[int, int] | None = None,
    prompting: PromptOptions | None = None,
) -> Conditioning:
    """img2img's conditioning is txt2img's: the prompts alone, read as `prompting` says (the image enters as the
    start latent); for SDXL the vector of the image's `size` (height, width)."""
    steps = options.steps if options is not None else defaults.STEPS
    return prompt_conditioning(model, prompts, negatives, prompting, steps, size)


@torch.no_grad()
def img2img(
    model: LatentDiffusion,
    image: Image.Image | str | Path,
    prompt: str | list[str],
    strength: float = defaults.STRENGTH["img2img"],
    negative_prompt: str | list[str] = "",
    seed: int = defaults.SEED,
    options: SamplingOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
    first_pass_steps: int | None = None,
    depth_map: DepthMap | None = None,
    **option_overrides: Any,
) -> Generated:
    """One image per prompt, all from the same input; image i uses seed + i.

    The output has the input's size rounded to a multiple of 8 (a log line says when it differs). Keyword options
    are txt2img's (sampling options and how prompts are read); precision: the autocast, as txt2img's.
    first_pass_steps: this run is the hires fix's second pass after a first pass of that many steps
    (`img2img_latents`). depth_map: a depth model's depth map of the image (needed by one, refused by any other):
    an image or its file (grey, brighter nearer), an array or a tensor (ldm.tasks.depth).
    """
    check_strength(strength)
    check_task(model, "img2img")
    check_depth_map(model, depth_map)  # before the encoder runs
    prompting = take_prompt_options(option_overrides)
    options = resolve_options(options, option_overrides, model=model)  # checked before the encoder runs
    pixels = pil_to_tensor(prepare_image(model, image)).to(model.device)
    with seamless(model, options.tiling), autocast(model.device, precision):
        x0 = model.encode_image(pixels).float()
    return img2img_latents(
        model,
        x0,
        prompt,
        strength,
        negative_prompt,
        seed,
        options,
        callback,
        progress,
        precision,
        first_pass_steps,
        depth_map,
        prompt_options=prompting,
    )


@torch.no_grad()
def img2img_latents(
    model: LatentDiffusion,
    latents: torch.Tensor,
    prompt: str | list[str],
    strength: float = defaults.STRENGTH["img2img"],
    negative_prompt: str | list[str] = "",
    seed: int = defaults.SEED,
    options: SamplingOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
    first_pass_steps: int | None = None,
    depth_map: DepthMap | None = None,
    **option_overrides: Any,
) -> Generated:
    """img2img from a clean latent [1, C, h, w] (the image already encoded, or a latent made otherwise: the hires
    fix's upscaled one, ldm.tasks.hires); one image per prompt, image i uses seed + i.

    first_pass_steps: this run is the hires fix's second pass after a txt2img of that many steps, so prompt editing
    reads it as A1111's hires pass (ldm.models.prompt_schedule.texts_by_step: integer `when`s count on from the
    first pass, fractions from 1.0 up address this pass). The schedule is made over the floor(strength * steps)
    steps this run takes, step 0 the first one run: the hires fix sets steps and strength so that these are all of
    its requested steps, as A1111's hires pass runs them (ldm.tasks.hires.hires_grid).
    depth_map: as img2img's."""
    check_strength(strength)
    check_task(model, "img2img")
    prompting = take_prompt_options(option_overrides)
    precision = Precision.of(precision)
    options = resolve_options(options, option_overrides, model=model)
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    height, width = (side * model.downscale for side in latents.shape[-2:])
    if first_pass_steps is None:
        conditioning = prepare(model, prompts, negatives, options, size=(height, width), prompting=prompting)
    else:
        if isinstance(first_pass_steps, bool) or not isinstance(first_pass_steps, int) or first_pass_steps < 1:
            raise InvalidOptionError(f"first_pass_steps must be a whole number >= 1, got {first_pass_steps!r}")
        run_steps = max(1, strength_steps(options.steps, strength))  # none run at all: any one schedule serves
        conditioning = prompt_conditioning(
            model, prompts, negatives, prompting, first_pass_steps, (height, width), hires_steps=run_steps
        )
    conditioning = with_depth(model, conditioning, depth_map, latents.expand(len(prompts), -1, -1, -1))
    with seamless(model, options.tiling), autocast(model.device, precision):
        x0 = latents.to(model.device).float().expand(len(prompts), -1, -1, -1)
        sampled = sample_seeded(
            model,
            conditioning,
            options,
            seed,
            x0.shape,
            x0=x0,
            strength=strength,
            callback=callback,
            progress=progress,
            precision=precision,
        )
        images = model.decode_latent(sampled)
    return Generated(
        tensor_to_pil(images),
        settings_of(
            "img2img",
            options,
            model,
            prompts,
            negatives,
            precision,
            prompting=prompting,
            seed=seed,
            strength=strength,
            height=height,
            width=width,
        ),
    )
