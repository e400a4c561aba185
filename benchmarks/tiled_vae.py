"""Tiled autoencoder: peak memory and time of SD's VAE decode (and encode) by image size, tiled and not,
and the error tiling adds (its "seam error"), measured against the untiled result.

    python benchmarks/tiled_vae.py [--sizes 1024 2048 4096] [--untiled-up-to 2048] [--tile 64] [--overlap 16]
                                   [--threads 2] [--ckpt SD2.safetensors]

The VAE is SD 2's (configs/stable-diffusion/v2-inference.yaml's first stage, f=8), with random weights unless
--ckpt gives an SD 2.x file (whose first_stage_model.* weights are used). Each measurement runs in its own
process, so its peak resident memory (ru_maxrss) is its own; the table prints it beside a process that only
loads the VAE, whose memory is the baseline. Untiled runs above --untiled-up-to are not made: the table
gives their estimate, the largest measured untiled run's activation memory scaled by the pixel count.
The seam error is the mean and max absolute difference, in [-1, 1] image units, between tiled and
untiled decodes of the same latent; "at seams" is the mean over the tile overlaps alone.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import yaml

from ldm.config import instantiate
from ldm.defaults import shipped_path


def build_vae(ckpt: str | None):
    cfg = yaml.safe_load(shipped_path("configs/stable-diffusion/v2-inference.yaml").read_text())
    vae = instantiate(cfg["model"]["params"]["first_stage_config"])
    if ckpt:
        from ldm.checkpoint import load_state_dict

        state = load_state_dict(ckpt)
        vae.load_state_dict({k[len("first_stage_model."):]: v for k, v in state.items()
                             if k.startswith("first_stage_model.")}, strict=False)
    return vae.eval()


def one_run(size: int, tiled: bool, tile: int, overlap: int, ckpt: str | None, out: str | None) -> dict:
    """Decode a seeded latent for a size; returns seconds and peak memory (MiB); saves the image if asked."""
    from ldm.tiling import tiled_decode

    vae = build_vae(ckpt)
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    with torch.no_grad():
        if not size:  # the baseline: a process that only holds the VAE
            image = z
        elif tiled:
            image = tiled_decode(vae.decode_from_latent, z, tile, overlap)
        else:
            image = vae.decode_from_latent(z)
    seconds = time.perf_counter() - start
    if out:
        torch.save(image, out)
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(args, size: int, tiled: bool, out: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--one", str(size), str(int(tiled)), "--tile", str(args.tile),
           "--overlap", str(args.overlap), "--threads", str(args.threads)] + (["--ckpt", args.ckpt] if args.ckpt else []) \
        + (["--out", out] if out else [])
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def seam_error(args, size: int) -> tuple[float, float, float]:
    import tempfile

    from ldm.tiling import tile_starts

    with tempfile.TemporaryDirectory() as d:
        measure(args, size, True, f"{d}/tiled.pt")
        measure(args, size, False, f"{d}/full.pt")
        diff = (torch.load(f"{d}/tiled.pt") - torch.load(f"{d}/full.pt")).abs()
    starts = [s * 8 for s in tile_starts(size // 8, args.tile, args.overlap)]
    seams = torch.zeros(size, dtype=torch.bool)
    for s in starts[1:]:
        seams[s:s + args.overlap * 8] = True
    at_seams = diff[..., seams, :].mean().item() if seams.any() else 0.0
    return diff.mean().item(), diff.max().item(), at_seams


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--untiled-up-to", type=int, default=2048)
    p.add_argument("--tile", type=int, default=64, help="latent samples (64: 512 px)")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt")
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_run(args.one[0], bool(args.one[1]), args.tile, args.overlap, args.ckpt, args.out)))
        return
    base = measure(args, 0, False)["peak_mib"]
    print(f"SD 2 VAE decode, CPU, {args.threads} threads; tiles {args.tile} latent ({args.tile * 8} px), overlap "
          f"{args.overlap} ({args.overlap * 8} px); peak RSS minus the {base:.0f} MiB of a process holding the VAE\n")
    print("| size | untiled MiB | untiled s | tiled MiB | tiled s |")
    print("|---|---|---|---|---|")
    largest = None
    for size in args.sizes:
        tiled = measure(args, size, True)
        if size <= args.untiled_up_to:
            full = measure(args, size, False)
            largest = (size, full["peak_mib"] - base)
            untiled = f"{full['peak_mib'] - base:.0f} | {full['seconds']:.1f}"
        else:
            estimate = largest[1] * (size / largest[0]) ** 2 if largest else float("nan")
            untiled = f"~{estimate:.0f} (estimate) | -"
        print(f"| {size} | {untiled} | {tiled['peak_mib'] - base:.0f} | {tiled['seconds']:.1f} |")
    size = min(args.sizes)
    mean, worst, seams = seam_error(args, size)
    print(f"\nSeam error at {size} px (tiled vs untiled, image units in [-1, 1]): mean {mean:.4f}, max {worst:.4f}, "
          f"mean over the overlaps {seams:.4f}")


if __name__ == "__main__":
    main()
