"""Samplers: short plain functions over a denoiser `model(x, sigma) -> x0`.

Every sampler has the signature `fn(model, x, sigmas, extra_args=None, callback=None,
disable=None, generator=None, **options)`: x starts at noise level sigmas[0] (for pure noise,
`noise * sigmas[0]`), sigmas decrease to 0, and all randomness comes from `generator` so a
seed reproduces a result. `callback({"i", "x", "sigma", "denoised"})` runs after each step.
They know nothing of text, VAEs or timesteps; ldm.denoisers adapts the networks.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import trange


class UnknownSamplerError(ValueError):
    pass


class InvalidStrengthError(ValueError):
    pass


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE: (x - D(x, sigma)) / sigma (= the eps estimate)."""
    return (x - denoised) / sigma


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _steps(sigmas: torch.Tensor, disable: bool | None):
    return trange(len(sigmas) - 1, disable=disable, leave=False, desc="sampling")


def _eval(model, x, sigma, extra_args):
    return model(x, sigma * x.new_ones(x.shape[0]), **(extra_args or {}))


def _report(callback, i, x, sigma, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """First-order ODE step: x <- x + d * (sigma_next - sigma)."""
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        x = x + _d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        _report(callback, i, x, sigmas[i], denoised)
    return x


def _ancestral_split(sigma, sigma_next, eta):
    """Split a step to sigma_next into a deterministic part down to sigma_down and fresh noise sigma_up."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, sigma_next * 0
    up = torch.clamp(eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt(), max=sigma_next)
    return (sigma_next**2 - up**2).sqrt(), up


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None, eta=1.0):
    for i in _steps(sigmas, disable):
        denoised = _eval(model, x, sigmas[i], extra_args)
        down, up = _ancestral_split(sigmas[i], sigmas[i + 1], eta)
        x = x + _d(x, sigmas[i], denoised) * (down - sigmas[i])
        if up > 0:
            x = x + _noise(x, generator) * up
        _report(callback, i, x, sigmas[i], denoised)
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None, eta=0.0):
    """DDIM (Song et al. 2021) in sigma space; eta = 0 is deterministic, eta = 1 is DDPM's posterior.

    With ab = 1 / (1 + sigma^2), the VP update's noise std is
    sigma_e = eta * sqrt((1 - ab_next) / (1 - ab)) * sqrt(1 - ab / ab_next); divided by sqrt(ab_next)
    it becomes sigma_up here, and the deterministic part lands on sigma_down = sqrt(sigma_next^2 - sigma_up^2).
    """
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        eps = _d(x, sigma, denoised)
        if eta > 0 and sigma_next > 0:
            ab, ab_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
            sigma_e = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt()
            up = sigma_e / ab_next.sqrt()
            down = (sigma_next**2 - up**2).clamp(min=0).sqrt()
            x = denoised + eps * down + _noise(x, generator) * up
        else:
            x = denoised + eps * sigma_next
        _report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """Ancestral DDPM sampling: each step draws from the posterior q(x_next | x, x0_hat) (= DDIM, eta 1)."""
    return sample_ddim(model, x, sigmas, extra_args, callback, disable, generator, eta=1.0)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """Second-order: Euler predictor, then the trapezoid rule with the slope at the predicted point."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        d = _d(x, sigma, denoised)
        dt = sigma_next - sigma
        x_euler = x + d * dt
        if sigma_next == 0:  # no slope at sigma = 0; the last step stays Euler
            x = x_euler
        else:
            d_next = _d(x_euler, sigma_next, _eval(model, x_euler, sigma_next, extra_args))
            x = x + (d + d_next) / 2 * dt
        _report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_plms(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """Pseudo linear multistep (Liu et al. 2022): Adams-Bashforth on eps, a Heun step to start."""
    history: list[torch.Tensor] = []
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        eps = _d(x, sigma, denoised)
        dt = sigma_next - sigma
        if not history:
            if sigma_next > 0:
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
        _report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022), multistep in lambda = -log sigma on the x0 predictions."""
    old_denoised, h_last = None, None
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
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
        _report(callback, i, x, sigma, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None, eta=1.0):
    """DPM-Solver++(2M) SDE variant (midpoint form): the 2M update plus injected noise, scaled by eta."""
    old_denoised, h_last = None, None
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _eval(model, x, sigma, extra_args)
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x - 0.5 * torch.expm1(-h - eta_h) * (1 / r) * (denoised - old_denoised)
            if eta > 0:
                x = x + _noise(x, generator) * sigma_next * (-torch.expm1(-2 * eta_h)).sqrt()
            h_last = h
        old_denoised = denoised
        _report(callback, i, x, sigma, denoised)
    return x


SAMPLERS: dict[str, Callable] = {
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "plms": sample_plms,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}
DETERMINISTIC = ("ddim", "plms", "euler", "heun", "dpmpp_2m")


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise UnknownSamplerError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}") from None


def truncate_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a sigma grid for starting from a partly noised image (img2img, inpainting).

    strength 1 keeps every step (start from pure noise), 0 keeps none (return the input).
    """
    if not 0.0 <= strength <= 1.0:
        raise InvalidStrengthError(f"strength must be in [0, 1], got {strength}")
    steps = len(sigmas) - 1
    keep = int(round(steps * strength))
    return sigmas[steps - keep:]
