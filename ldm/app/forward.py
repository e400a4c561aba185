"""Forward diffusion explorer: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps under several schedules."""

from __future__ import annotations

import pandas as pd
import torch
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.parameterisation import q_sample
from ldm.diffusion.schedules import SCHEDULES, alphas_cumprod_from_betas, log_snr, make_betas
from ldm.io.images import pil_to_tensor, tensor_to_pil
from ldm.models.latent_diffusion import LatentDiffusion
from ldm.toys.points import make_data
from ldm.toys.vdm import ToyVDM

LEARNED = "learned (toy VDM)"  # the learned schedule's column in the curves
LEARNED_DATA = "spiral"  # what the learned schedule is trained on: the toy page's 2-D spiral (2,000 points)
LEARNED_TRAIN_STEPS = 200  # a few seconds on one thread: the shape has moved off linear-in-gamma by then


def schedule_alphas(
    kind: str, num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> tuple[torch.Tensor, torch.Tensor]:
    """(betas, alpha_bar) for one schedule, in float64 so log-SNR at the ends stays finite."""
    betas = make_betas(kind, num_timesteps, linear_start=linear_start, linear_end=linear_end)
    return betas, alphas_cumprod_from_betas(betas)


def learned_schedule_alphas(
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    train_steps: int = LEARNED_TRAIN_STEPS,
    seed: int = 0,
) -> torch.Tensor:
    """alpha_bar_t of a VDM schedule gamma(t) learned on the toy spiral (ldm.toys.vdm; fixed seed, `train_steps`
    Adam steps), its ends pinned to the linear schedule's as configured:

        gamma(0) = -log SNR_linear(0),  gamma(1) = -log SNR_linear(T - 1),  alpha_bar_k = sigmoid(-gamma(k / (T - 1))).

    Only the shape in between is learned (the variance-minimising one of ldm.diffusion.vdm), so the three curves share ends.
    """
    gamma_min, gamma_max = (
        -float(v) for v in log_snr(schedule_alphas("linear", num_timesteps, linear_start, linear_end)[1])[[0, -1]]
    )
    toy = ToyVDM(
        make_data(LEARNED_DATA, seed=seed),
        schedule="learned",
        gamma_min=gamma_min,
        gamma_max=gamma_max,
        hidden=64,
        batch_size=128,
        seed=seed,
    )
    toy.train(train_steps)
    with torch.no_grad():
        return torch.sigmoid(-toy.gamma(torch.linspace(0, 1, num_timesteps)).double())


def schedule_curves(
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    kinds: tuple[str, ...] = SCHEDULES,
    learned: torch.Tensor | None = None,
) -> dict[str, pd.DataFrame]:
    """{"beta", "alpha_bar", "log_snr"} -> a frame indexed by t with one column per schedule (for st.line_chart);
    `learned` (alpha_bar from `learned_schedule_alphas`) adds the LEARNED column, beta_t = 1 - ab_t / ab_{t-1}."""
    curves: dict[str, dict[str, object]] = {"beta": {}, "alpha_bar": {}, "log_snr": {}}
    columns = [(kind, *schedule_alphas(kind, num_timesteps, linear_start, linear_end)) for kind in kinds]
    if learned is not None:
        columns.append((LEARNED, 1 - learned / torch.cat([learned.new_ones(1), learned[:-1]]), learned))
    for kind, betas, ab in columns:
        curves["beta"][kind] = betas.numpy()
        curves["alpha_bar"][kind] = ab.numpy()
        curves["log_snr"][kind] = log_snr(ab).numpy()
    return {name: pd.DataFrame(cols).rename_axis("t") for name, cols in curves.items()}


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def latent_start(model: LatentDiffusion, image: Image.Image, size: int | None = None) -> torch.Tensor:
    """z_0 for the latent view: the image at `size` (default: the model's own size) through the VAE encoder.

    Separate from `forward_views` so a page can encode once and re-noise on every slider move.
    """
    size = size or model.default_image_size
    pixels = pil_to_tensor(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    return model.encode_image(pixels.to(model.device)).float()


@torch.no_grad()
def forward_views(
    image: Image.Image,
    t: int,
    model: LatentDiffusion | None = None,
    seed: int = 0,
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    kinds: tuple[str, ...] = SCHEDULES,
    z0: torch.Tensor | None = None,
) -> dict[str, dict[str, Image.Image]]:
    """Per schedule: {"pixel": x_t noised in pixel space, "latent": decode(z_t) noised in the VAE's latent space}.

    The same noise for every schedule, so the columns differ only by the schedule. Pixel values
    of x_t exceed [-1, 1] and are shown clamped, as is usual. Without a model there is no latent
    view; `z0` (from `latent_start`) saves re-encoding the image.
    """
    if not 0 <= t < num_timesteps:
        raise InvalidOptionError(f"timestep must be in [0, {num_timesteps - 1}], got {t}")
    pixels = pil_to_tensor(image.convert("RGB"))
    pixel_noise = _noise(tuple(pixels.shape), seed)
    tt = torch.tensor([t])
    alphas = {kind: schedule_alphas(kind, num_timesteps, linear_start, linear_end)[1].float() for kind in kinds}
    views = {kind: {"pixel": tensor_to_pil(q_sample(pixels, tt, ab, pixel_noise))[0]} for kind, ab in alphas.items()}
    if model is not None:
        z0 = latent_start(model, image) if z0 is None else z0
        latent_noise = _noise(tuple(z0.shape), seed + 1).to(z0.device)
        z_t = torch.cat([q_sample(z0, tt.to(z0.device), ab, latent_noise) for ab in alphas.values()])
        for kind, decoded in zip(kinds, tensor_to_pil(model.decode_latent(z_t))):  # one batched decode
            views[kind]["latent"] = decoded
    return views


def snr_at(
    t: int,
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    kinds: tuple[str, ...] = SCHEDULES,
) -> dict[str, float]:
    """alpha_bar at t per schedule: how much of the signal is left (the captions under the images)."""
    return {kind: float(schedule_alphas(kind, num_timesteps, linear_start, linear_end)[1][t]) for kind in kinds}
