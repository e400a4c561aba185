"""The forward process and the training objective, equations in the code.

alpha_bar_t (ab) is the cumulative signal rate: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps.
v-prediction (Salimans & Ho 2022): v = sqrt(ab) eps - sqrt(1 - ab) x0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over a batch like `like`."""
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = _at(alphas_cumprod, t, x0)
    return ab.sqrt() * noise - (1 - ab).sqrt() * x0


def predict_x0_from_eps(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = _at(alphas_cumprod, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def predict_x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = _at(alphas_cumprod, t, x_t)
    return ab.sqrt() * x_t - (1 - ab).sqrt() * v


def eps_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = _at(alphas_cumprod, t, x_t)
    return (1 - ab).sqrt() * x_t + ab.sqrt() * v


def diffusion_loss(unet, x0: torch.Tensor, context: torch.Tensor | None, alphas_cumprod: torch.Tensor,
                   prediction: str = "eps", generator: torch.Generator | None = None, y: torch.Tensor | None = None,
                   concat: torch.Tensor | None = None) -> torch.Tensor:
    """DDPM's simple loss: E_t,eps || target - unet(x_t, t) ||^2, target eps or v, t ~ U{0..T-1}.

    `concat` (inpainting mask + masked latent, upscaler low-res image) is appended to x_t on channels.
    """
    if prediction not in ("eps", "v"):
        raise ValueError(f"unknown prediction type {prediction!r}; known: eps, v")
    b = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator, device=generator.device if generator else "cpu")
    t = t.to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=generator.device if generator else "cpu", dtype=x0.dtype)
    noise = noise.to(x0.device)
    x_t = q_sample(x0, t, alphas_cumprod, noise)
    if concat is not None:
        x_t = torch.cat([x_t, concat], dim=1)
    target = noise if prediction == "eps" else v_target(x0, noise, t, alphas_cumprod)
    out = unet(x_t, t, context=context, y=y)
    return F.mse_loss(out.float(), target.float())
