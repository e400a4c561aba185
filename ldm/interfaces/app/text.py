"""Text-to-image page logic: generation with a live preview, and the PNG download with its settings."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.io.images import save_png, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.options import SamplingOptions
from ldm.tasks.hires import HiresOptions
from ldm.tasks.sdxl_refiner import sdxl_txt2img
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale_pass import UpscaleOptions

StepReport = Callable[[int, int, "Image.Image | None"], None]  # (step done, total steps, preview or None)


def preview_callback(model: LatentDiffusion, steps: int, every: int, report: StepReport) -> Callable[[dict], None]:
    """A sampler callback: every step reports progress, every `every` steps also the decoded clean-image estimate.

    The sampler's "denoised" is its current guess of the final latent; decoding it shows where the
    image is heading long before the noise is gone. Decoding costs a VAE pass, hence only every few steps.
    """
    if every < 1:
        raise InvalidOptionError(f"preview interval must be at least 1 step, got {every}")
    calls = 0  # the steps of every pass so far: the hires fix's second pass counts on from the first's

    def callback(d: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        done = calls
        preview = None
        if done % every == 0 or done == steps:
            with torch.no_grad():
                preview = tensor_to_pil(model.decode_latent(d["denoised"][:1].float()))[0]
        report(done, steps, preview)

    return callback


def generate(
    model: LatentDiffusion,
    prompt: str,
    negative_prompt: str = "",
    options: SamplingOptions | None = None,
    seed: int = defaults.SEED,
    height: int | None = None,
    width: int | None = None,
    preview_every: int = 5,
    report: StepReport | None = None,
    label: str | None = None,
    sdxl: dict[str, Any] | None = None,
    hires: HiresOptions | None = None,
    prompt_syntax: str | None = None,
    upscale: UpscaleOptions | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """(image, the settings that re-make it); label: a class-conditional model's class (None: the null label),
    recorded in the settings as `ldm txt2img --label` records it; sdxl: an SDXL model's refiner and
    micro-conditionings (ldm.tasks.sdxl_refiner.sdxl_txt2img's keywords, ldm.interfaces.app.sdxl); hires: the hires
    fix (ldm.tasks.hires), recorded as `ldm txt2img --hires-scale` records it; prompt_syntax: how the prompts are read
    ("plain" or "a1111", ldm.models.prompt_options; None: the default), recorded as `--prompt-syntax` records it;
    upscale: the x4 upscale pass (ldm.tasks.upscale_pass), recorded as `ldm txt2img --upscale` records it."""
    options = options or SamplingOptions()
    options.validate()
    height = height or model.default_image_size
    width = width or model.default_image_size
    # The hires fix's second pass runs all its steps after the first pass's (ldm.tasks.hires).
    total = options.steps + ((hires.steps or options.steps) if hires is not None else 0)
    callback = preview_callback(model, total, preview_every, report) if report else None
    if sdxl is not None and hires is not None:
        raise InvalidOptionError("the hires fix is not implemented for SDXL models; turn it off")
    if sdxl is not None and upscale is not None:
        raise InvalidOptionError("the x4 upscale is not implemented for SDXL models; turn it off")
    if sdxl is not None:
        made = sdxl_txt2img(
            model,
            prompt,
            negative_prompt,
            height,
            width,
            seed,
            options,
            callback=callback,
            progress=False,
            prompt_syntax=prompt_syntax,
            **sdxl,
        )
    else:
        made = txt2img(
            model,
            prompt,
            negative_prompt,
            height,
            width,
            seed,
            options,
            callback=callback,
            progress=False,
            label=label,
            hires=hires,
            prompt_syntax=prompt_syntax,
            upscale=upscale,
        )
    return made[0], made.settings.image(0)


NO_LABEL = "(no label)"


def label_choices(model: LatentDiffusion) -> list[str] | None:
    """The class choices the page offers: the model's class names, then NO_LABEL (the null label, unconditional);
    None for a model without classes."""
    names = getattr(model, "class_names", None)
    return [*names, NO_LABEL] if names else None


def takes_text(model: LatentDiffusion) -> bool:
    """Whether the model reads a prompt (a label-only model has no text encoder)."""
    return getattr(model, "text_encoder", None) is not None


def png_bytes(image: Image.Image, settings: dict[str, Any] | None = None) -> bytes:
    """The PNG exactly as `ldm txt2img` writes it (settings in its text chunks), as bytes for a download."""
    with tempfile.TemporaryDirectory() as tmp:
        return save_png(image, Path(tmp) / "image.png", settings).read_bytes()
