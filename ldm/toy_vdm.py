"""A toy VDM: the 2-D MLP of ldm.toys.points trained on the continuous-time bound under a fixed or learned gamma(t).

The MLP sees gamma (mapped linearly onto its timestep input), not t, so that the bound's expectation does not
depend on the schedule's interior (ldm.diffusion.vdm); sampling goes through the sigma grid of the discretised schedule
(ldm.diffusion.vdm.alphas_cumprod_from_gamma) with the library's samplers, as for the fixed discrete schedules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.likelihood import bits_per_dim
from ldm.diffusion.schedules import get_sigmas
from ldm.diffusion.vdm import (
    GAMMA_MAX,
    GAMMA_MIN,
    FixedGamma,
    LearnedGamma,
    LogSNRDenoiser,
    alphas_cumprod_from_gamma,
    continuous_bound,
    schedule_step,
)
from ldm.sampling.options import SamplingOptions, sample
from ldm.toys.points import ToyDataError, ToyMLP, single_thread

SCHEDULE_KINDS = ("linear", "cosine", "learned")
GAMMA_INPUT_RANGE = (-15.0, 10.0)  # gamma values mapped onto the MLP's timestep input 0..num_timesteps


@dataclass
class ToyVDM:
    """A toy continuous-time model; `train(steps)` continues where it left off, recording the bound per step
    and the variance of its one-sample estimate over the batch (`variances`)."""

    data: torch.Tensor
    schedule: str = "learned"
    learn_endpoints: bool = False
    gamma_min: float = GAMMA_MIN  # gamma(0) and gamma(1): -log SNR at the ends (the start values if learned)
    gamma_max: float = GAMMA_MAX
    hidden: int = 128
    lr: float = 3e-3
    schedule_lr: float = 1e-2
    batch_size: int = 256
    seed: int = 0
    losses: list[float] = field(default_factory=list)
    variances: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.data.ndim != 2 or self.data.shape[1] != 2:
            raise ToyDataError(f"toy data must be [N, 2], got {tuple(self.data.shape)}")
        if self.schedule not in SCHEDULE_KINDS:
            raise InvalidOptionError(f"unknown toy VDM schedule {self.schedule!r}; known: {', '.join(SCHEDULE_KINDS)}")
        torch.manual_seed(self.seed)
        self.net = ToyMLP(self.hidden)
        ends = (self.gamma_min, self.gamma_max)
        self.gamma = (
            LearnedGamma(*ends, learn_endpoints=self.learn_endpoints)
            if self.schedule == "learned"
            else FixedGamma(self.schedule, *ends)
        )
        groups = [{"params": list(self.net.parameters()), "lr": self.lr}]
        if self.schedule == "learned":
            groups.append({"params": list(self.gamma.parameters()), "lr": self.schedule_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.generator = torch.Generator().manual_seed(self.seed)

    def eps_model(self, z: torch.Tensor, gamma: torch.Tensor, **cond) -> torch.Tensor:
        lo, hi = GAMMA_INPUT_RANGE
        return self.net(z, (gamma - lo) / (hi - lo) * self.net.num_timesteps)

    def bound(self, x: torch.Tensor, generator: torch.Generator | None = None, t: torch.Tensor | None = None) -> dict:
        return continuous_bound(self.eps_model, x, self.gamma, generator or self.generator, t)

    def train_step(self) -> float:
        idx = torch.randint(0, len(self.data), (self.batch_size,), generator=self.generator)
        bound = self.bound(self.data[idx])
        self.optimizer.zero_grad(set_to_none=True)
        loss = schedule_step(bound, list(self.net.parameters()), self.gamma)
        self.optimizer.step()
        self.losses.append(float(loss))
        self.variances.append(float(bound["diffusion"].detach().var()))
        return self.losses[-1]

    def train(self, steps: int) -> list[float]:
        self.net.train()
        with single_thread():
            for _ in range(steps):
                self.train_step()
        self.net.eval()
        return self.losses

    def nll(self, data: torch.Tensor, repeats: int = 20, seed: int = 0) -> dict:
        """The bound on `data` (data space), each point's diffusion term averaged over `repeats` draws of (t, eps):
        {"total": nats per point, "bits_per_dim": its mean, "estimate_variance": the one-draw variance, in nats^2}."""
        generator = torch.Generator().manual_seed(seed)
        with single_thread():
            draws = torch.stack([self.bound(data.float(), generator)["total"].detach() for _ in range(repeats)])
        total = draws.mean(0)
        return {
            "total": total,
            "bits_per_dim": float(bits_per_dim(total.mean(), data.shape[1])),
            "estimate_variance": float(draws.var(0).mean()),
        }

    def alphas_cumprod(self, num_timesteps: int = 1000) -> torch.Tensor:
        return alphas_cumprod_from_gamma(self.gamma, num_timesteps)

    @torch.no_grad()
    def sample(
        self,
        n: int = 1000,
        steps: int = 50,
        sampler: str = "ddim",
        seed: int = 0,
        spacing: str = "trailing",
        clip: float | None = 4.0,
    ) -> torch.Tensor:
        sigmas = get_sigmas(self.alphas_cumprod(), steps, spacing=spacing)
        x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
        with single_thread():
            return sample(
                LogSNRDenoiser(self.eps_model, clip),
                x,
                sigmas,
                SamplingOptions(steps=steps, sampler=sampler),
                torch.Generator().manual_seed(seed + 1),
                progress=False,
            )
