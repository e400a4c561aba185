"""Diffusion on 2-D points: toy data, a small MLP eps-denoiser trained in seconds on a CPU.

The same maths as the image models, small enough to watch: training uses ldm.diffusion.parameterisation's
forward process and loss, sampling runs the library's samplers through the same
DiscreteTimeDenoiser wrapper the U-Net uses (the MLP takes (x, t) like a U-Net does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ldm.core.errors import LdmError
from ldm.diffusion.likelihood import (
    ReverseProcess,
    bits_per_dim,
    check_variance,
    frac_from_output,
    hybrid_loss,
    variational_bound,
)
from ldm.diffusion.parameterisation import (
    DiscreteTimeDenoiser,
    VPParameterisation,
    diffusion_loss,
    predict_x0_from_eps,
    q_sample,
)
from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas
from ldm.sampling.options import SamplingOptions, sample
from ldm.sampling.variance_sampler import LearnedVarianceDenoiser, sample_ddpm_learned_variance

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
        pts = np.where(
            upper[:, None], np.stack([np.cos(a), np.sin(a)], 1), np.stack([1 - np.cos(a), 0.5 - np.sin(a)], 1)
        )
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


def make_thin_line(n: int = 2000, seed: int = 0, thin: float = 1e-3) -> torch.Tensor:
    """[n, 2] points N(0, diag(1, thin^2)): unit Gaussian along x, almost nothing across it.

    A toy with structure finer than the smallest noise level (sqrt(beta_0) = 0.01), as 8-bit pixels have:
    there the posterior variance beta~_t is the right reverse variance across the line and beta_t along it,
    which is what a learned variance can find and neither fixed one has.
    """
    if n < 1:
        raise ToyDataError(f"need at least one point, got n={n}")
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * torch.tensor([1.0, thin])


def toy_alphas_cumprod(
    schedule: str = "linear",
    num_timesteps: int = 1000,
    linear_start: float | None = None,
    linear_end: float | None = None,
) -> torch.Tensor:
    start, end = SCHEDULE_DEFAULTS.get(schedule, (1e-4, 2e-2))
    betas = make_betas(
        schedule,
        num_timesteps,
        linear_start=linear_start if linear_start is not None else start,
        linear_end=linear_end if linear_end is not None else end,
    )
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

    def __init__(
        self, hidden: int = 128, layers: int = 3, time_dim: int = 32, num_timesteps: int = 1000, out_dim: int = 2
    ):
        super().__init__()
        self.time_dim = time_dim
        self.num_timesteps = num_timesteps
        dims = [2 + time_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, out_dim))  # 4 = [eps, raw v] with a learned variance

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        # Frequencies from 1 to ~num_timesteps/2 so both coarse and fine time differences are visible.
        freqs = torch.exp(torch.linspace(0, math.log(self.num_timesteps / 2), half, device=t.device))
        angle = (t.float() / self.num_timesteps)[:, None] * freqs[None]
        return torch.cat([angle.sin(), angle.cos()], 1)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        return self.net(torch.cat([x, self.embed(t)], 1))


@dataclass
class ToyDiffusion:
    """A toy model with its schedule and optimiser; `train(steps)` continues where it left off.

    variance: the reverse process's (ldm.diffusion.likelihood.VARIANCES). The fixed ones train on L_simple alone;
    "learned" gives the MLP two more outputs, the log-space interpolation v, trained with L_hybrid.
    lr_decay_steps: when set, the learning rate falls from lr to 0 on a half cosine over that many steps
    (and stays 0): Adam at a constant lr keeps the weights jittering, and a jittering v costs bound
    wherever its optimum sits at an end of [beta~, beta] (measured in benchmarks/likelihood_table.py).
    """

    data: torch.Tensor
    schedule: str = "linear"
    num_timesteps: int = 1000
    hidden: int = 128
    lr: float = 3e-3
    batch_size: int = 256
    seed: int = 0
    variance: str = "fixed_small"
    lr_decay_steps: int | None = None
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.shape[1] != 2:
            raise ToyDataError(f"toy data must be [N, 2], got {tuple(self.data.shape)}")
        check_variance(self.variance)
        torch.manual_seed(self.seed)
        self.alphas_cumprod = toy_alphas_cumprod(self.schedule, self.num_timesteps)
        self.process = ReverseProcess(self.alphas_cumprod)
        self.net = ToyMLP(self.hidden, num_timesteps=self.num_timesteps, out_dim=4 if self.learned else 2)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ToyDataError(f"lr_decay_steps must be at least 1, got {self.lr_decay_steps}")
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def learned(self) -> bool:
        return self.variance == "learned"

    def _hybrid_loss(self, x0: torch.Tensor) -> torch.Tensor:
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        x_t = q_sample(x0, t, self.alphas_cumprod, noise)
        eps_hat, raw = self.net(x_t, t).chunk(2, dim=1)
        return hybrid_loss(self.process, x0, x_t, t, noise, eps_hat, raw)[0]

    def learning_rate(self, step: int) -> float:
        """lr, or lr (1 + cos(pi min(step, S) / S)) / 2 with S = lr_decay_steps."""
        if self.lr_decay_steps is None:
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(step, self.lr_decay_steps) / self.lr_decay_steps))

    def train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(len(self.losses))
        idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
        if self.learned:
            loss = self._hybrid_loss(self.data[idx])
        else:
            loss = diffusion_loss(self.net, self.data[idx], None, self.alphas_cumprod, "eps", generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def train(self, steps: int, callback: Callable[[int, float], None] | None = None, every: int = 50) -> list[float]:
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

    def eps_net(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        """The MLP's eps output alone (the first two channels when it also learns the variance)."""
        return self.net(x, t, **cond)[:, :2]

    def denoiser(self) -> DiscreteTimeDenoiser:
        return DiscreteTimeDenoiser(self.eps_net, self.alphas_cumprod, prediction="eps")

    @torch.no_grad()
    def nll(
        self,
        data: torch.Tensor,
        variance: str | None = None,
        seed: int = 0,
        timesteps: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict:
        """The variational bound on `data` in data space (ldm.diffusion.likelihood), per point in nats, and its mean in
        bits/dim; `variance` (default: the model's) may be either fixed one for any model."""
        variance = variance or self.variance
        if variance == "learned" and not self.learned:
            raise ToyDataError("this toy model was trained without a learned variance")

        def predict(x_t: torch.Tensor, t: torch.Tensor):
            out = self.net(x_t, t)
            x0_hat = predict_x0_from_eps(x_t, t, out[:, :2], self.alphas_cumprod)
            return x0_hat, frac_from_output(out[:, 2:]).clamp(0, 1) if self.learned else None

        self.net.eval()
        with single_thread():
            bound = variational_bound(
                predict, data.float(), self.process, variance, timesteps, torch.Generator().manual_seed(seed)
            )
        return {**bound, "bits_per_dim": float(bits_per_dim(bound["total"].mean(), data.shape[1]))}

    @torch.no_grad()
    def sample_learned_variance(
        self, n: int = 1000, steps: int = 10, seed: int = 0, spacing: str = "trailing", clip: float | None = 4.0
    ) -> torch.Tensor:
        """[n, 2] samples by ancestral DDPM with the learned variance (ldm.sampling.variance_sampler)."""
        if not self.learned:
            raise ToyDataError("this toy model was trained without a learned variance")
        sigmas = get_sigmas(self.alphas_cumprod, steps, spacing=spacing)
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
        model = LearnedVarianceDenoiser(self.net, VPParameterisation(self.alphas_cumprod, "eps"), clip)
        with single_thread():
            return sample_ddpm_learned_variance(
                model, x, sigmas, generator=torch.Generator().manual_seed(seed + 1), disable=True
            )

    @torch.no_grad()
    def sample(
        self,
        n: int = 1000,
        steps: int = 50,
        sampler: str = "ddim",
        seed: int = 0,
        spacing: str = "trailing",
        clip: float | None = 4.0,
        return_trajectory: bool = False,
        **sampler_options,
    ):
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
            trajectory.append(
                {"x": vp(d["x"].clone(), d["sigma"]), "denoised": d["denoised"].clone(), "sigma": float(d["sigma"])}
            )

        denoiser = self.denoiser() if clip is None else ClippedDenoiser(self.denoiser(), clip)
        with single_thread():
            options = SamplingOptions(steps=steps, sampler=sampler, extra=dict(sampler_options))
            out = sample(
                denoiser,
                x,
                sigmas,
                options,
                torch.Generator().manual_seed(seed + 1),
                callback=record if return_trajectory else None,
                progress=False,
            )
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
