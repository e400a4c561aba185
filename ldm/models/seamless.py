"""Seamless tiling: images whose opposite edges join, so that copies laid side by side show no seam.

Every padded convolution of the U-Net and the autoencoder pads circularly along the chosen axis (the samples
beyond the right edge are the left edge's) and with zeros along the other, as A1111's "Tiling" does on both
axes. The network then never sees a border on that axis: the image it makes is a torus' surface. The change
lasts for the run only (`seamless`, a context manager), and is undone even when the run fails.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ldm.core.errors import InvalidOptionError

# A tiling choice -> (wraps along x, the width; wraps along y, the height).
TILING_AXES = {"xy": (True, True), "x": (True, False), "y": (False, True)}


def tiling_choice(value: str | bool | None) -> str | None:
    """The canonical tiling ("xy", "x", "y" or None) of what a caller gave: True is both axes, False/None none."""
    if value is None or value is False:
        return None
    if value is True:
        return "xy"
    if isinstance(value, str) and value.lower() in TILING_AXES:
        return value.lower()
    if isinstance(value, str) and value.lower() in ("both", "yx"):
        return "xy"
    raise InvalidOptionError(f"tiling must be x, y or xy (both axes), or True/False; got {value!r:.40}")


def _padded_convolutions(networks: list[nn.Module]) -> list[nn.Conv2d]:
    """The convolutions that pad with zeros by a number of samples (not 'same'/'valid', not another mode)."""
    return [
        m
        for net in networks
        for m in net.modules()
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and isinstance(m.padding, tuple) and any(m.padding)
    ]


def _wrapping(conv: nn.Conv2d, wrap_x: bool, wrap_y: bool):
    pad_y, pad_x = conv.padding

    def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # Width first, then height: the corners are filled from the opposite corner when both wrap.
        x = F.pad(x, (pad_x, pad_x, 0, 0), mode="circular" if wrap_x else "constant")
        x = F.pad(x, (0, 0, pad_y, pad_y), mode="circular" if wrap_y else "constant")
        return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

    return conv_forward


@contextlib.contextmanager
def seamless(model: nn.Module, tiling: str | bool | None) -> Iterator[None]:
    """For the `with` block, the U-Net's and the autoencoder's convolutions (model.unet, model.vae) wrap around on
    the `tiling` axes ("xy", "x", "y"; None: nothing changes). Their own padding is back afterwards, on error too."""
    choice = tiling_choice(tiling)
    if choice is None:
        yield
        return
    wrap_x, wrap_y = TILING_AXES[choice]
    networks = [net for net in (getattr(model, "unet", None), getattr(model, "vae", None)) if net is not None]
    convs = _padded_convolutions(networks)
    for conv in convs:
        conv._conv_forward = _wrapping(conv, wrap_x, wrap_y)  # an instance attribute over the class's method
    try:
        yield
    finally:
        for conv in convs:
            conv.__dict__.pop("_conv_forward", None)  # the class's method again
