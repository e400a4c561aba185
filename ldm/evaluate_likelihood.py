"""`ldm eval --nll`: the variational bound of a latent model on held-out images, in bits per latent dimension,
or of a 2-D toy model (ldm.toys.files) on held-out points, in bits per data dimension.

The bound (ldm.diffusion.likelihood) is of the VAE's scaled latents z = encode(image), not of the pixels: it leaves
out the autoencoder's own -log p(image | z), so it ranks diffusion models that share one VAE and is not
comparable with pixel-space bits/dim. The reverse variance is "fixed_large" (beta_t) by default, the tighter
fixed one for a well-trained model, or "learned" for a U-Net trained with one (its config's learned_variance);
the sum over t is estimated from stratified timesteps (ldm.diffusion.likelihood.stratified_timesteps), with the decoder
term exact. The toy models are diffusion models of the points themselves, so theirs is the bound in data space.
(The project has no pixel-space image models: every image model diffuses a VAE's latents.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldm.core.errors import InvalidOptionError, MissingFileError
from ldm.diffusion.likelihood import (
    ReverseProcess,
    bits_per_dim,
    check_variance,
    frac_from_output,
    split_output,
    stratified_timesteps,
    variational_bound,
)
from ldm.toys.points import DATASETS, ToyDiffusion, make_data


@dataclass
class LikelihoodResult:
    bits_per_dim: float
    standard_error: float  # of the mean over images, in bits/dim
    images: int
    dims: int
    timesteps: int
    variance: str
    space: str = "latent"
    unit: str = "images"  # what `images` counts

    def line(self) -> str:
        return (
            f"bits/dim ({self.space} space, D = {self.dims}, {self.images} held-out {self.unit}, {self.timesteps} "
            f"timesteps, {self.variance} variance): {self.bits_per_dim:.4f} +- {self.standard_error:.4f}"
        )


@torch.no_grad()
def latent_nll(
    model,
    images: torch.Tensor,
    captions: list[str],
    timesteps: int = 50,
    variance: str = "fixed_large",
    batch_size: int = 8,
    seed: int = 0,
) -> LikelihoodResult:
    """The bound on each image's latent under `model` (a text-to-image LatentDiffusion), conditioned on its caption."""
    check_variance(variance)
    learned = bool(getattr(model, "learned_variance", False))
    if variance == "learned" and not learned:
        raise InvalidOptionError(
            "this U-Net has no learned variance output (learned_variance in its config); use fixed_small or fixed_large"
        )
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
        z0 = model.encode_image(images[i : i + batch_size].to(model.device, model.dtype)).float()
        context = model.encode_text(list(captions[i : i + batch_size]))
        dims = z0[0].numel()

        def predict(z_t: torch.Tensor, t: torch.Tensor, context=context):
            out = model.unet(z_t.to(model.dtype), t.to(z_t.device), context=context).float()
            frac = frac_from_output(split_output(out)[1]).clamp(0, 1) if learned else None
            return par.x0_from_output(z_t, t.to(z_t.device), out), frac

        totals.append(variational_bound(predict, z0, process, variance, steps, generator)["total"].cpu())
    total = torch.cat(totals)
    return LikelihoodResult(
        float(bits_per_dim(total.mean(), dims)),
        float(bits_per_dim(_standard_error(total), dims)),
        len(total),
        dims,
        len(steps[0]) + 1,
        variance,
    )


def _standard_error(total: torch.Tensor) -> float:
    return float(total.std() / math.sqrt(len(total))) if len(total) > 1 else float("nan")


def load_points(spec: str, count: int = 1000, seed: int = 1) -> torch.Tensor:
    """Held-out 2-D points: a toy dataset by name (ldm.toys.points.DATASETS; `count` points drawn with `seed`, which
    should differ from the training seed, 0 by default), or a .npy / .csv file of [N, 2] numbers (all rows)."""
    if spec in DATASETS:
        return make_data(spec, count, seed=seed)
    path = Path(spec)
    if path.suffix not in (".npy", ".csv"):
        raise InvalidOptionError(
            f"toy data must be a dataset name ({', '.join(DATASETS)}) or a .npy/.csv file of "
            f"[N, 2] points, got {spec!r}"
        )
    if not path.is_file():
        raise MissingFileError(f"toy data file not found: {path}")
    try:
        points = (
            np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2)
        )
        points = np.asarray(points, dtype=np.float32)
    except (ValueError, OSError) as exc:
        raise InvalidOptionError(
            f"cannot read points from {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from exc
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise InvalidOptionError(f"{path} must hold [N, 2] points with N >= 1, got shape {tuple(points.shape)}")
    if not np.isfinite(points).all():
        raise InvalidOptionError(f"{path} holds non-finite values")
    return torch.from_numpy(points)


@torch.no_grad()
def toy_nll(
    toy: ToyDiffusion, points: torch.Tensor, timesteps: int = 50, variance: str = "fixed_large", seed: int = 0
) -> LikelihoodResult:
    """The bound on each point under a 2-D toy model, in data space, with the same estimator as `latent_nll`."""
    check_variance(variance)
    if variance == "learned" and not toy.learned:
        raise InvalidOptionError(
            "this toy model was trained without a learned variance; use fixed_small or fixed_large"
        )
    if len(points) == 0:
        raise InvalidOptionError("no held-out points to evaluate")
    steps = stratified_timesteps(toy.num_timesteps, timesteps, torch.Generator().manual_seed(seed))
    total = toy.nll(points, variance, seed=seed + 1, timesteps=steps)["total"]
    return LikelihoodResult(
        float(bits_per_dim(total.mean(), points.shape[1])),
        float(bits_per_dim(_standard_error(total), points.shape[1])),
        len(total),
        points.shape[1],
        len(steps[0]) + 1,
        variance,
        space="data",
        unit="points",
    )
