"""Noise augmentation of the low-resolution image that conditions the x4 upscaler.

The upscaler is trained on low-res inputs noised to a random level and told that level
(through the U-Net's label embedding), so at sampling time the user can trade fidelity
to the input against the model's freedom to invent detail.
"""

from __future__ import annotations

import torch
from torch import nn

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas


class LowResNoiseAugmentation(nn.Module):
    def __init__(
        self,
        max_noise_level: int = 350,
        timesteps: int = 1000,
        beta_schedule: str = "scaled_linear",
        linear_start: float = 1e-4,
        linear_end: float = 2e-2,
    ):
        super().__init__()
        self.max_noise_level = max_noise_level
        # What it was built from (a diffusers export writes it as the upscaler's low_res_scheduler).
        self.schedule = {
            "kind": beta_schedule,
            "num_timesteps": timesteps,
            "linear_start": linear_start,
            "linear_end": linear_end,
        }
        betas = make_betas(beta_schedule, timesteps, linear_start=linear_start, linear_end=linear_end)
        # A plain tensor, not a buffer: casting the model's weights to bf16 would round it (levels near 0 to no
        # noise at all); it moves to the image's device where used.
        self.alphas_cumprod = alphas_cumprod_from_betas(betas).float()

    def forward(
        self,
        image: torch.Tensor,
        noise_level: int | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps at the given (or a random) level; returns (x_t, level).

        `noise` (eps, image-shaped) may be given so a seed gives the same augmentation on any device.
        """
        b = image.shape[0]
        if noise_level is None:
            noise_level = torch.randint(0, self.max_noise_level, (b,), generator=generator, device=image.device)
        noise_level = torch.as_tensor(noise_level, device=image.device).long().expand(b)
        if noise_level.min() < 0 or noise_level.max() >= len(self.alphas_cumprod):
            raise InvalidOptionError(f"noise level must be in [0, {len(self.alphas_cumprod) - 1}]")
        ab = self.alphas_cumprod.to(image.device)[noise_level].to(image.dtype)[:, None, None, None]
        if noise is None:
            noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
        elif noise.shape != image.shape:
            raise InvalidOptionError(f"noise shape {tuple(noise.shape)} differs from the image's {tuple(image.shape)}")
        noise = noise.to(image.device, image.dtype)
        return ab.sqrt() * image + (1 - ab).sqrt() * noise, noise_level
