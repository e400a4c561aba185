"""txt2img's upscale pass (`ldm txt2img --upscale`): each image, as sampled at the model's size, through the x4
upscaler (ldm.tasks.upscale) with its own prompt, negative prompt and seed.

Unlike the hires fix (ldm.tasks.hires), nothing is redrawn at the larger size: the picture is the one the model
made, with the pixels the upscaler adds. The shipped upscaler is made for the emoji models' 64 px images; a model
whose images are larger (an SD checkpoint's 512 px) is refused unless an upscaler is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions
from ldm.sampling.precision import Precision
from ldm.tasks.hires import shipped_upscaler
from ldm.tasks.upscale import upscale


class UpscalePassError(InvalidOptionError):
    """An upscale pass that cannot run: bad steps or noise level, or no x4 upscaler that fits the model."""


@dataclass(frozen=True)
class UpscaleOptions:
    """The x4 upscale pass of txt2img: steps (None: the upscaler's own, 20 for the shipped one), noise_level (on the
    64 px input, ldm.tasks.upscale), upscaler_model (None: the shipped upscaler, loaded when first needed)."""

    steps: int | None = None
    noise_level: int = defaults.NOISE_LEVEL
    upscaler_model: LatentDiffusion | None = None

    def validate(self) -> None:
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise UpscalePassError(f"upscale steps must be a whole number >= 1, got {self.steps!r}")
        if isinstance(self.noise_level, bool) or not isinstance(self.noise_level, int) or self.noise_level < 0:
            raise UpscalePassError(f"upscale noise level must be a whole number >= 0, got {self.noise_level!r}")


def upscaler_for(model: LatentDiffusion, options: UpscaleOptions) -> LatentDiffusion:
    """The options' upscaler, or the shipped one where the model's images are no larger than its input size."""
    if options.upscaler_model is not None:
        return options.upscaler_model
    upscaler = shipped_upscaler(model.device)
    if model.default_image_size > upscaler.image_size:
        raise UpscalePassError(
            f"the shipped x4 upscaler is made for images of at most {upscaler.image_size} px and this model's are "
            f"{model.default_image_size} px; give an x4 upscaler (--upscaler FILE) or leave the upscale out"
        )
    return upscaler


def upscale_pass(
    model: LatentDiffusion,
    images: list[Image.Image],
    prompts: list[str],
    negatives: list[str],
    seeds: list[int],
    options: UpscaleOptions,
    progress: bool = True,
    prompting: PromptOptions | None = None,
    precision: str | Precision = "fp32",
) -> tuple[list[Image.Image], dict[str, Any]]:
    """(the images x4, the settings that record the pass): image i through the upscaler with prompt i, negative i
    and seed i, exactly as `upscale(upscaler, image, prompt, negative, noise_level, seed, steps=...)` alone."""
    options.validate()
    upscaler = upscaler_for(model, options)
    steps = {} if options.steps is None else {"steps": options.steps}
    out, ran = [], None
    for image, prompt, negative, seed in zip(images, prompts, negatives, seeds):
        made = upscale(
            upscaler,
            image,
            prompt,
            negative,
            options.noise_level,
            seed,
            progress=progress,
            precision=precision,
            prompt_options=prompting,
            **steps,
        )
        out.append(made[0])
        ran = made.settings
    identity = getattr(upscaler, "identity", None) or {}
    record = {
        "upscale": upscaler.downscale,
        "upscale_steps": ran["steps"] if ran is not None else options.steps,
        "upscale_noise_level": options.noise_level,
        **{f"upscaler_{k[len('model_') :]}": v for k, v in identity.items() if k in ("model_file", "model_sha256")},
    }
    return out, record
