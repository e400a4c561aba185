"""GAN, VAE and diffusion on the same 2-D toy data, measured side by side (the app's model comparison).

Each model is small (MLPs of the toy diffusion's width) and trains on one CPU thread in seconds. What is
compared: samples; training losses (how steady they are); mode coverage on the eight Gaussians; likelihood
where the model has one (the VAE's importance-weighted bound, the diffusion model's probability-flow ODE,
exact up to discretisation; a GAN has none); and the time and network evaluations a batch of samples takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ldm.core.errors import InvalidOptionError
from ldm.toys.classes import GAUSSIAN_CLASSES, labelled_gaussians
from ldm.toys.points import ToyDiffusion, make_data, nearest_distance, single_thread

LOG_2PI = math.log(2 * math.pi)


def mlp(inp: int, out: int, hidden: int = 128, layers: int = 3, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    dims = [inp] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), act()]
    return nn.Sequential(*blocks, nn.Linear(hidden, out))


def _batches(data: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return data[torch.randint(0, len(data), (batch_size,), generator=generator)]


@dataclass
class ToyGAN:
    """A GAN (Goodfellow et al. 2014) with the non-saturating generator loss: G maps 2-D unit noise to points,
    D scores real against generated; losses hold one (D loss, G loss) pair per step."""

    data: torch.Tensor
    latent_dim: int = 2
    lr: float = 1e-3
    batch_size: int = 256
    seed: int = 0
    losses: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        self.generator_net = mlp(self.latent_dim, 2)
        self.discriminator = mlp(2, 1, act=lambda: nn.LeakyReLU(0.2))
        self.opt_g = torch.optim.Adam(self.generator_net.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999))
        self.rng = torch.Generator().manual_seed(self.seed)

    def train(self, steps: int) -> None:
        bce = nn.functional.binary_cross_entropy_with_logits
        with single_thread():
            for _ in range(steps):
                real = _batches(self.data, self.batch_size, self.rng)
                fake = self.generator_net(torch.randn(self.batch_size, self.latent_dim, generator=self.rng))
                real_logit, fake_logit = self.discriminator(real), self.discriminator(fake.detach())
                d_loss = bce(real_logit, torch.ones_like(real_logit)) + bce(fake_logit, torch.zeros_like(fake_logit))
                self.opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_d.step()
                g_logit = self.discriminator(fake)
                g_loss = bce(g_logit, torch.ones_like(g_logit))  # non-saturating: maximise log D(G(z))
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                self.opt_g.step()
                self.losses.append((float(d_loss.detach()), float(g_loss.detach())))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.generator_net(torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed)))


@dataclass
class ToyVAE:
    """A VAE (Kingma & Welling 2014) with a 2-D latent and a Gaussian decoder of learned scalar std, so that
    its bound is a likelihood bound in nats: loss = -ELBO = -E_q log p(x | z) + KL(q(z | x) || N(0, I))."""

    data: torch.Tensor
    latent_dim: int = 2
    lr: float = 3e-3
    batch_size: int = 256
    seed: int = 0
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        self.encoder = mlp(2, 2 * self.latent_dim)
        self.decoder = mlp(self.latent_dim, 2)
        # Starting at the data's own std (1), the decoder explained all of it as noise and ignored z (posterior
        # collapse: NLL 2.84 nats, a unit Gaussian's, no mode found); a sharp start makes z worth using.
        self.log_std = nn.Parameter(torch.tensor(math.log(0.1)))
        params = [*self.encoder.parameters(), *self.decoder.parameters(), self.log_std]
        self.optimizer = torch.optim.Adam(params, lr=self.lr)
        self.rng = torch.Generator().manual_seed(self.seed)

    def _log_px_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log N(x; decoder(z), std^2 I), summed over the two coordinates."""
        return (-0.5 * ((x - self.decoder(z)) / self.log_std.exp()) ** 2 - self.log_std - 0.5 * LOG_2PI).sum(-1)

    def train(self, steps: int) -> None:
        with single_thread():
            for _ in range(steps):
                x = _batches(self.data, self.batch_size, self.rng)
                mu, log_var = self.encoder(x).chunk(2, dim=1)
                z = mu + (0.5 * log_var).exp() * torch.randn(mu.shape, generator=self.rng)
                kl = 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(1)
                loss = (kl - self._log_px_z(x, z)).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.losses.append(float(loss.detach()))

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Draws from the model itself, p(z) p(x | z): decoder mean plus its noise."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent_dim, generator=g)
        return self.decoder(z) + self.log_std.exp() * torch.randn(n, 2, generator=g)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 64, seed: int = 0) -> torch.Tensor:
        """The importance-weighted bound (Burda et al. 2016) on log p(x) with k samples, per point:
        log (1/k) sum_i p(x, z_i) / q(z_i | x) <= log p(x); k = 1 is the ELBO, larger k is tighter."""
        g = torch.Generator().manual_seed(seed)
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        std = (0.5 * log_var).exp()
        z = mu + std * torch.randn(k, *mu.shape, generator=g)  # [k, N, latent]
        log_q = (-0.5 * ((z - mu) / std) ** 2 - std.log() - 0.5 * LOG_2PI).sum(-1)
        log_prior = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
        log_w = self._log_px_z(x.expand(k, *x.shape), z) + log_prior - log_q
        return torch.logsumexp(log_w, dim=0) - math.log(k)


def _divergence(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), div_x f(x)) per point, exact: one backward pass per coordinate (two in 2-D, no trace estimator)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        div = sum(torch.autograd.grad(out[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1]))
    return out.detach(), div.detach()


def diffusion_log_likelihood(toy: ToyDiffusion, x: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """log p(x) under the probability-flow ODE (Song et al. 2021, app. D.2), per point, in sigma space:

        dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma,   log p_0(x_0) = log p_T(x_T) + int_0^T div f dsigma,

    integrated with Heun's method from the schedule's sigma_min to sigma_max on a log-spaced grid, with the
    prior N(0, (1 + sigma_max^2) I) of unit-variance data. It is the density of the data blurred by sigma_min."""
    den = toy.denoiser()
    sigmas = torch.exp(torch.linspace(math.log(den.sigma_min), math.log(den.sigma_max), steps + 1))
    drift = lambda s: lambda y: (y - den(y, s.expand(len(y)))) / s
    total = torch.zeros(len(x))
    with single_thread():
        f, div = _divergence(drift(sigmas[0]), x)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            h = s_next - s
            x_euler = x + h * f
            f_next, div_next = _divergence(drift(s_next), x_euler)
            x = x + h * (f + f_next) / 2
            total = total + h * (div + div_next) / 2
            f, div = _divergence(drift(s_next), x) if s_next < sigmas[-1] else (f_next, div_next)
    prior_var = 1 + den.sigma_max**2
    log_prior = (-0.5 * x**2 / prior_var - 0.5 * math.log(prior_var) - 0.5 * LOG_2PI).sum(-1)
    return log_prior + total


def mode_coverage(
    points: torch.Tensor, centres: torch.Tensor, radius: float, min_share: float = 0.25
) -> tuple[int, float]:
    """(modes covered, fraction of points near a mode): a point is near a mode within `radius` of its centre;
    a mode is covered when it holds at least min_share of the points an even split would give it."""
    dist = torch.cdist(points.float(), centres.float())
    near, nearest = dist.min(dim=1)
    near = near < radius
    counts = torch.bincount(nearest[near], minlength=len(centres))
    covered = int((counts >= min_share * len(points) / len(centres)).sum())
    return covered, float(near.float().mean())


def gaussian_centres(data: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.stack([data[labels == k].mean(0) for k in range(GAUSSIAN_CLASSES)])


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    with single_thread():
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0


def loss_wobble(losses: list[float], tail: float = 0.5) -> float:
    """Training steadiness: the std of the last `tail` of the per-step losses over their mean's magnitude."""
    last = torch.tensor(losses[int(len(losses) * (1 - tail)) :], dtype=torch.float64)
    return float(last.std() / last.mean().abs().clamp(min=1e-8)) if len(last) > 1 else float("nan")


def nearest_data_distance(points: torch.Tensor, data: torch.Tensor) -> float:
    return float(nearest_distance(points, data).mean())


MODELS = ("GAN", "VAE", "diffusion")


@dataclass
class Comparison:
    """Trained models, their samples, per-step training losses (the GAN's: the discriminator's) and one table row each."""  # noqa: E501

    data: torch.Tensor
    models: dict[str, object]
    samples: dict[str, torch.Tensor]
    losses: dict[str, list[float]]
    rows: list[dict]


def compare_models(
    dataset: str = "gaussians",
    steps: int = 2000,
    n: int = 1000,
    sample_steps: int = 50,
    nll_points: int = 500,
    seed: int = 0,
    report: Callable[[str, int, float], None] | None = None,
    every: int = 100,
) -> Comparison:
    """Train a GAN, a VAE and a diffusion model for `steps` steps each on the same data; measure them.

    Likelihoods are of `nll_points` held-out points (drawn with another seed), in nats per 2-D point, as
    negative log-likelihood (lower is better). report(model, step, recent mean loss) after every `every` steps."""
    if steps < 1 or n < 1:
        raise InvalidOptionError(f"training steps and samples must be at least 1, got {steps} and {n}")
    data = make_data(dataset, 2000, seed=seed)
    held_out = make_data(dataset, nll_points, seed=seed + 1000)
    centres = gaussian_centres(*labelled_gaussians(2000, seed)) if dataset == "gaussians" else None
    models: dict[str, object] = {
        "GAN": ToyGAN(data, seed=seed),
        "VAE": ToyVAE(data, seed=seed),
        "diffusion": ToyDiffusion(data, seed=seed),
    }
    losses: dict[str, list[float]] = {}
    samples, rows = {}, []
    for name, model in models.items():
        t0 = time.perf_counter()
        for done in range(0, steps, every):
            model.train(min(every, steps - done))
            loss_list = [d for d, _ in model.losses] if name == "GAN" else model.losses
            if report is not None:
                recent = loss_list[-every:]
                report(name, len(loss_list), sum(recent) / len(recent))
        train_seconds = time.perf_counter() - t0
        losses[name] = [d for d, _ in model.losses] if name == "GAN" else list(model.losses)
        if name == "diffusion":
            points, seconds = timed(lambda: model.sample(n, steps=sample_steps, sampler="ddpm", seed=seed))
            evaluations = sample_steps
            nll = -float(diffusion_log_likelihood(model, held_out).mean())
        else:
            points, seconds = timed(lambda: model.sample(n, seed=seed))
            evaluations = 1
            nll = -float(model.log_likelihood(held_out).mean()) if name == "VAE" else None
        samples[name] = points
        # radius 0.2: about three of a component's standard deviations (0.05 before the data is scaled by ~1.4)
        covered, near = mode_coverage(points, centres, radius=0.2) if centres is not None else (None, None)
        rows.append(
            {
                "model": name,
                "train s": round(train_seconds, 1),
                "loss wobble": round(loss_wobble(losses[name]), 3),
                "distance to data": round(nearest_data_distance(points, data), 4),
                "modes covered": covered,
                "near a mode": None if near is None else round(near, 3),
                "NLL (nats)": None if nll is None else round(nll, 3),
                "evaluations": evaluations,
                "sampling ms": round(1e3 * seconds, 1),
            }
        )
    return Comparison(data, models, samples, losses, rows)
