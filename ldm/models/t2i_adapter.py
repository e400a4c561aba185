"""T2I-Adapters (Mou et al. 2023): spatial control from a small network run once per image, not once per step.

The control image (RGB in [0, 1] at the output's pixel size) is pixel-unshuffled by the autoencoder's factor f
(a 64 px image at f=4 becomes 48 channels at 16x16, the latent's size), then stages of convolutions make one
feature map per U-Net encoder level (level i at 1/2^i of the latent's size, with that level's width). The
U-Net adds feature i to its hidden state after the last res(+attention) block of level i, before that level's
downsampling, so the skip connection carries it too: diffusers' `down_intrablock_additional_residuals` of a
CrossAttnDownBlock2D (UNetModel.forward(adapter=...)). The features do not depend on the noisy latent or the
time, so they are computed once per sampling run and reused at every step: the design's advantage over a
ControlNet, which runs a copy of the U-Net's encoder at every step.

Attribute names are diffusers' T2IAdapter's (`adapter.conv_in`, `adapter.body.N.resnets.M.block1`, ...), so
its files load unrenamed; two of its three kinds are built: "full_adapter" (a 3x3 conv, then per level a block
of `num_res_blocks` residual blocks, average-pooled 2x and 1x1-projected when the level changes) and
"light_adapter" (per level: 1x1 in to a quarter of the width, residual blocks, 1x1 out). SDXL's
"full_adapter_xl" adds its first feature after a downsampler and its last after the middle block, and is refused.

In the sampling composition an adapter is a Control as a ControlNet is (ldm.models.controlnet.Control), so its
weight (diffusers' adapter_conditioning_scale) and its end (diffusers' adapter_conditioning_factor: the adapter
acts in steps i < int(n * factor)) work with every sampler and task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ldm.core.errors import InvalidOptionError

ADAPTER_TYPES = ("full_adapter", "light_adapter")


class ResidualBlock(nn.Module):
    """x + conv(relu(conv3x3(x))): the second conv is 1x1 in the full adapter, 3x3 in the light one."""

    def __init__(self, channels: int, second_kernel: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, second_kernel, padding=second_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.act(self.block1(x)))


class FullStage(nn.Module):
    """One level of the full adapter: [2x average pool] [1x1 projection when the width changes] residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool):
        super().__init__()
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.resnets = nn.Sequential(*[ResidualBlock(out_channels, 1) for _ in range(num_res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.resnets(x)


class LightStage(nn.Module):
    """One level of the light adapter: [2x average pool] 1x1 to a quarter width, residual blocks, 1x1 out."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool):
        super().__init__()
        middle = out_channels // 4
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True) if down else None
        self.in_conv = nn.Conv2d(in_channels, middle, 1)
        self.resnets = nn.Sequential(*[ResidualBlock(middle, 3) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(middle, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.out_conv(self.resnets(self.in_conv(x)))


class AdapterBody(nn.Module):
    """diffusers' FullAdapter / LightAdapter: the unshuffle, [conv_in,] one stage per feature map."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_res_blocks: int, unshuffle: int, kind: str):
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(unshuffle)
        width = in_channels * unshuffle**2
        if kind == "full_adapter":
            self.conv_in = nn.Conv2d(width, channels[0], 3, padding=1)
            widths = [channels[0], *channels]
            self.body = nn.ModuleList(
                FullStage(widths[i], widths[i + 1], num_res_blocks, down=i > 0) for i in range(len(channels))
            )
        else:  # diffusers' light adapter repeats its last width once more, one level deeper
            self.conv_in = None
            widths = [width, *channels, channels[-1]]
            self.body = nn.ModuleList(
                LightStage(widths[i], widths[i + 1], num_res_blocks, down=i > 0) for i in range(len(channels) + 1)
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.unshuffle(x)
        if self.conv_in is not None:
            x = self.conv_in(x)
        features = []
        for stage in self.body:
            x = stage(x)
            features.append(x)
        return features


class T2IAdapter(nn.Module):
    """Control image [B, in_channels, H, W] in [0, 1] -> one feature map per U-Net encoder level.

    The arguments are diffusers' config.json's: `channels` (the U-Net's width per level: model_channels *
    channel_mult), `num_res_blocks`, `downscale_factor` (the unshuffle: the autoencoder's f, so the first
    feature has the latent's size), `adapter_type` (one of ADAPTER_TYPES)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: int = 2,
        downscale_factor: int = 8,
        adapter_type: str = "full_adapter",
    ):
        super().__init__()
        if adapter_type not in ADAPTER_TYPES:
            raise InvalidOptionError(
                f"T2I-Adapter type {adapter_type!r} is not supported: use one of {', '.join(ADAPTER_TYPES)}"
            )
        if downscale_factor < 1 or not channels or num_res_blocks < 1:
            raise InvalidOptionError(
                f"a T2I-Adapter needs downscale_factor >= 1, channels and num_res_blocks >= 1, got "
                f"{downscale_factor}, {list(channels)}, {num_res_blocks}"
            )
        self.config = {
            "in_channels": in_channels,
            "channels": list(channels),
            "num_res_blocks": num_res_blocks,
            "downscale_factor": downscale_factor,
            "adapter_type": adapter_type,
        }
        self.adapter = AdapterBody(in_channels, channels, num_res_blocks, downscale_factor, adapter_type)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel this adapter expects (its unshuffle): must equal the autoencoder's f."""
        return self.config["downscale_factor"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps, one per level (the light adapter's last at one level deeper than its channels say)."""
        if image.shape[1] != self.in_channels:
            if self.in_channels == 1 and image.shape[1] == 3:  # a grey adapter fed an RGB edge map: its mean
                image = image.mean(dim=1, keepdim=True)
            else:
                raise InvalidOptionError(
                    f"a T2I-Adapter of {self.in_channels} input channels got a {image.shape[1]}-channel image"
                )
        return self.adapter(image.to(self.dtype))


def level_ends(num_res_blocks: Sequence[int]) -> list[int]:
    """Each level's last res(+attention) block's index in input_blocks (before its Downsample, one block each)."""
    return [sum(num_res_blocks[: level + 1]) + level for level in range(len(num_res_blocks))]


def t2i_adapter_for(
    unet: nn.Module, downscale: int, adapter_type: str = "full_adapter", num_res_blocks: int = 2, in_channels: int = 3
) -> T2IAdapter:
    """A new T2I-Adapter whose features fit `unet` (a UNetModel): one per level, of the level's width, the first
    at the latent's size for an autoencoder of factor `downscale`."""
    widths = [unet.input_blocks[end][0].in_layers[-1].out_channels for end in level_ends(unet.num_res_blocks)]
    if adapter_type == "light_adapter":  # its last stage repeats the last width one level deeper
        if len(widths) < 2 or widths[-1] != widths[-2]:
            raise InvalidOptionError(f"a light T2I-Adapter needs the U-Net's last two widths equal, got {widths}")
        widths = widths[:-1]
    return T2IAdapter(in_channels, widths, num_res_blocks, downscale, adapter_type)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
