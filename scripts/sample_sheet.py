"""A labelled sheet of samples: one row per prompt, one column per seed (the README's figure).

    python scripts/sample_sheet.py --out docs/emoji-samples.png                     # the shipped model
    python scripts/sample_sheet.py --out docs/emoji-styles.png --prompts "red apple" "cat face" \
        --styles noto,twemoji,openmoji,"fluent flat","fluent color"                  # one row per prompt and style
    python scripts/sample_sheet.py --config m.yaml --ckpt m.safetensors --prompts "red apple" "rocket"

Pixels are enlarged by an integer factor (nearest neighbour) so small models' outputs stay visible
without smoothing that would hide what the model drew.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ldm.data.folder import read_caption_table
from ldm.formats.load import load_model
from ldm.sampling.options import SamplingOptions
from ldm.tasks.txt2img import txt2img
from ldm.training.captions import styled

# A cross-section of configs/emoji/first-prompts.txt (hearts, circles, squares, fruit, animals, faces,
# flags, things) and people, with held-out captions among them.
PROMPTS = [
    "red heart",
    "blue circle",
    "green square",
    "red apple",
    "banana",
    "cat face",
    "penguin",
    "grinning face",
    "face with tears of joy",
    "flag: Japan",
    "rocket",
    "sunflower",
    "woman judge: medium skin tone",
    "man firefighter: light skin tone",
]


def heldout_captions(data: str | None) -> set[str]:
    """Captions of the dataset's held-out split (never trained on), if the dataset is there."""
    return set(read_caption_table(Path(data, "heldout")).values()) if data else set()


def row_labels(prompts: list[str], heldout: set[str]) -> list[str]:
    """Each prompt, marked "(held out)" when its caption (without a ", <style> style" suffix) was never trained on."""
    captions = [re.sub(r", [^,]+ style$", "", prompt) for prompt in prompts]
    return [prompt + (" (held out)" if caption in heldout else "") for prompt, caption in zip(prompts, captions)]


def sample_sheet(
    model,
    prompts: list[str],
    seeds: int,
    options: SamplingOptions,
    zoom: int,
    height: int | None = None,
    width: int | None = None,
    heldout: set[str] = frozenset(),
) -> Image.Image:
    height = height or model.default_image_size
    width = width or model.default_image_size
    cell_w, cell_h, pad = width * zoom, height * zoom, 4
    font = ImageFont.load_default(size=16)
    labels = row_labels(prompts, heldout)
    label_width = 12 + max(int(font.getlength(label)) for label in labels)
    sheet = Image.new("RGB", (label_width + seeds * (cell_w + pad), len(prompts) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (prompt, label) in enumerate(zip(prompts, labels)):
        images = txt2img(model, [prompt] * seeds, height=height, width=width, seed=0, options=options, progress=False)
        top = row * (cell_h + pad)
        draw.text((6, top + cell_h // 2), label, fill="black", font=font, anchor="lm")
        for col, image in enumerate(images):
            sheet.paste(image.resize((cell_w, cell_h), Image.NEAREST), (label_width + col * (cell_w + pad), top))
    return sheet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None)
    p.add_argument("--ckpt", default=None)
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--seeds", type=int, default=6, help="samples per prompt (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--scale", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--zoom", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="data/emoji", help="dataset root: prompts of its held-out split are marked")
    p.add_argument(
        "--styles",
        default=None,
        help="comma-separated style words: each prompt once per style ('<prompt>, <style> style')",
    )
    p.add_argument("--out", default="docs/emoji-samples.png")
    args = p.parse_args()
    if args.styles:
        args.prompts = [
            styled(prompt, style.strip())
            for prompt in args.prompts
            for style in args.styles.split(",")
            if style.strip()
        ]
    model = load_model(args.config, args.ckpt, args.device)
    options = SamplingOptions(steps=args.steps, guidance_scale=args.scale, sampler=args.sampler)
    options.validate()
    sheet = sample_sheet(model, args.prompts, args.seeds, options, args.zoom, heldout=heldout_captions(args.data))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(
        f"wrote {args.out} ({len(args.prompts)} prompts x {args.seeds} seeds, {options.sampler} {options.steps} steps, "
        f"scale {options.guidance_scale})"
    )


if __name__ == "__main__":
    main()
