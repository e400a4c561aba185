"""Compare autoencoder runs on held-out reconstruction: the figures behind the default model's latent shape.

    python scripts/vae_sweep_table.py runs/sweep-vae/f8c8 runs/sweep-vae/f8c4 runs/sweep-vae/f4c4 --data data/emoji/heldout

For each run (its vae.safetensors + vae.yaml export): parameters, latent shape, L1 and PSNR of the
posterior-mean reconstructions of every held-out image, PSNR per design, and encode+decode time.
"""  # noqa: E501

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.core.config import instantiate, load_config  # noqa: E402
from ldm.data.folder import CaptionedImageFolder  # noqa: E402
from ldm.io.checkpoint import load_state_dict  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) / 2).pow(2).mean().item()  # on [0, 1]
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def measure(run: Path, images: torch.Tensor, styles: list[str]) -> dict:
    vae = instantiate(load_config(run / "vae.yaml")["model"])
    vae.load_state_dict({k: v.float() for k, v in load_state_dict(run / "vae.safetensors").items()}, strict=True)
    vae.eval()
    t = time.time()
    recon = torch.cat([vae.decode(vae.encode(images[i : i + 64]).mode()) for i in range(0, len(images), 64)]).clamp(
        -1, 1
    )
    seconds = time.time() - t
    latent = vae.encode(images[:1]).mode().shape[1:]
    per_style = {
        s: psnr(recon[[i for i, x in enumerate(styles) if x == s]], images[[i for i, x in enumerate(styles) if x == s]])
        for s in sorted(set(styles))
    }
    return {
        "run": run.name,
        "params": sum(p.numel() for p in vae.parameters()),
        "latent": "x".join(map(str, latent)),
        "dims": math.prod(latent),
        "l1": (recon - images).abs().mean().item(),
        "psnr": psnr(recon, images),
        "per_style": per_style,
        "ms_per_image": 1000 * seconds / len(images),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", default="data/emoji/heldout")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    ds = CaptionedImageFolder(args.data, args.size)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    styles = [str(e.get("style", "")) for e in ds.extras]
    rows = [measure(run, images, styles) for run in args.runs]
    style_names = sorted(set(styles))
    print(f"Held-out reconstruction ({len(images)} images of {args.data}, {args.size} px, posterior mean):\n")
    print(
        "| run | parameters | latent | dims | L1 | PSNR (dB) | "
        + " | ".join(f"PSNR {s}" for s in style_names)
        + " | ms/image |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(style_names) + "---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['params'] / 1e6:.2f} M | {r['latent']} | {r['dims']} | {r['l1']:.4f} | {r['psnr']:.2f} | "  # noqa: E501
            + " | ".join(f"{r['per_style'][s]:.2f}" for s in style_names)
            + f" | {r['ms_per_image']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
