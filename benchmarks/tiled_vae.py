"""Tiled autoencoder: peak memory and time of SD's VAE decode (and encode) by image size, tiled and not,
and the error tiling adds (its "seam error"), measured against the untiled result.

    python benchmarks/tiled_vae.py [--sizes 1024 2048 4096] [--untiled-up-to 2048] [--tile 64] [--overlap 16]
                                   [--threads 2] [--ckpt SD2.safetensors]
    python benchmarks/tiled_vae.py --estimate             # no arithmetic: tensor memory of every size, in seconds
    python benchmarks/tiled_vae.py --seam-image PHOTO     # seam error of a trained VAE on a real image

--estimate runs the decoder on fake tensors (shapes only, torch's FakeTensorMode) and adds up the bytes of the
tensors alive at each moment: the peak the activations need, without the allocator's slack or a kernel's
scratch space, and at any size in a few seconds (a real SD VAE decode of 4096 px takes hours on a 2-core CPU).
--seam-image encodes a real picture with a trained autoencoder (default: the shipped emoji model's, f=4) and
decodes its latent tiled and untiled: random weights would make the seam figure meaningless.

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
import weakref

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ldm.core.config import instantiate
from ldm.core.defaults import shipped_path


def build_vae(ckpt: str | None):
    cfg = yaml.safe_load(shipped_path("configs/stable-diffusion/v2-inference.yaml").read_text())
    vae = instantiate(cfg["model"]["params"]["first_stage_config"])
    if ckpt:
        from ldm.io.checkpoint import load_state_dict

        state = load_state_dict(ckpt)
        vae.load_state_dict(
            {k[len("first_stage_model.") :]: v for k, v in state.items() if k.startswith("first_stage_model.")},
            strict=False,
        )
    return vae.eval()


def one_run(size: int, tiled: bool, tile: int, overlap: int, ckpt: str | None, out: str | None) -> dict:
    """Decode a seeded latent for a size; returns seconds and peak memory (MiB); saves the image if asked."""
    from ldm.models.tiling import tiled_decode

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
    cmd = (
        [
            sys.executable,
            __file__,
            "--one",
            str(size),
            str(int(tiled)),
            "--tile",
            str(args.tile),
            "--overlap",
            str(args.overlap),
            "--threads",
            str(args.threads),
        ]
        + (["--ckpt", args.ckpt] if args.ckpt else [])
        + (["--out", out] if out else [])
    )
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def seam_error(args, size: int) -> tuple[float, float, float]:
    import tempfile

    from ldm.models.tiling import tile_starts

    with tempfile.TemporaryDirectory() as d:
        measure(args, size, True, f"{d}/tiled.pt")
        measure(args, size, False, f"{d}/full.pt")
        diff = (torch.load(f"{d}/tiled.pt") - torch.load(f"{d}/full.pt")).abs()
    starts = [s * 8 for s in tile_starts(size // 8, args.tile, args.overlap)]
    seams = torch.zeros(size, dtype=torch.bool)
    for s in starts[1:]:
        seams[s : s + args.overlap * 8] = True
    at_seams = diff[..., seams, :].mean().item() if seams.any() else 0.0
    return diff.mean().item(), diff.max().item(), at_seams


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of the tensors that ops have made and that are still alive, and their peak. A view shares its
    input's memory and is not counted."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._freed, nbytes)
        return out


def estimate_peak_mib(vae, size: int, tiled: bool, tile: int, overlap: int) -> float:
    """Peak activation memory (MiB) of one fp32 decode of a size x size image, on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ldm.models.tiling import tiled_decode

    fake = FakeTensorMode(allow_non_fake_inputs=True)  # the weights stay real; what the ops make is fake
    with fake:
        z = torch.zeros(1, 4, size // 8, size // 8)
    counter = LiveTensorBytes()
    with torch.no_grad(), fake, counter:
        tiled_decode(vae.decode_from_latent, z, tile, overlap) if tiled else vae.decode_from_latent(z)
    return counter.peak / 2**20


def estimate_table(args) -> None:
    vae = build_vae(args.ckpt)
    print(
        f"SD 2 VAE decode, fp32, tensor memory at its peak (FakeTensorMode, no arithmetic); tiles {args.tile} latent "
        f"({args.tile * 8} px), overlap {args.overlap} ({args.overlap * 8} px)\n"
    )
    print("| size | untiled MiB | tiled MiB |\n|---|---|---|")
    for size in args.sizes:
        full, tiled = (estimate_peak_mib(vae, size, t, args.tile, args.overlap) for t in (False, True))
        print(f"| {size} | {full:.0f} | {tiled:.0f} |")


def trained_seam_error(args) -> None:
    """Tiled vs untiled decode of a real image's latent through a trained autoencoder."""

    import numpy as np
    from PIL import Image

    from ldm.io.checkpoint import load_state_dict
    from ldm.models.tiling import tiled_decode

    # A whole model's config (its first stage) or an autoencoder's own (`ldm train --export-only` of a VAE run).
    cfg = yaml.safe_load(shipped_path(args.seam_config).read_text())["model"]
    node = cfg["params"]["first_stage_config"] if "first_stage_config" in cfg.get("params", {}) else cfg
    vae = instantiate(node).eval()
    state = load_state_dict(shipped_path(args.seam_ckpt))
    prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in state) else ""
    vae.load_state_dict({k[len(prefix) :]: v.float() for k, v in state.items() if k.startswith(prefix)})
    factor = 2 ** (len(node["params"]["ddconfig"]["ch_mult"]) - 1)
    image = Image.open(args.seam_image).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((args.seam_size, args.seam_size), Image.LANCZOS)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).mean
        full = vae.decode_from_latent(z).clamp(-1, 1)
        own = tiled_decode(vae.decode_from_latent, z, args.tile, args.overlap, factor).clamp(-1, 1)
        shared = tiled_decode(vae.decode_from_latent, z, args.tile, args.overlap, factor, norms=vae).clamp(-1, 1)
    for name, tiled in (("each tile's own group-norm statistics", own), ("shared statistics (the default)", shared)):
        seam_line(args, name, tiled, full, z, factor)


def seam_line(args, name: str, tiled: torch.Tensor, full: torch.Tensor, z: torch.Tensor, factor: int) -> None:
    import math

    from ldm.models.tiling import tile_starts

    diff = (tiled - full).abs()
    seams = torch.zeros(args.seam_size, dtype=torch.bool)
    for start in tile_starts(z.shape[-1], args.tile, args.overlap)[1:]:
        seams[start * factor : (start + args.overlap) * factor] = True
    mse = ((tiled - full) / 2).pow(2).mean().item()  # in [0, 1] units
    print(
        f"Seam error, {args.seam_ckpt} (f={factor}) on {args.seam_image} at {args.seam_size} px, tiles {args.tile} "
        f"latent ({args.tile * factor} px), overlap {args.overlap} ({args.overlap * factor} px), {name}: tiled vs "
        f"untiled mean {diff.mean():.4f}, max {diff.max():.4f} (image units in [-1, 1]), mean over the overlaps "
        f"{diff[..., seams, :].mean():.4f}; PSNR {10 * math.log10(1 / mse):.1f} dB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--untiled-up-to", type=int, default=2048)
    p.add_argument("--tile", type=int, default=64, help="latent samples (64: 512 px)")
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ckpt")
    p.add_argument("--estimate", action="store_true", help="tensor memory on fake tensors instead of real runs")
    p.add_argument("--seam-image", help="measure a trained VAE's seam error on this picture instead")
    p.add_argument("--seam-size", type=int, default=1024)
    p.add_argument("--seam-config", default="checkpoints/emoji/model.yaml")
    p.add_argument("--seam-ckpt", default="checkpoints/emoji/model.safetensors")
    p.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_run(args.one[0], bool(args.one[1]), args.tile, args.overlap, args.ckpt, args.out)))
        return
    if args.estimate:
        return estimate_table(args)
    if args.seam_image:
        return trained_seam_error(args)
    base = measure(args, 0, False)["peak_mib"]
    print(
        f"SD 2 VAE decode, CPU, {args.threads} threads; tiles {args.tile} latent ({args.tile * 8} px), overlap "
        f"{args.overlap} ({args.overlap * 8} px); peak RSS minus the {base:.0f} MiB of a process holding the VAE\n"
    )
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
    print(
        f"\nSeam error at {size} px (tiled vs untiled, image units in [-1, 1]): mean {mean:.4f}, max {worst:.4f}, "
        f"mean over the overlaps {seams:.4f}"
    )


if __name__ == "__main__":
    main()
