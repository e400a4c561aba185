"""Classifier guidance (Dhariwal & Nichol 2021) as a denoiser wrapper, in sigma space.

With x = x0 + sigma * eps, Tweedie's formula ties the denoiser to the score of the noised data:

    grad_x log p_sigma(x) = (D(x, sigma) - x) / sigma^2,   i.e.   D = x + sigma^2 * grad_x log p_sigma(x).

Guiding towards class y with scale s samples p_sigma(x) p_sigma(y | x)^s, whose score adds
s * grad_x log p_sigma(y | x); put back into the same formula, the denoiser becomes

    D'(x, sigma) = D(x, sigma) + s * sigma^2 * grad_x log p(y | x, sigma).

In eps terms (eps = (x - D) / sigma, x_vp = x / sqrt(1 + sigma^2)) this is Dhariwal & Nichol's
eps' = eps - s * sqrt(1 - ab) * grad_{x_vp} log p(y | x_vp, t). The classifier must be noise-aware,
trained on noised x at every sigma the sampler visits; a clean-image classifier has no useful gradient
at high noise. Any sampler can run D', and it wraps a CFGDenoiser like any other denoiser, so the two
guidances combine: ClassifierGuidedDenoiser(CFGDenoiser(net, cond, uncond, w), classifier, y, s).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ldm.diffusion.parameterisation import batch_like, sigma_batch
from ldm.sampling.denoisers import Denoiser, InvalidGuidanceError

# (x [B, ...] in sigma space, sigma [B]) -> class logits [B, classes]
NoiseAwareClassifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def classifier_log_prob_grad(
    classifier: NoiseAwareClassifier, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """grad_x log p(y | x, sigma), per sample (the log-probabilities of a batch are independent, so one
    backward pass of their sum gives every sample's own gradient). Runs under the samplers' no_grad."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, sigma)
        log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        chosen = log_p.gather(1, y.long().reshape(-1, 1)).sum()
        return torch.autograd.grad(chosen, x_in)[0].to(x.dtype)


class ClassifierGuidedDenoiser:
    """D'(x, sigma) = D(x, sigma) + scale * sigma^2 * grad_x log p(y | x, sigma) (module docstring).

    y: target classes [B] (one per sample of the batch). scale 0 returns D unchanged.
    """

    def __init__(self, denoiser: Denoiser, classifier: NoiseAwareClassifier, y: torch.Tensor, scale: float):
        if scale < 0:
            raise InvalidGuidanceError(f"classifier guidance scale must be >= 0, got {scale}")
        self.denoiser, self.classifier, self.y, self.scale = denoiser, classifier, y, scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond) -> torch.Tensor:
        denoised = self.denoiser(x, sigma, **cond)
        if self.scale == 0:
            return denoised
        sigma = sigma_batch(sigma, x)
        grad = classifier_log_prob_grad(self.classifier, x, sigma, self.y.to(x.device))
        return denoised + self.scale * batch_like(sigma, x) ** 2 * grad
