"""Build the emoji text-to-image dataset: Noto Color Emoji renders captioned with CLDR names.

The emoji list is Unicode's `emoji-test.txt` (Debian package `unicode-data`), which names
every fully-qualified emoji in English CLDR wording ("woman judge: medium skin tone"), so
no Python dependency is needed. Images come from the Noto Color Emoji font (Debian package
`fonts-noto-color-emoji`, OFL), a bitmap font whose glyphs exist only at size 109.

Output layout (the `CaptionedImageFolder` format):

    <out>/train/images/00000.png, <out>/train/captions.jsonl
    <out>/heldout/images/00000.png, <out>/heldout/captions.jsonl
    <out>/heldout_combinations.txt, <out>/summary.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ldm.errors import LdmError

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
SKIN_TONES = ("light skin tone", "medium-light skin tone", "medium skin tone", "medium-dark skin tone", "dark skin tone")
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
        f"Noto Color Emoji font not found at {where}; install the Debian package {FONT_PACKAGE} (apt-get install {FONT_PACKAGE})"
    )


def find_emoji_list(path: str | os.PathLike | None = None) -> Path:
    """Unicode's emoji-test.txt: the given path, else $LDM_EMOJI_TEST, else the Debian location."""
    candidates = [path] if path else [os.environ.get("LDM_EMOJI_TEST"), *EMOJI_TEST_CANDIDATES]
    for cand in candidates:
        if cand and Path(cand).is_file():
            return Path(cand)
    where = path or EMOJI_TEST_CANDIDATES[0]
    raise EmojiListNotFoundError(
        f"emoji-test.txt not found at {where}; install the Debian package {EMOJI_LIST_PACKAGE} (apt-get install {EMOJI_LIST_PACKAGE})"
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


def _prepare_out_dir(out: Path) -> None:
    # Re-running replaces a previous build; anything else in the way is left alone.
    for split in ("train", "heldout"):
        d = out / split
        if d.exists():
            if not (out / "summary.json").is_file():
                raise OutputDirNotEmptyError(f"{d} exists but {out} is not a previous emoji build (no summary.json); choose another --out")
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)


def _write_split(out: Path, split: str, items: list[tuple[Emoji, Image.Image]]) -> None:
    images = out / split / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (e, image) in enumerate(items):
        rel = f"images/{i:05d}.png"
        image.save(out / split / rel, optimize=True)
        lines.append(json.dumps({"file": rel, "caption": e.name, "codepoints": e.codepoints, "group": e.group}, ensure_ascii=False))
    (out / split / "captions.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def build_emoji_dataset(
    out_dir: str | os.PathLike,
    size: int = 64,
    limit: int | None = None,
    font_path: str | os.PathLike | None = None,
    emoji_test_path: str | os.PathLike | None = None,
) -> dict:
    """Render, caption and split the fully-qualified emoji into out_dir; returns the summary written to summary.json.

    limit keeps that many emoji spread evenly over the list (for quick tests), not the first ones,
    so a small build still covers every group.
    """
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    font_file = find_font(font_path)
    list_file = find_emoji_list(emoji_test_path)
    font = ImageFont.truetype(str(font_file), FONT_SIZE)
    emojis = parse_emoji_test(list_file.read_text(encoding="utf-8"))
    total = len(emojis)
    if limit is not None and limit < total:
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        emojis = [emojis[i * total // limit] for i in range(limit)]

    rendered: list[tuple[Emoji, Image.Image]] = []
    skipped: list[str] = []
    for e in emojis:
        image = render_emoji(e.text, font, size)
        if image is None:
            skipped.append(f"{e.codepoints} {e.name}")
        else:
            rendered.append((e, image))

    train, heldout, counts = split_emoji([e for e, _ in rendered])
    images = {e.codepoints: im for e, im in rendered}
    out = Path(out_dir)
    _prepare_out_dir(out)
    _write_split(out, "train", [(e, images[e.codepoints]) for e in train])
    _write_split(out, "heldout", [(e, images[e.codepoints]) for e in heldout])
    (out / "heldout_combinations.txt").write_text(
        "# person type<TAB>skin tone: every emoji with this exact combination (all genders) is held out\n"
        + "".join(f"{role}\t{tone}\n" for role, tone in HELDOUT_COMBINATIONS),
        encoding="utf-8",
    )
    summary = {
        "emoji_list": str(list_file),
        "font": str(font_file),
        "size": size,
        "fully_qualified_total": total,
        "considered": len(emojis),
        "rendered": len(rendered),
        "skipped_not_rendered": len(skipped),
        "skipped": skipped,
        "train": len(train),
        "heldout": len(heldout),
        **counts,
        "heldout_percent_random": HELDOUT_PERCENT,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render Noto Color Emoji with CLDR captions into a train/held-out dataset.")
    parser.add_argument("--out", default="data/emoji", help="output folder (default: data/emoji)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    parser.add_argument("--limit", type=int, default=None, help="only this many emoji, spread over the list (for quick tests)")
    parser.add_argument("--font", default=None, help=f"path to NotoColorEmoji.ttf (default: the {FONT_PACKAGE} location)")
    parser.add_argument("--emoji-test", default=None, help=f"path to emoji-test.txt (default: the {EMOJI_LIST_PACKAGE} location)")
    args = parser.parse_args(argv)
    try:
        summary = build_emoji_dataset(args.out, size=args.size, limit=args.limit, font_path=args.font, emoji_test_path=args.emoji_test)
    except (EmojiDataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{summary['rendered']} emoji rendered ({summary['skipped_not_rendered']} skipped): "
        f"{summary['train']} train, {summary['heldout']} held out "
        f"({summary['heldout_combination']} by combination, {summary['heldout_random']} at random) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
