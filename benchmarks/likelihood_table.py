"""Bits/dim of the toy models: fixed vs learned variance (discrete time), fixed vs learned schedule (VDM,
continuous time), and few-step ancestral DDPM with and without the learned variance. Prints markdown tables.

    PYTHONPATH=. python benchmarks/likelihood_table.py [--dataset spiral] [--steps 3000] [--vdm-steps 1500]

All numbers are on 1,000 held-out points (another seed of the same toy set), in data space (2 dims); the
bounds use continuous Gaussian decoders, so they are densities and may be negative. Sample quality is the
energy distance to the held-out points (lower is better; it sees both missing and spurious mass, unlike the
nearest-point distance, which rewards samples that collapse onto the data).
"""
from __future__ import annotations

import argparse
import time

import torch

from ldm.samplers import sample_ddpm
from ldm.schedules import get_sigmas
from ldm.toy2d import ToyDiffusion, make_data, single_thread
from ldm.toy_vdm import ToyVDM


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|a - b| - E|a - a'| - E|b - b'|, zero only when the two distributions agree."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def fixed_ddpm(toy: ToyDiffusion, n: int, steps: int, seed: int) -> torch.Tensor:
    sigmas = get_sigmas(toy.alphas_cumprod, steps, spacing="trailing")
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    denoiser = toy.denoiser()
    with single_thread(), torch.no_grad():
        return sample_ddpm(lambda x, s: denoiser(x, s).clamp(-4, 4), x, sigmas,
                           generator=torch.Generator().manual_seed(seed + 1), disable=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="spiral")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of the discrete-time models")
    parser.add_argument("--vdm-steps", type=int, default=1500, help="training steps of the VDM models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, held = make_data(args.dataset, 2000, seed=0), make_data(args.dataset, 1000, seed=1)

    start = time.perf_counter()
    fixed = ToyDiffusion(data, variance="fixed_small", seed=0)
    learned = ToyDiffusion(data, variance="learned", seed=0)
    fixed.train(args.steps)
    learned.train(args.steps)
    print(f"## Variance ({args.dataset}, {args.steps} steps each, linear schedule, T = 1000, full sum over t)\n")
    print("| model | reverse variance | bits/dim |\n|---|---|---:|")
    for name, toy, variance in [("L_simple", fixed, "fixed_small"), ("L_simple", fixed, "fixed_large"),
                                ("L_hybrid", learned, "fixed_small"), ("L_hybrid", learned, "fixed_large"),
                                ("L_hybrid", learned, "learned")]:
        print(f"| {name} | {variance} | {toy.nll(held, variance)['bits_per_dim']:.3f} |")

    print("\n## Few-step ancestral DDPM (energy distance to held-out points x 1000, 1,000 samples, mean of 3 seeds)\n")
    print("| steps | fixed variance (beta~, L_simple model) | learned variance (L_hybrid model) |\n|---:|---:|---:|")
    for steps in (5, 10, 25, 100):
        a = sum(energy_distance(fixed_ddpm(fixed, 1000, steps, s), held) for s in range(3)) / 3
        b = sum(energy_distance(learned.sample_learned_variance(1000, steps, seed=s), held) for s in range(3)) / 3
        print(f"| {steps} | {1000 * a:.1f} | {1000 * b:.1f} |")

    print(f"\n## Schedule (VDM, continuous time, {args.vdm_steps} steps each, gamma from -13.3 to 5, fixed ends)\n")
    print("| schedule | bits/dim | variance of the one-draw bound (nats^2) | train-batch variance, last 100 steps |")
    print("|---|---:|---:|---:|")
    for kind in ("linear", "cosine", "learned"):
        model = ToyVDM(data, schedule=kind, seed=0)
        model.train(args.vdm_steps)
        result = model.nll(held, repeats=100)
        print(f"| {kind} | {result['bits_per_dim']:.3f} | {result['estimate_variance']:.0f} | "
              f"{sum(model.variances[-100:]) / 100:.0f} |")
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
