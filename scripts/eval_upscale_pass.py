"""Should the Quick start show 256 px pictures? The default command's 64 px images against the same images through
the shipped x4 upscaler (`ldm txt2img --upscale`), judged by the judge CLIP (issue 38, item 4).

The first-prompt list (configs/emoji/first-prompts.txt) x --seeds seeds, with the default model (the student where
it is shipped) at its own settings, as `ldm txt2img "NAME" --seed S` makes them; each image then goes through the
shipped upscaler with its prompt and seed at the upscaler's own settings (ldm.tasks.upscale_pass). The judge works
at 64 px: the 256 px images are shrunk to 64 px by area averaging (antialiased), the plain ones are judged as they
are. A picture is right when its nearest real image is of the prompted name (scripts/eval_screen.py's rule).
A side-by-side sheet (plain 64 px enlarged by nearest neighbour to 256 px, above the x4 result) is written too.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/eval_upscale_pass.py --data /work/wt-v3/data/emoji \
        --max-minutes 12 --out runs/upscale-pass.json --sheet docs/images/upscale-pass.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def judge_of(data: str, judge_path: str, cache: Path | None):
    """(features of pictures, nearest-neighbour judge) over the real images of both splits at 64 px."""
    from ldm.evaluation.metrics import ClipFeatures, NearestNeighbourJudge
    from ldm.evaluation.report import load_real
    from ldm.models.clip import load_clip

    clip = load_clip(judge_path, Path(judge_path).with_suffix(".json"))
    real = load_real(data, 64)
    features = ClipFeatures(clip)
    real_features = None
    if cache is not None and cache.is_file():  # eval_screen.py's cache of the same judge's real features
        cached = torch.load(cache)["features"]
        real_features = cached if len(cached) == len(real.captions) else None
    if real_features is None:
        real_features = features(real.images)
    return features, NearestNeighbourJudge(real_features, real.captions)


def sheet(plain: list, big: list, path: Path) -> None:
    """Row 1: the 64 px images enlarged x4 by nearest neighbour; row 2: the x4 upscaler's."""
    from PIL import Image

    w = big[0].width
    out = Image.new("RGB", (w * len(big), w * 2), "white")
    for i, (p, b) in enumerate(zip(plain, big)):
        out.paste(p.resize((w, w), Image.Resampling.NEAREST), (i * w, 0))
        out.paste(b, (i * w, w))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/emoji")
    p.add_argument("--judge", default="checkpoints/emoji/judge.safetensors")
    p.add_argument("--cache", default="runs/screen/judge-real-features.pt")
    p.add_argument("--prompts", default="configs/emoji/first-prompts.txt")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="the first N names only")
    p.add_argument("--max-minutes", type=float, default=12.0, help="stop after the name that passes this")
    p.add_argument("--sheet-names", default="red heart,banana,cat face,grinning face,flag: Japan,rocket")
    p.add_argument("--out", default="runs/upscale-pass.json")
    p.add_argument("--sheet", default="docs/images/upscale-pass.png")
    args = p.parse_args()
    torch.set_num_threads(1)

    from ldm.evaluation.prompts import read_prompt_list
    from ldm.formats.load import load_model
    from ldm.io.images import pil_to_tensor
    from ldm.tasks.txt2img import txt2img
    from ldm.tasks.upscale import upscale

    model = load_model()  # the default: the student where it is shipped, at its own settings
    upscaler = load_model(task="upscale")
    features, nn = judge_of(args.data, args.judge, Path(args.cache))
    names = [n for _, n in read_prompt_list(args.prompts)][: args.limit]
    wanted = [n.strip() for n in args.sheet_names.split(",")]
    plain, big, targets, t_plain, t_up, shown = [], [], [], 0.0, 0.0, {}
    start = time.time()
    for name in names:
        for seed in range(args.seeds):
            t = time.time()
            image = txt2img(model, name, seed=seed, progress=False)[0]
            t_plain += time.time() - t
            t = time.time()
            large = upscale(upscaler, image, name, seed=seed, progress=False)[0]
            t_up += time.time() - t
            plain.append(image)
            big.append(large)
            targets.append(name)
            if name in wanted and seed == 0:
                shown[name] = (image, large)
        print(f"{len(targets)} images, {time.time() - start:.0f} s", flush=True)
        if time.time() - start > args.max_minutes * 60:
            break
    low = torch.cat([pil_to_tensor(i) for i in plain])
    shrunk = F.interpolate(torch.cat([pil_to_tensor(i) for i in big]), size=low.shape[-2:], mode="area")
    result = {"images": len(targets), "names": len(targets) // args.seeds, "seeds": args.seeds}
    for label, pictures in (("plain_64", low), ("upscaled_256", shrunk)):
        picks = [nn.classes[i] for i in nn.class_scores(features(pictures)).argmax(dim=1).tolist()]
        result[f"top1_{label}"] = float(np.mean([p == t for p, t in zip(picks, targets)]))
        result[f"picks_{label}"] = picks
    result["s_per_image_plain"] = t_plain / len(targets)
    result["s_per_image_upscale"] = t_up / len(targets)
    result["targets"] = targets
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if shown:
        sheet([a for a, _ in shown.values()], [b for _, b in shown.values()], Path(args.sheet))
        print("sheet:", ", ".join(shown))
    print({k: v for k, v in result.items() if not isinstance(v, list)})


if __name__ == "__main__":
    main()
