"""Autoencoder losses: LPIPS perceptual distance (local weights only) and a PatchGAN discriminator.

LPIPS is the learned perceptual metric of Zhang et al. (2018) over VGG16 features: channel-normalised
activations of five ReLU layers, squared differences, 1x1 "lin" layers, spatial mean, summed. The
backbone is torchvision's VGG16 and both weight sets come from local files, never a download:

  * `vgg`: torchvision's VGG16 state dict (`vgg16-397923af.pth`; `features.*` keys are used)
  * `lin`: the lpips package's linear-layer weights (`lpips/weights/v0.1/vgg.pth`; keys `lin0.model.1.weight`...)
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from ldm.io.checkpoint import CheckpointError, load_into, load_state_dict

# torchvision vgg16.features indices just after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_SLICE_ENDS = (4, 9, 16, 23, 30)
_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """Perceptual distance d(x, y) for images in [-1, 1]; returns [B] (0 for identical images). Frozen."""

    def __init__(self, vgg_weights: str | os.PathLike, lin_weights: str | os.PathLike):
        super().__init__()
        features = make_layers(cfgs["D"])  # VGG16's conv stack, without allocating the classifier
        state = load_state_dict(vgg_weights)
        vgg = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        if not vgg:
            raise CheckpointError(f"{vgg_weights}: no 'features.*' tensors (expected torchvision's VGG16 state dict)")
        try:
            load_into(features, vgg)
        except CheckpointError as exc:
            raise CheckpointError(f"{vgg_weights}: {exc}") from None
        starts = (0,) + _SLICE_ENDS[:-1]
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(starts, _SLICE_ENDS))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        lin_state = load_state_dict(lin_weights)
        lins = {f"{i}.weight": lin_state.get(f"lin{i}.model.1.weight") for i in range(len(_CHANNELS))}
        missing = [k for k, v in lins.items() if v is None]
        if missing:
            raise CheckpointError(
                f"{lin_weights}: missing LPIPS linear weights lin0.model.1.weight ... lin4.model.1.weight"
            )
        try:
            load_into(self.lins, lins)  # type: ignore[arg-type]
        except CheckpointError as exc:
            raise CheckpointError(f"{lin_weights}: {exc}") from None
        # The lpips ScalingLayer: ImageNet statistics expressed for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a fixed metric: no mode switches

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for block, lin in zip(self.slices, self.lins):
            h = block(h)
            f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            total = total + lin((fx - fy).pow(2)).mean(dim=(1, 2, 3)).float()
        return total


class PatchDiscriminator(nn.Module):
    """The pix2pix PatchGAN discriminator (as in the reference autoencoder training): image -> patch logits."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            mods += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        mods.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*mods)
        for m in self.modules():  # the reference's DCGAN initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Balance the adversarial term against reconstruction by their gradient norms at the decoder's last layer."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
