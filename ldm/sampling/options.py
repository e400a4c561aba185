"""The one checked way into the samplers: options, what each sampler takes (mixed precision: ldm.sampling.precision).

`sample(denoiser, x, sigmas, options)` is what every task calls. It hands a sampler exactly the
options that sampler has (`eta` to DDIM and the ancestral samplers, each keyword of `options.extra`
to the sampler that takes it) and refuses, with one line, an option the sampler lacks, so no
setting is silently dropped. `sampler_eta` says which eta a sampler really runs with; image
metadata records that one.

DDIM comes in two variants (`ddim_variant`), which differ only at the ends of the run:
- "k": k-diffusion's, in sigma space: starts from noise * sigmas[0], ends at sigma 0 (ldm.sampling.samplers.sample_ddim);
- "sd": the original Stable Diffusion DDIMSampler's (and diffusers' DDIMScheduler with SD's settings): starts
  from the VP latent x_T = noise, ends at alphas_cumprod[0] and returns the VP latent there (sample_ddim_sd).
None means the model's own (ldm.models.latent_diffusion.LatentDiffusion.ddim_variant, filled in by ldm.tasks.base); where no model
is known, "k". Models built from original SD configs default to "sd", this project's own to "k".
"""  # noqa: E501

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ldm.core import defaults
from ldm.core.errors import InvalidOptionError, LdmError
from ldm.models.seamless import tiling_choice
from ldm.sampling.precision import Precision, autocast
from ldm.sampling.samplers import SAMPLER_OPTIONS, SAMPLERS, Generators, SamplerOptionError, get_sampler, sample_ddim_sd
from ldm.sampling.variance_sampler import sample_ddpm_learned_variance

# What every sampler takes (ldm.sampling.samplers' signature); the rest of a signature are the sampler's own options.
COMMON_PARAMETERS = ("model", "x", "sigmas", "extra_args", "callback", "disable", "generator")
# The sampler beside SAMPLERS (the ones --sampler lists, which run any model): ancestral DDPM with the network's
# learned step variance, for a model with a learned variance only; its denoiser also returns the variance
# (ldm.tasks.base.Conditioning.denoiser builds it). `ldm txt2img --sampler ddpm --learned-variance` runs it.
LEARNED_VARIANCE_SAMPLER = "ddpm_learned_variance"
VARIANCE_SAMPLERS = {LEARNED_VARIANCE_SAMPLER: sample_ddpm_learned_variance}
# Samplers whose noise is fixed by their definition: DDPM is DDIM with eta = 1 and has no eta of its own; the
# learned-variance DDPM is ancestral too, its step noise scaled by the network.
FIXED_ETA = {"ddpm": 1.0, LEARNED_VARIANCE_SAMPLER: 1.0}
DDIM_VARIANTS = defaults.DDIM_VARIANTS  # re-exported
# The largest guidance scale taken. SD is used at 1-20 and beyond a few dozen guidance only saturates the image;
# much further, scale * (cond - uncond) overflows (fp16 at 65504, a distilled student's scale input already at
# 3.4e38, float32's end) and the image comes out black. 1000 leaves fifty times the useful range.
MAX_GUIDANCE_SCALE = 1000.0


class NonFiniteLatentsError(LdmError, FloatingPointError):
    """Sampling made NaN or infinite latents: decoded, they would be a black image."""


def sampler_named(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function of `name`: one of SAMPLERS, or the learned-variance one (VARIANCE_SAMPLERS)."""
    return VARIANCE_SAMPLERS.get(name) or get_sampler(name)


def sampler_parameters(name: str) -> dict[str, Any]:
    """The sampler's own keyword options and their defaults, e.g. {"eta": 0.0} for ddim, {} for euler."""
    params = inspect.signature(sampler_named(name)).parameters
    return {k: p.default for k, p in params.items() if k not in COMMON_PARAMETERS}


def samplers_with(option: str) -> list[str]:
    return [name for name in SAMPLERS if option in sampler_parameters(name)]


def sampler_options_help() -> str:
    """Each sampler's own option with its type and range, for --help: "eta (ddim, ...): a number >= 0; ..."."""
    return "; ".join(
        f"{key} ({', '.join(samplers_with(key))}): {spec.describe()}" for key, spec in SAMPLER_OPTIONS.items()
    )


@dataclass
class SamplingOptions:
    steps: int = defaults.STEPS
    guidance_scale: float = defaults.GUIDANCE_SCALE
    sampler: str = defaults.SAMPLER
    eta: float | None = None  # None: the sampler's own (DDIM 0, the ancestral samplers 1)
    spacing: str = defaults.SPACING
    karras: bool = False
    guidance_rescale: float = 0.0
    threshold: float | None = None
    ddim_variant: str | None = None  # "sd" or "k" (module docstring); None: the model's own
    # Seamless tiling (ldm.models.seamless): "xy" (both axes; True is taken too), "x" or "y"; None: off.
    tiling: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # sampler-specific keyword options

    def validate(self) -> None:
        if self.steps < 1:
            raise InvalidOptionError(f"steps must be at least 1, got {self.steps}")
        numbers = ("guidance_scale", "guidance_rescale") + (("eta",) if self.eta is not None else ())
        for name in numbers:  # NaN and Inf give black images and invalid JSON
            if not math.isfinite(getattr(self, name)):
                raise InvalidOptionError(f"{name.replace('_', ' ')} must be a finite number, got {getattr(self, name)}")
        if self.guidance_scale < 0:
            raise InvalidOptionError(f"guidance scale must be >= 0, got {self.guidance_scale}")
        if self.guidance_scale > MAX_GUIDANCE_SCALE:
            raise InvalidOptionError(
                f"guidance scale must be at most {MAX_GUIDANCE_SCALE:g}, "
                f"got {self.guidance_scale:g} (useful values are about 1-20)"
            )
        if self.eta is not None and self.eta < 0:
            raise InvalidOptionError(f"eta must be >= 0, got {self.eta}")
        if self.ddim_variant is not None:
            if self.ddim_variant not in DDIM_VARIANTS:
                raise InvalidOptionError(
                    f"unknown DDIM variant {self.ddim_variant!r}; known: {', '.join(DDIM_VARIANTS)}"
                )
            if self.sampler != "ddim":
                raise SamplerOptionError(f"sampler {self.sampler!r} has no DDIM variant (only ddim has)")
        self.tiling = tiling_choice(self.tiling)  # True -> "xy", False -> None; anything else is refused
        sampler_kwargs(self)  # unknown samplers and options they lack fail before any work


def task_options(task: str, **overrides: Any) -> SamplingOptions:
    """A task's default options (ldm.core.defaults: the same in the CLI, the API and the app), with overrides."""
    return SamplingOptions(**{**defaults.TASK_SAMPLING.get(task, {}), **overrides})


def sampler_kwargs(options: SamplingOptions) -> dict[str, Any]:
    """The keyword options the sampler gets: each one it has, with eta made explicit; others are refused."""
    own = sampler_parameters(options.sampler)
    kwargs = dict(options.extra)
    if options.eta is not None:
        if "eta" in kwargs:
            raise SamplerOptionError("eta is given twice (as eta and in extra); give it once")
        kwargs["eta"] = float(options.eta)
    for key, value in kwargs.items():
        if key not in own:
            takers = samplers_with(key)
            hint = f" (samplers with {key}: {', '.join(takers)})" if takers else ""
            raise SamplerOptionError(f"sampler {options.sampler!r} has no option {key!r}{hint}")
        spec = SAMPLER_OPTIONS.get(key)
        if spec is not None and not spec.accepts(value):
            raise SamplerOptionError(f"sampler option {key} must be {spec.describe()}, got {value!r:.60}")
    if "eta" in own:
        kwargs.setdefault("eta", own["eta"])
    return kwargs


def sampler_eta(options: SamplingOptions) -> float | None:
    """The eta the sampler really uses: the one given, else the sampler's own default (DDIM 0, ancestral 1),
    1 for DDPM; None where the sampler has no noise to scale."""
    if options.sampler in FIXED_ETA:
        return FIXED_ETA[options.sampler]
    eta = sampler_kwargs(options).get("eta")
    return None if eta is None else float(eta)


def ddim_variant_of(options: SamplingOptions) -> str | None:
    """The DDIM variant that runs: the one given, else "k" (tasks fill in the model's first); None for other samplers."""  # noqa: E501
    if options.sampler != "ddim":
        return None
    return options.ddim_variant or "k"


def start_scale(options: SamplingOptions, sigma: torch.Tensor) -> torch.Tensor:
    """What unit noise is multiplied by to start from pure noise at `sigma`: sigma itself, or for SD's DDIM
    sqrt(1 + sigma^2), its x_T = noise in VP space (x = x_vp * sqrt(1 + sigma^2))."""
    return (1 + sigma**2).sqrt() if ddim_variant_of(options) == "sd" else sigma


def sampler_function(options: SamplingOptions) -> Callable[..., torch.Tensor]:
    """The function that runs the options' sampler: sample_ddim_sd for SD's DDIM, else the registered one."""
    return sample_ddim_sd if ddim_variant_of(options) == "sd" else sampler_named(options.sampler)


def sample(
    denoiser: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    options: SamplingOptions,
    generator: Generators = None,
    callback: Callable[[dict], None] | None = None,
    progress: bool = True,
    precision: str | Precision = "fp32",
) -> torch.Tensor:
    """Run the options' sampler over `denoiser` from x (already at noise level sigmas[0]) to a clean sample, under
    the `precision`'s autocast (ldm.sampling.precision).

    Latents that become NaN or infinite (too large a guidance scale, LoRA or embedding for the model) raise
    NonFiniteLatentsError naming the first step whose prediction was not finite, instead of decoding to black.
    """
    sampler = sampler_function(options)
    kwargs = sampler_kwargs(options)
    # One reduction per step, kept as a device tensor (no host sync in the loop); read only when the end is bad.
    finite_steps: list[torch.Tensor] = []

    def watch(info: dict) -> None:
        finite_steps.append(torch.isfinite(info["denoised"]).all())
        if callback is not None:
            callback(info)

    with autocast(x.device, precision):
        x = sampler(denoiser, x, sigmas, callback=watch, disable=not progress, generator=generator, **kwargs)
    check_finite_latents(x, finite_steps)
    return x


def check_finite_latents(latents: torch.Tensor, finite_steps: list[torch.Tensor] | None = None) -> None:
    """Raise NonFiniteLatentsError if sampling's result holds NaN or infinity; `finite_steps` (one 0-d bool tensor
    per step: was its prediction finite) tell at which step it went wrong."""
    if bool(torch.isfinite(latents).all()):
        return
    steps = finite_steps or []
    first = next((i for i, finite in enumerate(steps) if not bool(finite)), None)
    where = f" at step {first + 1} of {len(steps)}" if first is not None else ""
    raise NonFiniteLatentsError(
        f"sampling produced non-finite latents{where}: the guidance scale, a LoRA weight or "
        "an embedding is probably too large for this model"
    )
