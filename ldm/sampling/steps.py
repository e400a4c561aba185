"""The pieces every sampler is made of (ldm.sampling.samplers, samplers_extra, samplers_unipc): the denoiser's
type, the ODE's derivative, the seeded noise, the step loop and its callback, and the ancestral split of a step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import trange

from ldm.core.errors import LdmError

Denoiser = Callable[..., torch.Tensor]
Callback = Callable[[dict], Any]
# One generator for the batch, or one per image (see _noise).
Generators = torch.Generator | list[torch.Generator] | None


class GeneratorCountError(LdmError, ValueError):
    """A list of generators whose length is not the batch size."""


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D(x, sigma)) / sigma: also the eps estimate."""
    return (x - denoised) / sigma


def _noise(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Unit noise like x. A list of generators draws image i's noise from generator i alone, so an image's
    noise does not depend on the others in its batch (seeded seed + i, image i equals that image made alone)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise GeneratorCountError(f"{len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
        ).to(x.device)
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _steps(sigmas: torch.Tensor, disable: bool | None):
    return trange(len(sigmas) - 1, disable=disable, leave=False, desc="sampling")


def _eval(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict | None) -> torch.Tensor:
    return model(x, sigma * x.new_ones(x.shape[0]), **(extra_args or {}))


def _report(callback: Callback | None, i: int, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: E501
    """Split a step sigma -> sigma_next into a deterministic move to sigma_down plus fresh noise sigma_up:

        sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
        sigma_down = sqrt(sigma_next^2 - sigma_up^2),

    so the noise level after adding N(0, sigma_up^2) is sigma_next again. eta = 1 matches the
    variance of the DDPM posterior in the variance-exploding limit.
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, sigma_next * 0
    up = torch.clamp(eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2).sqrt(), max=sigma_next)
    return (sigma_next**2 - up**2).sqrt(), up
