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
from ldm.tasks.base import Conditioning, check_task, resolve_options
from ldm.tasks.depth import DepthMap, check_depth_map, with_depth
from ldm.tasks.editing import as_pil, fit_image, size_multiple
from ldm.tasks.prompts import prompt_conditioning, prompt_lists
from ldm.tasks.results import Generated, settings_of
from ldm.tasks.sdxl_handoff import (
    DEFAULT_SWITCH,
    RefinerError,
    SDXLMicro,
    check_sdxl_options,
    refiner_record,
    sample_handed_off,
)


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
    micro: SDXLMicro | None = None,
) -> Conditioning:
    """img2img's conditioning is txt2img's: the prompts alone, read as `prompting` says (the image enters as the
    start latent); for SDXL the vector of the image's `size` (height, width) with the micro-conditionings `micro`."""
    steps = options.steps if options is not None else defaults.STEPS
    sides = None if micro is None else micro.sides(*(size or (model.default_image_size,) * 2))
    return prompt_conditioning(model, prompts, negatives, prompting, steps, size, micro=sides)


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
    refiner: LatentDiffusion | None = None,
    switch: float = DEFAULT_SWITCH,
    micro: SDXLMicro | None = None,
    refiner_micro: SDXLMicro | None = None,
    **option_overrides: Any,
) -> Generated:
    """One image per prompt, all from the same input; image i uses seed + i.

    The output has the input's size rounded to a multiple of 8 (a log line says when it differs). Keyword options
    are txt2img's (sampling options and how prompts are read); precision: the autocast, as txt2img's.
    first_pass_steps: this run is the hires fix's second pass after a first pass of that many steps
    (`img2img_latents`). depth_map: a depth model's depth map of the image (needed by one, refused by any other):
    an image or its file (grey, brighter nearer), an array or a tensor (ldm.tasks.depth).
    SDXL models take sdxl_txt2img's keywords (ldm.tasks.sdxl_handoff): `micro` (SDXLMicro: original size, crop,
    target size; default: the input's size, no crop), and `refiner`, which finishes below `switch` (a timestep
    fraction, as diffusers' denoising_end / denoising_start; the strength still picks the first step) with its own
    `refiner_micro` (default: `micro`, aesthetic scores 6 / 2.5) and decodes.
    """
    check_strength(strength)
    check_task(model, "img2img")
    check_depth_map(model, depth_map)  # before the encoder runs
    check_sdxl_options(model, micro, refiner, switch, refiner_micro)
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
        refiner=refiner,
        switch=switch,
        micro=micro,
        refiner_micro=refiner_micro,
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
    refiner: LatentDiffusion | None = None,
    switch: float = DEFAULT_SWITCH,
    micro: SDXLMicro | None = None,
    refiner_micro: SDXLMicro | None = None,
    **option_overrides: Any,
) -> Generated:
    """img2img from a clean latent [1, C, h, w] (the image already encoded, or a latent made otherwise: the hires
    fix's upscaled one, ldm.tasks.hires); one image per prompt, image i uses seed + i.

    first_pass_steps: this run is the hires fix's second pass after a txt2img of that many steps, so prompt editing
    reads it as A1111's hires pass (ldm.models.prompt_schedule.texts_by_step: integer `when`s count on from the
    first pass, fractions from 1.0 up address this pass). The schedule is made over the floor(strength * steps)
    steps this run takes, step 0 the first one run: the hires fix sets steps and strength so that these are all of
    its requested steps, as A1111's hires pass runs them (ldm.tasks.hires.hires_grid).
    depth_map, refiner, switch, micro, refiner_micro: as img2img's."""
    check_strength(strength)
    check_task(model, "img2img")
    check_sdxl_options(model, micro, refiner, switch, refiner_micro)
    prompting = take_prompt_options(option_overrides)
    precision = Precision.of(precision)
    options = resolve_options(options, option_overrides, model=model)
    if refiner is not None and (options.tiling or first_pass_steps is not None):
        raise RefinerError("the refiner hand-off is not implemented with seamless tiling or the hires fix")
    prompts, negatives = prompt_lists(prompt, negative_prompt)
    height, width = (side * model.downscale for side in latents.shape[-2:])
    sides = None if micro is None else micro.sides(height, width)
    if first_pass_steps is None:
        conditioning = prepare(model, prompts, negatives, options, (height, width), prompting, micro)
    else:
        if isinstance(first_pass_steps, bool) or not isinstance(first_pass_steps, int) or first_pass_steps < 1:
            raise InvalidOptionError(f"first_pass_steps must be a whole number >= 1, got {first_pass_steps!r}")
        run_steps = max(1, strength_steps(options.steps, strength))  # none run at all: any one schedule serves
        conditioning = prompt_conditioning(
            model, prompts, negatives, prompting, first_pass_steps, (height, width), hires_steps=run_steps, micro=sides
        )
    conditioning = with_depth(model, conditioning, depth_map, latents.expand(len(prompts), -1, -1, -1))
    handed = {}
    if refiner is not None:
        refiner_micro = refiner_micro or micro or SDXLMicro()
        refined = prepare(refiner, prompts, negatives, options, (height, width), prompting, refiner_micro)
        handed = {"refiner": refiner, "refiner_conditioning": refined, "switch": switch}
    with seamless(model, options.tiling), autocast(model.device, precision):
        x0 = latents.to(model.device).float().expand(len(prompts), -1, -1, -1)
        sampled, refiner_steps = sample_handed_off(
            model, conditioning, options, seed, x0, strength, **handed, callback=callback, progress=progress,
            precision=precision,
        )  # fmt: skip
        images = (refiner or model).decode_latent(sampled)
    record = {**(micro.record() if micro is not None else {})}
    if refiner is not None:
        record.update(refiner_record(refiner, switch, refiner_steps, refiner_micro))
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
            **record,
        ),
    )
