"""A cheap screening evaluation for the v3 levers (issue 38), run after every training piece.

Two parts, both judged by the independent judge CLIP (checkpoints/emoji/judge.safetensors), which never saw the
model's text encoder:

1. The first-prompt list (configs/emoji/first-prompts.txt, 78 names) x --seeds seeds at guidance --scale: a
   picture is right when its nearest real image (over every real image of every design, both splits) is of the
   prompted name, as `ldm eval --prompt-list` judges it. Per-category shares too.
2. The colour x shape grid: 6 colours (red, orange, yellow, green, blue, purple) x (heart, circle, square) x
   --grid-seeds seeds. Judged two ways:
   - "among 18": the nearest real emoji among the 18 combination emoji only (their 5 designs each); the picture's
     colour and shape are those of that emoji, so colour and shape are scored apart (right = both right).
   - "strict": the nearest real image over all names is exactly the prompted emoji (the prompt list's rule).
   - "zero-shot among 18": the judge's text embedding of the 18 names nearest to the picture's image embedding.
   - "pixel": colour and silhouette read off the pixels (ldm.evaluation.shape_colour), the nearest of the 18
     emoji's real designs; 100% on the real designs themselves (leave-one-out), so it can verify the 75% target
     that the judge CLIP (70% on real designs) cannot.

The ceiling (the real images themselves, leave-one-out: an image's own row is out of the gallery) is printed for
both parts with --ceiling. Seeds: prompt i's seed j is --seed + j, as in `ldm eval --prompt-list`.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/eval_screen.py --ckpt checkpoints/emoji/model.safetensors \
        --config checkpoints/emoji/model.yaml --name v2 --out runs/screen/v2.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("heart", "circle", "square")
GRID = [f"{c} {s}" for s in SHAPES for c in COLOURS]


def load_judge(data: str, judge_path: str, size: int, cache: Path):
    """The Judge over both splits; the real images' judge features are cached on disk (keyed by the judge file)."""
    from ldm.evaluation.metrics import ClipFeatures, NearestNeighbourJudge
    from ldm.evaluation.report import Judge, load_real
    from ldm.models.clip import load_clip

    clip = load_clip(judge_path, Path(judge_path).with_suffix(".json"))
    real = load_real(data, size)
    stat = os.stat(judge_path)
    key = f"{stat.st_size}-{int(stat.st_mtime)}-{len(real.captions)}-{size}"
    if cache.is_file() and torch.load(cache)["key"] == key:
        judge = Judge.__new__(Judge)
        judge.features, judge.real = ClipFeatures(clip), real
        judge.real_features = torch.load(cache)["features"]
        judge.nn = NearestNeighbourJudge(judge.real_features, real.captions)
        return judge
    judge = Judge(clip, real)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "features": judge.real_features}, cache)
    return judge


def restricted_scores(
    judge, feats: torch.Tensor, names: list[str], exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, len(names)]: the judge's class scores for these names only."""
    scores = judge.nn.class_scores(feats, exclude)
    index = [judge.nn.classes.index(n) for n in names]
    return scores[:, index]


def score_grid(judge, feats: torch.Tensor, targets: list[str], exclude: torch.Tensor | None = None) -> dict:
    among = restricted_scores(judge, feats, GRID, exclude).argmax(dim=1).tolist()
    strict = judge.nn.class_scores(feats, exclude).argmax(dim=1).tolist()
    text = torch.nn.functional.normalize(judge.features.encode_text(GRID).float(), dim=-1)
    zero_shot = (torch.nn.functional.normalize(feats.float(), dim=-1) @ text.T).argmax(dim=1).tolist()
    rows = []
    for t, a, s, z in zip(targets, among, strict, zero_shot):
        pc, ps = GRID[a].split(" ")
        tc, ts = t.split(" ")
        rows.append(
            {
                "prompt": t,
                "judged_as": GRID[a],
                "nearest": judge.nn.classes[s],
                "colour": pc == tc,
                "shape": ps == ts,
                "both": pc == tc and ps == ts,
                "strict": judge.nn.classes[s] == t,
                "zero_shot": GRID[z] == t,
            }
        )
    mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs else float("nan")  # noqa: E731
    out = {k: mean(rows, k) for k in ("both", "colour", "shape", "strict", "zero_shot")}
    parts = ("both", "colour", "shape")
    out["by_colour"] = {
        c: {k: mean([r for r in rows if r["prompt"].startswith(c + " ")], k) for k in parts} for c in COLOURS
    }
    out["by_shape"] = {
        s: {k: mean([r for r in rows if r["prompt"].endswith(" " + s)], k) for k in parts} for s in SHAPES
    }
    out["rows"] = rows
    return out


def pixel_judge(judge):
    """The pixel rule over the 18 combination emoji's real designs (from the judge's real set)."""
    from ldm.evaluation.shape_colour import ShapeColourJudge

    rows_of = judge.real.rows_of()
    rows = [r for n in GRID for r in rows_of[n]]
    names = [judge.real.captions[r] for r in rows]
    return ShapeColourJudge(
        judge.real.images[rows], [n.split(" ")[0] for n in names], [n.split(" ")[1] for n in names]
    ), rows


def score_grid_pixels(rule, images: torch.Tensor, targets: list[str], exclude: torch.Tensor | None = None) -> dict:
    readings = rule.read(images, exclude)
    right = [(r.colour, r.shape) == tuple(t.split(" ")) for r, t in zip(readings, targets)]
    colour = [r.colour == t.split(" ")[0] for r, t in zip(readings, targets)]
    shape = [r.shape == t.split(" ")[1] for r, t in zip(readings, targets)]
    by_shape = {s: float(np.mean([k for k, t in zip(right, targets) if t.endswith(" " + s)])) for s in SHAPES}
    return {
        "both": float(np.mean(right)),
        "colour": float(np.mean(colour)),
        "shape": float(np.mean(shape)),
        "by_shape": by_shape,
        "readings": [f"{r.colour} {r.shape}" for r in readings],
    }


def score_list(
    judge,
    feats: torch.Tensor,
    prompts: list[tuple[str, str]],
    per: int | None,
    targets: list[str] | None = None,
    exclude: torch.Tensor | None = None,
) -> dict:
    best = judge.nn.class_scores(feats, exclude).argmax(dim=1).tolist()
    picks = [judge.nn.classes[b] for b in best]
    if targets is None:
        targets = [p for _, p in prompts for _ in range(per)]
    cat_of = {p: c for c, p in prompts}
    hits = [p == t for p, t in zip(picks, targets)]
    by_prompt: dict[str, list[bool]] = {}
    for t, h in zip(targets, hits):
        by_prompt.setdefault(t, []).append(h)
    prompt_top1 = {p: float(np.mean(v)) for p, v in by_prompt.items()}
    categories = {}
    for c in dict.fromkeys(cat_of.values()):
        mine = [prompt_top1[p] for p in prompt_top1 if cat_of[p] == c]
        categories[c] = float(np.mean(mine))
    return {"top1": float(np.mean(list(prompt_top1.values()))), "categories": categories, "prompts": prompt_top1}


def ceiling(judge, prompts: list[tuple[str, str]]) -> dict:
    """The real images of the listed names and of the grid, each judged without its own row."""
    rows_of = judge.real.rows_of()
    names = [p for _, p in prompts]
    rows = [r for n in names for r in rows_of[n]]
    targets = [n for n in names for _ in rows_of[n]]
    listed = score_list(judge, judge.real_features[rows], prompts, None, targets, torch.tensor(rows))
    grid_rows = [r for n in GRID for r in rows_of[n]]
    grid_targets = [n for n in GRID for _ in rows_of[n]]
    grid = score_grid(judge, judge.real_features[grid_rows], grid_targets, torch.tensor(grid_rows))
    rule, rule_rows = pixel_judge(judge)
    pixel = score_grid_pixels(rule, judge.real.images[rule_rows], grid_targets, torch.arange(len(rule_rows)))
    return {"prompt_list": listed, "grid": grid, "grid_pixel": pixel}


def save_sheet(images: torch.Tensor, cols: int, path: Path) -> None:
    from PIL import Image

    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    n, h, w, _ = arr.shape
    rows = (n + cols - 1) // cols
    sheet = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        sheet[(i // cols) * h : (i // cols + 1) * h, (i % cols) * w : (i % cols + 1) * w] = arr[i]
    Image.fromarray(sheet).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--name", required=True)
    p.add_argument("--out", default=None, help="JSON results (default runs/screen/NAME.json)")
    p.add_argument("--data", default="data/emoji")
    p.add_argument("--judge", default="checkpoints/emoji/judge.safetensors")
    p.add_argument("--prompts", default="configs/emoji/first-prompts.txt")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--grid-seeds", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ceiling", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from ldm.evaluation.prompts import read_prompt_list
    from ldm.evaluation.report import EvalSettings, generate
    from ldm.formats.load import load_model

    out = Path(args.out or f"runs/screen/{args.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = load_model(args.config, args.ckpt, "cpu")
    size = model.default_image_size
    judge = load_judge(args.data, args.judge, size, Path("runs/screen/judge-real-features.pt"))
    prompts = read_prompt_list(args.prompts)
    t_load = time.time() - t0
    result: dict = {
        "name": args.name,
        "ckpt": args.ckpt,
        "steps": args.steps,
        "scale": args.scale,
        "seeds": args.seeds,
        "grid_seeds": args.grid_seeds,
    }
    if args.ceiling:
        result["ceiling"] = ceiling(judge, prompts)
    settings = EvalSettings(seed=args.seed, steps=args.steps, batch_size=32)

    t = time.time()
    names = [n for _, n in prompts]
    flat = [n for n in names for _ in range(args.seeds)]
    seeds = [args.seed + j for _ in names for j in range(args.seeds)]
    fake = generate(model, flat, args.scale, settings, size, seeds=seeds)
    result["prompt_list"] = score_list(judge, judge.features(fake), prompts, args.seeds)
    t_list = time.time() - t
    save_sheet(fake, args.seeds * 6, out.with_name(f"{args.name}-list.png"))

    t = time.time()
    flat = [n for n in GRID for _ in range(args.grid_seeds)]
    seeds = [args.seed + j for _ in GRID for j in range(args.grid_seeds)]
    fake = generate(model, flat, args.scale, settings, size, seeds=seeds)
    result["grid"] = score_grid(judge, judge.features(fake), flat)
    result["grid_pixel"] = score_grid_pixels(pixel_judge(judge)[0], fake, flat)
    t_grid = time.time() - t
    save_sheet(fake, args.grid_seeds * 6, out.with_name(f"{args.name}-grid.png"))
    result["seconds"] = {"load": t_load, "prompt_list": t_list, "grid": t_grid, "total": time.time() - t0}
    out.write_text(json.dumps(result, indent=2) + "\n")

    def line(label: str, listed: dict, grid: dict) -> str:
        cats = ", ".join(f"{c} {v:.0%}" for c, v in listed["categories"].items())
        shapes = ", ".join(f"{s} {v['both']:.0%}" for s, v in grid["by_shape"].items())
        colours = ", ".join(f"{c} {v['colour']:.0%}" for c, v in grid["by_colour"].items())
        return (
            f"{label}: prompt list top-1 {listed['top1']:.1%} ({cats})\n"
            f"  grid right (among 18) {grid['both']:.1%}: colour {grid['colour']:.1%}, shape {grid['shape']:.1%}, "
            f"strict {grid['strict']:.1%}, zero-shot among 18 {grid['zero_shot']:.1%}; by shape {shapes}; "
            f"colour by colour {colours}"
        )

    if args.ceiling:
        print(line("ceiling (real images, leave-one-out)", result["ceiling"]["prompt_list"], result["ceiling"]["grid"]))
    print(
        line(
            f"{args.name} (guidance {args.scale:g}, {args.steps} DDIM steps, {args.seeds}/{args.grid_seeds} seeds)",
            result["prompt_list"],
            result["grid"],
        )
    )

    def pixel_line(label: str, pixel: dict) -> str:
        shapes = ", ".join(f"{s} {v:.0%}" for s, v in pixel["by_shape"].items())
        return (
            f"{label}: grid right by the pixel rule {pixel['both']:.1%}: colour {pixel['colour']:.1%}, "
            f"shape {pixel['shape']:.1%}; by shape {shapes}"
        )

    if args.ceiling:
        print(pixel_line("ceiling (real images, leave-one-out)", result["ceiling"]["grid_pixel"]))
    print(pixel_line(args.name, result["grid_pixel"]))
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))


if __name__ == "__main__":
    main()
