#!/usr/bin/env python
"""The class-conditional emoji model (configs/emoji/class-ldm.yaml, labels = Unicode groups) under label guidance:
how often the judge puts a sample in the group it was asked for, by guidance scale, and a sample sheet.

    python scripts/eval_class_model.py RUN_DIR [--data data/emoji] [--scales 1 3 5] [--seeds 8] [--steps 20]
                                       [--sheet docs/class-emoji.png] [--table docs/eval/class-emoji.md]

RUN_DIR holds model.yaml + model.safetensors (`ldm train --config configs/emoji/class-ldm.yaml --export-only --out
RUN_DIR --resume CKPT`). The judge is the shipped judge CLIP (trained apart from every model): a sample's group is
the group of its nearest training image in the judge's image space. Beside it: the same judge on the held-out
real images (its ceiling) and chance (1 / groups): each the mean over groups of that group's accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ldm.core.defaults import shipped_path  # noqa: E402
from ldm.evaluation.metrics import ClipFeatures, NearestNeighbourJudge  # noqa: E402
from ldm.evaluation.report import load_real, pil_to_tensor  # noqa: E402
from ldm.formats.load import load_model
from ldm.models.clip import load_clip  # noqa: E402
from ldm.tasks.txt2img import txt2img  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--data", default="data/emoji")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 5.0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sheet", default="docs/class-emoji.png")
    p.add_argument("--sheet-scale", type=float, default=3.0)
    p.add_argument("--table", default=None)
    args = p.parse_args()
    run = Path(args.run_dir)
    model = load_model(run / "model.yaml", run / "model.safetensors", device="cpu")
    groups = [g for g in model.class_names if g]
    real = load_real(args.data, model.default_image_size)
    clip = load_clip(shipped_path("checkpoints/emoji/judge.safetensors"), shipped_path("checkpoints/emoji/judge.json"))
    features = ClipFeatures(clip)
    train = [i for i, s in enumerate(real.splits) if s == "train"]
    heldout = [i for i, s in enumerate(real.splits) if s == "heldout"]
    real_features = features(real.images)
    judge = NearestNeighbourJudge(real_features[train], [real.groups[i] for i in train])

    def accuracy(feats: torch.Tensor, targets: list[str]) -> float:
        best = judge.class_scores(feats).argmax(dim=1).tolist()
        return sum(judge.classes[b] == t for b, t in zip(best, targets)) / len(targets)

    # Both as the samples' figure is: the mean over groups of each group's accuracy.
    per_group_real = [
        accuracy(real_features[rows], [g] * len(rows))
        for g in groups
        if (rows := [i for i in heldout if real.groups[i] == g])
    ]
    ceiling = sum(per_group_real) / len(per_group_real)
    chance = 1 / len(groups)
    rows, sheet_rows = [], []
    for scale in args.scales:
        per_group = {}
        for group in groups:
            images = txt2img(
                model,
                "",
                label=group,
                num_images_per_prompt=args.seeds,
                seed=0,
                steps=args.steps,
                guidance_scale=scale,
                progress=False,
            ).images
            per_group[group] = accuracy(features(pil_to_tensor(images)), [group] * len(images))
            if scale == args.sheet_scale:
                sheet_rows.append(images)
        rows.append((scale, sum(per_group.values()) / len(per_group), per_group))
        print(f"scale {scale}: {rows[-1][1]:.1%}", file=sys.stderr)
    table = [
        f"Group top-1 of the judge (nearest training image's group), {args.seeds} seeds x {len(groups)} groups, "
        f"DDIM {args.steps} steps; mean over groups. Held-out real images: {ceiling:.1%}; chance: {chance:.1%}.\n",
        "| guidance scale | mean | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for scale, mean, per_group in rows:
        table.append(f"| {scale:g} | {mean:.1%} | " + " | ".join(f"{per_group[g]:.0%}" for g in groups) + " |")
    print("\n".join(table))
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text("\n".join(table) + "\n")
    if sheet_rows:
        size = sheet_rows[0][0].size[0]
        sheet = Image.new("RGB", (size * args.seeds, size * len(sheet_rows)), "white")
        for r, images in enumerate(sheet_rows):
            for c, image in enumerate(images):
                sheet.paste(image, (c * size, r * size))
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet, optimize=True)
        print(f"sample sheet (rows: {', '.join(groups)}; scale {args.sheet_scale:g}): {args.sheet}")


if __name__ == "__main__":
    main()
