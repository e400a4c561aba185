"""Steps the image-editing tasks share: input checks, sizing, start latents, denoiser wrapping.

img2img, inpainting and upscaling all start from a user image of any size, noise an encoded
latent to some level and run the ordinary guided sampler (`ldm.pipeline.sample`) from there.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from ldm.errors import LdmError, InvalidOptionError
from ldm.images import InvalidImageError, load_image
from ldm.model import LatentDiffusion
from ldm.pipeline import SamplingOptions, start_noise

log = logging.getLogger("ldm")


class EditingError(LdmError, ValueError):
    pass


class StrengthError(EditingError):
    pass


class WrongModelError(EditingError):
    """The model's conditioning does not fit the task (e.g. img2img with the x4 upscaler)."""


class ImageTooSmallError(InvalidImageError):
    pass


def as_pil(image: Image.Image | str | Path, mode: str = "RGB") -> Image.Image:
    """A PIL image, or a path read with `load_image` (which names unreadable files clearly)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(image, mode)
    raise InvalidImageError(f"expected a PIL image or a path, got {type(image).__name__}")


def check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise StrengthError(f"strength must be in [0, 1], got {strength}")


def size_multiple(model: LatentDiffusion) -> int:
    """Pixel sizes must be whole latents (VAE) and multiples of 8 (what users and other tools expect)."""
    return math.lcm(8, model.downscale)


def fit_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """The nearest multiple of `multiple` per side; an image smaller than one multiple is an error."""
    if width < multiple or height < multiple:
        raise ImageTooSmallError(f"image {width}x{height} is too small: each side needs at least {multiple} px")
    return round(width / multiple) * multiple, round(height / multiple) * multiple


def fit_image(image: Image.Image, multiple: int, what: str = "image",
              resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Resize to the nearest multiple-of-`multiple` size, saying so, since the output then has that size."""
    size = fit_size(*image.size, multiple)
    if size == image.size:
        return image
    log.info("resized %s %dx%d to %dx%d (sides must be multiples of %d)", what, *image.size, *size, multiple)
    return image.resize(size, resample)


def resolve_options(options: SamplingOptions | None, overrides: dict[str, Any],
                    defaults: dict[str, Any] | None = None) -> SamplingOptions:
    """A validated copy of the options with keyword overrides applied (the caller's object is not changed)."""
    options = replace(options) if options is not None else SamplingOptions(**(defaults or {}))
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise InvalidOptionError(f"unknown sampling option {key!r}")
        setattr(options, key, value)
    options.validate()
    return options


def prompt_lists(prompt: str | list[str], negative_prompt: str | list[str]) -> tuple[list[str], list[str]]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise EditingError("no prompts given")
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise EditingError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    return prompts, negatives


def start_latents(x0: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(start x at sigmas[0], the unit noise used).

    The noise is drawn exactly as txt2img draws it, so at full strength (`full`) the start, pure
    noise with no trace of the image, is txt2img's start for the same seed.
    """
    noise = start_noise(tuple(x0.shape[1:]), seeds, x0.device).to(x0.dtype)
    x = noise * sigmas[0] if full else x0 + noise * sigmas[0]
    return x, noise


def expand_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat a per-image tensor to a denoiser batch (guidance may run cond and uncond as one batch)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise EditingError(f"cannot spread a batch of {t.shape[0]} over {batch}")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


class DenoiserOverride:
    """The model, except that `denoiser()` is wrapped: how editing hooks into `pipeline.sample` unchanged.

    `sample` builds its guided denoiser from `model.denoiser()`; wrapping that one inner denoiser
    applies our hook to the conditional and unconditional predictions alike.
    """

    def __init__(self, model: LatentDiffusion, wrap: Callable[[Callable], Callable]):
        self._model = model
        self._wrap = wrap

    def denoiser(self) -> Callable:
        return self._wrap(self._model.denoiser())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def sample_from(model: LatentDiffusion, x0: torch.Tensor, strength: float, cond: dict, uncond: dict,
                options: SamplingOptions, seed: int, callback: Callable[[dict], None] | None = None,
                progress: bool = True, wrap: Callable[[Callable, torch.Tensor], Callable] | None = None) -> torch.Tensor:
    """Noise latents x0 [B, C, h, w] to the strength's level and sample back to a clean latent.

    Image i uses seed + i. `wrap(denoiser, noise)` may wrap the model's denoiser (it gets the unit
    start noise, e.g. to re-noise known latents consistently). Strength 0 returns x0 untouched.
    """
    from ldm.pipeline import image_generators, model_sigmas, sample
    from ldm.samplers import truncate_sigmas

    check_strength(strength)
    sigmas = model_sigmas(model, options)
    if strength < 1.0:
        sigmas = truncate_sigmas(sigmas, strength)
    if strength == 0.0 or len(sigmas) < 2:
        return x0
    x, noise = start_latents(x0, sigmas, [seed + i for i in range(x0.shape[0])], full=strength == 1.0)
    target = model if wrap is None else DenoiserOverride(model, lambda den: wrap(den, noise))
    return sample(target, x, sigmas, cond, uncond, options, image_generators(model.device, seed, x0.shape[0]),
                  callback, progress)
