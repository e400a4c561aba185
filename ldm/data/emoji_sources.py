"""The emoji designs beside the Noto font: pinned npm packages of SVGs, fetched once and rendered with resvg.

Each design is one *style* of the dataset. The packages are fetched with `npm pack` (the npm
registry's own client) at a pinned version and checked against the registry's sha512 integrity
string, so a build is reproducible; nothing is fetched at training or sampling time.

    ldm data emoji-sources --dest data/emoji-sources     # once, on a machine with npm
    ldm data emoji --out data/emoji                      # renders every style it finds there

Licences were read from each package and its upstream project (see `SOURCES`). Left out:
`@svgmoji/blob` (its npm package carries no SVGs, only code that loads them from a CDN) and
`@svgmoji/noto` (the same Noto design as the font, which is already a style).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ldm.core.errors import LdmError

DEFAULT_SOURCES_DIR = "data/emoji-sources"
TONE_SLUGS = {
    "light skin tone": "light",
    "medium-light skin tone": "medium-light",
    "medium skin tone": "medium",
    "medium-dark skin tone": "medium-dark",
    "dark skin tone": "dark",
}


class EmojiSourceError(LdmError, RuntimeError):
    """An emoji design package that cannot be fetched, verified or read."""


def _codepoints(cp: str) -> list[str]:
    return cp.split()


def twemoji_file(codepoints: str, name: str) -> list[str]:
    # Twemoji names files by lower-case code points and drops FE0F outside ZWJ sequences;
    # a few ZWJ files drop it too, so both spellings are tried.
    cps = [c.lower() for c in _codepoints(codepoints)]
    without = [c for c in cps if c != "fe0f"]
    names = ["-".join(without)] if "200d" not in cps else ["-".join(cps), "-".join(without)]
    return [f"{n}.svg" for n in names]


def openmoji_file(codepoints: str, name: str) -> list[str]:
    cps = _codepoints(codepoints)
    return [f"{'-'.join(cps)}.svg", f"{'-'.join(c for c in cps if c != 'FE0F')}.svg"]


def fluent_file(codepoints: str, name: str) -> list[str]:
    # Fluent's files are named by the English name in kebab case; skin tones are a suffix
    # ("woman-judge-medium.svg"), and an emoji that has tones keeps its plain form as "-default".
    base, sep, tone = name.partition(": ")
    slug = lambda s: re.sub(r"[^a-z0-9]+", "-", s.lower().replace("\u2019", "").replace("'", "")).strip("-")
    if sep and tone in TONE_SLUGS:
        return [f"{slug(base)}-{TONE_SLUGS[tone]}.svg"]
    return [f"{slug(name)}.svg", f"{slug(name)}-default.svg"]


@dataclass(frozen=True)
class EmojiSource:
    """One design: an npm package at a pinned version, the folder of its SVGs, and how files are named."""

    style: str  # the dataset's style id, and the caption's style word ("<style> style")
    package: str
    version: str
    integrity: str  # the registry's dist.integrity (sha512, base64)
    svg_dir: str  # inside the unpacked package
    file_names: Callable[[str, str], list[str]]
    licence: str
    attribution: str
    homepage: str
    margin: float = 0.0  # extra white border, as a fraction of the side, so designs fill the frame alike

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def folder_name(self) -> str:
        return self.spec.replace("/", "+")


def _fluent(style: str, folder: str) -> EmojiSource:
    """One of Fluent Emoji's designs: the same pinned npm package, one folder of icons each."""
    return EmojiSource(
        style=style,
        package="fluentui-emoji",
        version="1.3.0",
        integrity="sha512-JTXXwqIie2rWTgOkIJDJxr0WtwTz2WU4kdOq8buLVThYwQ264aFR2jdTyuon2oEbLqqGMT64zI4btyn1saB2xw==",
        svg_dir=f"package/icons/{folder}",
        file_names=fluent_file,
        licence="MIT",
        attribution="Fluent Emoji by Microsoft Corporation, MIT; npm packaging by Mohammad Abu Mattar, MIT",
        homepage="https://github.com/microsoft/fluentui-emoji",
        margin=0.08,
    )


SOURCES: tuple[EmojiSource, ...] = (
    EmojiSource(
        style="twemoji",
        package="@twemoji/svg",
        version="15.0.0",
        integrity="sha512-ZSPef2B6nBaYnfgdTbAy4jgW95o7pi2xPGwGCU+WMTxo7J6B1lMPTWwSq/wTuiMq+N0khQ90CcvYp1wFoQpo/w==",
        svg_dir="package",
        file_names=twemoji_file,
        licence="CC-BY-4.0 (graphics; package code MIT)",
        attribution="Twemoji graphics by Twitter, Inc. and other contributors, CC-BY 4.0; maintained by jdecked/twemoji",  # noqa: E501
        homepage="https://github.com/jdecked/twemoji",
        margin=0.06,
    ),
    EmojiSource(
        style="openmoji",
        package="openmoji",
        version="17.0.0",
        integrity="sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w==",
        svg_dir="package/color/svg",
        file_names=openmoji_file,
        licence="CC-BY-SA-4.0",
        attribution="OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 (openmoji.org)",
        homepage="https://openmoji.org",
        margin=0.0,
    ),
    _fluent("fluent flat", "flat"),
    _fluent("fluent color", "modern"),
)
# Designs left out of the default build: rendered only when `ldm data emoji --styles` names them. Fluent's
# high-contrast set is monochrome (one dark grey on white) and has no skin-tone variants; the default model
# never sees it, which makes it the held-out style of the README's LoRA example.
HELD_OUT_SOURCES: tuple[EmojiSource, ...] = (_fluent("fluent high contrast", "high-contrast"),)
# CLDR keywords (English annotations) for the extra captions.
KEYWORDS = EmojiSource(
    style="",
    package="emojibase-data",
    version="17.0.0",
    integrity="sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA==",
    svg_dir="package/en",
    file_names=lambda cp, name: [],
    licence="MIT",
    attribution="Emojibase data by Miles Johnson, MIT (keywords from Unicode CLDR annotations, Unicode licence)",
    homepage="https://emojibase.dev",
)


def integrity_of(path: str | os.PathLike) -> str:
    """The npm-style integrity string (sha512, base64) of a file."""
    digest = hashlib.sha512(Path(path).read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _unpack(tarball: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".unpack-"))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # "data": no absolute paths, links out or device files
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_sources(dest: str | os.PathLike = DEFAULT_SOURCES_DIR, npm: str = "npm") -> list[Path]:
    """Fetch every pinned package with `npm pack`, check its integrity and unpack it; returns the package folders.

    Already unpacked packages whose tarball still matches are kept, so re-running costs nothing.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    for source in {s.spec: s for s in (*SOURCES, KEYWORDS)}.values():
        folder = dest / source.folder_name
        tarball = dest / f"{source.folder_name}.tgz"
        if not (tarball.is_file() and integrity_of(tarball) == source.integrity):
            if shutil.which(npm) is None:
                raise EmojiSourceError(
                    f"npm not found: it fetches {source.spec} (install Node.js and npm, e.g. apt-get install npm)"
                )
            with tempfile.TemporaryDirectory(dir=dest) as tmp:
                done = subprocess.run(
                    [npm, "pack", source.spec, "--silent", "--pack-destination", tmp], capture_output=True, text=True
                )
                packed = list(Path(tmp).glob("*.tgz"))
                if done.returncode != 0 or len(packed) != 1:
                    raise EmojiSourceError(
                        f"npm pack {source.spec} failed: {(done.stderr or done.stdout).strip()[-300:]}"
                    )
                got = integrity_of(packed[0])
                if got != source.integrity:
                    raise EmojiSourceError(
                        f"{source.spec}: integrity {got} does not match the pinned {source.integrity}"
                    )
                os.replace(packed[0], tarball)
            shutil.rmtree(folder, ignore_errors=True)
        if not folder.is_dir():
            _unpack(tarball, folder)
        folders.append(folder)
    return folders


def available_sources(root: str | os.PathLike | None, held_out: bool = False) -> list[EmojiSource]:
    """The SVG sources unpacked under root (all, some or none); `held_out` adds those of HELD_OUT_SOURCES."""
    if root is None:
        return []
    pool = (*SOURCES, *HELD_OUT_SOURCES) if held_out else SOURCES
    return [s for s in pool if (Path(root) / s.folder_name / s.svg_dir).is_dir()]


def find_svg(source: EmojiSource, root: str | os.PathLike, codepoints: str, name: str) -> Path | None:
    folder = Path(root) / source.folder_name / source.svg_dir
    for file_name in source.file_names(codepoints, name):
        path = folder / file_name
        if path.is_file():
            return path
    return None


def render_svg(path: str | os.PathLike, size: int, margin: float = 0.0) -> Image.Image:
    """An SVG rendered with resvg onto white, as a size x size RGB image with a `margin` border."""
    try:
        import resvg_py
    except ImportError as exc:  # an optional dependency: only the dataset builder needs it
        raise EmojiSourceError("rendering SVG emoji needs resvg-py (pip install 'ldm[data]')") from exc
    inner = max(1, round(size * (1 - 2 * margin)))
    try:
        png = resvg_py.svg_to_bytes(
            svg_path=str(path), width=inner, height=inner, background="#ffffff", skip_system_fonts=True
        )
    except ValueError as exc:
        raise EmojiSourceError(f"cannot render {path}: {exc}") from exc
    with Image.open(io.BytesIO(bytes(png))) as im:
        image = im.convert("RGB")
    if image.size != (inner, inner):  # a viewBox that is not square keeps its aspect ratio
        image.thumbnail((inner, inner), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def load_keywords(root: str | os.PathLike | None) -> dict[str, list[str]]:
    """CLDR keywords by code points without FE0F ("1F44B 1F3FB"); skin-tone variants take their base's keywords."""
    if root is None:
        return {}
    path = Path(root) / KEYWORDS.folder_name / KEYWORDS.svg_dir / "data.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EmojiSourceError(f"cannot parse {path}: {exc}") from exc
    table: dict[str, list[str]] = {}
    for entry in entries:
        tags = [t for t in entry.get("tags", []) if t]
        for e in (entry, *entry.get("skins", [])):
            table[keyword_key(e["hexcode"].replace("-", " "))] = tags
    return table


def keyword_key(codepoints: str) -> str:
    return " ".join(c for c in codepoints.upper().split() if c != "FE0F")
