"""ControlNets (Zhang et al. 2023): spatial control of a text-to-image U-Net by a control image (edges, depth, pose).

A ControlNet is a trainable copy of the U-Net's encoder (time embedding, SDXL's vector embedding, input blocks,
middle block), built here from our own U-Net's modules, plus
- a hint encoder that takes the control image (RGB in [0, 1], at the output's pixel size) down by the
  autoencoder's factor f to the latent's size (8 convolutions, widths 16 16 32 32 96 96 256 with SiLU, log2(f)
  of them with stride 2; the last is zero-initialised), added after the first input block;
- one zero-initialised 1x1 convolution per input block and one after the middle block, whose outputs are added
  to the U-Net's skip connections and to its middle block's output (UNetModel.forward(control=...)).
Attribute names are the original layout's (`control_model.` without its prefix), so those files load unrenamed.

In the sampling composition it is one more layer, between the network and its parameterisation:

    network + ControlNets (ControlledUNet) -> parameterisation -> task wrapper -> guidance -> sampler

`ControlledDenoiser` builds that layer at every call for the ControlNets active at the call's noise level, so
every sampler and task gets it through ldm.tasks.base.Conditioning.denoiser; `using_controlnets` attaches Controls to
a model for the calls made inside it, as ldm.adapters.lora.using_loras does for LoRAs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ldm.core.errors import InvalidOptionError
from ldm.diffusion.parameterisation import DiscreteTimeDenoiser
from ldm.io.control_images import inpaint_control_pixels, is_inpaint_control
from ldm.models.sinusoidal import timestep_embedding
from ldm.models.t2i_adapter import T2IAdapter, level_ends
from ldm.models.unet import UNetModel, zero_module

HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)  # the hint encoder's convolutions before its zero-initialised last one
HINT_STRIDED = (2, 4, 6)  # which of them halve the size, for f=8; f=4 uses the first two, f=2 the first


class ControlNet(nn.Module):
    """Residuals for a U-Net's skip connections and middle block from a latent, a time, the U-Net's conditions
    and a control image."""

    def __init__(self, unet: UNetModel, latent_channels: int | None = None, downscale: int = 8, hint_channels: int = 3):
        """The encoder of `unet` copied (its weights too: how a ControlNet's training starts), with its first
        convolution taking `latent_channels` (default: the U-Net's own; 4 for a 9-channel inpainting U-Net, whose
        ControlNets see the noisy latent alone) and a hint encoder for an autoencoder of factor `downscale`."""
        super().__init__()
        if downscale not in (1, 2, 4, 8):
            raise InvalidOptionError(f"a ControlNet's hint encoder handles f = 1, 2, 4 or 8, not {downscale}")
        self.model_channels = unet.model_channels
        self.num_res_blocks = list(unet.num_res_blocks)  # per level: what places its blocks in diffusers' names
        self.downscale = downscale
        self.time_embed = copy.deepcopy(unet.time_embed)
        if hasattr(unet, "label_emb"):  # SDXL's vector conditioning (or a class/noise-level embedding)
            self.label_emb = copy.deepcopy(unet.label_emb)
        self.input_blocks = copy.deepcopy(unet.input_blocks)
        first = unet.input_blocks[0][0]
        latent_channels = latent_channels or first.in_channels
        if latent_channels != first.in_channels:  # the latent's channels of an inpainting U-Net's input conv
            conv = nn.Conv2d(latent_channels, first.out_channels, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(first.weight[:, :latent_channels])
                conv.bias.copy_(first.bias)
            self.input_blocks[0][0] = conv.to(first.weight.dtype)
        self.middle_block = copy.deepcopy(unet.middle_block)
        self.input_hint_block = hint_encoder(hint_channels, self.model_channels, downscale)
        widths = [block_width(block) for block in self.input_blocks]
        self.zero_convs = nn.ModuleList(nn.Sequential(zero_module(nn.Conv2d(ch, ch, 1))) for ch in widths)
        middle = widths[-1]
        self.middle_block_out = nn.Sequential(zero_module(nn.Conv2d(middle, middle, 1)))
        self.to(first.weight.dtype)

    @property
    def in_channels(self) -> int:
        return self.input_blocks[0][0].in_channels

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        hint: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Residuals: one per input block (the U-Net's skip connections, in order), then the middle block's."""
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        x, hint = x.to(self.dtype), hint.to(self.dtype)
        context = context.to(self.dtype) if context is not None else None
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if y is not None and hasattr(self, "label_emb"):
            emb = emb + self.label_emb(y.to(self.dtype) if y.is_floating_point() else y)
        h = self.input_blocks[0](x, emb, context) + self.input_hint_block(hint)
        residuals = [self.zero_convs[0](h)]
        for block, zero_conv in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = block(h, emb, context)
            residuals.append(zero_conv(h))
        return residuals + [self.middle_block_out(self.middle_block(h, emb, context))]


def hint_encoder(hint_channels: int, out_channels: int, downscale: int) -> nn.Sequential:
    """Control image -> features at 1/downscale of its size: convolutions with SiLU between (the original's
    input_hint_block.0, .2, ..., .14), the last zero-initialised so an untrained ControlNet adds nothing."""
    strided = HINT_STRIDED[: int(math.log2(downscale))]
    layers: list[nn.Module] = []
    width = hint_channels
    for index, out in enumerate(HINT_WIDTHS):
        layers += [nn.Conv2d(width, out, 3, padding=1, stride=2 if index in strided else 1), nn.SiLU()]
        width = out
    return nn.Sequential(*layers, zero_module(nn.Conv2d(width, out_channels, 3, padding=1)))


def block_width(block: nn.Module) -> int:
    """The channels a U-Net input block puts out (its last module with out_channels or a conv)."""
    for module in reversed(list(block.modules())):
        if isinstance(module, nn.Conv2d):
            return module.out_channels
        if isinstance(module, nn.Linear):  # a linear proj_out (use_linear_in_transformer)
            return module.out_features
    raise InvalidOptionError("a U-Net input block without a convolution")


# How a control image of another size or shape becomes the output's size: stretched to it (diffusers; A1111's "Just
# Resize"), scaled to cover it and centre-cropped ("Crop and Resize"), or scaled to fit in it with black borders,
# which a ControlNet reads as no edges / no signal ("Resize and Fill").
RESIZE_MODES = ("stretch", "crop", "fill")


# A1111's control modes: "balanced" adds the residuals as they are to both sides of guidance; "prompt" ("My prompt
# is more important") scales residual i of the 13 by 0.825 ** (12 - i), the shallow ones least; "control"
# ("ControlNet is more important") scales so and adds them to the conditional side of guidance alone.
CONTROL_MODES = ("balanced", "prompt", "control")
SOFT_INJECTION_BASE = 0.825


def check_control_mode(mode: str) -> None:
    if mode not in CONTROL_MODES:
        raise InvalidOptionError(f"unknown control mode {mode!r}; known: {', '.join(CONTROL_MODES)}")


def residual_scales(count: int, mode: str) -> list[float]:
    """The per-residual factors of a control mode (A1111's list of 13, its first `count` for SDXL's 10)."""
    if mode == "balanced":
        return [1.0] * count
    return [SOFT_INJECTION_BASE ** float(12 - i) for i in range(count)]


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise InvalidOptionError(f"unknown control image resize mode {mode!r}; known: {', '.join(RESIZE_MODES)}")


def fit_image(image: Image.Image, width: int, height: int, mode: str = "stretch") -> Image.Image:
    """`image` at width x height, as RESIZE_MODES says."""
    check_resize_mode(mode)
    if image.size == (width, height):
        return image
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BICUBIC)
    cover = max if mode == "crop" else min
    scale = cover(width / image.width, height / image.height)
    scaled = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
    )
    canvas = Image.new(image.mode, (width, height))  # black; transparent for RGBA: masked, in an inpaint image
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))  # crops where it overhangs
    return canvas


def check_control_numbers(weight: float, start: float, end: float) -> None:
    """A ControlNet's weight is finite; its guidance start and end are fractions of the steps, start <= end."""
    if not math.isfinite(weight):
        raise InvalidOptionError(f"ControlNet weight must be a finite number, got {weight}")
    if not 0.0 <= start <= end <= 1.0:
        raise InvalidOptionError(
            f"ControlNet guidance start/end must satisfy 0 <= start <= end <= 1, got {start} and {end}"
        )


@dataclass
class Control:
    """One ControlNet applied to a run: its control image (PIL RGB, or a [B or 1, 3, H, W] tensor in [0, 1]), its
    weight (scales its residuals), the part of the steps it acts in, as fractions [start, end] of the steps
    (A1111's guidance start / end), and how a PIL image of another size is brought to the output's (`resize`, one
    of RESIZE_MODES), and its control mode (one of CONTROL_MODES). `name` is what the settings record (its file's
    name)."""

    net: ControlNet | T2IAdapter
    image: Image.Image | torch.Tensor
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    name: str = ""
    resize: str = "stretch"
    mode: str = "balanced"

    def __post_init__(self) -> None:
        if not isinstance(self.net, (ControlNet, T2IAdapter)):
            raise InvalidOptionError(f"a Control needs a ControlNet or a T2IAdapter, got {type(self.net).__name__}")
        check_control_numbers(self.weight, self.start, self.end)
        check_resize_mode(self.resize)
        check_control_mode(self.mode)

    def hint(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The control image as the hint encoder takes it: [n, 3, height, width] in [0, 1] (a PIL image resized), -1
        at an inpaint control image's transparent pixels (ldm.io.control_images); a tensor passes unchanged."""
        if isinstance(self.image, torch.Tensor):
            if self.image.ndim != 4 or tuple(self.image.shape[-2:]) != (height, width):
                raise InvalidOptionError(
                    f"a control image tensor must be [B, 3, {height}, {width}] (the output's "
                    f"pixel size), got {list(self.image.shape)}"
                )
            return self.image.to(device, torch.float32)
        if is_inpaint_control(self.image):  # transparent pixels reach the hint encoder as -1, the rest in [0, 1]
            return inpaint_control_pixels(fit_image(self.image.convert("RGBA"), width, height, self.resize)).to(device)
        image = fit_image(self.image.convert("RGB"), width, height, self.resize)
        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(device)


class ControlledUNet:
    """The U-Net with ControlNets' residuals added: called as the U-Net is, unet(x, t, context=, y=, ...).

    Each ControlNet sees the noisy latent alone (the first channels of x: an inpainting U-Net's mask and masked
    image are not its input); its hint is repeated over the batch (guidance's two halves, several images).
    controls: (ControlNet, hint, weight, mode); `uncond_rows`: how many leading rows of the batch are guidance's
    unconditional side, which the "control" mode leaves without residuals."""

    def __init__(
        self, unet: nn.Module, controls: Sequence[tuple[ControlNet, torch.Tensor, float, str]], uncond_rows: int = 0
    ):
        self.unet, self.controls, self.uncond_rows = unet, list(controls), uncond_rows

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        total: list[torch.Tensor] | None = None
        features: list[torch.Tensor] | None = None
        for net, hint, weight, mode in self.controls:
            if isinstance(net, T2IAdapter):  # `hint` is its features, computed once per run (ControlledDenoiser)
                scaled = [weight * f.repeat(x.shape[0] // f.shape[0], 1, 1, 1) for f in hint]
                if mode == "control" and self.uncond_rows:
                    scaled = [torch.cat([0 * f[: self.uncond_rows], f[self.uncond_rows :]]) for f in scaled]
                features = scaled if features is None else [a + b for a, b in zip(features, scaled)]
                continue
            if x.shape[0] % hint.shape[0]:
                raise InvalidOptionError(f"{hint.shape[0]} control images for a batch of {x.shape[0]}")
            if hint.shape[-2] != x.shape[-2] * net.downscale or hint.shape[-1] != x.shape[-1] * net.downscale:
                raise InvalidOptionError(
                    f"a control image of {hint.shape[-1]}x{hint.shape[-2]} px for a latent of "
                    f"{x.shape[-1]}x{x.shape[-2]} at f={net.downscale} (tiled sampling, as "
                    "the upscaler's, takes no ControlNet)"
                )
            hints = hint.repeat(x.shape[0] // hint.shape[0], 1, 1, 1)
            residuals = net(x[:, : net.in_channels], timesteps, hints, context, y)
            if len(residuals) != len(self.unet.input_blocks) + 1:
                raise InvalidOptionError(
                    f"a ControlNet of {len(residuals) - 1} input blocks for a U-Net of {len(self.unet.input_blocks)}"
                )
            scaled = [weight * factor * r for factor, r in zip(residual_scales(len(residuals), mode), residuals)]
            if mode == "control" and self.uncond_rows:
                keep = torch.ones(x.shape[0], 1, 1, 1, dtype=scaled[0].dtype, device=scaled[0].device)
                keep[: self.uncond_rows] = 0
                scaled = [r * keep for r in scaled]
            total = scaled if total is None else [a + b for a, b in zip(total, scaled)]
        if features is not None:
            extra["adapter"] = features
        return self.unet(x, timesteps, context=context, y=y, control=total, **extra)


class ControlledDenoiser:
    """network + ControlNets -> parameterisation: the model's DiscreteTimeDenoiser with its network controlled by
    the Controls active at the call's noise level.

    A Control acts in the steps i (of n) with start <= i / n and (i + 1) / n <= end, as diffusers' control_guidance_
    start / end (A1111 compares i / n alone with the end), told here by the noise levels of the sampler's grid
    `sigmas` (n + 1 levels), so a second-order sampler's in-between evaluations follow the step they are in.
    A call with twice the images of `noise` is guidance's [unconditional, conditional] batch (ldm.sampling.denoisers.
    CFGDenoiser), whose first half the "control" mode leaves alone.
    """

    def __init__(
        self,
        inner: DiscreteTimeDenoiser,
        controls: Sequence[Control],
        sigmas: torch.Tensor,
        noise: torch.Tensor,
        downscale: int,
    ):
        if not hasattr(inner, "unet"):
            raise InvalidOptionError("ControlNets need the model's network-level denoiser (DiscreteTimeDenoiser)")
        self.inner, self.images = inner, noise.shape[0]
        height, width = noise.shape[-2] * downscale, noise.shape[-1] * downscale
        grid = sigmas.detach().float().cpu()
        steps = max(len(grid) - 1, 1)
        self.controls = []
        for control in controls:
            net = control.net
            if net.downscale != downscale:
                raise InvalidOptionError(
                    f"ControlNet {control.name or ''} takes images down by f={net.downscale}, "
                    f"the model's autoencoder by f={downscale}"
                )
            active = [i for i in range(steps) if control.start <= i / steps and (i + 1) / steps <= control.end]
            window = (float(grid[active[-1]]), float(grid[active[0]])) if active else None
            hint = control.hint(height, width, noise.device)
            if isinstance(net, T2IAdapter):  # its features do not depend on the latent or the time: once per run
                hint = adapter_features(net, hint, inner.unet, noise)
            self.controls.append((net, hint, control.weight, control.mode, window))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        level = float(torch.as_tensor(sigma).max())
        active = [
            (net, hint, weight, mode)
            for net, hint, weight, mode, window in self.controls
            if window is not None and window[0] * (1 - 1e-5) - 1e-8 <= level <= window[1] * (1 + 1e-5) + 1e-8
        ]
        if not active:
            return self.inner(x, sigma, **cond)
        uncond_rows = self.images if x.shape[0] == 2 * self.images else 0
        controlled = DiscreteTimeDenoiser(
            ControlledUNet(self.inner.unet, active, uncond_rows), parameterisation=self.inner.parameterisation
        )
        return controlled(x, sigma, **cond)


def adapter_features(
    adapter: T2IAdapter, image: torch.Tensor, unet: nn.Module, noise: torch.Tensor
) -> list[torch.Tensor]:
    """A T2I-Adapter's feature maps for `image`, checked against the U-Net's levels and the latent's size."""
    if noise.shape[0] % image.shape[0]:
        raise InvalidOptionError(f"{image.shape[0]} control images for a batch of {noise.shape[0]}")
    with torch.no_grad():
        features = adapter(image)
    ends = level_ends(unet.num_res_blocks)
    if len(features) != len(ends):
        raise InvalidOptionError(f"a T2I-Adapter of {len(features)} feature maps for a U-Net of {len(ends)} levels")
    if tuple(features[0].shape[-2:]) != tuple(noise.shape[-2:]):
        raise InvalidOptionError(
            f"a T2I-Adapter's first features are {tuple(features[0].shape[-2:])}, the latent {tuple(noise.shape[-2:])}"
        )
    return features


def controlled_denoiser(
    model: nn.Module, inner: DiscreteTimeDenoiser, sigmas: torch.Tensor, noise: torch.Tensor
) -> DiscreteTimeDenoiser | ControlledDenoiser:
    """The model's denoiser with the Controls attached to it (`using_controlnets`), or `inner` without any."""
    controls = getattr(model, "controls", None)
    if not controls:
        return inner
    return ControlledDenoiser(inner, controls, sigmas, noise, model.downscale)


@contextmanager
def using_controlnets(model: nn.Module, controls: Sequence[Control]) -> Iterator[nn.Module]:
    """Every sampling call on `model` inside applies `controls` (on the model's device, in its U-Net's dtype)."""
    controls = list(controls)
    for control in controls:
        if not isinstance(control, Control):
            raise InvalidOptionError(f"controls must be Control objects, got {type(control).__name__}")
        control.net.to(next(model.unet.parameters()).device, model.unet.dtype).eval()
    before = getattr(model, "controls", None)
    model.controls = controls
    try:
        yield model
    finally:
        model.controls = before
