"""A pixel rule for "colour + shape" prompts ("blue heart", "yellow square"): the picture's colour and silhouette.

The judge CLIP tells a real heart from a real circle of the same colour only 63-67% of the time across emoji
designs (docs/default-model-v3.md), so it cannot verify a 75% target on the colour x shape grid. On white-background
emoji both properties can be read off the pixels:

- foreground: pixels farther than `threshold` from white (the largest channel difference), which keeps pale
  designs (a light-blue circle) and drops the anti-aliased rim;
- colour: the median foreground colour, nearest (Euclidean, in RGB) to the references' median colours;
- shape: the foreground's bounding box cropped and resized to `grid` x `grid`, so position and size do not count,
  then the reference silhouette with the highest intersection over union (a square fills its box, a circle leaves
  its corners, a heart has its notch and its point).

References are labelled images (the real emoji of the 18 combinations); each property is the nearest reference's.
The rule's ceiling on the real images themselves (leave-one-out) is what `leave_one_out` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Reading:
    """One picture's colour and shape as the rule reads them; `foreground` is the share of non-white pixels."""

    colour: str
    shape: str
    foreground: float


def foreground_mask(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """[B, H, W] bool from [B, 3, H, W] images in [-1, 1]: pixels whose largest channel is `threshold` below white."""
    whiteness_gap = (1.0 - (images.clamp(-1, 1) + 1) / 2).amax(dim=1)
    return whiteness_gap > threshold


def median_colours(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B, 3] in [0, 1]: each picture's per-channel median over its foreground (white where it has none)."""
    pixels = (images.clamp(-1, 1) + 1) / 2
    colours = torch.ones(images.shape[0], 3)
    for i in range(images.shape[0]):
        chosen = pixels[i][:, masks[i]]
        if chosen.shape[1]:
            colours[i] = chosen.median(dim=1).values
    return colours


def silhouettes(masks: torch.Tensor, grid: int = 24) -> torch.Tensor:
    """[B, grid, grid] in [0, 1]: each mask cropped to its bounding box and resized (empty masks stay empty)."""
    out = torch.zeros(masks.shape[0], grid, grid)
    for i, mask in enumerate(masks):
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        if len(rows) == 0:
            continue
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float()
        out[i] = F.interpolate(box[None, None], size=(grid, grid), mode="area")[0, 0]
    return out


def soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[A, B]: intersection over union of soft silhouettes (min over max), every pair."""
    a, b = a.flatten(1)[:, None], b.flatten(1)[None]
    return torch.minimum(a, b).sum(-1) / torch.maximum(a, b).sum(-1).clamp_min(1e-6)


class ShapeColourJudge:
    """Reads colour and shape by the nearest labelled reference (colour by median colour, shape by silhouette)."""

    def __init__(self, references: torch.Tensor, colours: list[str], shapes: list[str], threshold: float = 0.25):
        if not (len(references) == len(colours) == len(shapes)):
            raise ValueError("one colour and one shape label per reference image")
        self.threshold = threshold
        self.colours, self.shapes = list(colours), list(shapes)
        masks = foreground_mask(references, threshold)
        self.reference_colours = median_colours(references, masks)
        self.reference_silhouettes = silhouettes(masks)

    def read(self, images: torch.Tensor, exclude: torch.Tensor | None = None) -> list[Reading]:
        """Each picture's reading; `exclude[i]` (a reference index) leaves that reference out for picture i."""
        masks = foreground_mask(images, self.threshold)
        colour_distance = torch.cdist(median_colours(images, masks), self.reference_colours)
        shape_overlap = soft_iou(silhouettes(masks), self.reference_silhouettes)
        if exclude is not None:
            rows = torch.arange(len(images))
            colour_distance[rows, exclude] = float("inf")
            shape_overlap[rows, exclude] = -1.0
        nearest_colour = colour_distance.argmin(dim=1).tolist()
        nearest_shape = shape_overlap.argmax(dim=1).tolist()
        share = masks.float().mean(dim=(1, 2)).tolist()
        return [Reading(self.colours[c], self.shapes[s], f) for c, s, f in zip(nearest_colour, nearest_shape, share)]

    def leave_one_out(self, references: torch.Tensor) -> list[Reading]:
        """The references read with their own row left out: the rule's ceiling on real designs."""
        return self.read(references, exclude=torch.arange(len(references)))
