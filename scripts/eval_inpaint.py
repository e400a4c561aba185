"""The shipped inpainting model against latent blending with the default model, on the same held-out emoji.

    python scripts/eval_inpaint.py --out docs/eval/inpaint.json --table docs/eval/inpaint.md \
        --figure docs/inpaint-examples.png

Two tasks per image: inpainting a centre box (half the side) and outpainting the right quarter (the image
cut to its left three quarters, then extended back). Both methods get the caption as the prompt, the same
seed and sampling settings; ldm.evaluation.edits says what each column measures.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ldm.core.defaults import default_model_files, shipped_path
from ldm.data.folder import CaptionedImageFolder
from ldm.evaluation.edits import centre_box_case, evaluate_method, real_accuracy, right_band_case
from ldm.evaluation.report import Judge, load_real
from ldm.formats.load import load_model
from ldm.io.images import tensor_to_pil
from ldm.sampling.options import SamplingOptions
from ldm.tasks.inpaint import inpaint, outpaint

COLUMNS = ("prompt_top1", "seam", "real_seam", "hole_error", "outside_change")


def heldout_cases(data: Path, count: int, seed: int) -> list[tuple[str, Image.Image]]:
    folder = CaptionedImageFolder(data / "heldout", size=64)
    rows = random.Random(seed).sample(range(len(folder)), min(count, len(folder)))
    return [(folder.captions[i], tensor_to_pil(folder[i]["image"][None])[0]) for i in rows]


def fill_inpaint(model, mode: str, options: SamplingOptions):
    return lambda case, seed: inpaint(
        model, case.real, case.mask, case.caption, seed=seed, mode=mode, options=options, progress=False
    )[0]


def fill_outpaint(model, mode: str, options: SamplingOptions, band: int):
    def fill(case, seed):
        w, h = case.real.size
        kept = case.real.crop((0, 0, w - band, h))
        return outpaint(model, kept, case.caption, right=band, seed=seed, mode=mode, options=options, progress=False)[0]

    return fill


def figure(rows: list[tuple[str, list[Image.Image]]], header: list[str], zoom: int = 2) -> Image.Image:
    font = ImageFont.load_default(size=14)
    cell, label_w, pad = 64 * zoom, 230, 4
    sheet = Image.new("RGB", (label_w + len(header) * (cell + pad), 22 + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(header):
        draw.text((label_w + j * (cell + pad), 2), text, fill="black", font=font)
    for i, (label, images) in enumerate(rows):
        y = 22 + i * (cell + pad)
        draw.text((4, y + cell // 2 - 8), label[:30], fill="black", font=font)
        for j, image in enumerate(images):
            sheet.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label_w + j * (cell + pad), y))
    return sheet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/emoji", help="emoji build (held-out split, and the judge's real set)")
    p.add_argument("--count", type=int, default=48, help="held-out images")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--band", type=int, default=16, help="outpainted width in px")
    p.add_argument("--out", default="docs/eval/inpaint.json")
    p.add_argument("--table", default="docs/eval/inpaint.md")
    p.add_argument("--figure", default="docs/inpaint-examples.png")
    p.add_argument("--figure-rows", type=int, default=6)
    args = p.parse_args()

    from ldm.models.clip import load_clip  # the judge CLIP, as `ldm eval` loads it

    files = default_model_files("inpaint")
    if files is None:
        raise SystemExit("no shipped inpainting model (checkpoints/emoji/inpaint.safetensors)")
    inpainter, base = load_model(*files), load_model(variant="full")
    judge_file = shipped_path("checkpoints/emoji/judge.safetensors")
    judge = Judge(load_clip(judge_file, judge_file.with_suffix(".json")).eval(), load_real(args.data, 64))
    options = SamplingOptions(steps=args.steps, guidance_scale=args.scale)
    pairs = heldout_cases(Path(args.data), args.count, args.seed)
    tasks = {
        "inpaint (centre box)": ([centre_box_case(c, im) for c, im in pairs], fill_inpaint),
        f"outpaint (right {args.band} px)": (
            [right_band_case(c, im, args.band) for c, im in pairs],
            lambda m, mode, o: fill_outpaint(m, mode, o, args.band),
        ),
    }
    results: dict = {
        "settings": vars(args),
        "real_top1": real_accuracy(judge, [c for c in tasks["inpaint (centre box)"][0]]),
    }
    pictures: dict = {}
    for task, (cases, make_fill) in tasks.items():
        for method, model, mode in (("inpainting model", inpainter, "model"), ("latent blending", base, "blend")):
            start = time.perf_counter()
            r = evaluate_method(make_fill(model, mode, options), cases, judge, args.seed)
            pictures[task, method] = r.pop("images")
            r["seconds_per_image"] = (time.perf_counter() - start) / len(cases)
            results.setdefault(task, {})[method] = r
            print(task, method, {k: round(v, 4) for k, v in r.items()}, flush=True)

    lines = [
        f"Held-out emoji: {len(pairs)} images, their caption as the prompt, {args.steps} DDIM steps, guidance "
        f"{args.scale}. The judge's top-1 on the real images themselves: {results['real_top1']:.1%}.",
        "",
        "| task | method | prompt top-1 | seam (/255) | real seam | hole error (/255) | outside change | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for method, r in results[task].items():
            lines.append(
                f"| {task} | {method} | {r['prompt_top1']:.1%} | {r['seam']:.4f} | {r['real_seam']:.4f} | "
                f"{r['hole_error']:.4f} | {r['outside_change']:.4f} | {r['seconds_per_image']:.2f} |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    Path(args.table).write_text(table)

    rows = []
    for i in range(min(args.figure_rows, len(pairs))):
        caption, real = pairs[i]
        box = tasks["inpaint (centre box)"][0][i]
        holed = Image.fromarray((np.asarray(real) * (1 - box.mask[..., None])).astype(np.uint8))
        cut = real.crop((0, 0, 64 - args.band, 64)).crop((0, 0, 64, 64))
        rows.append(
            (
                caption,
                [real, holed]
                + [pictures[t, m][i] for t in tasks for m in ("inpainting model", "latent blending")][:2]
                + [cut]
                + [pictures[t, m][i] for t in list(tasks)[1:] for m in ("inpainting model", "latent blending")],
            )
        )
    figure(rows, ["real", "hole", "model", "blending", "cut", "model", "blending"]).save(args.figure)
    print("wrote", args.out, args.table, args.figure)


if __name__ == "__main__":
    main()
