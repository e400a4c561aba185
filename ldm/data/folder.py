"""A folder of captioned images: the training data format of the whole project.

Captions come, in this order of precedence, from `captions.jsonl` (objects with `file` and
`caption`) or `captions.csv` (columns `file,caption`) in the root, from a Hugging Face `imagefolder`
`metadata.jsonl` or `metadata.csv` (a `file_name` and a caption column, by default `caption` or `text`),
or from a sidecar text file next to each image (`cat.png` + `cat.txt`). Every image under the root
needs a caption.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from ldm.core.errors import InvalidOptionError, LdmError
from ldm.io.images import InvalidImageError, open_image

# Optional captions.jsonl fields: extra captions to sample, a style word, a sampling weight (training), a group (evaluation).  # noqa: E501
EXTRA_FIELDS = ("keywords", "style", "weight", "group")
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class DatasetError(LdmError, ValueError):
    """Base class for a captioned image folder that cannot be used."""


class OutputDirNotEmptyError(LdmError, FileExistsError):
    """A dataset build's --out holds files no previous build of that dataset wrote: they are left alone."""


class EmptyDatasetError(DatasetError):
    """The folder holds no images."""


class UnreadableImageError(DatasetError):
    """An image file that PIL cannot decode."""


class MissingCaptionError(DatasetError):
    """An image with no caption in the captions file nor a sidecar .txt."""


class MissingImageError(DatasetError):
    """A captions file names an image that does not exist."""


class CaptionFileError(DatasetError):
    """A captions.jsonl or captions.csv that cannot be parsed."""


def _read_jsonl_rows(path: Path) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["caption"] = str(row["caption"])
            table[row["file"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CaptionFileError(f"{path}:{n}: expected a JSON object with 'file' and 'caption' ({exc})") from exc
    return table


def _read_jsonl(path: Path) -> dict[str, str]:
    return {k: row["caption"] for k, row in _read_jsonl_rows(path).items()}


METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # Hugging Face's imagefolder layout
CAPTION_COLUMNS = ("caption", "text")  # the caption column when none is named: the first a row has


def _metadata_records(path: Path) -> list[tuple[int, dict]]:
    """(line, row) of an imagefolder metadata.jsonl or metadata.csv."""
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return [(n, row) for n, row in enumerate(csv.DictReader(f), 2)]
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise CaptionFileError(f"{path}:{n}: not a JSON object ({exc})") from None
    return records


def _read_metadata_rows(path: Path, column: str | None = None) -> dict[str, dict]:
    """An imagefolder metadata file as captions.jsonl rows: {file_name: {"caption": the column, other fields}}."""
    table: dict[str, dict] = {}
    for n, row in _metadata_records(path):
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
            raise CaptionFileError(f"{path}:{n}: expected an object with 'file_name' (Hugging Face imagefolder)")
        name = column or next((c for c in CAPTION_COLUMNS if c in row), None)
        if name is None or row.get(name) is None:
            wanted = repr(column) if column else " or ".join(repr(c) for c in CAPTION_COLUMNS)
            raise CaptionFileError(
                f"{path}:{n}: no caption column {wanted} (columns: {', '.join(map(str, row))}); "
                "name it with data.caption_column"
            )
        table[row["file_name"]] = {**row, "caption": str(row[name])}
    return table


def _caption_rows(root: Path, column: str | None = None) -> dict[str, dict]:
    """Rows with a caption (and optional extra fields) keyed by image path as written, from the first captions
    file the root has; {} if none (then sidecar .txt files)."""
    if (root / "captions.jsonl").is_file():
        return _read_jsonl_rows(root / "captions.jsonl")
    if (root / "captions.csv").is_file():
        return {k: {"caption": v} for k, v in _read_csv(root / "captions.csv").items()}
    for name in METADATA_FILES:
        if (root / name).is_file():
            return _read_metadata_rows(root / name, column)
    return {}


def _read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
            raise CaptionFileError(f"{path}: needs a header with columns 'file,caption', got {reader.fieldnames}")
        return {row["file"]: row["caption"] for row in reader}


def read_caption_table(root: str | os.PathLike, column: str | None = None) -> dict[str, str]:
    """Captions keyed by image path relative to root (posix), from captions.jsonl/csv or an imagefolder
    metadata.jsonl/csv (`column`: its caption column); {} if none."""
    # Normalise "./images/a.png" and Windows separators to the keys the folder scan produces.
    return {_normal(k): row["caption"] for k, row in _caption_rows(Path(root), column).items()}


def read_caption_extras(
    root: str | os.PathLike, column: str | None = None, more_fields: tuple[str, ...] = ()
) -> dict[str, dict]:
    """The optional per-image fields besides file and caption (keywords, style, weight, and `more_fields`), by path."""
    rows = _caption_rows(Path(root), column)
    kept = set(EXTRA_FIELDS) | set(more_fields)
    return {_normal(k): {f: v for f, v in row.items() if f in kept} for k, row in rows.items()}


def _normal(name: str) -> str:
    return Path(name.replace("\\", "/")).as_posix()


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """An image as RGB; transparent pixels become white (as the emoji renders), not black."""
    try:
        return open_image(Path(path), "RGB")
    except InvalidImageError as exc:
        raise UnreadableImageError(str(exc)) from exc


def resize_and_crop(
    image: Image.Image, size: int, center: bool = True, rng: random.Random | None = None
) -> Image.Image:
    """Scale the shorter side to size, then crop a size x size square (centred, or at random)."""
    return resize_and_crop_at(image, size, center, rng)[0]


def resize_and_crop_at(
    image: Image.Image, size: int, center: bool = True, rng: random.Random | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """resize_and_crop, and where the crop's corner (top, left) lies in the scaled image: SDXL conditions on it."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if center:
        left, top = (nw - size) // 2, (nh - size) // 2
    else:
        rng = rng or random
        left, top = rng.randint(0, nw - size), rng.randint(0, nh - size)
    return image.crop((left, top, left + size, top + size)), (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1], the range the VAE expects."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


class CaptionedImageFolder(Dataset):
    """Images under root (recursively) with their captions; items are {"image": [3,size,size] in [-1,1], "caption": str}.

    center_crop=False takes a random square crop instead; flip=True mirrors half of the items at random;
    caption_column: the caption column of an imagefolder metadata file (default: `caption`, else `text`);
    more_fields: captions.jsonl fields kept in `extras` beside the usual ones (e.g. a class label's field).
    """  # noqa: E501

    def __init__(
        self,
        root: str | os.PathLike,
        size: int,
        center_crop: bool = True,
        flip: bool = False,
        caption_column: str | None = None,
        more_fields: tuple[str, ...] = (),
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EmptyDatasetError(f"dataset folder not found: {self.root}")
        if size < 1:
            raise InvalidOptionError(f"image size must be positive, got {size}")
        self.size = size
        self.center_crop = center_crop
        self.flip = flip
        table = read_caption_table(self.root, caption_column)
        for rel in table:
            if not (self.root / rel).is_file():
                raise MissingImageError(f"captions file names {rel}, which is not in {self.root}")
        files = sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise EmptyDatasetError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {self.root}")
        self.files: list[str] = files
        self.captions: list[str] = [self._caption(rel, table) for rel in files]
        extras = read_caption_extras(self.root, caption_column, tuple(more_fields))
        self.extras: list[dict] = [extras.get(rel, {}) for rel in files]
        for rel, extra in zip(files, self.extras):
            weight = extra.get("weight", 1.0)
            if (
                not isinstance(weight, (int, float))
                or isinstance(weight, bool)
                or not weight > 0
                or weight == float("inf")
            ):
                raise CaptionFileError(f"captions.jsonl: 'weight' of {rel} must be a positive number, got {weight!r}")

    def _caption(self, rel: str, table: dict[str, str]) -> str:
        if rel in table:
            return table[rel]
        sidecar = (self.root / rel).with_suffix(".txt")
        if sidecar.is_file():
            return sidecar.read_text(encoding="utf-8").strip()
        raise MissingCaptionError(
            f"no caption for image {self.root / rel} (add {sidecar.name} or an entry in captions.jsonl/csv or metadata.jsonl)"  # noqa: E501
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        image = load_rgb(self.root / self.files[index])
        original_size = (image.height, image.width)
        image, crop = resize_and_crop_at(image, self.size, center=self.center_crop)
        if self.flip and random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # key: the image's identity for caches of frozen-encoder outputs (one crop; "#flip" when mirrored);
        # original_size (height, width) and crop (top, left): what SDXL's micro-conditioning is told of the image.
        return {
            "image": to_tensor(image),
            "caption": self.captions[index],
            "key": self.files[index],
            "original_size": torch.tensor(original_size),
            "crop": torch.tensor(crop),
        }


def folder_extras(dataset: Dataset) -> list[dict]:
    """The per-item captions.jsonl extras (keywords, style, weight) of a folder or a Subset of one; {} each otherwise."""  # noqa: E501
    if isinstance(dataset, Subset):
        return [folder_extras(dataset.dataset)[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [extra for part in dataset.datasets for extra in folder_extras(part)]
    extras = getattr(dataset, "extras", None)
    return list(extras) if extras is not None else [{} for _ in range(len(dataset))]  # type: ignore[arg-type]
