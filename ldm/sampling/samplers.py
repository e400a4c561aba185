"""Samplers: short plain functions over a denoiser `model(x, sigma, **extra_args) -> x0`.

Conventions (k-diffusion's):
- sigma space: x = x0 + sigma * eps. `sigmas` is a decreasing 1-D grid ending in 0
  (ldm.diffusion.schedules.get_sigmas); every sampler steps x from sigmas[0] to 0 and returns the clean sample
  (except sample_ddim_sd, whose grid ends at sigma(t = 0) as the original SD DDIM's does).
- x must already be at noise level sigmas[0]. From pure noise that is `randn * sigmas[0]`, NOT
  unit noise: SD's sigma_max is about 14.6. (A VP latent x_vp is x * sqrt(ab) = x / sqrt(1 + sigma^2);
  at sigma = 0 the two agree, so the result needs no conversion.) For img2img / inpainting start
  at `x0 + noise * sigmas[0]` with `truncate_sigmas(sigmas, strength)`.
- model(x, sigma_batch) gets sigma as a [B] tensor; the samplers know nothing of timesteps, text or
  VAEs (ldm.sampling.denoisers adapts networks, CFGDenoiser adds guidance).
- all randomness comes from `generator` (drawn on its device), so a seed reproduces a result; a list
  of generators gives each image of the batch its own stream.
- callback({"i", "x", "sigma", "denoised"}) runs once per step i, before x moves on: x is the
  current state at noise level sigma = sigmas[i] and denoised = model(x, sigma), its x0 estimate.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ldm.core.errors import InvalidOptionError, LdmError
from ldm.sampling.samplers_extra import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_lcm,
    sample_lms,
)
from ldm.sampling.samplers_unipc import sample_unipc, sample_unipc_bh2
from ldm.sampling.steps import (  # the pieces every sampler is made of, shared with samplers_extra and samplers_unipc
    Callback,
    Denoiser,
    Generators,
    _d,
    _eval,
    _noise,
    _report,
    _steps,
    ancestral_step,
)  # fmt: skip


class UnknownSamplerError(LdmError, ValueError):
    pass


class SamplerOptionError(InvalidOptionError):
    """An option the chosen sampler does not have (eta for euler), or one of its own out of its range (a negative
    corrector_steps)."""


class InvalidStrengthError(LdmError, ValueError):
    """A strength (img2img, inpainting: how much of the input is re-noised) outside [0, 1]."""


def check_strength(strength: float) -> None:
    """The one check of a strength, for every task that takes one."""
    if not 0.0 <= strength <= 1.0:  # also rejects NaN
        raise InvalidStrengthError(f"strength must be in [0, 1], got {strength}")


@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None,
                 generator: Generators = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. Alg. 1)."""
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None,
                           generator: Generators = None, eta: float = 1.0) -> torch.Tensor:
    """Euler down to sigma_down, then noise of std sigma_up back up to sigma_next (`ancestral_step`)."""
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas[i], denoised)
        down, up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        if up > 0:
            x = x + _noise(x, generator) * up
    return x


@torch.no_grad()
def sample_ddim(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                generator: Generators = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) written in sigma space.

    The VP update is x_vp' = sqrt(ab') x0 + sqrt(1 - ab' - s_e^2) eps + s_e z with
        s_e = eta * sqrt((1 - ab') / (1 - ab)) * sqrt(1 - ab / ab'),   ab = 1 / (1 + sigma^2).
    Dividing by sqrt(ab') gives x' = x0 + sigma_down * eps + sigma_up * z with
        sigma_up = s_e / sqrt(ab'),   sigma_down = sqrt(sigma'^2 - sigma_up^2).
    eta = 0 is deterministic and is exactly Euler in this space (x / sqrt(ab)); eta = 1 is DDPM.
    """
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        eps = _d(x, sigma, denoised)
        if eta > 0 and sigma_next > 0:
            ab, ab_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
            s_e = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt()
            up = s_e / ab_next.sqrt()
            down = (sigma_next**2 - up**2).clamp(min=0).sqrt()
            x = denoised + eps * down + _noise(x, generator) * up
        else:
            x = denoised + eps * sigma_next
    return x


@torch.no_grad()
def sample_ddim_sd(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                   callback: Callback | None = None, disable: bool | None = None,
                   generator: Generators = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM with the ends of the original Stable Diffusion DDIMSampler (and of diffusers' DDIMScheduler with
    set_alpha_to_one=False), which work in VP space, x_vp = x / sqrt(1 + sigma^2):

    - its last step goes to alphas_cumprod[0], not to a clean sample: here `sigmas` ends at sigma(t = 0)
      (get_sigmas(..., to_zero=False)), not at 0, and the steps are sample_ddim's;
    - it returns the VP latent there, which it decodes as it is: x / sqrt(1 + sigma_end^2);
    - from pure noise it starts at x_vp = noise, i.e. x = noise * sqrt(1 + sigmas[0]^2) rather than
      noise * sigmas[0] (ldm.sampling.options.start_scale): the caller's part, as for every sampler.
    With a grid ending in 0 this is exactly sample_ddim.
    """
    x = sample_ddim(model, x, sigmas, extra_args, callback, disable, generator, eta)
    return x / (1 + sigmas[-1] ** 2).sqrt()


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                generator: Generators = None) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020): each step draws x' ~ q(x' | x, x0 = D(x, sigma)), the posterior
    with variance beta~ = (1 - ab') / (1 - ab) * (1 - ab / ab'); that is DDIM with eta = 1."""
    return sample_ddim(model, x, sigmas, extra_args, callback, disable, generator, eta=1.0)


@torch.no_grad()
def sample_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                generator: Generators = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. Alg. 1): Euler predictor, then the trapezoid rule
        x' = x + (d(x, sigma) + d(x_euler, sigma')) / 2 * (sigma' - sigma);
    two model calls per step except the last, where d at sigma = 0 is undefined and Euler is used."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        d = _d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_euler = x + d * dt
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = _d(x_euler, sigma_next, _eval(model, x_euler, sigma_next, extra_args))
            x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_plms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                generator: Generators = None) -> torch.Tensor:
    """Pseudo linear multistep (Liu et al. 2022, PNDM) as in the reference SD PLMS sampler.

    A DDIM step with eps e is x' = x + e * (sigma' - sigma) in sigma space; PLMS replaces e by an
    Adams-Bashforth combination of the current and up to three previous eps estimates, with
    constant coefficients (1: a Heun step; 2: (3, -1)/2; 3: (23, -16, 5)/12; 4+: (55, -59, 37, -9)/24).
    The coefficients assume equal steps, so on the usual uneven sigma grids it is second order.
    """
    history: list[torch.Tensor] = []
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        eps = _d(x, sigma, denoised)
        dt = sigma_next - sigma
        if not history:
            if sigma_next > 0:  # start-up: a pseudo improved Euler step, one extra model call
                x_pred = x + eps * dt
                eps_prime = (eps + _d(x_pred, sigma_next, _eval(model, x_pred, sigma_next, extra_args))) / 2
            else:
                eps_prime = eps
        elif len(history) == 1:
            eps_prime = (3 * eps - history[-1]) / 2
        elif len(history) == 2:
            eps_prime = (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = (history + [eps])[-3:]
        x = x + eps_prime * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None,
                    generator: Generators = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in lambda = -log sigma, h = lambda' - lambda:

        x' = (sigma' / sigma) x - (e^{-h} - 1) D,   D = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},  r = h_{i-1} / h,

    first order (D = D_i) on the first step; the final step to sigma = 0 returns D_i itself.
    """
    old_denoised, h_last = None, None
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            d = denoised
            if old_denoised is not None:
                r = h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None,
                        generator: Generators = None, eta: float = 1.0) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, midpoint form), with eta scaling the injected noise:

        x' = (sigma' / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D_i
             + (1 - e^{-(1 + eta) h}) / (2r) (D_i - D_{i-1}) + sigma' sqrt(1 - e^{-2 eta h}) z.

    eta = 0 is exactly DPM-Solver++(2M); eta = 1 is the variance-preserving SDE solver.
    """
    old_denoised, h_last = None, None
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x - torch.expm1(-h - eta_h) / (2 * r) * (denoised - old_denoised)
            if eta > 0:
                x = x + _noise(x, generator) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt()
            h_last = h
        old_denoised = denoised
    return x


def langevin_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> torch.Tensor:
    """Song et al. 2021's signal-to-noise rule (Alg. 4/5, alpha = 1 in sigma space):

        step = 2 * (snr * mean ||z|| / mean ||score||)^2,

    so that the score move step * score and the noise move sqrt(2 step) * z keep the ratio snr. The norms
    are averaged over the batch, as in the paper's code: per sample, a point near a mode has a tiny score
    and would take a huge step (in 2-D toy data that doubled the sampled std). So the step, and with it each
    sample, depends on the rest of its batch."""
    ratio = noise.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean().clamp(min=1e-12)
    return 2 * (snr * ratio) ** 2


@torch.no_grad()
def sample_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
              callback: Callback | None = None, disable: bool | None = None, generator: Generators = None,
              snr: float = 0.16, corrector_steps: int = 1) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2 for the VE SDE, which sigma space is).

    The score is s(x, sigma) = (D(x, sigma) - x) / sigma^2. Each step first moves x from sigma_i to
    sigma_{i+1} with the reverse-diffusion predictor (the discretised reverse VE SDE),
        x <- x + (sigma_i^2 - sigma_{i+1}^2) * s(x, sigma_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) * z,
    then corrects it with `corrector_steps` Langevin steps at fixed sigma_{i+1} (step from `langevin_step_size`):
        x <- x + step * s(x, sigma_{i+1}) + sqrt(2 step) * z.
    The last predictor step (sigma_{i+1} = 0) adds no noise and lands on D(x, sigma_i); no corrector follows it.
    Cost: steps + corrector_steps * (steps - 1) evaluations. snr 0.16 is the paper's CIFAR-10 VE value.
    """
    if corrector_steps < 0 or snr < 0:
        raise SamplerOptionError(f"corrector_steps and snr must be >= 0, got {corrector_steps} and {snr}")
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        _report(callback, i, x, sigma, denoised)
        variance = sigma**2 - sigma_next**2
        x = x + variance * (denoised - x) / sigma**2
        if sigma_next == 0:
            break
        x = x + _noise(x, generator) * variance.sqrt()
        for _ in range(corrector_steps):
            score = (_eval(model, x, sigma_next, extra_args) - x) / sigma_next**2
            z = _noise(x, generator)
            step = langevin_step_size(score, z, snr)
            x = x + step * score + (2 * step).sqrt() * z
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "plms": sample_plms,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "pc": sample_pc,
    "lms": sample_lms,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "unipc_bh2": sample_unipc_bh2,
    "lcm": sample_lcm,
}


@dataclass(frozen=True)
class OptionSpec:
    """What a sampler's own keyword option takes: its type and closed range (None: unbounded on that side)."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{noun} from {self.low:g} to {self.high:g}"
        return f"{noun} >= {self.low:g}" if self.low is not None else noun

    def accepts(self, value: Any) -> bool:
        """Of the type, finite and at most `high`; `low` is checked by the sampler itself (sample_pc) and by
        SamplingOptions.validate (eta), whose messages callers know."""
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        return math.isfinite(value) and (self.high is None or value <= self.high)


# Every sampler's own keyword option (besides the common ones), checked wherever options come in (the CLI's
# --sampler-option, a PNG's settings, the Python API: ldm.sampling.options.sampler_kwargs). The upper bounds keep a
# run's
# cost bounded as --steps is (at most the model's timesteps): pc makes corrector_steps extra U-Net calls per step.
SAMPLER_OPTIONS: dict[str, OptionSpec] = {
    "eta": OptionSpec(float, 0.0),
    "snr": OptionSpec(float, 0.0, 1.0),
    "corrector_steps": OptionSpec(int, 0, 20),
}

# Deterministic with their default options (ddim: eta = 0); the others draw from the generator.
DETERMINISTIC = ("ddim", "plms", "euler", "heun", "dpmpp_2m", "lms", "dpm_2", "unipc", "unipc_bh2")


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function registered under `name`."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UnknownSamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None


def truncate_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a sigma grid, for starting from a partly noised image (img2img, inpainting).

    Keeps floor(strength * steps) steps, as the reference img2img does (t_enc = int(strength * steps)):
    strength 1 keeps the whole grid, 0 keeps only the final 0 (no steps: the input is returned as is).
    Start from x = x0 + noise * result[0].
    """
    steps = len(sigmas) - 1
    return sigmas[steps - strength_steps(steps, strength):]


def strength_steps(steps: int, strength: float) -> int:
    """How many of `steps` steps a run from a partly noised image takes at `strength`: floor(strength * steps)
    (`truncate_sigmas`)."""
    check_strength(strength)
    return int(math.floor(steps * strength + 1e-9))  # the epsilon stops 0.29 * 100 = 28.999... losing a step
