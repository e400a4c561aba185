"""Denoisers D(x, sigma, **cond) -> x0 for the samplers, composed as plain callables:

    network -> parameterisation (DiscreteTimeDenoiser) -> task wrapper (inpainting blend, tiles)
            -> guidance (CFGDenoiser) [-> the step's guidance (ScheduledDenoiser, prompt editing)] -> sampler

Samplers work in sigma space, x = x0 + sigma * eps (Karras et al. 2022). A discrete-time VP
model was trained on x_vp = sqrt(ab) x0 + sqrt(1 - ab) eps at integer t; with ab = 1 / (1 + sigma^2)
the same point is x_vp = c_in * x, c_in = 1 / sqrt(1 + sigma^2), at the fractional t(sigma)
(ldm.diffusion.parameterisation.VPParameterisation holds these scalings; DiscreteTimeDenoiser, the network behind them,
lives there too, so the model can build its denoiser without reaching up into sampling code). Task wrappers sit below guidance so that
they act on the conditional and the unconditional prediction alike (tiles cut both halves the same).
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ldm.core.errors import LdmError
from ldm.diffusion.parameterisation import batch_like as _batch
from ldm.diffusion.parameterisation import sigma_batch as _sigma_batch

Denoiser = Callable[..., torch.Tensor]  # (x [B, ...], sigma [B], **cond) -> x0 estimate [B, ...]


class InvalidGuidanceError(LdmError, ValueError):
    pass


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) over any denoiser, in x0 space:

        D = D(x, sigma | uncond) + scale * (D(x, sigma | cond) - D(x, sigma | uncond))

    cond and uncond run as ONE batched call (uncond first, then cond, concatenated on the batch).
    `cond` / `uncond` are keyword dicts for the denoiser ({"context": ..., "y": ..., "concat": ...});
    a key given on one side only is used for both halves (e.g. an inpainting `concat`).
    scale == 1 skips the unconditional half and returns the conditional prediction exactly; so do cond and
    uncond inputs that are the same (an empty prompt against the empty negative prompt, the usual upscale of a
    photo), where u + scale * (c - u) = c: one call instead of two.

    rescale (phi in [0, 1]): guidance rescale (Lin et al. 2023, Alg. 2), applied to the x0 predictions:
        D_r = D * std(D_cond) / std(D),  D <- phi * D_r + (1 - phi) * D   (std per sample)
    which undoes the over-exposure high scales cause (mostly with zero-terminal-SNR v-models).
    threshold (p in (0, 1)): Imagen's dynamic thresholding percentile (Saharia et al. 2022):
        s = max(quantile_p(|D|), 1) per sample,  D <- clamp(D, -s, s)
    Imagen then divides by s to stay in [-1, 1] pixels; latents are not confined to [-1, 1],
    so only the clamp (which removes the outliers high scales produce) is kept.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cond: dict,
        uncond: dict,
        scale: float,
        rescale: float = 0.0,
        threshold: float | None = None,
    ):
        if scale < 0:
            raise InvalidGuidanceError(f"guidance scale must be >= 0, got {scale}")
        if not 0.0 <= rescale <= 1.0:
            raise InvalidGuidanceError(f"guidance rescale must be in [0, 1], got {rescale}")
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise InvalidGuidanceError(f"threshold is a percentile in (0, 1), got {threshold}")
        self.denoiser, self.cond, self.uncond = denoiser, cond, uncond
        self.scale, self.rescale, self.threshold = scale, rescale, threshold
        self.same_halves = all(u is c or torch.equal(u, c) for u, c in self._pairs().values())

    def _pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{keyword: (uncond, cond)}, a side given alone standing for both."""
        pairs = {}
        for key in {**self.uncond, **self.cond}:
            u, c = self.uncond.get(key), self.cond.get(key)
            u, c = (c if u is None else u), (u if c is None else c)
            if c is not None:
                pairs[key] = (u, c)
        return pairs

    def _both(self) -> dict:
        """uncond and cond keyword tensors concatenated on the batch, in the order of the x batch."""
        return {key: torch.cat([u, c]) for key, (u, c) in self._pairs().items()}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if self.scale == 1.0 or self.same_halves:  # no guidance, or nothing for it to push away from
            return self._clamp(self.denoiser(x, sigma, **self.cond))
        sigma = _sigma_batch(sigma, x)
        d_uncond, d_cond = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **self._both()).chunk(2)
        guided = d_uncond + self.scale * (d_cond - d_uncond)
        if self.rescale > 0:
            dims = list(range(1, x.ndim))
            ratio = d_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp(min=1e-8)
            guided = self.rescale * (guided * ratio) + (1 - self.rescale) * guided
        return self._clamp(guided)

    def _clamp(self, x0: torch.Tensor) -> torch.Tensor:
        return dynamic_threshold(x0, self.threshold)


def dynamic_threshold(x0: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Imagen's clamp at the per-sample `threshold` percentile of |x0| (at least 1); None: x0 as it is."""
    if threshold is None:
        return x0
    s = torch.quantile(x0.detach().flatten(1).abs().float(), threshold, dim=1).clamp(min=1.0)
    s = _batch(s, x0).to(x0.dtype)
    return torch.maximum(torch.minimum(x0, s), -s)


class EmbeddedGuidanceDenoiser:
    """Guidance for a guidance-distilled student (ldm.diffusion.distillation): the scale is one of its inputs,

        D = S(x, sigma | cond, w = scale),

    one call where CFGDenoiser makes two. Its unconditional side is the one it was distilled with (the empty
    prompt), so it takes no negative prompt; `threshold` clamps as in CFGDenoiser.
    """

    def __init__(self, denoiser: Denoiser, cond: dict, scale: float, threshold: float | None = None):
        if scale < 0:
            raise InvalidGuidanceError(f"guidance scale must be >= 0, got {scale}")
        self.denoiser, self.cond, self.scale, self.threshold = denoiser, cond, scale, threshold

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        scale = torch.full((x.shape[0],), float(self.scale), device=x.device)
        return dynamic_threshold(self.denoiser(x, sigma, guidance=scale, **self.cond), self.threshold)


@dataclass(frozen=True)
class StepConditions:
    """Conditions that change during sampling (A1111's prompt editing, ldm.models.prompt_schedule).

    Step i of the run (counted from 0, as the sampler's callback counts) uses `conditions[at_step[i]]`, a pair
    (cond, uncond) of keyword tensors that replace those of the same names on each side of guidance; steps past
    the end use the last entry. `labels[k]` says what condition k is (its prompts), for the step callback.
    """

    conditions: tuple[tuple[dict, dict], ...]
    at_step: tuple[int, ...]
    labels: tuple[dict, ...] = ()


class ScheduledDenoiser:
    """One guided denoiser per distinct condition of a StepConditions; each call uses its step's.

    A call's step is found from its noise level on the run's grid `sigmas`: step i holds the levels from sigmas[i]
    down to, not including, sigmas[i + 1], so a call at sigma belongs to the last step that starts at or above it.
    Every sampler's first call of step i is at sigmas[i] and reads step i's condition; a midpoint evaluation (DPM2,
    DPM++ 2S a, DPM++ SDE) reads its step's, and an evaluation at the next step's level (Heun's end point, a
    corrector's) the next step's. `used` is the index of the condition the last call used.
    """

    def __init__(self, denoisers: list[Denoiser], at_step: tuple[int, ...], sigmas: torch.Tensor):
        if not denoisers or not at_step:
            raise InvalidGuidanceError("a step schedule needs at least one condition and one step")
        self.denoisers, self.at_step = denoisers, at_step
        self.starts = sigmas[:-1].detach().float().cpu()
        self.used: int | None = None

    def step_of(self, sigma: torch.Tensor | float) -> int:
        """The run's step whose interval holds `sigma`, compared in sigma's own precision (a half-precision
        sampler rounds the grid's sigmas; rounding keeps their order)."""
        level = torch.as_tensor(sigma).reshape(-1)[0].cpu()  # one value read per call, to choose the condition
        below = int((self.starts.to(level.dtype) >= level).sum())
        return max(below - 1, 0)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        step = min(self.step_of(sigma), len(self.at_step) - 1)
        self.used = self.at_step[step]
        return self.denoisers[self.used](x, sigma)
