"""A learned noise schedule and the continuous-time bound of Variational Diffusion Models (Kingma et al. 2021).

Time t in [0, 1]; gamma(t) = -log SNR(t) is monotone increasing, and the VP process is

    z_t = alpha_t x + sigma_t eps,   alpha_t^2 = sigmoid(-gamma(t)),   sigma_t^2 = sigmoid(gamma(t)),

which is sigma space's sigma = sigma_t / alpha_t = exp(gamma / 2) (ldm.diffusion.schedules). The bound on -log p(x) is

    L = KL(q(z_1 | x) || N(0, I))                                        (prior)
      + E_{z_0}[-log p(x | z_0)]                                          (reconstruction)
      + 1/2 E_{t ~ U(0, 1), eps} [ gamma'(t) || eps - eps_hat(z_t, gamma(t)) ||^2 ]   (diffusion, VDM eq. 17)

with p(x | z_0) = N(z_0 / alpha_0, sigma_0^2 / alpha_0^2): a continuous Gaussian decoder, for continuous
data (toy points, latents), whose expected -log p is D/2 (log 2 pi + gamma_0 + 1) in closed form.
Written in gamma, the diffusion term is 1/2 int_{gamma_0}^{gamma_1} E||eps - eps_hat(z, gamma)||^2 d gamma: a network
that takes gamma (not t) gives a loss whose expectation depends on the schedule only through its endpoints,
so the interior is trained to minimise the variance of the one-sample estimate, by the gradient of
E[L_diffusion^2] (VDM, sec. 5.2), while the endpoints, where they are learned, follow the bound itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.parameterisation import batch_like, sigma_batch

GAMMA_MIN, GAMMA_MAX = -13.3, 5.0  # VDM's initial endpoints: sigma from 0.0013 to 12.2
# eps_model(z_t [B, ...], gamma [B]) -> eps_hat
EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class MonotoneLinear(nn.Module):
    """y = x W+ + b with W+ = softplus(W) > 0: a non-decreasing map in every input."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(outputs, inputs) / math.sqrt(inputs))
        self.bias = nn.Parameter(torch.zeros(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.softplus(self.weight), self.bias)


class LearnedGamma(nn.Module):
    """VDM's monotone schedule network, rescaled so that gamma(0) = gamma_0 and gamma(1) = gamma_1:

        g(t) = l1(t) + l3(sigmoid(l2(l1(t)))),   l1, l2, l3 with positive weights,
        gamma(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)).

    `shape_parameters` are g's (trained against the loss variance), `endpoint_parameters` gamma_0 and
    gamma_1 (trained on the bound; empty when learn_endpoints=False).
    """

    def __init__(
        self,
        gamma_min: float = GAMMA_MIN,
        gamma_max: float = GAMMA_MAX,
        hidden: int = 256,
        learn_endpoints: bool = False,
    ):
        super().__init__()
        self.l1, self.l2, self.l3 = MonotoneLinear(1, 1), MonotoneLinear(1, hidden), MonotoneLinear(hidden, 1)
        ends = torch.tensor([gamma_min, gamma_max])
        if learn_endpoints:
            self.ends = nn.Parameter(ends)
        else:
            self.register_buffer("ends", ends)

    def _g(self, t: torch.Tensor) -> torch.Tensor:
        h = self.l1(t[:, None])
        return (h + self.l3(torch.sigmoid(self.l2(h)))).squeeze(1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        g = self._g(t)
        g01 = self._g(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        gamma_0, gamma_1 = self.ends[0], self.ends[1]
        return gamma_0 + (gamma_1 - gamma_0) * (g - g01[0]) / (g01[1] - g01[0])

    def shape_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.l1, self.l2, self.l3) for p in m.parameters()]

    def endpoint_parameters(self) -> list[nn.Parameter]:
        return [self.ends] if isinstance(self.ends, nn.Parameter) else []


class FixedGamma(nn.Module):
    """A fixed schedule between the same endpoints: "linear" in gamma (VDM's baseline), or "cosine", whose
    alpha^2 = cos^2(pi u / 2), i.e. gamma = 2 log tan(pi u / 2), with u in [a, b] chosen to hit the endpoints."""

    def __init__(self, kind: str = "linear", gamma_min: float = GAMMA_MIN, gamma_max: float = GAMMA_MAX):
        super().__init__()
        if kind not in ("linear", "cosine"):
            raise InvalidOptionError(f"unknown fixed gamma schedule {kind!r}")
        self.kind, self.gamma_min, self.gamma_max = kind, gamma_min, gamma_max

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return self.gamma_min + (self.gamma_max - self.gamma_min) * t
        a, b = (2 / math.pi * math.atan(math.exp(g / 2)) for g in (self.gamma_min, self.gamma_max))
        return 2 * torch.log(torch.tan(math.pi / 2 * (a + (b - a) * t)))


def low_discrepancy_times(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """t_i = (u + i / B) mod 1: uniform marginals, evenly spread over the batch (VDM's variance reduction)."""
    u = torch.rand((), generator=generator)
    return torch.remainder(u + torch.arange(batch) / batch, 1.0)


def continuous_bound(
    eps_model: EpsModel,
    x: torch.Tensor,
    gamma: Callable[[torch.Tensor], torch.Tensor],
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The module docstring's bound per sample of x, in nats, as {"diffusion", "prior", "reconstruction", "total"}:
    a one-sample (t, eps) estimate of the diffusion term, differentiable in the network and the schedule."""
    t = (low_discrepancy_times(x.shape[0], generator) if t is None else t).to(x.device, x.dtype).requires_grad_(True)
    g_t = gamma(t)
    dg_dt = torch.autograd.grad(g_t.sum(), t, create_graph=True)[0]  # gamma'(t), itself trainable through the schedule
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    z_t = batch_like(torch.sigmoid(-g_t).sqrt(), x) * x + batch_like(torch.sigmoid(g_t).sqrt(), x) * eps
    err = (eps - eps_model(z_t, g_t)).flatten(1).pow(2).sum(1)
    diffusion = 0.5 * dg_dt * err
    ends = gamma(torch.tensor([0.0, 1.0], device=x.device, dtype=x.dtype))
    var_1 = torch.sigmoid(ends[1])
    prior = 0.5 * ((1 - var_1) * x.flatten(1).pow(2) + var_1 - 1 - torch.log(var_1)).sum(1)
    dims = x[0].numel()
    reconstruction = 0.5 * dims * (math.log(2 * math.pi) + ends[0] + 1) * torch.ones_like(diffusion)
    return {
        "diffusion": diffusion,
        "prior": prior,
        "reconstruction": reconstruction,
        "total": diffusion + prior + reconstruction,
    }


def schedule_step(bound: dict[str, torch.Tensor], net_params: list[torch.Tensor], schedule: nn.Module) -> torch.Tensor:
    """Backward pass of one VDM step: the network and the endpoints get the gradient of the mean bound, the
    schedule's shape the gradient of E[L_diffusion^2] (its variance, the mean being schedule-free); returns the
    mean bound. Gradients accumulate in .grad as with loss.backward()."""
    loss = bound["total"].mean()
    shape = schedule.shape_parameters() if hasattr(schedule, "shape_parameters") else []
    if shape:
        shape_grads = torch.autograd.grad(bound["diffusion"].pow(2).mean(), shape, retain_graph=True)
    loss.backward(inputs=[*net_params, *getattr(schedule, "endpoint_parameters", list)()])
    for p, g in zip(shape, shape_grads if shape else []):
        p.grad = g if p.grad is None else p.grad + g
    return loss.detach()


def alphas_cumprod_from_gamma(gamma: Callable[[torch.Tensor], torch.Tensor], num_timesteps: int = 1000) -> torch.Tensor:
    """ab_k = sigmoid(-gamma(t_k)) on t_k = (k + 1) / T, k = 0..T-1: a discrete grid the samplers' sigmas
    (ldm.diffusion.schedules.get_sigmas) are taken from, as for the fixed schedules (float64)."""
    with torch.no_grad():
        t = torch.arange(1, num_timesteps + 1, dtype=torch.float64) / num_timesteps
        return torch.sigmoid(-gamma(t.float()).double())


class LogSNRDenoiser:
    """D(x, sigma) for an eps-network that takes gamma = 2 log sigma instead of a timestep:

        D(x, sigma) = x - sigma * eps_hat(x / sqrt(1 + sigma^2), 2 log sigma).

    No sigma -> t table: any sigma between the schedule's ends is valid, whatever grid the sampler walks.
    """

    def __init__(self, eps_model: EpsModel, clip: float | None = None):
        self.eps_model, self.clip = eps_model, clip

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond) -> torch.Tensor:
        sigma = sigma_batch(sigma, x).to(x.dtype)
        eps = self.eps_model(x / batch_like((1 + sigma**2).sqrt(), x), 2 * sigma.log(), **cond)
        x0 = x - batch_like(sigma, x) * eps
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)
