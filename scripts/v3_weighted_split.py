"""v3 lever (issue 38): the emoji train split with sampling weights that favour what users type first.

Writes OUT/train/captions.jsonl: the same images (OUT/train/images holds hard links to the source split's files:
the folder scan does not follow a linked folder) and captions, with each favoured emoji's per-image `weight`
multiplied by --factor. Favoured: every name of the first-prompt list (configs/emoji/first-prompts.txt) and every
"<colour> heart|circle|square" emoji. Held-out emoji stay held out (only the train split is read). The validation
rows (data.val_fraction) are the same images as the source split's, since the split depends only on their number.

    python scripts/v3_weighted_split.py --src data/emoji --out data/emoji-v3w --factor 6
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

COLOURS = "red|orange|yellow|green|blue|purple|brown|black|white|pink|grey|light blue"
SIMPLE = re.compile(rf"^({COLOURS}) (heart|circle|square)$")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default="data/emoji")
    p.add_argument("--out", default="data/emoji-v3w")
    p.add_argument("--prompts", default="configs/emoji/first-prompts.txt")
    p.add_argument("--factor", type=float, default=6.0)
    args = p.parse_args()
    listed = {
        line.strip()
        for line in Path(args.prompts).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    src, out = Path(args.src) / "train", Path(args.out) / "train"
    out.mkdir(parents=True, exist_ok=True)
    for image in sorted((src / "images").rglob("*")):
        if image.is_file():
            target = out / image.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(image, target)
    lines = (src / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    before = sum(r.get("weight", 1.0) for r in rows)
    favoured = set()
    for r in rows:
        if r["caption"] in listed or SIMPLE.match(r["caption"]):
            r["weight"] = r.get("weight", 1.0) * args.factor
            favoured.add(r["caption"])
    after = sum(r.get("weight", 1.0) for r in rows)
    share = sum(r["weight"] for r in rows if r["caption"] in favoured) / after
    tmp = out / "captions.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out / "captions.jsonl")
    print(
        f"{len(favoured)} favoured emoji ({sum(r['caption'] in favoured for r in rows)} images) x{args.factor:g}: "
        f"{share:.1%} of the samples (was {share * after / args.factor / before:.1%}); "
        f"total weight {before:.0f} -> {after:.0f}"
        f" -> {out}"
    )


if __name__ == "__main__":
    main()
