#!/usr/bin/env python
"""Does the tiny example's model draw what its prompt says? A table of prompt -> nearest training image.

    python scripts/tiny_example_check.py [RUN_DIR] [--data data/shapes] [--seeds 2]

RUN_DIR (default runs/tiny-ldm) holds model.yaml + model.safetensors from the "Tiny examples" chain of
configs/train/README.md. For every caption of the shapes set (12: 4 colours x 3 shapes) and seed, one sample
(20 Euler steps, guidance 3) is compared with the 12 centred training images by mean squared error; the table
gives the nearest one's caption, and the last line how many samples got the colour, the shape and both right
(chance: 1/4, 1/3 and 1/12 of them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ldm.formats.load import load_model
from ldm.tasks.txt2img import txt2img  # noqa: E402


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", default="runs/tiny-ldm")
    p.add_argument("--data", default="data/shapes")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    rows = [json.loads(line) for line in (Path(args.data) / "captions.jsonl").read_text().splitlines() if line]
    references: dict[str, torch.Tensor] = {}
    for row in rows:  # the first image of each caption is the centred one (ldm.training.shapes)
        references.setdefault(row["caption"], to_tensor(Image.open(Path(args.data) / row["file"])))
    captions = list(references)
    stacked = torch.stack([references[c] for c in captions])
    model = load_model(config=Path(args.run_dir) / "model.yaml", checkpoint=Path(args.run_dir) / "model.safetensors")
    right = {"colour": 0, "shape": 0, "both": 0}
    print("| prompt | nearest training image, seed 0.. |\n| --- | --- |")
    nearest: dict[str, list[str]] = {c: [] for c in captions}
    for seed in range(args.seeds):
        images = txt2img(model, captions, seed=seed, steps=20, guidance_scale=3.0, progress=False)
        for caption, image in zip(captions, images):
            distance = (stacked - to_tensor(image)).pow(2).flatten(1).mean(1)
            found = captions[int(distance.argmin())]
            nearest[caption].append(found)
            right["colour"] += found.split()[0] == caption.split()[0]
            right["shape"] += found.split()[-1] == caption.split()[-1]
            right["both"] += found == caption
    for caption, found in nearest.items():
        print(f"| {caption} | {', '.join(found)} |")
    total = len(captions) * args.seeds
    print(
        f"right of {total}: colour {right['colour']}, shape {right['shape']}, both {right['both']} "
        f"(chance {total / 4:.0f}, {total / 3:.0f}, {total / 12:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
