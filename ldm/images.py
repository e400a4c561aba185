"""Image conversion and saving shared by every task."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ldm.errors import LdmError


class InvalidImageError(LdmError, ValueError):
    pass


def check_size(height: int, width: int, multiple: int = 8) -> None:
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise InvalidImageError(f"{name} {value} is not a positive multiple of {multiple}")


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if mode == "RGB" and img.mode in ("RGBA", "LA", "P"):
                # Transparent areas become white, not black, as a user would see them.
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            return img.convert(mode)
    except OSError as exc:
        raise InvalidImageError(f"cannot read image {path}: {exc}") from exc


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> [1, 3, H, W] in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


def make_grid(images: list[Image.Image], rows: int | None = None) -> Image.Image:
    if not images:
        raise InvalidImageError("no images to put in a grid")
    cols = math.ceil(math.sqrt(len(images))) if rows is None else math.ceil(len(images) / rows)
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


def settings_text(settings: dict[str, Any]) -> str:
    prompt = settings.get("prompt", "")
    rest = ", ".join(f"{k}: {v}" for k, v in settings.items() if k != "prompt")
    return f"{prompt}\n{rest}"


def save_png(image: Image.Image, path: str | Path, settings: dict[str, Any] | None = None) -> Path:
    """PNG with the generation settings as text chunks ("parameters" readable by common viewers, "ldm" as JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if settings:
        info.add_text("parameters", settings_text(settings))
        info.add_text("ldm", json.dumps(settings, default=str))
    image.save(path, pnginfo=info)
    return path


def next_index(folder: Path) -> int:
    """First free number in a folder of NNNNN.png files, so runs never overwrite earlier ones."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d+)", p.stem))]
    return max(numbers, default=-1) + 1
