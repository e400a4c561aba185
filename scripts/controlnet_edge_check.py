"""How closely the default model follows a canny ControlNet: the outputs' Canny edges against the control edges,
with the ControlNet and without it (same prompts and seeds), for drawn shapes and, given --images, for the edges of
real emoji (e.g. held-out ones). Prints a table for docs/controlnet.md and, with --sheet, saves a picture:
control image, without, with, per row.

    python scripts/controlnet_edge_check.py --controlnet checkpoints/emoji-control-canny/controlnet.safetensors \\
        [--images data/emoji/heldout/images --limit 8] [--sheet sheet.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from ldm.evaluation.control_edges import compare_with_and_without, drawn_shapes
from ldm.formats.controlnet_files import load_controlnet
from ldm.formats.load import load_model
from ldm.io.control_images import control_image
from ldm.io.images import load_image
from ldm.models.controlnet import Control, using_controlnets
from ldm.tasks.txt2img import txt2img

PROMPTS = ["red apple", "grinning face", "blue heart", "yellow star"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--controlnet", required=True)
    parser.add_argument("--images", default=None, help="a folder of images whose edges are control images too")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", default=None)
    args = parser.parse_args()
    model = load_model()
    net = load_controlnet(args.controlnet, model)
    sets = {"drawn shapes": drawn_shapes()}
    if args.images:
        files = sorted(Path(args.images).rglob("*.png"))[
            :: max(1, len(list(Path(args.images).rglob("*.png"))) // args.limit)
        ]
        sets["emoji edges"] = [control_image(load_image(path).resize((64, 64))) for path in files[: args.limit]]
    print(
        "| control images | prompts x images | F1 with | F1 without | IoU with | IoU without | recall with | recall "
        "without |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, controls in sets.items():
        steered, plain = compare_with_and_without(model, net, controls, PROMPTS, args.seed, args.steps)
        print(
            f"| {name} | {len(PROMPTS)} x {len(controls)} | {steered.f1:.3f} | {plain.f1:.3f} | {steered.iou:.3f} | "
            f"{plain.iou:.3f} | {steered.recall:.3f} | {plain.recall:.3f} |"
        )
    if args.sheet:
        rows = []
        for control in [*sets["drawn shapes"], *sets.get("emoji edges", [])[:4]]:
            plain = txt2img(model, PROMPTS[:2], seed=args.seed, steps=args.steps, progress=False)
            with using_controlnets(model, [Control(net, control)]):
                steered = txt2img(model, PROMPTS[:2], seed=args.seed, steps=args.steps, progress=False)
            rows.append([control, *plain, *steered])
        sheet = Image.new("RGB", (64 * len(rows[0]), 64 * len(rows)), "white")
        for r, row in enumerate(rows):
            for c, image in enumerate(row):
                sheet.paste(image.resize((64, 64)), (64 * c, 64 * r))
        sheet.save(args.sheet)
        print(f"sheet: {args.sheet} (per row: control, {PROMPTS[0]!r} and {PROMPTS[1]!r} without, then with)")


if __name__ == "__main__":
    main()
