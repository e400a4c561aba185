"""SDXL's options that every task shares: the micro-conditionings and the base-to-refiner hand-off.

txt2img (ldm.tasks.sdxl_refiner), img2img and inpainting (ldm.tasks.img2img, ldm.tasks.inpaint) take the same keywords:
`micro` / `refiner_micro` (SDXLMicro: original size, crop, target size, aesthetic scores) and `refiner` with `switch`.

The hand-off follows diffusers' `denoising_end` / `denoising_start` (a fraction of the *training timesteps*):
with cutoff = round(T - switch * T), the base runs the steps of the grid at timesteps t >= cutoff, the refiner the
rest from the latent handed over as it is. From an image (img2img, inpainting) the strength still picks the first
step, as diffusers' base img2img pipeline with `denoising_end` does; the refiner, as its img2img pipeline with
`denoising_start`, runs the steps of the whole grid below the cutoff. Where the strength starts below the cutoff
the base runs no step and the refiner the strength's steps (diffusers would run the refiner from the cutoff over a
latent noised to a lower level).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import sigma_to_t, sigmas_from_alphas_cumprod
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.sdxl_conditioning import AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE, MicroConditions
from ldm.sampling.options import SamplingOptions, ddim_variant_of, sample, start_scale
from ldm.sampling.precision import Precision
from ldm.sampling.samplers import strength_steps
from ldm.tasks.base import Conditioning, check_task, image_generators, model_sigmas, sample_seeded, start_noise

DEFAULT_SWITCH = 0.8  # diffusers' documented example and A1111's default "Refiner switch at"


class RefinerError(InvalidOptionError):
    """A refiner hand-off that cannot run (not SDXL models, a switch outside (0, 1), ...)."""


@dataclass(frozen=True)
class SDXLMicro:
    """The micro-conditioning options; sizes (height, width) in px, None: the image's size."""

    original_size: tuple[int, int] | None = None
    crop: tuple[int, int] = (0, 0)  # (top, left)
    target_size: tuple[int, int] | None = None
    aesthetic_score: float = AESTHETIC_SCORE
    negative_aesthetic_score: float = NEGATIVE_AESTHETIC_SCORE

    def sides(self, height: int, width: int) -> tuple[MicroConditions, MicroConditions]:
        """(conditional, unconditional) numbers for an image of height x width: the sizes alike on both sides."""
        original = tuple(self.original_size or (height, width))
        target = tuple(self.target_size or (height, width))
        for name, pair in (("original size", original), ("crop", self.crop), ("target size", target)):
            if len(pair) != 2 or not all(isinstance(v, int) and v >= 0 for v in pair):
                raise InvalidOptionError(f"the {name} must be two whole numbers >= 0, got {pair!r}")
        for name, score in (("aesthetic score", self.aesthetic_score), ("negative", self.negative_aesthetic_score)):
            if not math.isfinite(score):
                raise InvalidOptionError(f"the {name} must be a finite number, got {score}")
        crop = tuple(self.crop)
        return (
            MicroConditions(original, target, crop, float(self.aesthetic_score)),
            MicroConditions(original, target, crop, float(self.negative_aesthetic_score)),
        )

    def record(self) -> dict[str, Any]:
        """What the image's settings say about them (only what differs from the defaults)."""
        return {k: v for k, v in self.__dict__.items() if v != getattr(SDXLMicro(), k)}


def is_sdxl(model: Any) -> bool:
    return hasattr(getattr(model, "text_encoder", None), "micro_conditions")


def check_switch(switch: float) -> float:
    if not (isinstance(switch, (int, float)) and 0.0 < float(switch) < 1.0):
        raise RefinerError(f"the refiner switch must be a fraction strictly between 0 and 1, got {switch!r}")
    return float(switch)


def check_sdxl_options(
    model: LatentDiffusion,
    micro: SDXLMicro | None,
    refiner: LatentDiffusion | None,
    switch: float,
    refiner_micro: SDXLMicro | None = None,
) -> None:
    """Refuse the SDXL keywords for any other model, a switch outside (0, 1) and a refiner that is not SDXL."""
    if (micro is not None or refiner is not None or refiner_micro is not None) and not is_sdxl(model):
        raise RefinerError("micro-conditionings and the refiner are for SDXL models; this model is not one")
    for given in (micro, refiner_micro):
        if given is not None:
            given.sides(1, 1)  # the numbers, before any work
    if refiner is not None:
        check_switch(switch)
        if not is_sdxl(refiner):
            raise RefinerError("the refiner is not an SDXL model")
        check_task(refiner, "img2img")


def base_steps(model: LatentDiffusion, sigmas: torch.Tensor, switch: float) -> int:
    """How many steps of the grid `sigmas` (steps + 1 sigmas) the base runs: those at timesteps >= the cutoff."""
    T = len(model.alphas_cumprod)
    cutoff = round(T - check_switch(switch) * T)
    log_sigmas = sigmas_from_alphas_cumprod(model.alphas_cumprod.detach().double().cpu()).log()
    timesteps = sigma_to_t(sigmas[:-1].double().cpu(), log_sigmas)
    return int((timesteps >= cutoff - 1e-6).sum())


def sampler_space(x: torch.Tensor, options: SamplingOptions, sigma_end: torch.Tensor) -> torch.Tensor:
    """SD's DDIM returns the VP latent where it ends (ldm.sampling.samplers.sample_ddim_sd): back to sampler space."""
    return x * (1 + sigma_end**2).sqrt() if ddim_variant_of(options) == "sd" else x


def refiner_record(
    refiner: LatentDiffusion, switch: float, refiner_steps: int, refiner_micro: SDXLMicro
) -> dict[str, Any]:
    """What an image's settings say about its refiner: the switch, its steps, its file and its own numbers."""
    identity = getattr(refiner, "identity", None) or {}
    return {
        "refiner_switch": switch,
        "refiner_steps": refiner_steps,
        **({"refiner_file": identity["model_file"]} if "model_file" in identity else {}),
        **({"refiner_sha256": identity["model_sha256"]} if "model_sha256" in identity else {}),
        **{f"refiner_{k}": v for k, v in refiner_micro.record().items()},
    }


def sample_handed_off(
    model: LatentDiffusion,
    conditioning: Conditioning,
    options: SamplingOptions,
    seed: int,
    x0: torch.Tensor,
    strength: float,
    refiner: LatentDiffusion | None = None,
    refiner_conditioning: Conditioning | None = None,
    switch: float = DEFAULT_SWITCH,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
) -> tuple[torch.Tensor, int]:
    """(clean latents, the refiner's steps) from the clean latents x0 [B, C, h, w] at `strength`, image i seeded
    seed + i as ldm.tasks.base.sample_seeded; with `refiner`, its conditioning finishes below the switch (module
    doc). Without one, exactly sample_seeded."""
    if refiner is None:
        made = sample_seeded(model, conditioning, options, seed, x0.shape, x0, strength, callback, progress, precision)
        return made, 0
    n = x0.shape[0]
    noise = start_noise(tuple(x0.shape[1:]), [seed + i for i in range(n)], model.device).to(x0.dtype)
    generators = image_generators(model.device, seed, n)
    sigmas = model_sigmas(model, options)
    last = len(sigmas) - 1
    start = last - strength_steps(last, strength)  # the first step the strength keeps (truncate_sigmas)
    if start >= last:  # strength 0, or no step left: the input as it is
        return x0, 0
    split = max(start, base_steps(model, sigmas, switch))
    x = noise * start_scale(options, sigmas[0]) if start == 0 and strength == 1.0 else x0 + noise * sigmas[start]
    if split > start:
        denoiser = conditioning.denoiser(model, options, noise)
        x = sample(denoiser, x, sigmas[start : split + 1], options, generators, callback, progress, precision)
        if split < last:
            x = sampler_space(x, options, sigmas[split])
    if split < last:
        denoiser = refiner_conditioning.denoiser(refiner, options, noise)
        x = sample(denoiser, x, sigmas[split:], options, generators, callback, progress, precision)
    return x, last - split
