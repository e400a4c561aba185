"""`ldm eval --nll`: the variational bound of a latent model on held-out images, in bits per latent dimension.

The bound (ldm.likelihood) is of the VAE's scaled latents z = encode(image), not of the pixels: it leaves
out the autoencoder's own -log p(image | z), so it ranks diffusion models that share one VAE and is not
comparable with pixel-space bits/dim. The reverse variance is "fixed_large" (beta_t) by default, the tighter
fixed one for a well-trained model, or "learned" for a U-Net trained with one (its config's learned_variance);
the sum over t is estimated from stratified timesteps (ldm.likelihood.stratified_timesteps), with the decoder
term exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ldm.errors import InvalidOptionError
from ldm.likelihood import (ReverseProcess, bits_per_dim, check_variance, frac_from_output, split_output,
                            stratified_timesteps, variational_bound)


@dataclass
class LikelihoodResult:
    bits_per_dim: float
    standard_error: float  # of the mean over images, in bits/dim
    images: int
    dims: int
    timesteps: int
    variance: str
    space: str = "latent"

    def line(self) -> str:
        return (f"bits/dim ({self.space} space, D = {self.dims}, {self.images} held-out images, {self.timesteps} "
                f"timesteps, {self.variance} variance): {self.bits_per_dim:.4f} +- {self.standard_error:.4f}")


@torch.no_grad()
def latent_nll(model, images: torch.Tensor, captions: list[str], timesteps: int = 50, variance: str = "fixed_large",
               batch_size: int = 8, seed: int = 0) -> LikelihoodResult:
    """The bound on each image's latent under `model` (a text-to-image LatentDiffusion), conditioned on its caption."""
    check_variance(variance)
    learned = bool(getattr(model, "learned_variance", False))
    if variance == "learned" and not learned:
        raise InvalidOptionError("this U-Net has no learned variance output (learned_variance in its config); "
                                 "use fixed_small or fixed_large")
    if model.kind.concat or model.kind.label:
        raise InvalidOptionError(f"--nll evaluates text-to-image models; this one is {model.kind.name}")
    if len(images) == 0:
        raise InvalidOptionError("no held-out images to evaluate")
    par = model.parameterisation()
    process = ReverseProcess(par.alphas_cumprod)
    steps = stratified_timesteps(process.num_timesteps, timesteps, torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed + 1)
    totals, dims = [], 0
    for i in range(0, len(images), batch_size):
        z0 = model.encode_image(images[i:i + batch_size].to(model.device, model.dtype)).float()
        context = model.encode_text(list(captions[i:i + batch_size]))
        dims = z0[0].numel()

        def predict(z_t: torch.Tensor, t: torch.Tensor, context=context):
            out = model.unet(z_t.to(model.dtype), t.to(z_t.device), context=context).float()
            frac = frac_from_output(split_output(out)[1]).clamp(0, 1) if learned else None
            return par.x0_from_output(z_t, t.to(z_t.device), out), frac

        totals.append(variational_bound(predict, z0, process, variance, steps, generator)["total"].cpu())
    total = torch.cat(totals)
    error = float(total.std() / math.sqrt(len(total))) if len(total) > 1 else float("nan")
    return LikelihoodResult(float(bits_per_dim(total.mean(), dims)), float(bits_per_dim(error, dims)), len(total), dims,
                            len(steps[0]) + 1, variance)
