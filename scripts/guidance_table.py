"""Figures for issue 24 ("Beyond classifier-free guidance"), printed as markdown tables for README.md.

    python scripts/guidance_table.py [--steps 2000] [--n 1000] [--seed 0] [--skip-compare]

1. Samplers on equal budgets of network evaluations: the predictor-corrector sampler beside DDPM, ancestral Euler
   and DDIM, on the analytic Gaussian denoiser (error of the sampled std) and on the eight-Gaussians toy model
   (distance to the data, share of samples near a mode).
2. Class accuracy against guidance scale on the eight-Gaussians toy: classifier guidance over an unconditional
   model, classifier-free guidance of a label-conditional model; a held-out clean classifier judges.
3. GAN / VAE / diffusion on the same toy data (ldm.toys.compare.compare_models, the app's comparison page).
Everything runs on one CPU thread; about 3 minutes on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from ldm.sampling.samplers import SAMPLERS
from ldm.toys.classes import (
    GAUSSIAN_CLASSES,
    ConditionalToyDiffusion,
    class_accuracy,
    classifier_guided,
    labelled_gaussians,
    sample_with,
    train_classifier,
)
from ldm.toys.compare import compare_models, gaussian_centres, mode_coverage
from ldm.toys.points import ToyDiffusion, nearest_distance, single_thread

# (sampler, steps, own options): budgets of about 20, 50 and 100 evaluations; pc costs 2 * steps - 1, so pc at 50
# steps beside its own predictor alone (corrector_steps 0) shows what the corrector adds at the same grid.
BUDGETS = [
    ("ddpm", 20, {}),
    ("euler_ancestral", 20, {}),
    ("ddim", 20, {}),
    ("pc", 10, {}),
    ("ddpm", 50, {}),
    ("euler_ancestral", 50, {}),
    ("ddim", 50, {}),
    ("pc", 25, {}),
    ("pc", 50, {"corrector_steps": 0}),
    ("pc", 50, {}),
    ("ddpm", 100, {}),
]


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join("—" if r[k] is None else str(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.fn(x, sigma, **kw)


def analytic_rows(n: int, seed: int) -> list[dict]:
    """Data N(mu, s^2) per dimension, D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), Karras grid to 1e-3."""
    from ldm.diffusion.schedules import karras_sigmas

    mu, s = (
        torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64),
        torch.tensor([0.3, 1.0, 0.5, 0.6], dtype=torch.float64),
    )
    exact = lambda x, sigma: mu + s**2 / (s**2 + sigma.reshape(-1, 1) ** 2) * (x - mu)
    rows = []
    for name, steps, options in BUDGETS:
        sigmas = torch.cat([karras_sigmas(1e-3, 14.6, steps), torch.zeros(1, dtype=torch.float64)])
        x = (
            mu
            + torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            * (s**2 + 14.6**2).sqrt()
        )
        model = Counting(exact)
        out = SAMPLERS[name](
            model, x, sigmas, generator=torch.Generator().manual_seed(seed + 1), disable=True, **options
        )
        rows.append(
            {
                "sampler": name + (" (no corrector)" if options else ""),
                "steps": steps,
                "evaluations": model.calls,
                "std error": f"{float((out.std(0) / s - 1).abs().max()):.1%}",
                "mean error (in s)": f"{float(((out.mean(0) - mu) / s).abs().max()):.3f}",
            }
        )
    return rows


def toy_sampler_rows(toy: ToyDiffusion, centres: torch.Tensor, n: int, seed: int) -> list[dict]:
    rows = []
    for name, steps, options in BUDGETS:
        counted = Counting(toy.denoiser())
        t0 = time.perf_counter()
        out = sample_with(toy, counted, n, steps=steps, sampler=name, seed=seed, **options)  # as toy.sample, counted
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "sampler": name + (" (no corrector)" if options else ""),
                "steps": steps,
                "evaluations": counted.calls,
                "distance to data": f"{float(nearest_distance(out, toy.data).mean()):.4f}",
                "near a mode": f"{mode_coverage(out, centres, 0.2)[1]:.1%}",
                "ms": round(1e3 * seconds),
            }
        )
    return rows


def guidance_rows(
    points: torch.Tensor, labels: torch.Tensor, steps: int, n: int, seed: int
) -> tuple[list[dict], ToyDiffusion]:
    held_points, held_labels = labelled_gaussians(2000, seed + 7)
    judge = train_classifier(held_points, held_labels, None, steps=300, seed=seed + 2)
    unconditional = ToyDiffusion(points, seed=seed)
    unconditional.train(steps)
    classifier = train_classifier(points, labels, unconditional.alphas_cumprod, steps=1000, seed=seed + 1)
    conditional = ConditionalToyDiffusion(points, labels=labels, seed=seed, label_dropout=0.1)
    conditional.train(steps)
    targets = torch.arange(n) % GAUSSIAN_CLASSES
    rows = []
    for scale in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0):
        cg = sample_with(unconditional, classifier_guided(unconditional, classifier, targets, scale), n, seed=seed)
        cfg = sample_with(conditional, conditional.cfg_denoiser(targets, scale), n, seed=seed)
        rows.append(
            {
                "scale": scale,
                "classifier guidance: in class": f"{class_accuracy(judge, cg, targets):.1%}",
                "classifier guidance: distance to data": f"{float(nearest_distance(cg, points).mean()):.4f}",
                "classifier-free: in class": f"{class_accuracy(judge, cfg, targets):.1%}",
                "classifier-free: distance to data": f"{float(nearest_distance(cfg, points).mean()):.4f}",
            }
        )
    return rows, unconditional


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="training steps of each toy model")
    p.add_argument("--n", type=int, default=1000, help="samples per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-compare", action="store_true")
    args = p.parse_args()
    t0 = time.time()
    torch.manual_seed(args.seed)
    with single_thread():
        print("### Predictor-corrector beside other samplers, analytic Gaussian denoiser\n")
        print(markdown(analytic_rows(20000, args.seed)) + "\n")
        points, labels = labelled_gaussians(2000, args.seed)
        rows, unconditional = guidance_rows(points, labels, args.steps, args.n, args.seed)
        print(f"### The same samplers on the eight-Gaussians toy model ({args.steps} training steps)\n")
        print(markdown(toy_sampler_rows(unconditional, gaussian_centres(points, labels), args.n, args.seed)) + "\n")
        print(f"### Class accuracy against guidance scale (eight Gaussians, {args.n} samples, DDPM 50 steps)\n")
        print(markdown(rows) + "\n")
        if not args.skip_compare:
            result = compare_models("gaussians", args.steps, n=args.n, seed=args.seed)
            print(f"### GAN / VAE / diffusion on the eight Gaussians ({args.steps} training steps each)\n")
            print(markdown(result.rows) + "\n")
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
