"""The forward process, the eps / v / x0 conversions and the training objective, equations in the code.

ab = alpha_bar_t, the cumulative signal rate of timestep t (ldm.schedules):

    x_t = sqrt(ab) x0 + sqrt(1 - ab) eps                       (DDPM forward process)
    v   = sqrt(ab) eps - sqrt(1 - ab) x0                       (Salimans & Ho 2022)

so that x0 = sqrt(ab) x_t - sqrt(1 - ab) v and eps = sqrt(1 - ab) x_t + sqrt(ab) v.
All functions take `t` as a [B] tensor of integer timesteps and broadcast over the other dims.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ldm.errors import LdmError

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


def predict_x0_from_eps(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
    ab = _at(alphas_cumprod, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def predict_eps_from_x0(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    ab = _at(alphas_cumprod, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def predict_x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
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


def diffusion_loss(unet: Callable[..., torch.Tensor], x0: torch.Tensor, context: torch.Tensor | None,
                   alphas_cumprod: torch.Tensor, prediction: str = "eps", generator: torch.Generator | None = None,
                   y: torch.Tensor | None = None, concat: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's simple loss (Ho et al. 2020, eq. 14), a scalar:

        t ~ U{0, ..., T-1},  eps ~ N(0, I),  x_t = sqrt(ab) x0 + sqrt(1 - ab) eps,
        L = mean || target - unet([x_t, concat], t, context, y) ||^2,  target = eps or v.

    `concat` (inpainting mask + masked latent, upscaler low-res image) is appended to x_t on
    channels, as the U-Net sees it at sampling time. t and eps come from `generator`.
    """
    check_prediction(prediction)
    device = generator.device if generator is not None else x0.device
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator, device=device).to(x0.device)
    noise = _randn(x0.shape, generator, x0)
    x_t = q_sample(x0, t, alphas_cumprod, noise)
    if concat is not None:
        x_t = torch.cat([x_t, concat.to(x_t.dtype)], dim=1)
    target = noise if prediction == "eps" else v_target(x0, noise, t, alphas_cumprod)
    out = unet(x_t, t, context=context, y=y)
    return F.mse_loss(out.float(), target.float())
