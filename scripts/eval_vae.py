#!/usr/bin/env python
"""An autoencoder's reconstruction PSNR on held-out images, beside a bicubic x4 upscale of the same images.

    python scripts/eval_vae.py EXPORT_DIR [--data data/emoji-256/heldout/images data/photos/heldout/images] [--count 32]

EXPORT_DIR holds vae.yaml + vae.safetensors (`ldm train --config ... --export-only --out EXPORT_DIR`). Each image
is encoded to its posterior mean and decoded; PSNR is over RGB in [0, 1]. The bicubic column is what an x4
upscaler has to beat: the image shrunk 4x and enlarged again. An upscaler cannot be sharper than its autoencoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from ldm.core.config import instantiate  # noqa: E402
from ldm.io.checkpoint import load_state_dict  # noqa: E402


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) / 2).pow(2).mean()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir")
    p.add_argument("--data", nargs="+", default=["data/emoji-256/heldout/images", "data/photos/heldout/images"])
    p.add_argument("--count", type=int, default=32, help="images per folder (spread over its sub-folders)")
    args = p.parse_args()
    export = Path(args.export_dir)
    vae = instantiate(yaml.safe_load((export / "vae.yaml").read_text())["model"]).eval()
    vae.load_state_dict(load_state_dict(export / "vae.safetensors"))
    print("| images | n | autoencoder PSNR | bicubic x4 PSNR |\n|---|---|---|---|")
    with torch.inference_mode():
        for folder in args.data:
            files = sorted(Path(folder).rglob("*.png"))
            files = files[:: max(1, len(files) // args.count)][: args.count]
            ours, bicubic = [], []
            for f in files:
                image = Image.open(f).convert("RGB")
                x = to_tensor(image)
                ours.append(psnr(vae.decode(vae.encode(x).mode()).clamp(-1, 1), x))
                small = image.resize((image.width // 4, image.height // 4), Image.BICUBIC)
                bicubic.append(psnr(to_tensor(small.resize(image.size, Image.BICUBIC)), x))
            print(f"| {folder} | {len(files)} | {np.mean(ours):.2f} dB | {np.mean(bicubic):.2f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
