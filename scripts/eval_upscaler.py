#!/usr/bin/env python
"""The x4 upscaler against bicubic and against itself with guidance off, on held-out emoji and photos.

    python scripts/eval_upscaler.py [--config C --ckpt W] [--count 16] [--scales 1 4] \
        --out docs/eval/upscaler.json --table docs/eval/upscaler.md --figure docs/upscale-examples.png

Each held-out 256 px image is shrunk to 64 px (PIL bicubic, antialiased) and upscaled back by bicubic and by the
model (with its own back-projection, and without: ldm.tasks.upscale.back_project): with an empty prompt, as a user upscales a photo (guidance changes nothing there: the conditional and the
unconditional prediction are the same), and, for the emoji, with their caption at each guidance scale (1 = off).
Columns:
- PSNR (dB) against the 256 px original, over RGB in [0, 1];
- HF ratio: the energy of the image's high frequencies (the image minus its 5x5 Gaussian blur) over the
  original's: 1 is the original's sharpness, bicubic stays well under it;
- round trip: the output shrunk x4 again against the 64 px input, mean absolute difference in grey levels
  (/255; the issue asks at most 4), the mean over images and the worst image.
Without --config/--ckpt it evaluates the shipped upscaler (checkpoints/emoji/upscaler.*).
"""  # noqa: E501

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from safetensors import safe_open  # noqa: E402

from ldm.core.defaults import default_model_files  # noqa: E402
from ldm.formats.load import load_model
from ldm.tasks.upscale import upscale  # noqa: E402

FOLDERS = {"emoji": "data/emoji-256/heldout/images", "photos": "data/photos/heldout/images"}


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), np.float64) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-12)))


def high_frequency_energy(a: np.ndarray) -> float:
    """Mean squared difference between the image and its 5x5 Gaussian blur (sigma 1)."""
    x = torch.from_numpy(a).permute(2, 0, 1)[:, None].float()
    g = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / 2)
    kernel = (g[:, None] * g[None]) / (g.sum() ** 2)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel[None, None])
    return float((x - blurred).pow(2).mean())


def shrink(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 4, image.height // 4), Image.BICUBIC)


def read_captions(path: Path) -> dict[str, str]:
    """{"images/...png": caption} of a dataset split's captions.jsonl ({} without one)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["file"]: row.get("caption", "") for row in rows}


def pick(folder: str, count: int) -> list[Path]:
    files = sorted(Path(folder).rglob("*.png"))
    return files[:: max(1, len(files) // count)][:count]


def figure(rows: list[list[Image.Image]], header: list[str]) -> Image.Image:
    font = ImageFont.load_default(size=14)
    cell, pad = 256, 4
    sheet = Image.new("RGB", (len(header) * (cell + pad), 22 + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(header):
        draw.text((j * (cell + pad) + 4, 2), text, fill="black", font=font)
    for i, images in enumerate(rows):
        for j, image in enumerate(images):
            sheet.paste(
                image.resize((cell, cell), Image.NEAREST) if image.width < cell else image,
                (j * (cell + pad), 22 + i * (cell + pad)),
            )
    return sheet


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--ckpt")
    p.add_argument("--count", type=int, default=16, help="held-out images per set")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0], help="guidance scales (1 = off)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's own)")
    p.add_argument("--noise-level", type=int, default=20)
    p.add_argument("--out", help="JSON of every figure")
    p.add_argument("--table", help="markdown table")
    p.add_argument("--figure", help="PNG: per set, two images: input (nearest), bicubic, the model, original")
    args = p.parse_args()
    model = load_model(args.config, args.ckpt, device="cpu", task="upscale")
    results, examples = {}, []
    for name, folder in FOLDERS.items():
        files = pick(folder, args.count)
        captions = read_captions(Path(folder).parent / "captions.jsonl")
        # (label, with the caption?, guidance scale); photos have no captions
        runs = [("model, empty prompt", False, 1.0, None), ("model, empty prompt, no back-projection", False, 1.0, 0)]
        if any(captions.values()):
            runs += [(f"model, caption, guidance {s:g}", True, s, None) for s in args.scales]
        methods = ["bicubic"] + [label for label, *_ in runs]
        rows = {m: {"psnr": [], "hf_ratio": [], "round_trip": [], "seconds": []} for m in methods}
        for k, file in enumerate(files):
            original = Image.open(file).convert("RGB")
            low = shrink(original)
            truth, hf_truth = as_array(original), high_frequency_energy(as_array(original))
            outputs = {"bicubic": (low.resize(original.size, Image.BICUBIC), 0.0)}
            for method, with_caption, scale, back_projection in runs:
                start = time.perf_counter()
                extra = {"steps": args.steps} if args.steps else {}
                prompt = captions.get(str(file.relative_to(Path(folder).parent)), "") if with_caption else ""
                out = upscale(
                    model,
                    low,
                    prompt,
                    noise_level=args.noise_level,
                    seed=k,
                    guidance_scale=scale,
                    progress=False,
                    back_projection=back_projection,
                    **extra,
                )[0]
                outputs[method] = (out, time.perf_counter() - start)
            for method, (out, seconds) in outputs.items():
                a = as_array(out)
                rows[method]["psnr"].append(psnr(a, truth))
                rows[method]["hf_ratio"].append(high_frequency_energy(a) / max(hf_truth, 1e-12))
                rows[method]["round_trip"].append(float(np.abs(as_array(shrink(out)) - as_array(low)).mean() * 255))
                rows[method]["seconds"].append(seconds)
            if k < 2:
                examples.append([low, outputs["bicubic"][0], outputs["model, empty prompt"][0], original])
            print(
                f"{name} {k + 1}/{len(files)}: " + ", ".join(f"{m} {rows[m]['psnr'][-1]:.2f} dB" for m in methods),
                flush=True,
            )
        results[name] = {
            m: {
                "n": len(files),
                "psnr": float(np.mean(v["psnr"])),
                "hf_ratio": float(np.mean(v["hf_ratio"])),
                "round_trip_mean": float(np.mean(v["round_trip"])),
                "round_trip_max": float(np.max(v["round_trip"])),
                "seconds": float(np.mean(v["seconds"])),
            }
            for m, v in rows.items()
        }
    weights = args.ckpt or default_model_files("upscale")[1]
    step = (
        (safe_open(str(weights), "pt").metadata() or {}).get("step", "?")
        if str(weights).endswith(".safetensors")
        else "?"
    )
    identity = {
        **model.identity,
        "step": step,
        "sampling": model.sampling_defaults,
        "upscale": model.upscale_defaults,
        "noise_level": args.noise_level,
        "steps": args.steps or model.sampling_defaults.get("steps"),
        "count": args.count,
    }
    lines = [
        f"Model: {identity.get('model_file')} (step {identity.get('step', '?')}), noise level {args.noise_level}, "
        f"steps {identity['steps'] or 'default'}, eta {model.sampling_defaults.get('eta', 0)}; {args.count} held-out images a set, 256 px from 64 px.",  # noqa: E501
        "",
        "| set | method | PSNR | HF ratio (1 = original) | round trip MAD /255 (mean, worst) | s / image |",
        "|---|---|---|---|---|---|",
    ]
    for name, per in results.items():
        for method, r in per.items():
            lines.append(
                f"| {name} | {method} | {r['psnr']:.2f} dB | {r['hf_ratio']:.2f} | {r['round_trip_mean']:.2f}, "
                f"{r['round_trip_max']:.2f} | {r['seconds']:.2f} |"
            )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps({"model": identity, "results": results}, indent=1, default=str) + "\n")
    if args.table:
        Path(args.table).write_text(
            "# x4 upscaler: held-out evaluation (scripts/eval_upscaler.py)\n\n" + "\n".join(lines) + "\n"
        )
    if args.figure:
        figure(examples, ["input 64 px", "bicubic x4", "upscaler, empty prompt", "original 256 px"]).save(args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
