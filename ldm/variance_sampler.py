"""Ancestral DDPM with the network's learned variance (Nichol & Dhariwal 2021), in sigma space.

The other samplers take a denoiser D(x, sigma) -> x0; this one takes a denoiser that also returns the
variance interpolation v in [0, 1], `model(x, sigma, **extra) -> (x0, v)` (LearnedVarianceDenoiser wraps a
network whose output is [eps, raw v] on channels). A step sigma -> sigma' (ab = 1 / (1 + sigma^2)) of the
respaced chain has, in VP space, beta = 1 - ab / ab' and beta~ = beta (1 - ab') / (1 - ab); dividing by ab'
(x = x_vp / sqrt(ab)) gives, in sigma space,

    x' = x0 + (sigma'^2 / sigma^2) (x - x0) + s z,
    beta~ / ab' = sigma'^2 (sigma^2 - sigma'^2) / sigma^2,    beta / ab' = (sigma^2 - sigma'^2) (1 + sigma'^2) / (1 + sigma^2),
    log s^2 = v log(beta / ab') + (1 - v) log(beta~ / ab'),

so v = 0 is sample_ddpm exactly, and the network's v, trained on the single steps, is used on the
respaced ones, as Improved DDPM does. The last step (sigma' = 0) returns x0.
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.likelihood import frac_from_output
from ldm.diffusion.parameterisation import VPParameterisation, batch_like, sigma_batch
from ldm.sampling.samplers import Callback, Generators, _noise, _report, _steps

VarianceDenoiser = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (x, sigma [B], **cond) -> (x0, v)


class LearnedVarianceDenoiser:
    """An eps-network with 2C output channels [eps, raw v] -> (D(x, sigma), v), v = (raw + 1) / 2 per element.

    `clip` bounds the x0 estimate (as DDPM's clip_denoised); calling `.mean_only()` gives a plain D(x, sigma)
    for the other samplers.
    """

    def __init__(
        self, net: Callable[..., torch.Tensor], parameterisation: VPParameterisation, clip: float | None = None
    ):
        if parameterisation.prediction != "eps":
            raise InvalidOptionError("learned variances are implemented for eps-prediction networks")
        self.net, self.parameterisation, self.clip = net, parameterisation, clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = sigma_batch(sigma, x).to(torch.promote_types(x.dtype, torch.float32))
        _, _, c_in = self.parameterisation.scalings(sigma)
        out = self.net(x * batch_like(c_in, x), self.parameterisation.sigma_to_t(sigma), **cond).to(x.dtype)
        eps, raw = out.chunk(2, dim=1)
        x0 = x - batch_like(sigma, x) * eps
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0, frac_from_output(raw).clamp(0, 1)

    def mean_only(self) -> Callable[..., torch.Tensor]:
        return lambda x, sigma, **cond: self(x, sigma, **cond)[0]


class GuidedVarianceDenoiser:
    """Classifier-free guidance over a (x0, v) denoiser: x0 guided as CFGDenoiser does, v the conditional one's,

        x0 = x0(x | uncond) + scale (x0(x | cond) - x0(x | uncond)),   v = v(x | cond),

    (GLIDE guides eps and keeps the variance output of each side; the sample is the conditional side's).
    Both sides in one batched call, uncond first, as ldm.sampling.denoisers.CFGDenoiser.
    """

    def __init__(self, denoiser: VarianceDenoiser, cond: dict, uncond: dict, scale: float):
        if scale < 0:
            raise InvalidOptionError(f"guidance scale must be >= 0, got {scale}")
        self.denoiser, self.cond, self.uncond, self.scale = denoiser, cond, uncond, scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale == 1.0 or not self.uncond:
            return self.denoiser(x, sigma, **self.cond)
        both = {k: torch.cat([self.uncond.get(k, c), c]) for k, c in self.cond.items() if c is not None}
        x0, frac = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both)
        x0_uncond, x0_cond = x0.chunk(2)
        return x0_uncond + self.scale * (x0_cond - x0_uncond), frac.chunk(2)[1]


@torch.no_grad()
def sample_ddpm_learned_variance(
    model: VarianceDenoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Ancestral DDPM whose step variance is the model's (module docstring)."""
    for i in _steps(sigmas, disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, frac = model(x, sigma * x.new_ones(x.shape[0]), **(extra_args or {}))
        _report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        drop = sigma**2 - sigma_next**2
        log_small = (sigma_next**2 * drop / sigma**2).log()
        log_large = (drop * (1 + sigma_next**2) / (1 + sigma**2)).log()
        log_var = frac * log_large + (1 - frac) * log_small
        x = denoised + sigma_next**2 / sigma**2 * (x - denoised) + (0.5 * log_var).exp() * _noise(x, generator)
    return x
