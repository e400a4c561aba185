"""Text-to-image: prompts -> guided sampling in latent space -> PIL images.

The sampling core (`sample`) is shared with the editing tasks: it takes start noise or a
noised latent, prompt conditions and options, and knows nothing about where they came from.
"""
from __future__ import annotations

import inspect
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from PIL import Image

from ldm.errors import LdmError, InvalidOptionError
from ldm.denoisers import CFGDenoiser
from ldm.images import check_size, tensor_to_pil
from ldm.model import LatentDiffusion
from ldm.samplers import get_sampler
from ldm.schedules import get_sigmas

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class PrecisionError(LdmError, ValueError):
    pass


@dataclass
class SamplingOptions:
    steps: int = 30
    guidance_scale: float = 7.5
    sampler: str = "ddim"
    eta: float = 0.0
    spacing: str = "leading"
    karras: bool = False
    guidance_rescale: float = 0.0
    threshold: float | None = None
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)  # sampler-specific keyword options

    def validate(self) -> None:
        if self.steps < 1:
            raise InvalidOptionError(f"steps must be at least 1, got {self.steps}")
        for name in ("guidance_scale", "eta", "guidance_rescale"):  # NaN and Inf give black images and invalid JSON
            if not math.isfinite(getattr(self, name)):
                raise InvalidOptionError(f"{name.replace('_', ' ')} must be a finite number, got {getattr(self, name)}")
        if self.guidance_scale < 0:
            raise InvalidOptionError(f"guidance scale must be >= 0, got {self.guidance_scale}")
        if self.eta < 0:
            raise InvalidOptionError(f"eta must be >= 0, got {self.eta}")
        if self.precision not in PRECISIONS:
            raise PrecisionError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        get_sampler(self.sampler)  # unknown names fail before any work


def autocast(device: torch.device, precision: str):
    """Mixed precision where the device supports it; fp32 runs as is."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise PrecisionError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=dtype)


def prompt_conditions(model: LatentDiffusion, prompts: list[str], negative_prompts: list[str]) -> tuple[dict, dict]:
    """Cross-attention contexts for the prompts and for the unconditional side of guidance.

    The negative prompt replaces the empty prompt as the unconditional embedding.
    """
    context = model.encode_text(prompts + negative_prompts)
    return {"context": context[: len(prompts)]}, {"context": context[len(prompts):]}


def sample(model: LatentDiffusion, x: torch.Tensor, sigmas: torch.Tensor, cond: dict, uncond: dict,
           options: SamplingOptions, generator: torch.Generator | list[torch.Generator] | None = None,
           callback: Callable[[dict], None] | None = None, progress: bool = True) -> torch.Tensor:
    """Run the chosen sampler with classifier-free guidance from x (already at noise level sigmas[0])."""
    denoiser = CFGDenoiser(model.denoiser(), cond, uncond, options.guidance_scale,
                           rescale=options.guidance_rescale, threshold=options.threshold)
    sampler = get_sampler(options.sampler)
    kwargs = dict(options.extra)
    if options.sampler in ("ddim",):
        kwargs.setdefault("eta", options.eta)
    with autocast(x.device, options.precision):
        return sampler(denoiser, x, sigmas, callback=callback, disable=not progress, generator=generator, **kwargs)


def start_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise, one seed per image, drawn on the CPU so a seed gives the same image on any device."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(noise).to(device)


def image_generators(device: torch.device, seed: int, count: int) -> list[torch.Generator]:
    """The step noise generators of a batch: image i's seeded seed + i, like its start noise (as A1111 does), so
    image i of a batch is the image seed + i gives alone, with any sampler. A single image's generator is
    seeded `seed`, as the one batch generator was, so single images are unchanged."""
    return [torch.Generator(device).manual_seed(seed + i) for i in range(count)]


def model_sigmas(model: LatentDiffusion, options: SamplingOptions) -> torch.Tensor:
    return get_sigmas(model.alphas_cumprod, options.steps, spacing=options.spacing, karras=options.karras).to(model.device)


@torch.no_grad()
def txt2img(model: LatentDiffusion, prompts: list[str] | str, negative_prompt: str | list[str] = "",
            height: int | None = None, width: int | None = None, seed: int = 0,
            options: SamplingOptions | None = None, callback: Callable[[dict], None] | None = None,
            progress: bool = True, loras: list[tuple[str, float]] | None = None,
            **option_overrides: Any) -> list[Image.Image]:
    """Generate one image per prompt. Image i uses seed + i, so any single image can be re-made alone.

    Options are a SamplingOptions or keyword overrides (steps=20, guidance_scale=5, sampler="euler", ...).
    loras: [(LoRA file, weight), ...] applied for this call only (ldm.lora).
    """
    if loras:
        from ldm.lora import using_loras

        with using_loras(model, loras):
            return txt2img(model, prompts, negative_prompt, height, width, seed, options, callback, progress,
                           **option_overrides)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise InvalidOptionError("no prompts given")
    options = options or SamplingOptions()
    for key, value in option_overrides.items():
        if not hasattr(options, key):
            raise InvalidOptionError(f"unknown sampling option {key!r}")
        setattr(options, key, value)
    options.validate()
    height = model.default_image_size if height is None else height  # 0 is an error, not "the default"
    width = model.default_image_size if width is None else width
    check_size(height, width, max(8, model.downscale))
    negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) != len(prompts):
        raise InvalidOptionError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    cond, uncond = prompt_conditions(model, prompts, negatives)
    shape = (model.latent_channels, height // model.downscale, width // model.downscale)
    sigmas = model_sigmas(model, options)
    x = start_noise(shape, [seed + i for i in range(len(prompts))], model.device) * sigmas[0]
    latents = sample(model, x, sigmas, cond, uncond, options, image_generators(model.device, seed, len(prompts)),
                     callback, progress)
    with autocast(model.device, options.precision):
        images = model.decode_latent(latents)
    return tensor_to_pil(images)


def sampler_eta(options: SamplingOptions) -> float | None:
    """The eta the sampler really uses: --eta for DDIM, 1 for DDPM, the ancestral samplers' own eta
    (their default 1 unless given in `extra`); None where the sampler has no noise to scale."""
    if options.sampler == "ddim":
        return float(options.eta)
    if options.sampler == "ddpm":
        return 1.0
    parameter = inspect.signature(get_sampler(options.sampler)).parameters.get("eta")
    return None if parameter is None else float(options.extra.get("eta", parameter.default))


def settings_dict(prompt: str, negative_prompt: str, seed: int, height: int, width: int, options: SamplingOptions,
                  model: LatentDiffusion | None = None, **more: Any) -> dict[str, Any]:
    """What goes into each PNG's metadata: enough to make the same image again, as it was really made.

    `eta` is the one the sampler used (not the --eta of a sampler that ignores it); `model` adds the
    weights' file name and SHA-256 (ldm.model.load_model records them), which say which model made it.
    """
    opts = asdict(options)
    extra = opts.pop("extra")
    opts["eta"] = sampler_eta(options)
    identity = dict(getattr(model, "identity", None) or {}) if model is not None else {}
    return {"prompt": prompt, "negative_prompt": negative_prompt, "seed": seed, "height": height, "width": width,
            **opts, **extra, **identity, **more}
