"""The default model on a CPU in fp32 and in bf16: time per image and how much the picture changes.

    python benchmarks/cpu_bf16.py [--steps 30] [--rounds 3] [--threads N]

Four settings, interleaved round by round: fp32; bf16 autocast over fp32 weights (what `precision="bf16"` does
in the Python API); all networks' weights in bf16 with a channels-last U-Net (`load_model(dtype=torch.bfloat16)`);
only the U-Net in bf16 and channels-last (what `ldm txt2img --precision bf16` does on a CPU), all under autocast.
The change is measured against the fp32 run with the same seeds: the final latent's relative error and the
decoded images' PSNR. bf16 pays only on CPUs with AVX-512 BF16 or AMX (ldm.core.devices.cpu_has_fast_bf16).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from ldm.core.devices import cpu_has_fast_bf16
from ldm.formats.load import load_model
from ldm.tasks.txt2img import txt2img

PROMPTS = ["red heart", "green apple", "yellow star", "smiling face", "blue car", "pizza"]


def run(model, precision: str, steps: int) -> tuple[float, torch.Tensor, np.ndarray]:
    """(seconds, final latents, images as uint8 array) for the six prompts, seeds 0.."""
    final: dict[str, torch.Tensor] = {}

    def keep(step: dict) -> None:
        final["x"] = step["denoised"]

    start = time.perf_counter()
    images = txt2img(
        model, PROMPTS, seed=0, steps=steps, sampler="ddim", precision=precision, callback=keep, progress=False
    )
    seconds = time.perf_counter() - start
    return seconds, final["x"].float(), np.stack([np.asarray(image) for image in images])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fp32 = load_model(device="cpu")
    bf16 = load_model(device="cpu").networks_to(torch.bfloat16, channels_last=True)
    unet_bf16 = load_model(device="cpu")
    unet_bf16.unet.to(torch.bfloat16, memory_format=torch.channels_last)
    settings = {
        "fp32": (fp32, "fp32"),
        'bf16 autocast, fp32 weights (API precision="bf16")': (fp32, "bf16"),
        "all weights bf16, channels-last U-Net": (bf16, "bf16"),
        "bf16 channels-last U-Net, fp32 text encoder and VAE (CLI --precision bf16)": (unet_bf16, "bf16"),
    }
    results: dict[str, list] = {name: [] for name in settings}
    for model, precision in settings.values():
        run(model, precision, 2)  # warm-up
    for _ in range(args.rounds):
        for name, (model, precision) in settings.items():
            results[name].append(run(model, precision, args.steps))
    _, ref_latent, ref_images = results["fp32"][0]
    base = statistics.median(r[0] for r in results["fp32"])
    print(
        f"default model, {len(PROMPTS)} images of {ref_images.shape[1]} px, {args.steps} DDIM steps with guidance, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, fast bf16 on this CPU: {cpu_has_fast_bf16()}\n"
    )
    print(
        f"| setting | s per image (median of {args.rounds}) | time / fp32 | latent relative error | image PSNR (dB) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        latent, images = runs[0][1], runs[0][2]
        err = ((latent - ref_latent).norm() / ref_latent.norm()).item()
        print(
            f"| {name} | {seconds / len(PROMPTS):.2f} | {seconds / base:.2f}x | {err:.1e} | {psnr(images, ref_images):.1f} |"  # noqa: E501
        )


if __name__ == "__main__":
    main()
