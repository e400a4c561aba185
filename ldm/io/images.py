"""Image conversion and saving shared by every task."""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ldm.core.errors import LdmError
from ldm.io.infotext import format_infotext


class InvalidImageError(LdmError, ValueError):
    pass


def check_size(height: int, width: int, multiple: int = 8) -> None:
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise InvalidImageError(f"{name} {value} is not a positive multiple of {multiple}")


class OutputError(LdmError, OSError):
    """An output file or folder that cannot be written."""


def check_writable(folder: Path, error: type[LdmError] = OutputError, name: str | None = None) -> None:
    """Create the folder and write a file in it, so an unwritable output fails before any work.

    The error names the folder as `name` (default: its path) and carries the system's reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise error(f"cannot write to {name or folder}: {exc.strerror or exc}") from None


def check_new_outputs(*paths: str | Path | None, overwrite: bool = False) -> None:
    """Refuse, before any work, a named output file that already exists, unless `overwrite` (the user's
    --overwrite): a command never replaces what a user made without being asked to."""
    for path in paths:
        if path is not None and Path(path).exists() and not overwrite:
            raise OutputError(f"{path} already exists (--overwrite replaces it)")


def write_text_output(path: str | Path, text: str) -> None:
    """A named text output (a results JSON, a table), written atomically: readers see the old or the new file."""
    from ldm.io.checkpoint import atomic_path

    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text)


def open_image(source: str | Path | bytes, mode: str = "RGB") -> Image.Image:
    """A decoded image from a file or bytes, converted to `mode` ("" keeps its own mode).

    Refused before decoding: images over PIL's pixel limit (Image.MAX_IMAGE_PIXELS, about 89 MP), where
    PIL only warns up to twice that: a small file can decode to gigabytes (a decompression bomb).
    Transparent areas become white, as a viewer shows them; 16-bit grey is scaled to 8 bits, not clipped. The image
    is turned as its EXIF orientation says (`upright`), as viewers show it.
    """
    name = "the uploaded image" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                img.load()
                img = _to_8bit(upright(img))
                if mode == "RGB" and img.mode in ("RGBA", "LA", "P", "PA"):
                    img = img.convert("RGBA")
                    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(background, img)
                return img.convert(mode) if mode else img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(f"{name} is too large to open safely ({str(exc).split('.')[0]})") from None
    except Image.UnidentifiedImageError:
        raise InvalidImageError(f"cannot read image {name}: not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError) as exc:
        raise InvalidImageError(f"cannot read image {name}: {exc}") from exc


def upright(img: Image.Image) -> Image.Image:
    """The image as viewers show it: turned and mirrored by its EXIF orientation tag (a phone photo taken upright
    is stored sideways with orientation 6); an image without the tag is returned as it is."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(img) or img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (modes I;16*, I) to 8-bit L by scaling; PIL's own convert clips at 255."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def load_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"image not found: {path}")
    return open_image(path, mode)


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


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the few milliseconds of writing one image (main thread, POSIX): Ctrl-C in the
    middle of atomic_path's bookkeeping (after its temporary file exists, before its cleanup can run) left a
    stray *.tmp beside the images; held, the signal arrives right after the image is whole."""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def save_png(
    image: Image.Image, path: str | Path, settings: dict[str, Any] | None = None, exclusive: bool = False
) -> Path:
    """PNG with the generation settings as text chunks: "parameters" in A1111's layout (ldm.io.infotext), which
    viewers and A1111's PNG Info read, and "ldm", every setting as JSON (what --from-png uses first).

    Written atomically (temp file + rename): a full disk or a crash never leaves a truncated PNG, and a failed
    write says so in one line (OutputError). `exclusive`: an existing file is never replaced (FileExistsError).
    """
    path = Path(path)
    return _write_png(image, settings, path, lambda tmp: _place(tmp, path, exclusive))


def save_numbered_png(
    image: Image.Image,
    folder: str | Path,
    name: str,
    first: int,
    settings: dict[str, Any] | None = None,
    pattern: str = r"(\d+)",
    glob: str = "*.png",
) -> tuple[Path, int]:
    """Save as `name.format(n)` in folder for the first free n from `first` on; returns (path, n).

    Each number is claimed by an exclusive create of the whole file (publish_exclusive), so runs writing into one
    folder at once never take the same number: one that finds its number taken moves past the highest one there
    (next_index with `pattern` and `glob`)."""
    from ldm.io.checkpoint import publish_exclusive

    folder, number = Path(folder), first

    def claim(tmp: str) -> Path:
        nonlocal number
        while True:
            path = folder / name.format(number)
            try:
                publish_exclusive(tmp, path)
                return path
            except FileExistsError:
                number = max(number + 1, next_index(folder, pattern, glob))

    return _write_png(image, settings, folder / name.format(first), claim), number


def _place(tmp: str, path: Path, exclusive: bool) -> Path:
    from ldm.io.checkpoint import publish_exclusive

    if exclusive:
        publish_exclusive(tmp, path)
    else:
        os.replace(tmp, path)
    return path


def png_info(settings: dict[str, Any] | None) -> PngImagePlugin.PngInfo:
    """The PNG text chunks of an image's settings: "parameters" (A1111's layout) and "ldm" (every setting, JSON)."""
    info = PngImagePlugin.PngInfo()
    if settings:
        info.add_text("parameters", format_infotext(settings))
        info.add_text("ldm", json.dumps(settings, default=str, allow_nan=False))
    return info


def png_bytes(image: Image.Image, settings: dict[str, Any] | None = None) -> bytes:
    """The PNG file `save_png` writes, as bytes (what `ldm serve` answers with): the same pixels and metadata."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(settings))
    return buffer.getvalue()


def _write_png(image: Image.Image, settings: dict[str, Any] | None, path: Path, place: Callable[[str], Path]) -> Path:
    """Encode the PNG into a temporary file beside `path` and hand it to `place`, which names it; the temporary
    file never outlives a failure (a full disk: OutputError naming `path` and the system's reason)."""
    from ldm.io.checkpoint import _umask

    info = png_info(settings)
    tmp = None
    try:
        with signals_held():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
                with os.fdopen(fd, "wb") as f:
                    image.save(f, format="PNG", pnginfo=info)
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
                return place(tmp)
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)
    except FileExistsError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def next_index(folder: Path, pattern: str = r"(\d+)", glob: str = "*.png") -> int:
    """One more than the highest number among the folder's files, so runs never overwrite earlier ones
    (counting files would, once one is deleted)."""
    numbers = [int(m.group(1)) for p in folder.glob(glob) if (m := re.match(pattern, p.stem))]
    return max(numbers, default=-1) + 1
