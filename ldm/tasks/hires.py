"""Hires fix, as A1111's: text-to-image at the base size, upscale, then img2img at the target size.

A model trained at one size draws its subject again in every region of a larger canvas (a 64 px emoji model
asked for 128 px draws four half-emoji). The hires fix composes the picture at the size the model knows, and
only then adds the pixels: the first pass's image (or latent) is enlarged and given back to img2img, which keeps
its composition (strength < 1) and redraws its detail at the target size.

Upscalers: "latent" interpolates the first pass's latent (bilinear, no antialiasing: A1111's "Latent");
"bicubic" decodes, resizes the pixels bicubically and encodes again; "model" runs the x4 upscaler (the shipped
one unless `HiresOptions.upscaler_model` names another, ldm.tasks.upscale) and resizes its output to the target.
The second pass is the img2img task itself (ldm.tasks.img2img), image by image, each with its own first-pass seed
(A1111 reuses the seeds), so image i of a batch is the image seed + i gives alone. It runs all of its steps on a
grid stretched for its strength, as A1111's hires pass does (`hires_grid`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions
from ldm.sampling.options import SamplingOptions
from ldm.sampling.precision import Precision
from ldm.sampling.samplers import check_strength
from ldm.tasks.img2img import img2img, img2img_latents
from ldm.tasks.upscale import upscale

log = logging.getLogger("ldm")

MAX_HIRES_SCALE = 8.0  # memory and time grow with its square; A1111's slider stops at 4


class HiresError(InvalidOptionError):
    """Hires fix options that cannot run (an unknown upscaler, a scale below 1, negative steps)."""


@dataclass(frozen=True)
class HiresOptions:
    """What the hires fix's second pass does (A1111's defaults; ldm.core.defaults).

    scale: the target size over the base size; steps: the second pass's steps (0: the first pass's, as A1111);
    strength: img2img's denoising strength at the target size; upscaler: "latent", "bicubic" or "model";
    upscaler_model: the x4 upscaler for "model" (None: the shipped one, loaded when first needed).
    """

    scale: float = defaults.HIRES_SCALE
    steps: int = defaults.HIRES_STEPS
    strength: float = defaults.HIRES_STRENGTH
    upscaler: str = defaults.HIRES_UPSCALER
    upscaler_model: LatentDiffusion | None = None

    def validate(self) -> None:
        if self.upscaler not in defaults.HIRES_UPSCALERS:
            raise HiresError(f"unknown hires upscaler {self.upscaler!r}; known: {', '.join(defaults.HIRES_UPSCALERS)}")
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 1.0 <= scale <= MAX_HIRES_SCALE:
            raise HiresError(f"hires scale must be a number in [1, {MAX_HIRES_SCALE:g}], got {scale!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise HiresError(f"hires steps must be a whole number >= 0 (0: the first pass's), got {self.steps!r}")
        check_strength(self.strength)

    def target_size(self, height: int, width: int, multiple: int) -> tuple[int, int]:
        """The second pass's size: the base size times the scale, down to whole latents (A1111 floors too)."""
        return tuple(max(multiple, int(side * self.scale) // multiple * multiple) for side in (height, width))

    def record(self) -> dict[str, Any]:
        """The settings that re-make the image (written to its metadata: ldm.io.task_infotext)."""
        return {
            "hires_scale": self.scale,
            "hires_steps": self.steps,
            "hires_upscaler": self.upscaler,
            "strength": self.strength,
        }


def hires_grid(steps: int, strength: float, train_steps: int) -> tuple[int, float]:
    """(grid steps, img2img strength) that make the second pass run all of its `steps`, as A1111's hires pass:
    A1111 (setup_img2img_steps with the steps given) samples a grid of int(steps / min(strength, 0.999)) steps and
    runs its last `steps` of them, where plain img2img runs floor(strength x steps) of a `steps` grid. The strength
    returned, steps / grid, keeps exactly `steps` of that grid (ldm.sampling.samplers.strength_steps). The grid is
    capped at the model's `train_steps` timesteps; strength 0 runs nothing, as before."""
    if strength == 0.0:
        return steps, strength
    grid = min(max(steps, int(steps / min(strength, 0.999))), max(steps, train_steps))
    return grid, steps / grid


def upscaled_latent(latent: torch.Tensor, size: tuple[int, int], downscale: int) -> torch.Tensor:
    """A1111's "Latent" upscaler: the latent [B, C, h, w] bilinearly resized to the target's latent size."""
    return F.interpolate(
        latent.float(), size=(size[0] // downscale, size[1] // downscale), mode="bilinear", antialias=False
    )


def shipped_upscaler(device: torch.device) -> LatentDiffusion:
    from ldm.formats.load import load_model

    return load_model(task="upscale", device=str(device))


def upscaled_image(
    image: Image.Image,
    size: tuple[int, int],
    hires: HiresOptions,
    prompt: str,
    negative_prompt: str,
    seed: int,
    progress: bool,
    device: torch.device,
) -> Image.Image:
    """The first pass's image at the target size (height, width), by bicubic resizing or by the x4 upscaler (with
    the image's prompt and seed, at its own sampling defaults) and then a resize to the target."""
    if hires.upscaler == "model":
        upscaler = hires.upscaler_model if hires.upscaler_model is not None else shipped_upscaler(device)
        image = upscale(upscaler, image, prompt, negative_prompt, seed=seed, progress=progress)[0]
    return image.resize((size[1], size[0]), Image.Resampling.BICUBIC)


def second_pass(
    model: LatentDiffusion,
    latents: torch.Tensor,
    images: list[Image.Image] | None,
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    options: SamplingOptions,
    hires: HiresOptions,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    prompting: PromptOptions | None = None,
    precision: str | Precision = "fp32",
) -> list[Image.Image]:
    """The hires images: each first-pass result (its latent [1, C, h, w], or its image) upscaled and given to
    img2img at the target size with its prompt and seed, its prompts read as the first pass's (`prompting`), at its
    `precision`. `images` may be None for the latent upscaler. Prompt editing goes on from the first pass's
    `options.steps` into this pass as A1111's (ldm.tasks.img2img.img2img_latents' first_pass_steps)."""
    hires.validate()
    height, width = (side * model.downscale for side in latents.shape[-2:])
    size = hires.target_size(height, width, max(8, model.downscale))
    steps = hires.steps or options.steps
    grid, strength = hires_grid(steps, hires.strength, len(model.alphas_cumprod))
    second = replace(options, steps=grid, extra=dict(options.extra))
    log.info(
        "hires fix: %dx%d -> %dx%d (%s), %d steps at strength %g (the last %d of a %d-step grid)",
        width,
        height,
        size[1],
        size[0],
        hires.upscaler,
        steps,
        hires.strength,
        steps if strength else 0,
        grid,
    )
    if hires.upscaler == "model" and hires.upscaler_model is None:  # loaded once for the batch, not per image
        hires = replace(hires, upscaler_model=shipped_upscaler(model.device))
    out = []
    for i, (prompt, negative, seed) in enumerate(zip(prompts, negatives, seeds)):
        common = {
            "strength": strength,
            "negative_prompt": negative,
            "seed": seed,
            "options": second,
            "callback": callback,
            "progress": progress,
            "precision": precision,
            "prompt_options": prompting,
            "first_pass_steps": options.steps,  # prompt editing reads this pass as A1111's hires pass
        }
        if hires.upscaler == "latent":
            made = img2img_latents(model, upscaled_latent(latents[i : i + 1], size, model.downscale), prompt, **common)
        else:
            assert images is not None, "the pixel upscalers need the first pass's images"
            big = upscaled_image(images[i], size, hires, prompt, negative, seed, progress, model.device)
            made = img2img(model, big, prompt, **common)
        out.append(made[0])
    return out
