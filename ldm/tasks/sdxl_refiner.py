"""SDXL sampling with its micro-conditionings as options, and the base-to-refiner hand-off.

The hand-off follows diffusers' `denoising_end` / `denoising_start` (StableDiffusionXLPipeline and
StableDiffusionXLImg2ImgPipeline): `switch` is a fraction of the *training timesteps*, not of the steps. With
cutoff = round(T - switch * T) (T = 1000), the base runs the steps whose timestep t >= cutoff and hands its
still-noisy latent over; the refiner runs the remaining steps (t < cutoff) from there, with no noise added, and
its VAE decodes. Both models share SD's schedule, so the latent is handed over as it is, in sampler space.
img2img and inpainting take the same options (ldm.tasks.sdxl_handoff, where the pieces they share live).

A1111's "Refiner switch at" is a fraction of the *steps*: its sampler switches at the first step whose completed
ratio step / steps reaches it, so the base runs ceil(fraction * steps) steps. `switch_from_step_fraction` turns
that into the timestep fraction that makes the base run the same steps (used when reading A1111 metadata).

Micro-conditionings (ldm.models.sdxl_conditioning): original size, crop (top, left) and target size default to the
image's size and (0, 0); the refiner's aesthetic score 6.0, 2.5 on the unconditional side, as in sgm and diffusers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import timesteps_for
from ldm.io.images import tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions, take_prompt_options
from ldm.models.prompt_schedule import has_schedule
from ldm.models.sdxl_conditioning import sdxl_conditions
from ldm.sampling.options import SamplingOptions, sample, start_scale
from ldm.sampling.precision import Precision, autocast
from ldm.tasks.base import Conditioning, batch_noise, check_task, model_sigmas, resolve_options
from ldm.tasks.prompts import prompt_lists
from ldm.tasks.results import Generated, settings_of
from ldm.tasks.sdxl_handoff import (  # defined there for every task; named here too, where they were first
    DEFAULT_SWITCH,
    RefinerError,
    SDXLMicro,
    base_steps,
    check_switch,
    is_sdxl,
    refiner_record,
    sampler_space,
)
from ldm.tasks.txt2img import image_size


def switch_from_step_fraction(
    fraction: float, steps: int, num_timesteps: int = 1000, spacing: str = "leading"
) -> float:
    """A1111's "Refiner switch at" (a step fraction) as the timestep fraction that runs the same base steps:
    1 - t_last / T, where t_last is the timestep of the base's last step (so its cutoff is t_last)."""
    k = min(max(math.ceil(check_switch(fraction) * steps - 1e-9), 1), steps)
    t_last = float(timesteps_for(num_timesteps, steps, spacing)[k - 1])
    return min(max(1.0 - t_last / num_timesteps, 1e-6), 1 - 1e-6)


def with_refiner_switch(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings read from an A1111 text (ldm.io.infotext) with its "Refiner switch at" step fraction also as our
    timestep fraction (`refiner_switch`), which runs the same base steps; other settings are returned as they are."""
    fraction = settings.get("refiner_switch_at_steps")
    if fraction is None or settings.get("refiner_switch") is not None:
        return settings
    steps = int(settings.get("steps") or defaults.STEPS)
    return {**settings, "refiner_switch": switch_from_step_fraction(fraction, steps, spacing=defaults.SPACING)}


def sdxl_conditioning(
    model: LatentDiffusion,
    prompts: list[str],
    negatives: list[str],
    height: int,
    width: int,
    micro: SDXLMicro,
    prompting: PromptOptions | None = None,
) -> Conditioning:
    if not is_sdxl(model):
        raise RefinerError("micro-conditionings and the refiner are for SDXL models; this model is not one")
    chunking, emphasis = (prompting.long_prompts, prompting.emphasis) if prompting is not None else (False, False)
    sides = micro.sides(height, width)
    return Conditioning(
        *sdxl_conditions(model.text_encoder, prompts, negatives, height, width, sides, chunking, emphasis)
    )


@torch.no_grad()
def sdxl_txt2img(
    model: LatentDiffusion,
    prompts: list[str] | str,
    negative_prompt: str | list[str] = "",
    height: int | None = None,
    width: int | None = None,
    seed: int = defaults.SEED,
    options: SamplingOptions | None = None,
    refiner: LatentDiffusion | None = None,
    switch: float = DEFAULT_SWITCH,
    micro: SDXLMicro | None = None,
    refiner_micro: SDXLMicro | None = None,
    latents: torch.Tensor | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    output: str = "pil",
    precision: str | Precision = "fp32",
    **option_overrides: Any,
) -> Generated | torch.Tensor:
    """SDXL txt2img with micro-conditioning options and, with `refiner`, the hand-off at `switch` (module doc).

    micro / refiner_micro: each model's numbers (default SDXLMicro(): the image's size, no crop, scores 6 / 2.5).
    latents: the unit start noise, as diffusers' `latents`. output "latent": the final latents, not decoded.
    precision: the autocast, as txt2img's."""
    check_task(model, "txt2img")
    prompting = take_prompt_options(option_overrides)
    precision = Precision.of(precision)
    options = resolve_options(options, option_overrides, model=model)
    prompts, negatives = prompt_lists(prompts, negative_prompt)
    if options.tiling:  # its base-to-refiner hand-off runs two U-Nets; not wired to ldm.models.seamless
        raise RefinerError("seamless tiling is not supported for SDXL models yet")
    if prompting.prompt_editing and any(has_schedule(text) for text in prompts + negatives):
        raise RefinerError("prompt editing is not supported for SDXL models yet")
    height, width = image_size(model, height, width)
    micro, refiner_micro = micro or SDXLMicro(), refiner_micro or micro or SDXLMicro()
    base_cond = sdxl_conditioning(model, prompts, negatives, height, width, micro, prompting)
    shape = (len(prompts), model.latent_channels, height // model.downscale, width // model.downscale)
    noise, generators, noise_record = batch_noise(shape, seed, model.device, None, latents)
    sigmas = model_sigmas(model, options)
    split = len(sigmas) - 1
    refiner_options = options  # the same sampler and DDIM variant: the latent is handed over in its space
    if refiner is not None:
        check_task(refiner, "txt2img")
        split = base_steps(model, sigmas, switch)
    x = noise * start_scale(options, sigmas[0])
    if split > 0:
        base_sigmas = sigmas[: split + 1]
        denoiser = base_cond.denoiser(model, options, noise)
        x = sample(denoiser, x, base_sigmas, options, generators, callback, progress, precision)
        if refiner is not None and split < len(sigmas) - 1:
            x = sampler_space(x, options, base_sigmas[-1])
    decoder, record = model, {}
    if refiner is not None:
        refiner_cond = sdxl_conditioning(refiner, prompts, negatives, height, width, refiner_micro, prompting)
        if split < len(sigmas) - 1:
            denoiser = refiner_cond.denoiser(refiner, refiner_options, noise)
            x = sample(denoiser, x, sigmas[split:], refiner_options, generators, callback, progress, precision)
        decoder = refiner
        record = refiner_record(refiner, switch, len(sigmas) - 1 - split, refiner_micro)
    if output == "latent":
        return x
    with autocast(decoder.device, precision):
        images = decoder.decode_latent(x)
    return Generated(
        tensor_to_pil(images),
        settings_of(
            "txt2img",
            options,
            model,
            prompts,
            negatives,
            precision,
            prompting=prompting,
            height=height,
            width=width,
            **micro.record(),
            **record,
            **noise_record,
        ),
    )


def _pair(text: str | None, option: str, separator: str) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(rf"\s*(\d{{1,6}})\s*{separator}\s*(\d{{1,6}})\s*", text)
    if match is None:
        example = "1024x768" if separator == "x" else "0,32"
        raise InvalidOptionError(f"{option} must be two whole numbers like {example}, got {text!r}")
    return int(match[1]), int(match[2])


def micro_from_args(args: Any) -> SDXLMicro:
    """The micro-conditionings that options (the command line's or the app's, by the same names) give; sizes come as
    WIDTHxHEIGHT and are kept as (height, width)."""
    original = _pair(args.original_size, "--original-size", "x")
    target = _pair(args.target_size, "--target-size", "x")
    crop = _pair(args.crop, "--crop", ",")
    scores = {}
    if args.aesthetic_score is not None:
        scores["aesthetic_score"] = args.aesthetic_score
    if args.negative_aesthetic_score is not None:
        scores["negative_aesthetic_score"] = args.negative_aesthetic_score
    return SDXLMicro(
        original_size=None if original is None else (original[1], original[0]),
        crop=crop or (0, 0),
        target_size=None if target is None else (target[1], target[0]),
        **scores,
    )
