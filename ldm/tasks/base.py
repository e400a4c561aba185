"""How every task reaches the sampler: one composition, one start, one record of what ran.

Each task (txt2img, img2img, inpaint, upscale, walk) has a `prepare` step that builds its
`Conditioning`: the U-Net's keyword conditions for both sides of guidance (`context`, and `concat` /
`y` for the inpainting and upscaling U-Nets) and, where the task needs one, a wrapper of the model's
denoiser (the inpainting blend, the upscaler's tiles). `denoise` then composes

    network -> parameterisation (model.denoiser()) -> task wrapper -> guidance (CFGDenoiser)

and runs it through the one checked sampler entry point, `ldm.sampling.options.sample`, from pure noise or
from a latent noised to the strength's level. Tasks never change their inputs; they return their
images as `Generated`, a list that also carries the settings they ran with (ldm.tasks.results).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ldm.core.errors import InvalidOptionError, LdmError
from ldm.diffusion.schedules import get_sigmas
from ldm.models.controlnet import controlled_denoiser
from ldm.models.latent_diffusion import CONDITIONING, LatentDiffusion
from ldm.sampling.denoisers import CFGDenoiser, Denoiser, EmbeddedGuidanceDenoiser, ScheduledDenoiser, StepConditions
from ldm.sampling.options import VARIANCE_SAMPLERS, SamplingOptions, ddim_variant_of, sample, start_scale, task_options
from ldm.sampling.precision import Precision
from ldm.sampling.samplers import Generators, check_strength, truncate_sigmas
from ldm.sampling.samplers_extra import DISCARD_NEXT_TO_LAST_SIGMA, discard_next_to_last
from ldm.sampling.variance_sampler import GuidedVarianceDenoiser, LearnedVarianceDenoiser

# What each task needs, as its error message says it (the kinds that can drive it: ldm.models.latent_diffusion.CONDITIONING).  # noqa: E501
TASK_NEEDS = {
    "txt2img": "a text-to-image model",
    "walk": "a text-to-image model",
    "img2img": "a text-to-image model",
    "inpaint": "a text-to-image or inpainting model",
    "upscale": "the x4 upscaler (conditioning_key hybrid-adm with a low_scale_config)",
}
TASK_HINTS = {"img2img": " (use inpaint for inpainting models, upscale for the upscaler)"}
# How the messages name a task ("upscaling needs the x4 upscaler ..."); the others by their command's name.
TASK_WORDS = {"inpaint": "inpainting", "upscale": "upscaling"}


class EditingError(LdmError, ValueError):
    pass


class WrongModelError(EditingError):
    """The model's conditioning does not fit the task (e.g. img2img with the x4 upscaler)."""


def check_task(model: LatentDiffusion, task: str) -> None:
    """Refuse a model whose conditioning kind cannot drive `task`."""
    kind = model.kind
    if task not in kind.tasks or (kind.label and model.low_scale is None):
        raise WrongModelError(
            f"{TASK_WORDS.get(task, task)} needs {TASK_NEEDS[task]}, not a {model.conditioning_key!r} model "
            f"({kind.name}){TASK_HINTS.get(task, '')}"
        )


def kinds_for(task: str) -> list[str]:
    return [key for key, kind in CONDITIONING.items() if task in kind.tasks]


def resolve_options(
    options: SamplingOptions | None,
    overrides: dict[str, Any],
    task: str = "txt2img",
    model: LatentDiffusion | None = None,
) -> SamplingOptions:
    """A validated copy of the options (if None: the task's defaults under the model's own `sampling_defaults`, e.g.
    a student's steps and spacing) with keyword overrides applied (the caller's object is not changed), and with
    `model`'s own defaults where the options leave them open (`for_model`)."""
    if options is None:
        options = task_options(task, **(model.sampling_defaults if model is not None else {}))
    else:
        options = replace(options, extra=dict(options.extra))
    for key, value in overrides.items():
        if key == "extra" or not hasattr(options, key):
            raise InvalidOptionError(f"unknown sampling option {key!r}")
        setattr(options, key, value)
    if model is not None:
        options = for_model(options, model)
    options.validate()
    return options


def for_model(options: SamplingOptions, model: LatentDiffusion) -> SamplingOptions:
    """The options with what the model decides where they leave it open: DDIM's variant ("sd" for models built
    from original SD configs, "k" for this project's own; ldm.models.latent_diffusion.LatentDiffusion)."""
    if options.sampler == "ddim" and options.ddim_variant is None:
        return replace(options, ddim_variant=model.ddim_variant)
    return options


def start_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise, one seed per image, drawn on the CPU so a seed gives the same image on any device."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(device)


def image_generators(device: torch.device, seed: int, count: int) -> list[torch.Generator]:
    """The step noise generators of a batch: image i's seeded seed + i, like its start noise (as A1111 does), so
    image i of a batch is the image seed + i gives alone, with any sampler. A single image's generator is
    seeded `seed`, as the one batch generator was, so single images are unchanged."""
    return [torch.Generator(device).manual_seed(seed + i) for i in range(count)]


class NoiseShapeError(InvalidOptionError):
    """Given latents or generators that do not fit the batch."""


def check_generators(generator: Any) -> None:
    """None, one torch.Generator or a list of them: anything else (a seed, numpy's Generator) is refused by name."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        return
    held = (
        f"a list holding {', '.join(sorted({type(g).__name__ for g in generator}))}"
        if isinstance(generator, (list, tuple))
        else type(generator).__name__
    )
    raise NoiseShapeError(f"generator must be a torch.Generator or a list of them, got {held} (for a seed, give seed=)")


def check_latents(latents: Any) -> None:
    """Start latents the sampler can use: a floating-point tensor with data (not on the meta device), all finite."""
    if not isinstance(latents, torch.Tensor):
        raise NoiseShapeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if latents.is_meta:
        raise NoiseShapeError("latents are on the meta device, which holds no values; give a tensor with data")
    if not latents.is_floating_point():
        raise NoiseShapeError(f"latents must be floating-point, got {latents.dtype}")
    if not bool(torch.isfinite(latents).all()):
        raise NoiseShapeError("latents hold NaN or infinite values; give finite start noise")


def batch_noise(
    shape: tuple[int, ...],
    seed: int,
    device: torch.device,
    generator: Generators = None,
    latents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Generators, dict[str, Any]]:
    """(unit start noise [B, C, h, w], step-noise generators, what the settings record about them).

    Three ways, as diffusers users expect: `latents` is the start noise itself (unscaled, as diffusers'
    `latents`); `generator` is one torch.Generator that draws the whole batch's start noise and then every
    step's noise, or a list with one per image; with neither, image i is seeded seed + i (start_noise).
    """
    n = shape[0]
    check_generators(generator)
    if isinstance(generator, (list, tuple)) and len(generator) != n:
        raise NoiseShapeError(f"{len(generator)} generators for {n} images; give one, or one per image")
    if latents is not None:
        check_latents(latents)
        if tuple(latents.shape) != tuple(shape):
            raise NoiseShapeError(f"latents of shape {list(latents.shape)} for a batch of shape {list(shape)}")
        noise, record = latents.to(device=device, dtype=torch.float32), {"seed": None, "noise": "latents"}
    elif isinstance(generator, (list, tuple)):
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in generator]).to(device)
        record = {"seed": None, "noise": "generator"}
    elif generator is not None:
        noise = torch.randn(shape, generator=generator, device=generator.device).to(device)
        record = {"seed": None, "noise": "generator"}
    else:
        noise, record = start_noise(tuple(shape[1:]), [seed + i for i in range(n)], device), {"seed": seed}
    if generator is None:
        generator = image_generators(device, seed, n)
        if latents is not None:
            record["seed"] = seed  # the steps' noise still comes from the seed
    return noise, generator, record


def model_sigmas(model: LatentDiffusion, options: SamplingOptions) -> torch.Tensor:
    """The sampler's sigma grid; SD's DDIM ends it at sigma(t = 0) instead of 0 (ldm.sampling.samplers.sample_ddim_sd)."""  # noqa: E501
    to_zero = ddim_variant_of(options) != "sd"
    # A1111's grid for DPM2 and DPM++ 3M SDE: one step more, its next-to-last sigma dropped
    # (ldm.sampling.samplers_extra).
    discard = options.sampler in DISCARD_NEXT_TO_LAST_SIGMA and options.steps < len(model.alphas_cumprod)
    sigmas = get_sigmas(
        model.alphas_cumprod, options.steps + discard, spacing=options.spacing, karras=options.karras, to_zero=to_zero
    )
    return (discard_next_to_last(sigmas) if discard else sigmas).to(model.device)


@dataclass(frozen=True)
class Conditioning:
    """What a task's prepare step builds for the sampler.

    cond / uncond: keyword tensors of the model's denoiser for each side of guidance ({"context", "concat", "y"});
    a key given on one side only serves both. wrap(denoiser, start_noise): the task's wrapper of the model's
    denoiser, or None. steps: conditions that change during sampling (prompt editing: ldm.tasks.prompts), whose
    tensors replace those of cond / uncond at each step; cond / uncond then hold step 0's.
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor]
    wrap: Callable[[Denoiser, torch.Tensor], Denoiser] | None = None
    steps: StepConditions | None = None

    def with_inputs(self, **tensors: torch.Tensor) -> Conditioning:
        """The same conditioning with extra inputs (e.g. concat, y) on both sides of guidance."""
        return replace(self, cond={**self.cond, **tensors}, uncond={**self.uncond, **tensors})

    def denoiser(
        self, model: LatentDiffusion, options: SamplingOptions, noise: torch.Tensor, sigmas: torch.Tensor | None = None
    ) -> Denoiser:
        """network -> parameterisation -> task wrapper -> guidance (-> with `steps`, each step's guidance, chosen on
        the run's grid `sigmas`, by default the whole of `model_sigmas`: ldm.sampling.denoisers.ScheduledDenoiser)."""
        if options.sampler in VARIANCE_SAMPLERS:
            return self.variance_denoiser(model, options, noise)
        if getattr(model, "class_names", None) is not None and "y" not in self.cond and "y" not in self.uncond:
            # A task that gives no label (img2img, walk, ...) runs a class-conditional model with the null label.
            null = model.class_labels([None] * noise.shape[0])
            return replace(self, cond={**self.cond, "y": null}, uncond={**self.uncond, "y": null}).denoiser(
                model, options, noise, sigmas
            )
        inner = model.denoiser()
        if getattr(model, "controls", None):  # ControlNets (ldm.models.controlnet.using_controlnets): on the network
            inner = controlled_denoiser(model, inner, model_sigmas(model, options), noise)
        if self.wrap is not None:
            inner = self.wrap(inner, noise)
        if self.steps is None:
            return guided_denoiser(model, options, inner, self.cond, self.uncond)
        # One guidance per distinct condition, all over the same network and task wrapper.
        guided = [
            guided_denoiser(model, options, inner, {**self.cond, **cond}, {**self.uncond, **uncond})
            for cond, uncond in self.steps.conditions
        ]
        return ScheduledDenoiser(guided, self.steps.at_step, model_sigmas(model, options) if sigmas is None else sigmas)

    def variance_denoiser(
        self, model: LatentDiffusion, options: SamplingOptions, noise: torch.Tensor
    ) -> GuidedVarianceDenoiser:
        """network -> (x0, learned variance) -> guidance, for the learned-variance sampler (VARIANCE_SAMPLERS)."""
        if not getattr(model, "learned_variance", False):
            raise InvalidOptionError(
                f"sampler {options.sampler!r} needs a model with a learned variance (its config's learned_variance)"
            )
        if options.guidance_rescale or options.threshold is not None:
            raise InvalidOptionError("guidance rescale and thresholding are not implemented with the learned variance")
        if getattr(model, "controls", None):
            raise InvalidOptionError("ControlNets are not implemented with the learned variance; leave --control out")
        if self.wrap is not None:
            raise InvalidOptionError(f"sampler {options.sampler!r} samples whole text-to-image latents only")
        if self.steps is not None:  # its denoiser takes one condition for the whole run
            raise InvalidOptionError("prompt editing is not implemented with the learned variance; leave it out")
        if getattr(model, "class_names", None) is not None and "y" not in self.cond and "y" not in self.uncond:
            return self.with_inputs(y=model.class_labels([None] * noise.shape[0])).variance_denoiser(
                model, options, noise
            )
        return GuidedVarianceDenoiser(
            LearnedVarianceDenoiser(model.unet, model.parameterisation()),
            self.cond,
            self.uncond,
            options.guidance_scale,
        )


def guided_denoiser(
    model: LatentDiffusion, options: SamplingOptions, inner: Denoiser, cond: dict, uncond: dict
) -> Denoiser:
    """The guidance over `inner`: CFGDenoiser, or for a guidance-distilled student its one call with the scale."""
    if getattr(model, "guidance_embedded", False):  # a distilled student: guidance is an input, one call per step
        if options.guidance_rescale:
            raise InvalidOptionError(
                "guidance rescale needs the conditional prediction apart, which a "
                "guidance-distilled model does not make; leave it at 0 or use the full "
                "model (--model full)"
            )
        return EmbeddedGuidanceDenoiser(inner, cond, options.guidance_scale, threshold=options.threshold)
    return CFGDenoiser(
        inner, cond, uncond, options.guidance_scale, rescale=options.guidance_rescale, threshold=options.threshold
    )


def denoise(
    model: LatentDiffusion,
    conditioning: Conditioning,
    options: SamplingOptions,
    noise: torch.Tensor,
    generator: Generators,
    x0: torch.Tensor | None = None,
    strength: float = 1.0,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
) -> torch.Tensor:
    """Clean latents, sampled from unit `noise` [B, C, h, w] scaled to the first sigma (`start_scale`), or from
    x0 + noise * sigma, under the `precision`'s autocast.

    x0 None, or strength 1: from pure noise (img2img at strength 1 is txt2img with the same seed).
    Otherwise the grid keeps floor(strength * steps) steps and starts from x0 + noise * sigma;
    strength 0 returns x0 untouched.
    """
    check_strength(strength)
    sigmas = model_sigmas(model, options)
    if x0 is not None:
        if strength < 1.0:
            sigmas = truncate_sigmas(sigmas, strength)
        if strength == 0.0 or len(sigmas) < 2:
            return x0
    x = noise * start_scale(options, sigmas[0]) if x0 is None or strength == 1.0 else x0 + noise * sigmas[0]
    denoiser = conditioning.denoiser(model, options, noise, sigmas)
    if isinstance(denoiser, ScheduledDenoiser) and callback is not None:
        callback = labelled_steps(callback, denoiser, conditioning.steps)
    return sample(denoiser, x, sigmas, options, generator, callback, progress, precision)


def labelled_steps(
    callback: Callable[[dict], None], denoiser: ScheduledDenoiser, steps: StepConditions
) -> Callable[[dict], None]:
    """The callback with what the step's model call was conditioned on: "prompts" and "negative_prompts", the texts
    of each image (prompt editing; the condition every sampler calls before its callback)."""

    def report(info: dict) -> None:
        used = denoiser.used if denoiser.used is not None else steps.at_step[0]
        callback({**info, **(steps.labels[used] if steps.labels else {}), "condition": used})

    return report


def sample_seeded(
    model: LatentDiffusion,
    conditioning: Conditioning,
    options: SamplingOptions,
    seed: int,
    shape: tuple[int, ...] | torch.Size,
    x0: torch.Tensor | None = None,
    strength: float = 1.0,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
) -> torch.Tensor:
    """`denoise` for a batch of `shape` [B, C, h, w] where image i uses seed + i, for its start noise and its steps."""
    n = shape[0]
    noise = start_noise(tuple(shape[1:]), [seed + i for i in range(n)], model.device)
    if x0 is not None:
        noise = noise.to(x0.dtype)
    generators = image_generators(model.device, seed, n)
    return denoise(model, conditioning, options, noise, generators, x0, strength, callback, progress, precision)
