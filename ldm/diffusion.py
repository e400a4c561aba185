"""The forward process, the eps / v / x0 conversions, the parameterisation and the training objective.

ab = alpha_bar_t, the cumulative signal rate of timestep t (ldm.diffusion.schedules):

    x_t = sqrt(ab) x0 + sqrt(1 - ab) eps                       (DDPM forward process)
    v   = sqrt(ab) eps - sqrt(1 - ab) x0                       (Salimans & Ho 2022)

so that x0 = sqrt(ab) x_t - sqrt(1 - ab) v and eps = sqrt(1 - ab) x_t + sqrt(ab) v.
All functions take `t` as a [B] tensor of integer timesteps and broadcast over the other dims.

`VPParameterisation` holds the schedule, its sigmas and the prediction type, and is the one object both
sides use: training draws (t, eps) and the target from it (`diffusion_loss`), sampling turns the
network into a denoiser D(x, sigma) -> x0 with its c_skip / c_out / c_in (ldm.sampling.denoisers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ldm.core.errors import LdmError
from ldm.diffusion.schedules import sigma_to_t, sigmas_from_alphas_cumprod

PREDICTIONS = ("eps", "v")


class UnknownPredictionError(LdmError, ValueError):
    pass


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise UnknownPredictionError(f"unknown prediction type {prediction!r}; known: {', '.join(PREDICTIONS)}")


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped [B, 1, ...] to broadcast over a batch like `like`, in its dtype and device."""
    t = torch.as_tensor(t, device=values.device)
    return values[t].to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw of q(x_t | x0) = N(sqrt(ab) x0, (1 - ab) I) with the given unit noise."""
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0, what a v-prediction network is trained to output."""
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0


def predict_x0_from_eps(
    x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    ab = _at(alphas_cumprod, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def predict_eps_from_x0(
    x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    ab = _at(alphas_cumprod, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def predict_x0_from_v(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
    ab = _at(alphas_cumprod, t, x_t)
    return ab.sqrt() * x_t - (1 - ab).sqrt() * v


def eps_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
    ab = _at(alphas_cumprod, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def v_from_eps(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """v = (eps - sqrt(1 - ab) x_t) / sqrt(ab), the inverse of `eps_from_v`."""
    ab = _at(alphas_cumprod, t, x_t)
    return (eps - (1 - ab).sqrt() * x_t) / ab.sqrt()


def _randn(shape: torch.Size, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the generator's device, so a seed gives the same draw whatever device x0 is on.
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class VPParameterisation:
    """A discrete-time variance-preserving model: its schedule ab_t, t = 0..T-1, and what the network predicts.

    Training (VP space, integer t): x_t = sqrt(ab) x0 + sqrt(1 - ab) eps and the target eps or v, above.

    Sampling (sigma space, x = x0 + sigma * eps, Karras et al. 2022): with ab = 1 / (1 + sigma^2) the VP
    point is x_t = c_in * x at the fractional t(sigma), and the network output F gives the x0 estimate

        D(x, sigma) = c_skip * x + c_out * F(c_in * x, t(sigma)),   c_in = 1 / sqrt(1 + sigma^2),
        eps-model:  c_skip = 1,                  c_out = -sigma            (x0 = x - sigma * eps)
        v-model:    c_skip = 1 / (1 + sigma^2),  c_out = -sigma * c_in     (x0 = sqrt(ab) x_t - sqrt(1 - ab) v)

    which are `predict_x0_from_eps` / `predict_x0_from_v` above, written in x and sigma.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "eps"):
        check_prediction(prediction)
        self.alphas_cumprod = alphas_cumprod
        self.prediction = prediction
        sigmas = sigmas_from_alphas_cumprod(alphas_cumprod.detach().double().cpu())
        self.sigmas = sigmas.float()  # ascending sigma_t, t = 0..T-1 (on the CPU; moved where used)
        self.log_sigmas = sigmas.log().float()

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    # ---- training: VP space, integer t ----------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return q_sample(x0, t, self.alphas_cumprod, noise)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output: eps, or v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        return noise if self.prediction == "eps" else v_target(x0, noise, t, self.alphas_cumprod)

    def x0_from_output(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The x0 a network output at (x_t, t) implies."""
        if self.prediction == "eps":
            return predict_x0_from_eps(x_t, t, out, self.alphas_cumprod)
        return predict_x0_from_v(x_t, t, out, self.alphas_cumprod)

    def loss(
        self,
        unet: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        context: torch.Tensor | None,
        generator: torch.Generator | None = None,
        y: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDPM's simple loss (Ho et al. 2020, eq. 14), a scalar:

            t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(ab) x0 + sqrt(1 - ab) eps,
            L = mean || target - unet([x_t, concat], t, context, y) ||^2,  target = eps or v.

        `concat` (inpainting mask + masked latent, upscaler low-res image) is appended to x_t on
        channels, as the U-Net sees it at sampling time. t and eps come from `generator`.
        """
        t, noise, x_t = self.noised(x0, generator)
        out = unet(x_t if concat is None else torch.cat([x_t, concat.to(x_t.dtype)], dim=1), t, context=context, y=y)
        return F.mse_loss(out.float(), self.target(x0, noise, t).float())

    def noised(
        self, x0: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t, eps, x_t) of one training step: t ~ U{0, ..., T-1}, then eps, both from `generator`."""
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), generator=generator, device=device).to(x0.device)
        noise = _randn(x0.shape, generator, x0)
        return t, noise, self.q_sample(x0, t, noise)

    # ---- sampling: sigma space ------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma_to_t(sigma, self.log_sigmas.to(sigma.device))

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) of the class docstring, for a [B] sigma."""
        c_in = 1 / (sigma**2 + 1).sqrt()
        if self.prediction == "eps":
            return torch.ones_like(sigma), -sigma, c_in
        return 1 / (sigma**2 + 1), -sigma * c_in, c_in

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """D = c_skip * x + c_out * F for sigma shaped to broadcast against x.

        Evaluated as the closed forms (x - sigma F; x / (1 + sigma^2) - sigma c_in F): the same values as the
        scalings, with the rounding every earlier release had, so sampled images stay bit for bit the same.
        """
        if self.prediction == "eps":
            return x - sigma * out
        return x / (sigma**2 + 1) - sigma * (1 / (sigma**2 + 1).sqrt()) * out


def batch_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample [B] tensor shaped [B, 1, ...] to broadcast against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def sigma_batch(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.to(x.device)


class DiscreteTimeDenoiser:
    """network -> parameterisation: D(x, sigma) -> x0 from unet(x_vp, t, context=, y=) trained on eps or v.

    The scalings are the parameterisation's (ldm.diffusion.parameterisation.VPParameterisation, built from `alphas_cumprod`
    and `prediction` unless given): the network sees c_in * x at t(sigma), and D = c_skip x + c_out F.
    `concat` (inpainting / upscaler inputs) is appended on channels to the *scaled* input, since the
    U-Net saw it beside x_vp in training; it is not noise and is not scaled.
    """

    def __init__(
        self,
        unet: Callable[..., torch.Tensor],
        alphas_cumprod: torch.Tensor | None = None,
        prediction: str = "eps",
        parameterisation: VPParameterisation | None = None,
    ):
        self.unet = unet
        self.parameterisation = parameterisation or VPParameterisation(alphas_cumprod, prediction)
        self.prediction = self.parameterisation.prediction

    @property
    def sigma_min(self) -> float:
        return self.parameterisation.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.parameterisation.sigma_max

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # At least float32: sigma near 0.03 and c_in near 1 lose the x0 estimate in half precision.
        sigma = sigma_batch(sigma, x).to(torch.promote_types(x.dtype, torch.float32))
        _, _, c_in = self.parameterisation.scalings(sigma)
        inp = x * batch_like(c_in, x)
        if concat is not None:
            inp = torch.cat([inp, concat.to(inp.dtype)], dim=1)
        # guidance: the scale a guidance-distilled student takes as an input (only such U-Nets get the keyword)
        extra = {} if guidance is None else {"guidance": sigma_batch(guidance, x)}
        out = self.unet(inp, self.parameterisation.sigma_to_t(sigma), context=context, y=y, **extra).to(x.dtype)
        return self.parameterisation.denoised(x, batch_like(sigma, x), out)


def diffusion_loss(
    unet: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    context: torch.Tensor | None,
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    generator: torch.Generator | None = None,
    y: torch.Tensor | None = None,
    concat: torch.Tensor | None = None,
) -> torch.Tensor:
    """`VPParameterisation(alphas_cumprod, prediction).loss(...)`: DDPM's simple loss on eps or v."""
    return VPParameterisation(alphas_cumprod, prediction).loss(unet, x0, context, generator, y=y, concat=concat)
