"""Bits/dim of the toy models: fixed vs learned variance (discrete time), fixed vs learned schedule (VDM,
continuous time), and few-step ancestral DDPM with and without the learned variance. Prints markdown tables.

    PYTHONPATH=. python benchmarks/likelihood_table.py [--dataset spiral] [--steps 10000] [--vdm-steps 1500]

The discrete-time models train with the learning rate decayed to 0 on a half cosine (ToyDiffusion's
lr_decay_steps): at a constant lr the variance head's v jitters, which costs bound where its optimum is
an end of [beta~_t, beta_t]. A per-t table shows where the learned bound gains and loses against beta_t,
and a thin-line toy (N(0, diag(1, 0.001^2)), structure below the smallest noise level, as 8-bit pixels
have) shows the case where the learned variance has most to gain.

All numbers are on 1,000 held-out points (another seed of the same toy set), in data space (2 dims); the
bounds use continuous Gaussian decoders, so they are densities and may be negative. Sample quality is the
energy distance to the held-out points (lower is better; it sees both missing and spurious mass, unlike the
nearest-point distance, which rewards samples that collapse onto the data).
"""

from __future__ import annotations

import argparse
import time

import torch

from ldm.diffusion.likelihood import bits_per_dim
from ldm.diffusion.schedules import get_sigmas
from ldm.sampling.samplers import sample_ddpm
from ldm.toys.points import ToyDiffusion, make_data, make_thin_line, single_thread
from ldm.toys.vdm import ToyVDM


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """2 E|a - b| - E|a - a'| - E|b - b'|, zero only when the two distributions agree."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def fixed_ddpm(toy: ToyDiffusion, n: int, steps: int, seed: int) -> torch.Tensor:
    sigmas = get_sigmas(toy.alphas_cumprod, steps, spacing="trailing")
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    denoiser = toy.denoiser()
    with single_thread(), torch.no_grad():
        return sample_ddpm(
            lambda x, s: denoiser(x, s).clamp(-4, 4),
            x,
            sigmas,
            generator=torch.Generator().manual_seed(seed + 1),
            disable=True,
        )


def variance_rows(fixed: ToyDiffusion, learned: ToyDiffusion, held: torch.Tensor) -> None:
    print("| model | reverse variance | bits/dim |\n|---|---|---:|")
    for name, toy, variance in [
        ("L_simple", fixed, "fixed_small"),
        ("L_simple", fixed, "fixed_large"),
        ("L_hybrid", learned, "fixed_small"),
        ("L_hybrid", learned, "fixed_large"),
        ("L_hybrid", learned, "learned"),
    ]:
        print(f"| {name} | {variance} | {toy.nll(held, variance)['bits_per_dim']:.4f} |")


def per_t_rows(toy: ToyDiffusion, held: torch.Tensor, edges=(1, 2, 10, 100, 1000)) -> None:
    """The bound's parts by ranges of t, each variance minus beta_t's (same noise draws), in bits/dim."""
    print("| t | learned - fixed_large | fixed_small - fixed_large |\n|---|---:|---:|")
    ranges = [(0, 0)] + [(a, b - 1) for a, b in zip(edges[:-1], edges[1:])]
    for a, b in ranges:
        steps = (torch.arange(max(a, 1), b + 1), torch.ones(b - max(a, 1) + 1, dtype=torch.float64))
        part = {
            v: toy.nll(held, v, timesteps=steps)["decoder" if a == 0 else "terms"].mean()
            for v in ("fixed_large", "fixed_small", "learned")
        }
        gain = [float(bits_per_dim(part[v] - part["fixed_large"], 2)) for v in ("learned", "fixed_small")]
        print(f"| {a if a == b else f'{a}-{b}'} | {gain[0]:+.4f} | {gain[1]:+.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="spiral")
    parser.add_argument("--steps", type=int, default=10000, help="training steps of the discrete-time models")
    parser.add_argument("--thin-steps", type=int, default=3000, help="training steps of the thin-line models")
    parser.add_argument("--vdm-steps", type=int, default=1500, help="training steps of the VDM models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, held = make_data(args.dataset, 2000, seed=0), make_data(args.dataset, 1000, seed=1)

    start = time.perf_counter()
    fixed = ToyDiffusion(data, variance="fixed_small", seed=0, lr_decay_steps=args.steps)
    learned = ToyDiffusion(data, variance="learned", seed=0, lr_decay_steps=args.steps)
    fixed.train(args.steps)
    learned.train(args.steps)
    print(f"## Variance ({args.dataset}, {args.steps} steps each, linear schedule, T = 1000, full sum over t)\n")
    variance_rows(fixed, learned, held)
    print(f"\n## Where in t ({args.dataset}, the L_hybrid model; bits/dim, negative = tighter than beta_t)\n")
    per_t_rows(learned, held)
    thin, thin_held = make_thin_line(2000, seed=0), make_thin_line(1000, seed=1)
    thin_fixed = ToyDiffusion(thin, variance="fixed_small", seed=0, lr_decay_steps=args.thin_steps)
    thin_learned = ToyDiffusion(thin, variance="learned", seed=0, lr_decay_steps=args.thin_steps)
    thin_fixed.train(args.thin_steps)
    thin_learned.train(args.thin_steps)
    print(f"\n## Variance (thin line N(0, diag(1, 0.001^2)), {args.thin_steps} steps each, full sum over t)\n")
    variance_rows(thin_fixed, thin_learned, thin_held)
    print(f"\n({time.perf_counter() - start:.0f} s so far)")

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
        print(
            f"| {kind} | {result['bits_per_dim']:.3f} | {result['estimate_variance']:.0f} | "
            f"{sum(model.variances[-100:]) / 100:.0f} |"
        )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
