"""The discrete-time variational bound (Ho et al. 2020; Nichol & Dhariwal 2021) and learned variances.

For a VP chain with ab_t, t = 0..T-1 (ab_{-1} = 1), beta_t = 1 - ab_t / ab_{t-1}, the bound on -log p(x0) is

    L_vlb = L_T + sum_{t >= 1} L_t + L_0,
    L_T = KL(q(x_T | x0) || N(0, I)),                                        (prior)
    L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),                      (t >= 1)
    L_0 = -log p(x0 | x_1) = -log N(x0; x0_hat(x_1), sigma_0^2),             (decoder)

with the posterior q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, beta~_t),
    c0 = sqrt(ab_{t-1}) beta_t / (1 - ab_t),  ct = sqrt(1 - beta_t) (1 - ab_{t-1}) / (1 - ab_t),
    beta~_t = beta_t (1 - ab_{t-1}) / (1 - ab_t),
and p(x_{t-1} | x_t) = N(c0 x0_hat + ct x_t, sigma_t^2). The decoder L_0 is a continuous Gaussian density, not
DDPM's discretised one: the toy points and VAE latents are continuous, so the bound is a density (it can be
negative), and images would need the 8-bit bins instead. sigma_t^2 is beta~_t ("fixed_small"), beta_t
("fixed_large"), or learned (Improved DDPM, eq. 15), the network's output v in [0, 1] interpolating in log space:

    log sigma_t^2 = v log beta_t + (1 - v) log beta~_t.

(beta~_0 = 0, so index 0 uses beta~_1 in its place, as Improved DDPM does.) Bits per dimension are
nats / (D ln 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ldm.core.errors import LdmError
from ldm.diffusion.parameterisation import VPParameterisation, predict_x0_from_eps, q_sample

VARIANCES = ("fixed_small", "fixed_large", "learned")
HYBRID_LAMBDA = 1e-3  # Improved DDPM's lambda for L_hybrid = L_simple + lambda L_vlb
# predict(x_t [B, ...], t [B]) -> (x0_hat, v or None): v in [0, 1] when the variance is learned
Predictor = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class UnknownVarianceError(LdmError, ValueError):
    pass


def check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise UnknownVarianceError(f"unknown reverse variance {variance!r}; known: {', '.join(VARIANCES)}")


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats:
    1/2 (logvar2 - logvar1 - 1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2)."""
    return 0.5 * (logvar2 - logvar1 - 1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, e^logvar) per element, in nats: 1/2 (log 2 pi + logvar + (x - mean)^2 e^-logvar)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def bits_per_dim(nats: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """nats per sample -> bits per dimension: nats / (D ln 2)."""
    return nats / (dims * math.log(2))


def sum_per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def frac_from_output(raw: torch.Tensor) -> torch.Tensor:
    """The network's raw variance output in [-1, 1] (unbounded in practice) -> v = (raw + 1) / 2, as Improved DDPM."""
    return (raw + 1) / 2


class ReverseProcess:
    """The posterior q(x_{t-1} | x_t, x0) and the model's p(x_{t-1} | x_t) of one schedule (see module docstring)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        ab = alphas_cumprod.detach().double().cpu()
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        self.alphas_cumprod = ab
        self.betas = 1 - ab / ab_prev
        self.posterior_variance = self.betas * (1 - ab_prev) / (1 - ab)
        self.log_beta = self.betas.log()
        self.log_beta_tilde = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]).log()
        self.coef_x0 = ab_prev.sqrt() * self.betas / (1 - ab)
        self.coef_xt = (1 - self.betas).sqrt() * (1 - ab_prev) / (1 - ab)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t.cpu()].to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._at(self.coef_x0, t, x_t) * x0 + self._at(self.coef_xt, t, x_t) * x_t

    def log_variance(
        self, t: torch.Tensor, like: torch.Tensor, variance: str, frac: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t): fixed, or v log beta_t + (1 - v) log beta~_t with v = frac."""
        check_variance(variance)
        if variance == "fixed_small":
            return self._at(self.log_beta_tilde, t, like).expand_as(like)
        if variance == "fixed_large":
            return self._at(self.log_beta, t, like).expand_as(like)
        if frac is None:
            raise UnknownVarianceError("a learned variance needs the network's interpolation output v")
        return frac * self._at(self.log_beta, t, like) + (1 - frac) * self._at(self.log_beta_tilde, t, like)

    def term(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0_hat: torch.Tensor, log_var: torch.Tensor
    ) -> torch.Tensor:
        """L_t per sample in nats: KL(q(x_{t-1} | x_t, x0) || p) for t >= 1, the decoder's -log p(x0 | x_1) at t = 0."""
        mean = self.posterior_mean(x0_hat, x_t, t)
        true_mean = self.posterior_mean(x0, x_t, t)
        kl = normal_kl(true_mean, self._at(self.log_beta_tilde, t, x_t), mean, log_var)
        decoder = gaussian_nll(x0, mean, log_var)  # at t = 0 the posterior mean with ab_{-1} = 1 is x0_hat itself
        first = (t == 0).to(x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
        return sum_per_sample(torch.where(first, decoder, kl))

    def prior(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(N(sqrt(ab_T) x0, 1 - ab_T) || N(0, I)) per sample, in nats."""
        ab = float(self.alphas_cumprod[-1])
        mean, logvar = math.sqrt(ab) * x0, torch.full_like(x0, math.log1p(-ab))
        return sum_per_sample(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0)))


def stratified_timesteps(
    num_timesteps: int, count: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps, weights) for an unbiased estimate sum_{t >= 1} L_t ~= sum_k weights_k L_{steps_k} from `count` steps.

    The first count // 4 steps (1, 2, ...) are taken exactly, weight 1: L_t falls like 1/t there, so a stratum
    holding them would dominate the error. The rest of 1..T-1 is cut into equal strata with one uniform draw
    each, weighted by the stratum's size. All steps, weight 1, when count >= T - 1. Step 0 is never drawn: the
    decoder term L_0 (a density, several nats) is always evaluated exactly by `variational_bound`.
    """
    if count >= num_timesteps - 1:
        steps = torch.arange(1, num_timesteps)
        return steps, torch.ones(len(steps), dtype=torch.float64)
    head = count // 4
    strata = count - head
    edges = torch.linspace(head + 1, num_timesteps, strata + 1, dtype=torch.float64)
    u = torch.rand(strata, generator=generator, dtype=torch.float64)
    drawn = (edges[:-1] + u * (edges[1:] - edges[:-1])).floor().long().clamp(head + 1, num_timesteps - 1)
    steps = torch.cat([torch.arange(1, head + 1), drawn])
    weights = torch.cat([torch.ones(head, dtype=torch.float64), edges[1:] - edges[:-1]])
    return steps, weights


@torch.no_grad()
def variational_bound(
    predict: Predictor,
    x0: torch.Tensor,
    process: ReverseProcess,
    variance: str,
    timesteps: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """The bound per sample of x0, in nats, and its parts: {"total", "decoder", "prior", "terms" (t >= 1),
    "timesteps" (how many were evaluated)}.

    timesteps=None sums L_t over all T steps (exact, up to one noise draw per step); otherwise L_0 is taken
    exactly and the sum over t >= 1 is estimated as sum_k weights_k L_{steps_k} from (steps, weights)
    (`stratified_timesteps`).
    """
    T = process.num_timesteps
    steps, weights = stratified_timesteps(T, T) if timesteps is None else timesteps
    if (steps < 1).any() or (steps >= T).any():
        raise UnknownVarianceError(f"estimated timesteps must be in 1..{T - 1}")
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    decoder = torch.zeros_like(total)
    for t_value, weight in [(0, 1.0), *zip(steps.tolist(), weights.tolist())]:
        t = torch.full((x0.shape[0],), t_value, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = q_sample(x0, t, process.alphas_cumprod.to(x0.dtype), noise)
        x0_hat, frac = predict(x_t, t)
        log_var = process.log_variance(t, x_t, variance, frac)
        term = process.term(x0, x_t, t, x0_hat, log_var).double()
        if t_value == 0:
            decoder = term
        else:
            total += weight * term
    terms = total
    prior = process.prior(x0).double()
    return {
        "total": decoder + terms + prior,
        "decoder": decoder,
        "prior": prior,
        "terms": terms,
        "timesteps": len(steps) + 1,
    }


def hybrid_loss(
    process: ReverseProcess,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    eps_hat: torch.Tensor,
    raw_variance: torch.Tensor,
    lam: float = HYBRID_LAMBDA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Improved DDPM's L_hybrid = L_simple + lambda L_vlb, returned as (L_hybrid, L_vlb estimate in bits/dim):

        L_simple = mean || eps - eps_hat ||^2,
        L_vlb ~= T * L_t / (D ln 2)  at the drawn t (uniform), with the mean stop-gradiented,

    so L_vlb trains only the variance output and L_simple alone the mean, as in the paper.
    """
    simple = F.mse_loss(eps_hat.float(), noise.float())
    x0_hat = predict_x0_from_eps(x_t, t, eps_hat.detach(), process.alphas_cumprod.to(x_t.dtype))
    log_var = process.log_variance(t, x_t, "learned", frac_from_output(raw_variance))
    dims = x0[0].numel()
    vlb = bits_per_dim(process.term(x0, x_t, t, x0_hat, log_var), dims) * process.num_timesteps
    return simple + lam * vlb.mean(), vlb.detach()


def split_output(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A learned-variance network's output [eps, raw v] on channels (ADM's learn_sigma layout) -> (eps, raw v)."""
    return out.chunk(2, dim=1)


class LearnedVarianceParameterisation(VPParameterisation):
    """The schedule of an eps-network with 2C output channels, [eps, raw v] (Improved DDPM's learned variance).

    Trained on L_hybrid (`hybrid_loss`: L_simple on eps, lambda L_vlb on v alone); everything that reads an x0
    from the output (`denoised`, `x0_from_output`, hence model.denoiser() and every ordinary sampler) uses the eps
    half only, so such a model samples as a fixed-variance one unless the sampler asks for v
    (ldm.sampling.variance_sampler).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        if prediction != "eps":
            raise UnknownVarianceError("learned variances are implemented for eps-prediction models")
        super().__init__(alphas_cumprod, prediction)
        self.process = ReverseProcess(alphas_cumprod)

    def loss(
        self,
        unet: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        context: torch.Tensor | None,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L_hybrid = L_simple + lambda L_vlb at one (t, eps) per sample, drawn as for the simple loss."""
        t, noise, x_t = self.noised(x0, generator)
        out = unet(x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1), t, context=context, y=y)
        eps_hat, raw = split_output(out)
        return hybrid_loss(self.process, x0.float(), x_t.float(), t, noise, eps_hat.float(), raw.float())[0]

    def x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return super().x0_from_output(x_t, t, split_output(out)[0])

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return super().denoised(x, sigma, split_output(out)[0])
