#!/usr/bin/env python
"""The shipped 4-step student beside its teacher: one row each, the same prompts and seed (docs/distill-student.png).

    python scripts/student_sheet.py --out docs/distill-student.png

Top row: the full model (30 guided DDIM steps, 60 U-Net evaluations); bottom row: the student with its own
settings (4 trailing DDIM steps, 4 evaluations). Pictures are enlarged 2x, nearest neighbour.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from ldm.formats.load import load_model
from ldm.tasks.txt2img import txt2img  # noqa: E402

PROMPTS = ["red heart", "green apple", "yellow star", "blue circle", "dog face", "pizza", "grinning face", "rocket"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/distill-student.png")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rows = [
        [txt2img(model, prompt, seed=args.seed, progress=False)[0] for prompt in PROMPTS]
        for model in (load_model(variant="full"), load_model(variant="student"))
    ]
    cell = 128
    sheet = Image.new("RGB", (cell * len(PROMPTS), cell * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            sheet.paste(image.resize((cell, cell), Image.NEAREST), (j * cell, i * cell))
    sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
