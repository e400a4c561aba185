"""Noise schedules and the sigma (noise-level) grids the samplers walk.

Discrete-time models are trained on timesteps t = 0..T-1 with cumulative signal rates
alpha_bar_t. The samplers work in sigma space, x = x0 + sigma * eps, where
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t); a VP latent x_vp maps to x = x_vp / sqrt(alpha_bar).
"""
from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


class UnknownScheduleError(ValueError):
    pass


class InvalidStepsError(ValueError):
    pass


def make_betas(kind: str, num_timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
               cosine_s: float = 8e-3) -> torch.Tensor:
    """beta_t for t = 0..T-1 (float64).

    linear: DDPM's betas linear in t. scaled_linear: SD's, linear in sqrt(beta) (the reference
    repository calls this one "linear"). cosine: Nichol & Dhariwal's alpha_bar = cos^2, betas clipped at 0.999.
    """
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
        return betas.clamp(max=0.999)
    raise UnknownScheduleError(f"unknown beta schedule {kind!r}; known: {', '.join(SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(alpha_bar / (1 - alpha_bar)) = -2 log(sigma)."""
    return torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep for a sigma, interpolating linearly in log-sigma between discrete steps."""
    log_sigma = sigma.to(log_sigmas.dtype).clamp(min=1e-10).log()
    log_sigma = log_sigma.clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(log_sigmas) - 1).reshape(log_sigma.shape)
    lo = hi - 1
    w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return (lo + w).to(sigma.dtype)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    t = t.to(log_sigmas.dtype).clamp(0, len(log_sigmas) - 1)
    lo = t.floor().long()
    hi = (lo + 1).clamp(max=len(log_sigmas) - 1)
    w = t - lo
    return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: uniform in sigma^(1/rho), which spends more steps at low noise."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def get_sigmas(alphas_cumprod: torch.Tensor, steps: int, spacing: str = "leading", karras: bool = False,
               rho: float = 7.0) -> torch.Tensor:
    """`steps` decreasing sigmas followed by a final 0 (float32).

    leading: the reference DDIM's timesteps range(0, T, T // steps) + 1; trailing: counted back
    from T-1 so the first step sees the highest noise level (Lin et al. 2023); linspace: evenly
    spaced from T-1 to 0; karras: rho-spacing between the model's sigma_min and sigma_max.
    """
    if not isinstance(steps, int) or steps < 1:
        raise InvalidStepsError(f"steps must be at least 1, got {steps}")
    T = len(alphas_cumprod)
    if steps > T:
        raise InvalidStepsError(f"steps ({steps}) cannot exceed the model's {T} timesteps")
    sigmas_all = sigmas_from_alphas_cumprod(alphas_cumprod.double().cpu())
    if karras:
        sigmas = karras_sigmas(float(sigmas_all[0]), float(sigmas_all[-1]), steps, rho)
    else:
        if spacing == "leading":
            t = (torch.arange(steps, dtype=torch.float64) * (T // steps) + 1).clamp(max=T - 1).flip(0)
        elif spacing == "trailing":
            t = (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1
        elif spacing == "linspace":
            t = torch.linspace(T - 1, 0, steps, dtype=torch.float64)
        else:
            raise UnknownScheduleError(f"unknown timestep spacing {spacing!r}; known: {', '.join(SPACINGS)}")
        sigmas = t_to_sigma(t, sigmas_all.log())
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()
