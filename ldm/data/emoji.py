"""Build the emoji text-to-image dataset: every emoji in several designs, captioned with CLDR names.

The designs are the Noto Color Emoji font plus the SVG sets of `ldm.data.emoji_sources`;
captions are the CLDR name, with the CLDR keywords and the style for sampling extra captions.

The emoji list is Unicode's `emoji-test.txt` (Debian package `unicode-data`), which names
every fully-qualified emoji in English CLDR wording ("woman judge: medium skin tone"), so
no Python dependency is needed. Images come from the Noto Color Emoji font (Debian package
`fonts-noto-color-emoji`, OFL), a bitmap font whose glyphs exist only at size 109.

Output layout (the `CaptionedImageFolder` format):

    <out>/train/images/<style>/<codepoints>.png, <out>/train/captions.jsonl
    <out>/heldout/images/<style>/<codepoints>.png, <out>/heldout/captions.jsonl
    <out>/heldout_combinations.txt, <out>/summary.json
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ldm.core.errors import InvalidOptionError, LdmError
from ldm.data.emoji_sources import (
    DEFAULT_SOURCES_DIR,
    HELD_OUT_SOURCES,
    KEYWORDS,
    SOURCES,
    available_sources,
    find_svg,
    keyword_key,
    load_keywords,
    render_svg,
)

FONT_PACKAGE = "fonts-noto-color-emoji"
EMOJI_LIST_PACKAGE = "unicode-data"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
EMOJI_TEST_CANDIDATES = (
    "/usr/share/unicode/emoji/emoji-test.txt",
    "/usr/share/unicode-data/emoji/emoji-test.txt",
)
FONT_SIZE = 109  # the only size the CBDT bitmaps of Noto Color Emoji come in
CANVAS = 136  # the font's advance width at size 109: every glyph fits, at one common scale

# Whole (person type, skin tone) combinations never seen in training, all genders: they
# test whether a model composes a known role with a known skin tone it never saw together.
HELDOUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("judge", "medium-dark skin tone"),
    ("firefighter", "light skin tone"),
    ("astronaut", "dark skin tone"),
    ("cook", "medium skin tone"),
    ("teacher", "medium-light skin tone"),
    ("superhero", "medium-dark skin tone"),
    ("farmer", "dark skin tone"),
    ("mage", "light skin tone"),
)
HELDOUT_PERCENT = 5.0
SPLIT_SALT = "ldm-emoji-heldout-v1"
SKIN_TONES = ("light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone", "dark skin tone")  # noqa: E501
GENDER_WORDS = ("man ", "woman ", "person ")


class EmojiDataError(LdmError, RuntimeError):
    """Base class for problems building the emoji dataset."""


class EmojiFontNotFoundError(EmojiDataError, FileNotFoundError):
    """The Noto Color Emoji font is not installed."""


class EmojiListNotFoundError(EmojiDataError, FileNotFoundError):
    """Unicode's emoji-test.txt is not installed."""


class OutputDirNotEmptyError(EmojiDataError):
    """The output folder holds files that a previous build did not write."""


@dataclass(frozen=True)
class Emoji:
    codepoints: str  # "1F9D1 1F3FE 200D 2696 FE0F": stable id, independent of list order
    text: str
    name: str
    group: str


def find_font(font_path: str | os.PathLike | None = None) -> Path:
    """The Noto Color Emoji font file: the given path, else $LDM_EMOJI_FONT, else the Debian location."""
    candidates = [font_path] if font_path else [os.environ.get("LDM_EMOJI_FONT"), *FONT_CANDIDATES]
    for cand in candidates:
        if cand and Path(cand).is_file():
            return Path(cand)
    where = font_path or FONT_CANDIDATES[0]
    raise EmojiFontNotFoundError(
        f"Noto Color Emoji font not found at {where}; install the Debian package {FONT_PACKAGE} (apt-get install {FONT_PACKAGE})"  # noqa: E501
    )


def find_emoji_list(path: str | os.PathLike | None = None) -> Path:
    """Unicode's emoji-test.txt: the given path, else $LDM_EMOJI_TEST, else the Debian location."""
    candidates = [path] if path else [os.environ.get("LDM_EMOJI_TEST"), *EMOJI_TEST_CANDIDATES]
    for cand in candidates:
        if cand and Path(cand).is_file():
            return Path(cand)
    where = path or EMOJI_TEST_CANDIDATES[0]
    raise EmojiListNotFoundError(
        f"emoji-test.txt not found at {where}; install the Debian package {EMOJI_LIST_PACKAGE} (apt-get install {EMOJI_LIST_PACKAGE})"  # noqa: E501
    )


def parse_emoji_test(text: str) -> list[Emoji]:
    """Fully-qualified emoji of an emoji-test.txt, in the file's (CLDR) order."""
    out: list[Emoji] = []
    group = ""
    for line in text.splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        fields, _, comment = line.partition("#")
        codes, _, status = fields.partition(";")
        if status.strip() != "fully-qualified":
            continue
        # comment: "<emoji> E<version> <name>"
        parts = comment.strip().split(" ", 2)
        if len(parts) < 3 or not parts[1].startswith("E"):
            continue
        codepoints = " ".join(codes.split())
        emoji_text = "".join(chr(int(c, 16)) for c in codepoints.split())
        out.append(Emoji(codepoints=codepoints, text=emoji_text, name=parts[2].strip(), group=group))
    return out


def person_combination(name: str) -> tuple[str, str] | None:
    """(person type, skin tone) of a single-person, single-tone name like "woman judge: dark skin tone"."""
    base, sep, tone = name.partition(": ")
    if not sep or tone not in SKIN_TONES:
        return None
    for word in GENDER_WORDS:
        if base.startswith(word):
            base = base[len(word):]
            break
    return base, tone


def _random_heldout(emoji: Emoji, percent: float) -> bool:
    # A salted hash of the codepoints instead of an RNG over the list: an emoji's split then
    # never depends on which other emoji are included (limit, font version, list version).
    digest = hashlib.sha256(f"{SPLIT_SALT}:{emoji.codepoints}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def split_emoji(
    emojis: list[Emoji],
    combinations: tuple[tuple[str, str], ...] = HELDOUT_COMBINATIONS,
    percent: float = HELDOUT_PERCENT,
) -> tuple[list[Emoji], list[Emoji], dict[str, int]]:
    """Deterministic (train, heldout, counts): held-out combinations first, then ~percent% of the rest."""
    combos = set(combinations)
    train: list[Emoji] = []
    heldout: list[Emoji] = []
    n_combo = n_random = 0
    for e in emojis:
        if person_combination(e.name) in combos:
            heldout.append(e)
            n_combo += 1
        elif _random_heldout(e, percent):
            heldout.append(e)
            n_random += 1
        else:
            train.append(e)
    return train, heldout, {"heldout_combination": n_combo, "heldout_random": n_random}


def render_emoji(text: str, font: ImageFont.FreeTypeFont, size: int = 64) -> Image.Image | None:
    """The emoji centred on white as a size x size RGB image, or None when the font has no glyph for it."""
    # Emoji without a glyph come out as empty .notdef boxes; sequences the shaper cannot join
    # (no ligature in the font) come out as several glyphs, wider than one advance.
    left, _, right, _ = font.getbbox(text, mode="RGBA")
    if right - left > CANVAS * 1.25:
        return None
    layer = Image.new("RGBA", (CANVAS * 2, CANVAS * 2), (255, 255, 255, 0))
    ImageDraw.Draw(layer).text((CANVAS // 2, CANVAS // 2), text, font=font, embedded_color=True)
    box = layer.getbbox()
    if box is None:
        return None
    glyph = layer.crop(box)
    if max(glyph.size) > CANVAS:
        glyph.thumbnail((CANVAS, CANVAS), Image.Resampling.LANCZOS)
    # Centre the visible pixels on a fixed canvas, so all emoji keep the font's common scale.
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2))
    image = canvas.convert("RGB")
    if size != CANVAS:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def person_family(name: str) -> str:
    """The name without skin tones and gender ("woman judge: dark skin tone" -> "judge",
    "man: light skin tone, beard" -> "person: beard"): the variants of one design."""
    base, _, rest = name.partition(": ")
    attributes = [a.strip() for a in rest.split(",") if a.strip() and a.strip() not in SKIN_TONES]
    if base in ("man", "woman", "person"):
        base = "person"
    else:
        for word in GENDER_WORDS:
            if base.startswith(word):
                base = base[len(word):]
                break
    return f"{base}: {', '.join(attributes)}" if attributes else base


def sampling_weights(emojis: list[Emoji]) -> dict[str, float]:
    """A weight per emoji, 1/sqrt(size of its person family), so that the 15 tone x gender variants
    of one role weigh about 4 objects together, not 15: objects are not drowned, and every variant
    is still seen often enough to learn its tone."""
    sizes: dict[str, int] = {}
    for e in emojis:
        sizes[person_family(e.name)] = sizes.get(person_family(e.name), 0) + 1
    return {e.codepoints: round(sizes[person_family(e.name)] ** -0.5, 4) for e in emojis}


def style_slug(style: str) -> str:
    return style.replace(" ", "-")


def _prepare_out_dir(out: Path) -> None:
    # Re-running replaces a previous build; anything else in the way is left alone.
    for split in ("train", "heldout"):
        d = out / split
        if d.exists():
            if not (out / "summary.json").is_file():
                raise OutputDirNotEmptyError(f"{d} exists but {out} is not a previous emoji build (no summary.json); choose another --out")  # noqa: E501
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)


Render = tuple[Emoji, str, Image.Image]  # (emoji, style, image)


def _write_split(out: Path, split: str, items: list[Render], keywords: dict[str, list[str]], weights: dict[str, float]) -> None:  # noqa: E501
    lines = []
    for e, style, image in items:
        rel = f"images/{style_slug(style)}/{e.codepoints.lower().replace(' ', '-')}.png"
        (out / split / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / split / rel, optimize=True)
        row = {"file": rel, "caption": e.name, "codepoints": e.codepoints, "group": e.group, "style": style,
               "keywords": keywords.get(keyword_key(e.codepoints), []), "weight": weights[e.codepoints]}
        lines.append(json.dumps(row, ensure_ascii=False))
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / split / "captions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def build_emoji_dataset(
    out_dir: str | os.PathLike,
    size: int = 64,
    limit: int | None = None,
    font_path: str | os.PathLike | None = None,
    emoji_test_path: str | os.PathLike | None = None,
    sources_dir: str | os.PathLike | None = DEFAULT_SOURCES_DIR,
    styles: list[str] | None = None,
) -> dict:
    """Render, caption and split the fully-qualified emoji in every available style; returns the summary.

    Styles: "noto" (the font) plus each SVG design of SOURCES unpacked under sources_dir (`ldm data
    emoji-sources`); `styles` keeps only those named, and may name a held-out design (HELD_OUT_SOURCES,
    e.g. "fluent high contrast", never in the default build) to make a fine-tuning set of one style. The split is by emoji, so a held-out emoji is held out in every
    style and under all its keywords. limit keeps that many emoji spread evenly over the list (for
    quick tests), not the first ones, so a small build still covers every group.
    """  # noqa: E501
    if size < 8:
        raise InvalidOptionError(f"image size must be at least 8 pixels, got {size}")
    # Held-out designs (HELD_OUT_SOURCES) are rendered only when `styles` names them.
    sources = available_sources(sources_dir if sources_dir and Path(sources_dir).is_dir() else None,
                                held_out=styles is not None)
    known = ["noto", *(s.style for s in (*SOURCES, *HELD_OUT_SOURCES))]
    if styles is not None:
        unknown = sorted(set(styles) - set(known))
        if unknown:
            raise EmojiDataError(f"unknown style(s) {', '.join(unknown)}; known: {', '.join(known)}")
        missing = sorted(set(styles) - {"noto", *(s.style for s in sources)})
        if missing:
            raise EmojiDataError(f"style(s) {', '.join(missing)} not found under {sources_dir}; run: ldm data emoji-sources --dest {sources_dir}")  # noqa: E501
        sources = [s for s in sources if s.style in styles]
    use_font = styles is None or "noto" in styles
    font = ImageFont.truetype(str(find_font(font_path)), FONT_SIZE) if use_font else None
    list_file = find_emoji_list(emoji_test_path)
    emojis = parse_emoji_test(list_file.read_text(encoding="utf-8"))
    total = len(emojis)
    if limit is not None and limit < total:
        if limit < 1:
            raise InvalidOptionError(f"limit must be positive, got {limit}")
        emojis = [emojis[i * total // limit] for i in range(limit)]

    renders: dict[str, list[Render]] = {}
    per_style: dict[str, int] = {}
    skipped: list[str] = []
    for e in emojis:
        got: list[Render] = []
        if font is not None and (image := render_emoji(e.text, font, size)) is not None:
            got.append((e, "noto", image))
        for source in sources:
            if (svg := find_svg(source, sources_dir, e.codepoints, e.name)) is not None:
                got.append((e, source.style, render_svg(svg, size, source.margin)))
        if got:
            renders[e.codepoints] = got
            for _, style, _ in got:
                per_style[style] = per_style.get(style, 0) + 1
        else:
            skipped.append(f"{e.codepoints} {e.name}")

    rendered = [e for e in emojis if e.codepoints in renders]
    train, heldout, counts = split_emoji(rendered)
    keywords = load_keywords(sources_dir)
    weights = sampling_weights(rendered)
    out = Path(out_dir)
    _prepare_out_dir(out)
    _write_split(out, "train", [r for e in train for r in renders[e.codepoints]], keywords, weights)
    _write_split(out, "heldout", [r for e in heldout for r in renders[e.codepoints]], keywords, weights)
    (out / "heldout_combinations.txt").write_text(
        "# person type<TAB>skin tone: every emoji with this exact combination (all genders) is held out\n"
        + "".join(f"{role}\t{tone}\n" for role, tone in HELDOUT_COMBINATIONS),
        encoding="utf-8",
    )
    summary = {
        "emoji_list": str(list_file),
        "size": size,
        "styles": {"noto": {"source": "fonts-noto-color-emoji (Debian)", "licence": "OFL-1.1"}} if font is not None else {},  # noqa: E501
        "images_per_style": per_style,
        "fully_qualified_total": total,
        "considered": len(emojis),
        "rendered": len(rendered),
        "skipped_not_rendered": len(skipped),
        "skipped": skipped,
        "train": len(train),
        "heldout": len(heldout),
        "train_images": sum(len(renders[e.codepoints]) for e in train),
        "heldout_images": sum(len(renders[e.codepoints]) for e in heldout),
        "with_keywords": sum(keyword_key(e.codepoints) in keywords for e in rendered),
        **counts,
        "heldout_percent_random": HELDOUT_PERCENT,
    }
    for source in sources:
        summary["styles"][source.style] = {"source": source.spec, "integrity": source.integrity,
                                           "licence": source.licence, "attribution": source.attribution}
    if keywords:
        summary["keywords"] = {"source": KEYWORDS.spec, "integrity": KEYWORDS.integrity, "licence": KEYWORDS.licence}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def summary_line(summary: dict, out: str | os.PathLike) -> str:
    """The one line `ldm data emoji` prints about a build."""
    per_style = ", ".join(f"{k} {v}" for k, v in summary["images_per_style"].items())
    return (f"{summary['rendered']} emoji rendered ({summary['skipped_not_rendered']} skipped) in {per_style}: "
            f"{summary['train']} train ({summary['train_images']} images), {summary['heldout']} held out "
            f"({summary['heldout_images']} images; {summary['heldout_combination']} by combination, "
            f"{summary['heldout_random']} at random) -> {out}")


if __name__ == "__main__":  # the old entry point, now `ldm data emoji` (one command-line parser)
    from ldm.interfaces.cli.main import main

    sys.exit(main(["data", "emoji", *sys.argv[1:]]))
