"""Text-to-image: prompts -> guided sampling in latent space -> PIL images.

`prepare` builds the task's conditioning (prompt contexts for both sides of guidance); the sampling
itself is the one every task shares (ldm.tasks.base.denoise); sampling options live in ldm.sampling.options, the
autocast's precision in ldm.sampling.precision, how prompts are read in ldm.models.prompt_options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError
from ldm.io.images import check_size, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.models.prompt_options import PromptOptions, take_prompt_options
from ldm.models.seamless import seamless
from ldm.sampling.options import LEARNED_VARIANCE_SAMPLER, SamplingOptions
from ldm.sampling.precision import Precision, autocast
from ldm.sampling.samplers import Generators
from ldm.tasks.base import Conditioning, batch_noise, check_task, denoise, resolve_options
from ldm.tasks.hires import HiresOptions, second_pass
from ldm.tasks.prompts import PromptError, label_conditions, prompt_conditioning, prompt_lists
from ldm.tasks.results import Generated, settings_of
from ldm.tasks.upscale_pass import UpscaleOptions, UpscalePassError, upscale_pass


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
    prompting: PromptOptions | None = None,
) -> Conditioning:
    """txt2img's conditioning: the prompts' contexts, the negative prompts' as the unconditional side (read as
    `prompting` says, over the options' steps: ldm.tasks.prompts.prompt_conditioning); for a class-conditional model
    the labels' `y`, the null label as the unconditional side; for SDXL the vector `y` of the images' `size`."""
    steps = options.steps if options is not None else defaults.STEPS
    conditioning = prompt_conditioning(model, prompts, negatives, prompting, steps, size)
    label_cond, label_uncond = label_conditions(model, labels, len(prompts))
    cond, uncond = {**conditioning.cond, **label_cond}, {**conditioning.uncond, **label_uncond}
    return replace(conditioning, cond=cond, uncond=uncond)


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
    precision: str | Precision = "fp32",
    hires: HiresOptions | None = None,
    upscale: UpscaleOptions | None = None,
    **option_overrides: Any,
) -> Generated:
    """Generate `num_images_per_prompt` images per prompt. Image i uses seed + i, so any single image can be
    re-made alone.

    Options are a SamplingOptions or keyword overrides (steps=20, guidance_scale=5, sampler="euler", ...);
    the caller's options are not changed. How prompts are read (ldm.models.prompt_options) are keywords too:
    prompt_syntax="a1111" (or "plain", the default), long_prompts=, emphasis=, prompt_editing=, prompt_options=.
    The result is a list of PIL images whose `settings` say what ran.
    As in diffusers: `generator` (one torch.Generator for the batch, or one per image) or `latents` (the unit
    start noise [B, C, h/f, w/f]) replace the seed; `callback(step)` runs at every step with the sampler's
    {"i", "x", "sigma", "denoised"}. The device and dtype are the model's (ldm.formats.load.load_model(device=, dtype=)).
    loras: [(LoRA file, weight), ...] applied for this call only (ldm.adapters.lora). label: a class-conditional model's
    class (one name, or one per prompt; None: the null label), guided against the null label; a label-only
    model takes the empty prompt "". precision: the autocast (ldm.sampling.precision: "fp32", "bf16", or "fp16" on
    CUDA). hires: the hires fix (ldm.tasks.hires.HiresOptions): sample at
    height x width, upscale by hires.scale and redraw by img2img at that size; the images are the larger ones, image i
    again seed + i. Prompt editing goes on into its second pass as A1111's does: integer `when`s count on from the
    first pass's steps, fractions from 1.0 up address the second pass ("[red:blue:1.5]": red in the first pass and
    the first half of the second). upscale: the x4 upscale pass (ldm.tasks.upscale_pass.UpscaleOptions): each image
    as sampled, then through the x4 upscaler with its prompt and seed (seed + i), as `upscale` alone would make it;
    not with the hires fix (which redraws at the larger size).
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
                precision=precision,
                hires=hires,
                upscale=upscale,
                **option_overrides,
            )
    check_task(model, "txt2img")
    prompting = take_prompt_options(option_overrides)
    precision = Precision.of(precision)
    if hires is not None:
        hires.validate()
        if generator is not None or latents is not None:
            raise InvalidOptionError("the hires fix reuses each image's seed; give seed=, not generator= or latents=")
        if label is not None:
            raise InvalidOptionError("the hires fix's second pass (img2img) takes no class label; leave hires out")
    if upscale is not None:
        upscale.validate()
        if hires is not None:
            raise UpscalePassError("the hires fix and the x4 upscale pass both enlarge the image; give one of them")
        if generator is not None or latents is not None:
            raise UpscalePassError("the upscale pass reuses each image's seed; give seed=, not generator= or latents=")
    options = resolve_options(options, option_overrides, model=model)
    prompts, negatives = prompt_lists(prompts, negative_prompt)
    if num_images_per_prompt < 1:
        raise PromptError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
    prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
    negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
    if label is not None and not isinstance(label, str):
        label = [name for name in label for _ in range(num_images_per_prompt)]
    height, width = image_size(model, height, width)
    conditioning = prepare(model, prompts, negatives, options, label, size=(height, width), prompting=prompting)
    shape = (len(prompts), model.latent_channels, height // model.downscale, width // model.downscale)
    noise, generators, noise_record = batch_noise(shape, seed, model.device, generator, latents)
    with seamless(model, options.tiling):  # --tiling: the U-Net's and the VAE's convolutions wrap, for this run
        latents = denoise(
            model, conditioning, options, noise, generators, callback=callback, progress=progress, precision=precision
        )
        if hires is not None and hires.upscaler == "latent":  # the latent is upscaled as it is: no decoding
            images = None
        else:
            with autocast(model.device, precision):
                images = tensor_to_pil(model.decode_latent(latents))
    labelled = {"label": label} if label is not None else {}
    if options.sampler == LEARNED_VARIANCE_SAMPLER:
        labelled["learned_variance"] = True
    if hires is not None:
        seeds = [seed + i for i in range(len(prompts))]
        images = second_pass(
            model, latents, images, prompts, negatives, seeds, options, hires, callback, progress, prompting, precision
        )
        labelled.update(hires.record())
    if upscale is not None:
        seeds = [seed + i for i in range(len(prompts))]
        images, record = upscale_pass(model, images, prompts, negatives, seeds, upscale, progress, prompting, precision)
        labelled.update(record)
    return Generated(
        images,
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
    precision: str | Precision = "fp32",
    prompt_options: PromptOptions | None = None,
) -> Generated:
    """Images from a model with a learned variance (`learned_variance: true`) by ancestral DDPM with the
    U-Net's own step variance: `txt2img` with the sampler "ddpm_learned_variance" (ldm.sampling.variance_sampler),
    guided as any; image i uses seed + i.

    `options` (sampler "ddpm"; what `ldm txt2img --learned-variance` passes) replace steps, guidance_scale and
    spacing, and add karras spacing; `prompt_options` say how prompts are read (prompt editing has no counterpart
    here and is refused, as are guidance rescale and thresholding). label and precision: as txt2img's. The settings name
    the sampler as the call did: "ddpm_learned_variance", or with `options` "ddpm" and `learned_variance: true`
    (as the command line's --sampler ddpm --learned-variance), both of which --from-png reads.
    """
    if not getattr(model, "learned_variance", False):
        raise PromptError("this model has no learned variance (its config's learned_variance); use txt2img")
    check_task(model, "txt2img")
    named = LEARNED_VARIANCE_SAMPLER if options is None else "ddpm"
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
    made = txt2img(
        model,
        prompts,
        negative_prompt,
        height,
        width,
        seed,
        replace(options, sampler=LEARNED_VARIANCE_SAMPLER),
        progress=progress,
        label=label,
        precision=precision,
        prompt_options=prompt_options,
    )
    made.settings["sampler"] = named
    return made
