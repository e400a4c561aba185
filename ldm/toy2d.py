"""Diffusion on 2-D points: toy data, a small MLP eps-denoiser trained in seconds on a CPU.

The same maths as the image models, small enough to watch: training uses ldm.diffusion's
forward process and loss, sampling runs the library's samplers through the same
DiscreteTimeDenoiser wrapper the U-Net uses (the MLP takes (x, t) like a U-Net does).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ldm.errors import LdmError
from ldm.denoisers import DiscreteTimeDenoiser
from ldm.diffusion import diffusion_loss
from ldm.sampling import SamplingOptions, sample
from ldm.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas

DATASETS = ("spiral", "moons", "circles", "gaussians")
# Per schedule, the (linear_start, linear_end) it is usually used with; cosine ignores them.
SCHEDULE_DEFAULTS = {"linear": (1e-4, 2e-2), "scaled_linear": (0.00085, 0.012), "cosine": (1e-4, 2e-2)}


class ToyDataError(LdmError, ValueError):
    pass


def make_data(kind: str, n: int = 2000, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """[n, 2] float32 points, scaled to about unit standard deviation (as diffusion assumes of its data)."""
    if n < 1:
        raise ToyDataError(f"need at least one point, got n={n}")
    rng = np.random.default_rng(seed)
    if kind == "spiral":
        r = np.sqrt(rng.uniform(0.05, 1.0, n))  # sqrt: even density along the arm
        theta = 3.0 * math.pi * r
        pts = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
    elif kind == "moons":
        upper = rng.random(n) < 0.5
        a = rng.uniform(0, math.pi, n)
        pts = np.where(upper[:, None], np.stack([np.cos(a), np.sin(a)], 1),
                       np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1))
    elif kind == "circles":
        a = rng.uniform(0, 2 * math.pi, n)
        r = np.where(rng.random(n) < 0.5, 1.0, 0.5)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif kind == "gaussians":
        centres = np.array([[math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)] for k in range(8)])
        pts = centres[rng.integers(0, 8, n)]
    else:
        raise ToyDataError(f"unknown toy dataset {kind!r}; known: {', '.join(DATASETS)}")
    pts = pts + rng.normal(0, noise, pts.shape)
    pts = pts - pts.mean(0)
    pts = pts / pts.std()
    return torch.from_numpy(pts).float()


def toy_alphas_cumprod(schedule: str = "linear", num_timesteps: int = 1000, linear_start: float | None = None,
                       linear_end: float | None = None) -> torch.Tensor:
    start, end = SCHEDULE_DEFAULTS.get(schedule, (1e-4, 2e-2))
    betas = make_betas(schedule, num_timesteps, linear_start=linear_start if linear_start is not None else start,
                       linear_end=linear_end if linear_end is not None else end)
    return alphas_cumprod_from_betas(betas).float()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run with one intra-op thread: a 64-wide MLP's matmuls lose far more to thread handoffs than
    they gain (measured ~2 ms/step on 1 thread vs 10-80 ms on 2 busy cores); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ClippedDenoiser:
    """Clamps the x0 estimate to [-clip, clip], as DDPM's `clip_denoised` does for images in [-1, 1].

    Why: near alpha_bar = 0 (the cosine schedule's last steps, betas clipped at 0.999) sigma is in
    the thousands and x0 = x - sigma * eps multiplies any eps error by it; a deterministic DDIM step
    carries that error on, so unclipped DDIM samples fly off. Our toy data has unit std, so a few
    std is a safe bound.
    """

    def __init__(self, inner: Callable, clip: float):
        self.inner, self.clip = inner, clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.inner(x, sigma, **kwargs).clamp(-self.clip, self.clip)


class ToyMLP(nn.Module):
    """eps(x_t, t) for 2-D points: a sinusoidal embedding of t concatenated to x, then an MLP.

    Called like the U-Net, `net(x, t, context=None, y=None)`, so the library's wrappers apply.
    """

    def __init__(self, hidden: int = 128, layers: int = 3, time_dim: int = 32, num_timesteps: int = 1000):
        super().__init__()
        self.time_dim = time_dim
        self.num_timesteps = num_timesteps
        dims = [2 + time_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 2))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        # Frequencies from 1 to ~num_timesteps/2 so both coarse and fine time differences are visible.
        freqs = torch.exp(torch.linspace(0, math.log(self.num_timesteps / 2), half, device=t.device))
        angle = (t.float() / self.num_timesteps)[:, None] * freqs[None]
        return torch.cat([angle.sin(), angle.cos()], 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.net(torch.cat([x, self.embed(t)], 1))


@dataclass
class ToyDiffusion:
    """A toy model with its schedule and optimiser; `train(steps)` continues where it left off."""

    data: torch.Tensor
    schedule: str = "linear"
    num_timesteps: int = 1000
    hidden: int = 128
    lr: float = 3e-3
    batch_size: int = 256
    seed: int = 0
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.shape[1] != 2:
            raise ToyDataError(f"toy data must be [N, 2], got {tuple(self.data.shape)}")
        torch.manual_seed(self.seed)
        self.alphas_cumprod = toy_alphas_cumprod(self.schedule, self.num_timesteps)
        self.net = ToyMLP(self.hidden, num_timesteps=self.num_timesteps)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.generator = torch.Generator().manual_seed(self.seed)

    def train_step(self) -> float:
        idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
        loss = diffusion_loss(self.net, self.data[idx], None, self.alphas_cumprod, "eps", generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def train(self, steps: int, callback: Callable[[int, float], None] | None = None,
              every: int = 50) -> list[float]:
        """Run `steps` optimiser steps; callback(step, mean loss of the last `every`) for live curves."""
        self.net.train()
        with single_thread():
            for k in range(steps):
                self.train_step()
                if callback is not None and ((k + 1) % every == 0 or k + 1 == steps):
                    recent = self.losses[-every:]
                    callback(len(self.losses), sum(recent) / len(recent))
        self.net.eval()
        return self.losses

    def denoiser(self) -> DiscreteTimeDenoiser:
        return DiscreteTimeDenoiser(self.net, self.alphas_cumprod, prediction="eps")

    @torch.no_grad()
    def sample(self, n: int = 1000, steps: int = 50, sampler: str = "ddim", seed: int = 0,
               spacing: str = "trailing", clip: float | None = 4.0, return_trajectory: bool = False,
               **sampler_options):
        """[n, 2] samples from noise with a library sampler.

        `clip` bounds the x0 estimates (see ClippedDenoiser); None samples unclipped. With
        `return_trajectory`, also a list with an entry per step and one for the result: {"x": the
        points at that step, rescaled to the variance-preserving x_t the network sees (so every step
        is on the data's scale), "denoised": the step's x0 estimate, "sigma": its noise level};
        entry 0 is the start noise.
        """
        sigmas = get_sigmas(self.alphas_cumprod, steps, spacing=spacing)
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
        trajectory: list[dict[str, torch.Tensor | float]] = []

        def vp(points: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return points / (1 + sigma.float() ** 2).sqrt()

        def record(d: dict) -> None:
            # The samplers report x as it was when the step began, at noise level d["sigma"].
            trajectory.append({"x": vp(d["x"].clone(), d["sigma"]), "denoised": d["denoised"].clone(),
                               "sigma": float(d["sigma"])})

        denoiser = self.denoiser() if clip is None else ClippedDenoiser(self.denoiser(), clip)
        with single_thread():
            options = SamplingOptions(steps=steps, sampler=sampler, extra=dict(sampler_options))
            out = sample(denoiser, x, sigmas, options, torch.Generator().manual_seed(seed + 1),
                         callback=record if return_trajectory else None, progress=False)
        if not return_trajectory:
            return out
        trajectory.append({"x": out, "denoised": out, "sigma": 0.0})
        return out, trajectory


def nearest_distance(points: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """For each point, the Euclidean distance to the nearest data point."""
    return torch.cdist(points.float(), data.float()).min(dim=1).values


def noise_baseline(data: torch.Tensor, n: int = 1000, seed: int = 0) -> float:
    """Mean nearest-data distance of unit Gaussian noise: what an untrained sampler would score."""
    return float(nearest_distance(torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)), data).mean())
