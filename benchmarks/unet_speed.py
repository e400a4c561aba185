"""U-Net forward time at SD 2-base size: ours vs diffusers' UNet2DConditionModel, same weights.

    python benchmarks/unet_speed.py [--batch 2] [--size 64] [--repeats 3] [--device cpu]

Batch 2 is one guided sampling step (conditional + unconditional). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from ldm.unet import UNetModel

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion" / "v2-inference.yaml"


def timed_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median times, runs interleaved so background load hits both alike."""
    fn_a(), fn_b()  # warm-up: allocator, kernels, lazy inits
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times_a), statistics.median(times_b)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="latent size (64 = 512 px)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as conv

    cfg = yaml.safe_load(CONFIG.read_text())
    ours = UNetModel(**cfg["model"]["params"]["unet_config"]["params"]).eval()
    with torch.no_grad():  # the zero-initialised output layers would make the outputs trivially equal
        for p in ours.parameters():
            if (p == 0).all():
                p.normal_(0, 0.01)
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    dcfg = conv.create_unet_diffusers_config_from_ldm(cfg, ckpt)
    theirs = UNet2DConditionModel(**dcfg).eval()
    theirs.load_state_dict(conv.convert_ldm_unet_checkpoint(ckpt, dcfg), strict=True)
    del ckpt
    device = torch.device(args.device)
    ours, theirs = ours.to(device), theirs.to(device)

    x = torch.randn(args.batch, 4, args.size, args.size, device=device)
    t = torch.full((args.batch,), 500, device=device)
    c = torch.randn(args.batch, 77, 1024, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        t_ours, t_theirs = timed_pair(lambda: (ours(x, t, c), sync()), lambda: (theirs(x, t, c).sample, sync()),
                                      args.repeats)
        a, b = ours(x, t, c), theirs(x, t, c).sample
        err = ((a - b).abs().max() / b.abs().max()).item()

    print(f"SD 2-base U-Net ({sum(p.numel() for p in ours.parameters()) / 1e6:.0f} M params), batch {args.batch}, "
          f"latent {args.size}x{args.size}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| implementation | forward (s, median) |")
    print("| --- | --- |")
    print(f"| ldm (ours) | {t_ours:.2f} |")
    print(f"| diffusers UNet2DConditionModel | {t_theirs:.2f} |")
    print(f"\nmax relative difference between the two outputs: {err:.2e}")


if __name__ == "__main__":
    main()
