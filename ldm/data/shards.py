"""WebDataset tar shards (the format img2dataset writes): listing, counting, reading and decoding samples.

A shard is a tar whose files are grouped into samples by name: `000017.jpg` + `000017.txt` (the caption)
+ `000017.json` (img2dataset's metadata, which may hold the caption instead). Tars are opened through
fsspec, so a shard is a local path or any URL fsspec reads (s3://, gs://, hf://, https://, ...), and split
into samples by the `webdataset` library; nothing here parses tar itself.

The training stream (ldm.training.shard_stream) needs each shard's sample count before it starts, to give
every rank the same number of steps. img2dataset writes `NNNNN_stats.json` beside each `NNNNN.tar` with
the count (`successes`); without it the shard is read through once and its samples counted.

A ControlNet's training triples (image, control image, caption) carry the control image as one more file of the
sample, `KEY.control.png` (CONTROL_KEY; `controlnet.control_key` of the training config names it), cropped and
flipped with the image. `write_shards(..., control_root=DIR)` writes it from a folder mirroring the images' paths.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from ldm.data.folder import (
    EXTRA_FIELDS,
    CaptionedImageFolder,
    DatasetError,
    UnreadableImageError,
    resize_and_crop,
    to_tensor,
)
from ldm.io.checkpoint import atomic_path
from ldm.io.images import InvalidImageError, open_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CONTROL_KEY = "control.png"  # a ControlNet triple's control image in a sample: KEY.control.png
CAPTION_COLUMNS = ("caption", "text")  # img2dataset writes "caption"; Hugging Face sets often name it "text"


class ShardError(DatasetError):
    """A shard list that names nothing, or a shard that cannot be opened."""


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """`dir/{00000..00009}.tar` (brace ranges, `::` between lists) or a list of such -> the shard URLs in order."""
    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for pattern in patterns for url in wds.shardlists.expand_urls(str(pattern))]
    if not urls:
        raise ShardError(f"data.shards names no shard: {shards!r}")
    return urls


def open_shard(url: str):
    """A binary stream of the shard: a local path or any fsspec URL."""
    try:
        return fsspec.open(url, "rb").open()
    except (OSError, ValueError, ImportError) as exc:
        raise ShardError(
            f"cannot open shard {url}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None


def raw_samples(url: str) -> Iterator[dict]:
    """The samples of one shard in stored order: {"__key__", "__url__", "jpg": bytes, "txt": bytes, ...}."""
    with open_shard(url) as stream:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))


def _stats_path(url: str) -> str | None:
    return url[: -len(".tar")] + "_stats.json" if url.endswith(".tar") else None


def count_samples(url: str) -> int:
    """Samples in a shard: img2dataset's `_stats.json` count when there is one, else counted by reading it."""
    stats = _stats_path(url)
    if stats is not None:
        try:
            with fsspec.open(stats, "r") as f:
                return int(json.load(f)["successes"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (%s): counting the samples of %s instead", stats, exc, url)
    try:
        with open_shard(url) as stream:
            # suffixes=set(): group by name only, keep no file contents
            return sum(1 for _ in group_by_keys(tar_file_expander([{"url": url, "stream": stream}]), suffixes=set()))
    except ShardError:
        raise
    except Exception as exc:  # a truncated or non-tar file: tarfile and webdataset raise many kinds
        raise ShardError(f"cannot read shard {url}: {str(exc).splitlines()[0]}") from None


def sample_caption(sample: dict, column: str | None = None) -> tuple[str, dict]:
    """(caption, captions.jsonl-style extras) of a raw sample: its `.txt`, or a column of its `.json`."""
    meta: dict = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as exc:
            raise UnreadableImageError(f"{describe(sample)}: unreadable .json ({exc})") from None
        meta = meta if isinstance(meta, dict) else {}
    extras = {k: v for k, v in meta.items() if k in EXTRA_FIELDS}
    if column is None and "txt" in sample:
        return sample["txt"].decode("utf-8", "replace").strip(), extras
    for name in [column] if column else CAPTION_COLUMNS:
        if isinstance(meta.get(name), str):
            return meta[name], extras
    raise UnreadableImageError(
        f"{describe(sample)}: no caption ({'.json ' + column if column else '.txt, or .json caption/text'})"
    )


def describe(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"


def sample_key(sample: dict) -> str:
    """A sample's identity across epochs and ranks (caches and the unreadable count key on it)."""
    return f"{sample['__url__']}#{sample['__key__']}"


def decode_sample(
    sample: dict,
    size: int,
    center_crop: bool = True,
    caption_column: str | None = None,
    rng: random.Random | None = None,
    control_key: str | None = None,
) -> dict:
    """A raw sample -> {"image": [3,size,size] in [-1,1], "caption", "key", "extras"}; UnreadableImageError if it
    has no image or caption, or its image does not decode. With `control_key` (e.g. CONTROL_KEY) also "control":
    that file of the sample, [3,size,size] in [0, 1], resized and cropped as the image (UnreadableImageError
    without it)."""
    suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        raise UnreadableImageError(f"{describe(sample)}: no image ({', '.join('.' + s for s in IMAGE_SUFFIXES)})")
    caption, extras = sample_caption(sample, caption_column)
    try:
        image = open_image(bytes(sample[suffix]), "RGB")
    except InvalidImageError as exc:
        raise UnreadableImageError(f"{describe(sample)}.{suffix}: {exc}") from None
    state = (rng or random).getstate()  # the control image is cropped where the image is
    width, height = image.size
    image = resize_and_crop(image, size, center=center_crop, rng=rng)
    item = {"image": to_tensor(image), "caption": caption, "key": sample_key(sample), "extras": extras}
    if control_key is not None:
        if control_key not in sample:
            raise UnreadableImageError(f"{describe(sample)}: no control image .{control_key} (controlnet.control_key)")
        try:
            control = open_image(bytes(sample[control_key]), "RGB")
        except InvalidImageError as exc:
            raise UnreadableImageError(f"{describe(sample)}.{control_key}: {exc}") from None
        if control.size[0] * height != control.size[1] * width:  # else no crop could match the image's
            raise UnreadableImageError(
                f"{describe(sample)}.{control_key}: the control image is {control.size[0]}x{control.size[1]}, "
                f"the image {width}x{height}: not the same shape"
            )
        (rng or random).setstate(state)
        item["control"] = (to_tensor(resize_and_crop(control, size, center=center_crop, rng=rng)) + 1) / 2
    return item


def write_shards(
    root: str | os.PathLike,
    out: str | os.PathLike,
    per_shard: int = 1000,
    control_root: str | os.PathLike | None = None,
) -> str:
    """A captioned folder (any layout CaptionedImageFolder reads) as WebDataset tars in img2dataset's layout:
    `out/00000.tar` ... with `KEY.<ext>` (the image file's own bytes), `KEY.txt` and `KEY.json` per sample,
    and `00000_stats.json` ({"successes": n}) beside each tar. Returns the shards' brace pattern.
    control_root: a folder holding a control image under each image's relative path, written as
    `KEY.control.png` (a ControlNet's training triples; PNG, re-encoded if stored otherwise)."""
    if per_shard < 1:
        raise ShardError(f"samples per shard must be positive, got {per_shard}")
    folder = CaptionedImageFolder(root, size=1)  # the listing and captions only; images are copied as they are
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = -(-len(folder) // per_shard)
    for shard in range(count):
        rows = range(shard * per_shard, min(len(folder), (shard + 1) * per_shard))
        with atomic_path(out / f"{shard:05d}.tar") as tmp:
            with wds.TarWriter(tmp, encoder=False) as sink:
                for i in rows:
                    rel = folder.files[i]
                    meta = {"caption": folder.captions[i], "file": rel, **folder.extras[i]}
                    ext = Path(rel).suffix.lower().lstrip(".")
                    sample = {
                        "__key__": f"{i:09d}",
                        ext: (folder.root / rel).read_bytes(),
                        "txt": folder.captions[i].encode("utf-8"),
                        "json": json.dumps(meta).encode("utf-8"),
                    }
                    if control_root is not None:
                        sample[CONTROL_KEY] = control_png(Path(control_root) / rel)
                    sink.write(sample)
        with atomic_path(out / f"{shard:05d}_stats.json") as tmp:
            Path(tmp).write_text(json.dumps({"successes": len(rows)}))
    return (out / f"{{00000..{count - 1:05d}}}.tar").as_posix() if count > 1 else (out / "00000.tar").as_posix()


def control_png(path: Path) -> bytes:
    """A control image file's bytes as PNG (its own bytes when it is one)."""
    if not path.is_file():
        raise ShardError(f"no control image for {path.name}: {path} is missing")
    data = path.read_bytes()
    if data.startswith(b"\x89PNG"):
        return data
    buffer = io.BytesIO()
    open_image(data, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()
