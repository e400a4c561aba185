"""Noise schedules and the sigma (noise-level) grids the samplers walk.

Discrete-time models are trained on timesteps t = 0..T-1 with cumulative signal rates
alpha_bar_t (ab). The samplers work in sigma space (Karras et al. 2022), x = x0 + sigma * eps, with

    sigma_t = sqrt((1 - ab_t) / ab_t),    ab = 1 / (1 + sigma^2),    log-SNR = log(ab / (1 - ab)) = -2 log sigma.

A VP latent x_vp = sqrt(ab) x0 + sqrt(1 - ab) eps is the same point as x = x_vp / sqrt(ab).
"""

from __future__ import annotations

import math

import torch

from ldm.core.errors import LdmError

SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace", "exponential")  # exponential: in sigma, not timesteps (get_sigmas)


class UnknownScheduleError(LdmError, ValueError):
    pass


class UnknownSpacingError(UnknownScheduleError):
    pass


class InvalidStepsError(LdmError, ValueError):
    pass


def make_betas(
    kind: str, num_timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2, cosine_s: float = 8e-3
) -> torch.Tensor:
    """beta_t for t = 0..T-1 (float64).

    linear: DDPM's (Ho et al. 2020), beta linear in t from linear_start to linear_end.
    scaled_linear: Stable Diffusion's, sqrt(beta) linear in t (SD uses 0.00085..0.012). The
        reference CompVis/Stability repository calls this one "linear": map configs accordingly.
    cosine: Nichol & Dhariwal (2021), ab(t) = f(t) / f(0) with f(t) = cos^2((t/T + s) / (1 + s) * pi/2),
        beta_t = 1 - ab(t+1) / ab(t), clipped at 0.999 so the last steps stay finite.
    """
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise InvalidStepsError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((t + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise UnknownScheduleError(f"unknown beta schedule {kind!r}; known: {', '.join(SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ab_t = prod_{s <= t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - ab) / ab): the noise-to-signal ratio of x_vp, the noise std of x = x_vp / sqrt(ab)."""
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """ab = 1 / (1 + sigma^2), the inverse of `sigmas_from_alphas_cumprod`."""
    return 1 / (1 + sigmas**2)


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """lambda = log(ab / (1 - ab)) = -2 log(sigma); log1p keeps it accurate where ab is near 1."""
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)


def sigma_from_log_snr(lam: torch.Tensor) -> torch.Tensor:
    """sigma = exp(-lambda / 2)."""
    return torch.exp(-lam / 2)


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of a sigma, linear in log-sigma between the discrete steps.

    `log_sigmas` is the model's ascending log sigma_t, t = 0..T-1. Sigmas outside the trained
    range clamp to t = 0 or T-1 (sigma = 0 maps to 0): the network has never seen anything else.
    """
    log_sigma = sigma.to(log_sigmas.dtype).clamp(min=1e-10).log()
    log_sigma = log_sigma.clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1).reshape(log_sigma.shape)
    lo = hi - 1
    w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + w).to(sigma.dtype)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """sigma at a (fractional) timestep: log-sigma interpolated linearly, the inverse of `sigma_to_t`."""
    t = t.to(log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=len(log_sigmas) - 1)
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5, `steps` sigmas (float64) from sigma_max down to sigma_min:

        sigma_i = (sigma_max^(1/rho) + i / (steps - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    uniform in sigma^(1/rho), which spends more steps at low noise where detail forms.
    """
    if steps < 1:
        raise InvalidStepsError(f"steps must be at least 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """`steps` sigmas (float64) from sigma_max down to sigma_min, evenly in log sigma (k-diffusion's
    get_sigmas_exponential, A1111's "Exponential" schedule type): exp(linspace(log sigma_max, log sigma_min, steps))."""
    if steps < 1:
        raise InvalidStepsError(f"steps must be at least 1, got {steps}")
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()


def timesteps_for(num_timesteps: int, steps: int, spacing: str = "leading") -> torch.Tensor:
    """The descending (possibly fractional) timesteps a spacing visits, float64.

    leading: the reference DDIM's range(0, T, T // steps) + 1 (never reaches T - 1; the +1 is
        dropped only when steps == T, where it would leave the schedule).
    trailing: round(T - i * T / steps) - 1 (Lin et al. 2023, "Common Diffusion Noise Schedules and
        Sample Steps are Flawed"): the first step is always T - 1, the highest trained noise.
    linspace: evenly from T - 1 to 0, fractional (k-diffusion's choice; sigmas interpolate in log).
    """
    T = num_timesteps
    if not isinstance(steps, int) or steps < 1:
        raise InvalidStepsError(f"steps must be a positive integer, got {steps!r}")
    if steps > T:
        raise InvalidStepsError(f"steps ({steps}) cannot exceed the model's {T} timesteps with {spacing!r} spacing")
    if spacing == "leading":
        stride = T // steps
        offset = 1 if (steps - 1) * stride + 1 <= T - 1 else 0
        return (torch.arange(steps, dtype=torch.float64) * stride + offset).flip(0)
    if spacing == "trailing":
        return (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1
    if spacing == "linspace":
        return torch.linspace(T - 1, 0, steps, dtype=torch.float64)
    raise UnknownSpacingError(f"unknown timestep spacing {spacing!r}; known: {', '.join(SPACINGS)}")


def get_sigmas(
    alphas_cumprod: torch.Tensor,
    steps: int,
    spacing: str = "leading",
    karras: bool = False,
    rho: float = 7.0,
    to_zero: bool = True,
) -> torch.Tensor:
    """`steps` strictly decreasing sigmas followed by a final 0, float32 on the CPU.

    The spacings are those of `timesteps_for`; karras=True ignores the spacing and uses
    Karras et al.'s rho-spacing between the model's own sigma_min (t = 0) and sigma_max (t = T-1).
    Samplers step from sigmas[i] to sigmas[i+1]; the last step lands on 0, i.e. a clean sample.
    to_zero=False ends the grid at sigma_min = sigma(t = 0) instead: where the original Stable Diffusion
    DDIM's last step lands (its final alpha_bar is alphas_cumprod[0], ldm.sampling.samplers.sample_ddim_sd). A grid
    that already reaches t = 0 (karras, or trailing with steps == T) then repeats it: a last step of length 0.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidStepsError(f"steps must be a positive integer, got {steps!r}")
    model_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod.detach().double().cpu())
    if karras:
        sigmas = karras_sigmas(float(model_sigmas[0]), float(model_sigmas[-1]), steps, rho)
    elif spacing == "exponential":  # evenly in log sigma between the model's ends (exponential_sigmas)
        sigmas = exponential_sigmas(float(model_sigmas[0]), float(model_sigmas[-1]), steps)
    else:
        sigmas = t_to_sigma(timesteps_for(len(alphas_cumprod), steps, spacing), model_sigmas.log())
    final = sigmas.new_zeros(1) if to_zero else model_sigmas[:1]
    return torch.cat([sigmas, final]).float()
