"""Model wrappers that turn a network into a denoiser D(x, sigma) -> x0 for the samplers.

Samplers work in sigma space, x = x0 + sigma * eps (Karras et al. 2022). A discrete-time
VP model sees x_vp = x / sqrt(1 + sigma^2) and its timestep t(sigma).
"""
from __future__ import annotations

import torch

from ldm.schedules import sigma_to_t, sigmas_from_alphas_cumprod


def _batch(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class DiscreteTimeDenoiser:
    """Wraps unet(x, t, context, y) trained on eps or v with the given alpha_bar schedule."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        if prediction not in ("eps", "v"):
            raise ValueError(f"unknown prediction type {prediction!r}; known: eps, v")
        self.unet = unet
        self.prediction = prediction
        self.sigmas = sigmas_from_alphas_cumprod(alphas_cumprod.double()).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, concat: torch.Tensor | None = None) -> torch.Tensor:
        sigma = sigma.to(x.device, torch.float32).expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.device, torch.float32)
        c_in = 1 / (sigma**2 + 1).sqrt()
        t = sigma_to_t(sigma, self.log_sigmas.to(x.device))
        inp = x * _batch(c_in, x)
        if concat is not None:
            inp = torch.cat([inp, concat.to(inp.dtype)], dim=1)
        out = self.unet(inp, t, context=context, y=y).float()
        s = _batch(sigma, x)
        if self.prediction == "eps":
            return x - s * out  # x0 = x - sigma * eps
        # x0 = sqrt(ab) x_vp - sqrt(1 - ab) v, with sqrt(ab) = c_in and sqrt(1 - ab) = sigma * c_in
        return x / (s**2 + 1) - s * _batch(c_in, x) * out


class CFGDenoiser:
    """Classifier-free guidance: D = D_u + scale * (D_c - D_u), both sides in one batched call.

    cond/uncond are keyword dicts for the denoiser ({"context": ..., "concat": ..., "y": ...}).
    rescale: guidance rescale (Lin et al. 2023), pulling the guided prediction's std back to
    the conditional one's, which stops over-exposure at high scales (useful for v-models).
    threshold: a quantile in (0, 1); x0 values beyond that quantile of |x0| (at least 1) are
    clamped, a dynamic-thresholding clamp for very high scales.
    """

    def __init__(self, denoiser, cond: dict, uncond: dict, scale: float, rescale: float = 0.0,
                 threshold: float | None = None):
        self.denoiser, self.cond, self.uncond = denoiser, cond, uncond
        self.scale, self.rescale, self.threshold = scale, rescale, threshold

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:  # no guidance: skip the unconditional half entirely
            return self._clamp(self.denoiser(x, sigma, **self.cond))
        both = {k: torch.cat([self.uncond[k], v]) for k, v in self.cond.items() if v is not None}
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma
        d_uncond, d_cond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both).chunk(2)
        guided = d_uncond + self.scale * (d_cond - d_uncond)
        if self.rescale > 0:
            dims = list(range(1, x.ndim))
            ratio = d_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp(min=1e-8)
            guided = self.rescale * guided * ratio + (1 - self.rescale) * guided
        return self._clamp(guided)

    def _clamp(self, x0: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            return x0
        s = torch.quantile(x0.flatten(1).abs().float(), self.threshold, dim=1).clamp(min=1.0)
        s = _batch(s, x0).to(x0.dtype)
        return torch.maximum(torch.minimum(x0, s), -s)
