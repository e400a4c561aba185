"""Text-to-image: prompts -> guided sampling in latent space -> PIL images.

`prepare` builds the task's conditioning (prompt contexts for both sides of guidance); the sampling
itself is the one every task shares (ldm.tasks.base.denoise). Sampling options live in ldm.sampling.options and
are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.io.images import check_size, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.sampling.options import SamplingOptions, autocast, check_finite_latents, ddim_variant_of, sampler_eta
from ldm.sampling.samplers import Generators
from ldm.tasks.base import (
    Conditioning,
    Generated,
    batch_noise,
    check_task,
    denoise,
    for_model,
    image_generators,
    model_sigmas,
    resolve_options,
    settings_of,
    start_noise,
)
from ldm.tasks.hires import HiresOptions, second_pass
from ldm.tasks.prompts import PromptError, label_conditions, prompt_conditions, prompt_lists


def image_size(model: LatentDiffusion, height: int | None, width: int | None) -> tuple[int, int]:
    """The requested size, or the model's own; checked to be whole latents."""
    height = model.default_image_size if height is None else height  # 0 is an error, not "the default"
    width = model.default_image_size if width is None else width
    check_size(height, width, max(8, model.downscale))
    return height, width


def prepare(
    model: LatentDiffusion,
    prompts: list[str],
    negatives: list[str],
    options: SamplingOptions | None = None,
    labels: str | list[str | None] | None = None,
    size: tuple[int, int] | None = None,
) -> Conditioning:
    """txt2img's conditioning: the prompts' contexts, the negative prompts' as the unconditional side; for a
    class-conditional model the labels' `y`, the null label as the unconditional side; for SDXL the vector `y` of
    the images' `size` (height, width)."""
    cond, uncond = prompt_conditions(model, prompts, negatives, options, size)
    label_cond, label_uncond = label_conditions(model, labels, len(prompts))
    return Conditioning({**cond, **label_cond}, {**uncond, **label_uncond})


@torch.no_grad()
def txt2img(
    model: LatentDiffusion,
    prompts: list[str] | str,
    negative_prompt: str | list[str] = "",
    height: int | None = None,
    width: int | None = None,
    seed: int = defaults.SEED,
    options: SamplingOptions | None = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    loras: list[tuple[str, float]] | None = None,
    num_images_per_prompt: int = 1,
    generator: Generators = None,
    latents: torch.Tensor | None = None,
    label: str | list[str | None] | None = None,
    hires: HiresOptions | None = None,
    **option_overrides: Any,
) -> Generated:
    """Generate `num_images_per_prompt` images per prompt. Image i uses seed + i, so any single image can be
    re-made alone.

    Options are a SamplingOptions or keyword overrides (steps=20, guidance_scale=5, sampler="euler", ...);
    the caller's options are not changed. The result is a list of PIL images whose `settings` say what ran.
    As in diffusers: `generator` (one torch.Generator for the batch, or one per image) or `latents` (the unit
    start noise [B, C, h/f, w/f]) replace the seed; `callback(step)` runs at every step with the sampler's
    {"i", "x", "sigma", "denoised"}. The device and dtype are the model's (ldm.formats.load.load_model(device=, dtype=)).
    loras: [(LoRA file, weight), ...] applied for this call only (ldm.adapters.lora). label: a class-conditional model's
    class (one name, or one per prompt; None: the null label), guided against the null label; a label-only
    model takes the empty prompt "". hires: the hires fix (ldm.tasks.hires.HiresOptions): sample at height x width,
    upscale by hires.scale and redraw by img2img at that size; the images are the larger ones, image i again seed + i.
    """  # noqa: E501
    if loras:
        from ldm.adapters.lora import using_loras

        with using_loras(model, loras):
            return txt2img(
                model,
                prompts,
                negative_prompt,
                height,
                width,
                seed,
                options,
                callback,
                progress,
                num_images_per_prompt=num_images_per_prompt,
                generator=generator,
                latents=latents,
                label=label,
                hires=hires,
                **option_overrides,
            )
    check_task(model, "txt2img")
    if hires is not None:
        hires.validate()
        if generator is not None or latents is not None:
            raise InvalidOptionError("the hires fix reuses each image's seed; give seed=, not generator= or latents=")
        if label is not None:
            raise InvalidOptionError("the hires fix's second pass (img2img) takes no class label; leave hires out")
    options = resolve_options(options, option_overrides, model=model)
    prompts, negatives = prompt_lists(prompts, negative_prompt)
    if num_images_per_prompt < 1:
        raise PromptError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
    prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
    negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
    if label is not None and not isinstance(label, str):
        label = [name for name in label for _ in range(num_images_per_prompt)]
    height, width = image_size(model, height, width)
    conditioning = prepare(model, prompts, negatives, options, label, size=(height, width))
    shape = (len(prompts), model.latent_channels, height // model.downscale, width // model.downscale)
    noise, generators, noise_record = batch_noise(shape, seed, model.device, generator, latents)
    latents = denoise(model, conditioning, options, noise, generators, callback=callback, progress=progress)
    labelled = {"label": label} if label is not None else {}
    if hires is not None and hires.upscaler == "latent":  # the latent is upscaled as it is: no decoding
        images = None
    else:
        with autocast(model.device, options.precision):
            images = tensor_to_pil(model.decode_latent(latents))
    if hires is not None:
        seeds = [seed + i for i in range(len(prompts))]
        images = second_pass(model, latents, images, prompts, negatives, seeds, options, hires, callback, progress)
        labelled.update(hires.record())
    return Generated(
        images,
        settings_of(
            "txt2img",
            options,
            height=height,
            width=width,
            num_images_per_prompt=num_images_per_prompt,
            **labelled,
            **noise_record,
        ),
    )


@torch.no_grad()
def txt2img_learned_variance(
    model: LatentDiffusion,
    prompts: list[str] | str,
    negative_prompt: str | list[str] = "",
    seed: int = defaults.SEED,
    steps: int = 50,
    guidance_scale: float = defaults.GUIDANCE_SCALE,
    spacing: str = "trailing",
    progress: bool = True,
    height: int | None = None,
    width: int | None = None,
    label: str | list[str | None] | None = None,
    options: SamplingOptions | None = None,
) -> Generated:
    """Images from a model with a learned variance (`learned_variance: true`) by ancestral DDPM with the
    U-Net's own step variance (ldm.sampling.variance_sampler), guided as `txt2img` is; image i uses seed + i.

    `options` (sampler "ddpm"; what `ldm txt2img --learned-variance` passes) replace steps, guidance_scale and
    spacing, and add karras spacing, precision and the prompt handling; guidance rescale and thresholding have
    no counterpart here and are refused. label: as txt2img's, for a class-conditional model.
    """
    from ldm.sampling.variance_sampler import (
        GuidedVarianceDenoiser,
        LearnedVarianceDenoiser,
        sample_ddpm_learned_variance,
    )

    if not getattr(model, "learned_variance", False):
        raise PromptError("this model has no learned variance (its config's learned_variance); use txt2img")
    check_task(model, "txt2img")
    if options is None:
        options = resolve_options(
            None, {"steps": steps, "guidance_scale": guidance_scale, "spacing": spacing, "sampler": "ddpm"}, model=model
        )
    else:
        options = resolve_options(options, {}, model=model)
        if options.sampler != "ddpm":
            raise InvalidOptionError(
                f"the learned variance samples by ancestral DDPM: give sampler 'ddpm', not {options.sampler!r}"
            )
    if options.guidance_rescale or options.threshold is not None:
        raise InvalidOptionError("guidance rescale and thresholding are not implemented with the learned variance")
    if getattr(model, "controls", None):  # its sampler does not go through Conditioning.denoiser
        raise InvalidOptionError("ControlNets are not implemented with the learned variance; leave --control out")
    prompts, negatives = prompt_lists(prompts, negative_prompt)
    height, width = image_size(model, height, width)
    conditioning = prepare(model, prompts, negatives, options, label, size=(height, width))
    noise = start_noise(
        (model.latent_channels, height // model.downscale, width // model.downscale),
        [seed + i for i in range(len(prompts))],
        model.device,
    )
    sigmas = model_sigmas(model, options)
    denoiser = GuidedVarianceDenoiser(
        LearnedVarianceDenoiser(model.unet, model.parameterisation()),
        conditioning.cond,
        conditioning.uncond,
        options.guidance_scale,
    )
    with autocast(model.device, options.precision):
        latents = sample_ddpm_learned_variance(
            denoiser,
            noise * sigmas[0],
            sigmas,
            disable=not progress,
            generator=image_generators(model.device, seed, len(prompts)),
        )
        check_finite_latents(latents)
        images = model.decode_latent(latents)
    labelled = {"label": label} if label is not None else {}
    return Generated(
        tensor_to_pil(images),
        settings_of(
            "txt2img",
            options,
            sampler="ddpm_learned_variance",
            learned_variance=True,
            height=height,
            width=width,
            **labelled,
        ),
    )


def settings_dict(
    prompt: str,
    negative_prompt: str,
    seed: int,
    height: int,
    width: int,
    options: SamplingOptions,
    model: LatentDiffusion | None = None,
    **more: Any,
) -> dict[str, Any]:
    """What goes into each PNG's metadata: enough to make the same image again, as it was really made.

    `eta` is the one the sampler used (not the --eta of a sampler that ignores it), `ddim_variant` likewise
    (the model's own where the options leave it open; without a field, --from-png reads the metadata as made
    before the field existed, with "k"); `model` adds the weights' file name and SHA-256 (ldm.formats.load.load_model
    records them), which say which model made it.
    """  # noqa: E501
    if model is not None:
        options = for_model(options, model)
    opts = asdict(options)
    extra = opts.pop("extra")
    opts["eta"] = sampler_eta(options)
    opts["ddim_variant"] = ddim_variant_of(options)
    identity = dict(model.identity) if model is not None else {}
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "height": height,
        "width": width,
        **opts,
        **extra,
        **identity,
        **more,
    }
