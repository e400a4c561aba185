"""A tiny synthetic captioned dataset ("red square", "blue circle", ...) for tests, benchmarks and the tiny configs.

ldm data shapes data/shapes --size 16 --count 64
ldm data shapes data/shapes --overwrite          # a folder that holds files is refused without it
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from PIL import Image, ImageDraw

from ldm.core.errors import InvalidOptionError, LdmError


class DatasetExistsError(LdmError, FileExistsError):
    """The dataset folder already holds files, and replacing them was not asked for."""


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("square", "circle", "triangle")


def draw_shape(shape: str, colour: tuple[int, int, int], size: int, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """A coloured shape on white, roughly centred (offset in pixels), filling about half the image."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    m = size // 4
    box = (m + offset[0], m + offset[1], size - m - 1 + offset[0], size - m - 1 + offset[1])
    if shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    else:
        raise InvalidOptionError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return image


def make_shapes_dataset(root: str | os.PathLike, size: int = 16, count: int = 48, overwrite: bool = False) -> Path:
    """Write count PNGs and captions.jsonl (the CaptionedImageFolder format) under root; returns root.

    A root that already holds files (someone's captions.jsonl and images, say) is refused unless `overwrite`,
    which replaces captions.jsonl and the images of the same names and leaves any other file alone."""
    from ldm.io.checkpoint import atomic_path

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetExistsError(f"{root} exists and is not a folder")
    held = sorted(root.iterdir()) if root.is_dir() else []
    if held and not overwrite:
        raise DatasetExistsError(
            f"{root} already holds files ({held[0].name}); choose another folder, or give "
            "--overwrite to replace its captions.jsonl and images"
        )
    (root / "images").mkdir(parents=True, exist_ok=True)
    combos = list(itertools.product(COLOURS.items(), SHAPES))
    shift = max(1, size // 16)
    offsets = [(0, 0), (shift, 0), (0, shift), (-shift, -shift)]
    lines = []
    for i in range(count):
        (name, rgb), shape = combos[i % len(combos)]
        offset = offsets[(i // len(combos)) % len(offsets)]
        rel = f"images/{i:04d}.png"
        with atomic_path(root / rel) as tmp:
            draw_shape(shape, rgb, size, offset).save(tmp, format="PNG")
        lines.append(json.dumps({"file": rel, "caption": f"{name} {shape}"}))
    with atomic_path(root / "captions.jsonl") as tmp:  # written last: a half-made set has no captions file
        Path(tmp).write_text("\n".join(lines) + "\n")
    return root
