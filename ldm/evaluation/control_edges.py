"""How well images follow a ControlNet's edge map: the Canny edges of each output against the control edges.

A pixel counts as matched when an edge of the other map lies within `tolerance` pixels (a square window), since a
64 px output's edges move by a pixel with the shapes' anti-aliasing. Precision: the output's edges that are on a
control edge; recall: the control edges the output drew; F1 their harmonic mean; IoU: the matched pixels of both
maps over all edge pixels of both maps. The same images without the ControlNet give the baseline each figure is
compared with (docs/controlnet.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ldm.core.errors import InvalidOptionError
from ldm.io.control_images import CANNY_HIGH, CANNY_LOW, canny, control_image


@dataclass(frozen=True)
class EdgeAgreement:
    precision: float
    recall: float
    f1: float
    iou: float


def edge_map(image: Image.Image, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> torch.Tensor:
    """[H, W] bool: Canny's edges of an image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return canny(torch.from_numpy(array).permute(2, 0, 1)[None], low, high)[0, 0]


def _near(edges: torch.Tensor, tolerance: int) -> torch.Tensor:
    if tolerance <= 0:
        return edges
    return F.max_pool2d(edges[None, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)[0, 0] > 0


def edge_agreement(output: torch.Tensor, control: torch.Tensor, tolerance: int = 1) -> EdgeAgreement:
    """Agreement of two [H, W] bool edge maps (an output's and the control's)."""
    if output.shape != control.shape:
        raise InvalidOptionError(f"edge maps of different sizes: {list(output.shape)} and {list(control.shape)}")
    on_control = (output & _near(control, tolerance)).sum().item()
    drawn = (control & _near(output, tolerance)).sum().item()
    total_out, total_control = output.sum().item(), control.sum().item()
    precision = on_control / total_out if total_out else 0.0
    recall = drawn / total_control if total_control else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = total_out + total_control
    iou = (on_control + drawn) / both if both else 0.0
    return EdgeAgreement(precision, recall, f1, iou)


def mean_agreement(scores: list[EdgeAgreement]) -> EdgeAgreement:
    n = max(len(scores), 1)
    return EdgeAgreement(*(sum(getattr(s, name) for s in scores) / n for name in ("precision", "recall", "f1", "iou")))


def compare_with_and_without(
    model: torch.nn.Module,
    net: torch.nn.Module,
    controls: list[Image.Image],
    prompts: list[str],
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 5.0,
    tolerance: int = 1,
) -> tuple[EdgeAgreement, EdgeAgreement]:
    """(with the ControlNet, without it): the mean agreement of the outputs' edges with each control image's,
    over every (control image, prompt) pair, the same seed for both."""
    from ldm.models.controlnet import Control, using_controlnets
    from ldm.tasks.txt2img import txt2img

    with_net, without = [], []
    for control in controls:
        edges = torch.from_numpy(np.asarray(control.convert("L")) > 127)  # already an edge map: white lines on black
        options = dict(seed=seed, steps=steps, guidance_scale=guidance_scale, progress=False)
        plain = txt2img(model, prompts, height=control.height, width=control.width, **options)
        with using_controlnets(model, [Control(net, control)]):
            steered = txt2img(model, prompts, height=control.height, width=control.width, **options)
        without += [edge_agreement(edge_map(image), edges, tolerance) for image in plain]
        with_net += [edge_agreement(edge_map(image), edges, tolerance) for image in steered]
    return mean_agreement(with_net), mean_agreement(without)


def drawn_shapes() -> list[Image.Image]:
    """Canny edge maps of drawn shapes at 64 px (the default model's size): a circle, a square, a triangle, a ring."""
    shapes = []
    for draw_shape in (
        lambda d: d.ellipse((12, 12, 52, 52), fill="black"),
        lambda d: d.rectangle((14, 14, 50, 50), fill="black"),
        lambda d: d.polygon([(32, 8), (56, 54), (8, 54)], fill="black"),
        lambda d: (d.ellipse((6, 6, 58, 58), fill="black"), d.ellipse((22, 22, 42, 42), fill="white")),
    ):
        image = Image.new("RGB", (64, 64), "white")
        draw_shape(ImageDraw.Draw(image))
        shapes.append(control_image(image))
    return shapes
