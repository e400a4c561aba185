"""Sampler accuracy against cost: distance to a many-step reference and wall time, per sampler and step count.

    python benchmarks/samplers.py [--steps 5 10 20 50] [--spacing trailing|leading|linspace|karras]
                                  [--samplers euler heun ...] [--reference-steps 1000] [--batch 16]

    python benchmarks/samplers.py --model default --prompts "red apple" "grinning face" --scale 5

With `--model` (`default` = the shipped emoji model, or `CONFIG:CHECKPOINT`) it runs that model's guided
denoiser on its latents, distance measured in latent space. With no model it runs on an analytic denoiser
(Gaussian latents N(mu, s^2) per dimension, SD's noise schedule), where the exact probability-flow
solution is known and printed beside the reference. From Python, call `run_table` with a guided denoiser:

    den = CFGDenoiser(model.denoiser(), cond, uncond, scale)       # ldm.sampling.denoisers
    run_table(den, unit_noise, lambda n: get_sigmas(model.alphas_cumprod, n, "trailing").to(device))

Each run starts from `x_T * sigmas[0]` (x_T is unit noise). Stochastic samplers converge in
distribution, not path by path, so their distance to the ODE reference does not go to 0 (marked *).
With "leading" spacing sigmas[0] itself depends on the step count (it never reaches T - 1), so the
distance then also contains that different starting point; trailing or karras measure the solver alone.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import torch

from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, make_betas
from ldm.sampling.samplers import DETERMINISTIC, SAMPLERS, get_sampler

Denoiser = Callable[..., torch.Tensor]


class CountingDenoiser:
    """Counts denoiser calls (NFE, a guided call counts once), since Heun and PLMS cost more than one per step."""

    def __init__(self, fn: Denoiser):
        self.fn, self.calls = fn, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, sigma, **kwargs)


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


def _run(
    denoise_fn: Denoiser, name: str, x_T: torch.Tensor, sigmas: torch.Tensor, seed: int, extra_args: dict | None
) -> tuple[torch.Tensor, int, float]:
    counted = CountingDenoiser(denoise_fn)
    generator = torch.Generator(x_T.device).manual_seed(seed)
    x = x_T * sigmas[0].to(x_T.dtype)  # samplers take x at noise level sigmas[0], not unit noise
    _sync(x)
    t0 = time.perf_counter()
    out = get_sampler(name)(counted, x, sigmas, extra_args=extra_args, generator=generator, disable=True)
    _sync(out)
    return out, counted.calls, time.perf_counter() - t0


def rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def run_table(
    denoise_fn: Denoiser,
    x_T: torch.Tensor,
    sigma_fn: Callable[[int], torch.Tensor],
    samplers: Sequence[str] | None = None,
    steps: Sequence[int] = (5, 10, 20, 50),
    reference_steps: int = 1000,
    reference_sampler: str = "dpmpp_2m",
    seed: int = 0,
    extra_args: dict | None = None,
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    print_fn: Callable[[str], None] = print,
) -> list[dict]:
    """Run every sampler at every step count; print markdown tables and return the rows.

    denoise_fn(x, sigma_batch, **extra_args) -> x0 is what the samplers call (e.g. a CFGDenoiser).
    x_T: unit noise, [B, ...]. sigma_fn(n) -> an n-step grid ending in 0 (ldm.diffusion.schedules.get_sigmas).
    The reference is `reference_sampler` at `reference_steps` from the same x_T. Rows hold sampler,
    steps, nfe, rmse (to the reference), rel (rmse / rms of the reference), seconds, and exact_rmse when
    `exact(x_start, sigma_start)` (the true ODE solution) is given.
    """
    samplers = list(samplers or SAMPLERS)
    ref_sigmas = sigma_fn(reference_steps)
    reference, ref_nfe, ref_time = _run(denoise_fn, reference_sampler, x_T, ref_sigmas, seed, extra_args)
    ref_scale = rms(reference)
    note = f"reference: {reference_sampler}, {reference_steps} steps, {ref_nfe} NFE, {ref_time:.2f} s"
    if exact is not None:
        note += f", its RMSE to the exact ODE solution {rms(reference - exact(x_T * ref_sigmas[0], ref_sigmas[0])):.2e}"
    rows = []
    for name in samplers:
        get_sampler(name)  # unknown names fail before any work
        for n in steps:
            sigmas = sigma_fn(n)
            out, nfe, seconds = _run(denoise_fn, name, x_T, sigmas, seed, extra_args)
            row = dict(
                sampler=name,
                steps=n,
                nfe=nfe,
                rmse=rms(out - reference),
                rel=rms(out - reference) / ref_scale,
                seconds=seconds,
            )
            if exact is not None:
                row["exact_rmse"] = rms(out - exact(x_T * sigmas[0], sigmas[0]))
            rows.append(row)

    def table(title: str, cell: Callable[[dict], str]) -> None:
        print_fn(f"\n{title}\n")
        print_fn("| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |")
        print_fn("|---|" + "---:|" * len(steps))
        for name in samplers:
            mark = "" if name in DETERMINISTIC else " *"
            cells = [cell(r) for r in rows if r["sampler"] == name]
            print_fn(f"| {name}{mark} | " + " | ".join(cells) + " |")

    print_fn(note)
    table("RMSE to the reference (relative to the reference's RMS)", lambda r: f"{r['rmse']:.2e} ({r['rel']:.2%})")
    if exact is not None:
        table("RMSE to the exact ODE solution", lambda r: f"{r['exact_rmse']:.2e}")
    table("Wall time in seconds (NFE)", lambda r: f"{r['seconds']:.3f} ({r['nfe']})")
    print_fn("\n* stochastic: converges in distribution, not path by path; its distance stays finite.")
    return rows


def gaussian_case(shape: Sequence[int], seed: int = 0) -> tuple[Denoiser, Callable]:
    """An exact denoiser for latents x0 ~ N(mu, s^2) (mu, s drawn per element position) and its exact ODE map:

    D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2),
    x0 = mu + (x - mu) s / sqrt(s^2 + sigma^2)   (the flow from noise level sigma to 0).
    """
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5
    s = torch.rand(*shape, generator=g, dtype=torch.float64) * 0.9 + 0.1

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)

    def exact(x_start: torch.Tensor, sigma_start: torch.Tensor) -> torch.Tensor:
        return mu + (x_start - mu) * s / (s**2 + float(sigma_start) ** 2).sqrt()

    return denoise, exact


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=None, help=f"default: all ({', '.join(SAMPLERS)})")
    p.add_argument("--spacing", default="trailing", choices=["leading", "trailing", "linspace", "karras"])
    p.add_argument("--reference-steps", type=int, default=1000)
    p.add_argument("--reference-sampler", default="dpmpp_2m")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model", default=None, help="'default' (the shipped model) or CONFIG:CHECKPOINT; none: analytic case"
    )
    p.add_argument("--prompts", nargs="+", default=["red apple", "grinning face", "cat face", "rocket"])
    p.add_argument("--scale", type=float, default=5.0, help="guidance scale (model runs)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.model:
        return main_model(args)

    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012))
    karras = args.spacing == "karras"
    spacing = "leading" if karras else args.spacing
    sigma_fn = lambda n: get_sigmas(ac, n, spacing, karras=karras).double()
    shape = (4, 8, 8)
    denoise, exact = gaussian_case(shape, args.seed)
    x_T = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    print(f"Analytic Gaussian latents {list(shape)}, batch {args.batch}, SD schedule, {args.spacing} spacing.")
    run_table(
        denoise,
        x_T,
        sigma_fn,
        args.samplers,
        args.steps,
        args.reference_steps,
        args.reference_sampler,
        args.seed,
        exact=exact,
    )


def main_model(args: argparse.Namespace) -> None:
    """The table for a real model: guided denoiser, its own schedule, prompts repeated to fill the batch."""
    from ldm.formats.load import load_model
    from ldm.sampling.denoisers import CFGDenoiser

    if args.model == "default":
        model = load_model(device=args.device, variant="full")  # the samplers run on the full model, not the student
    else:
        config, _, checkpoint = args.model.partition(":")
        model = load_model(config, checkpoint or None, args.device)
    prompts = [args.prompts[i % len(args.prompts)] for i in range(args.batch)]
    with torch.no_grad():
        context = model.encode_text(prompts + [""] * len(prompts))
        cond, uncond = {"context": context[: len(prompts)]}, {"context": context[len(prompts) :]}
        denoise = CFGDenoiser(model.denoiser(), cond, uncond, args.scale)
        karras = args.spacing == "karras"
        spacing = "leading" if karras else args.spacing
        sigma_fn = lambda n: get_sigmas(model.alphas_cumprod, n, spacing, karras=karras).to(args.device)
        shape = (model.latent_channels, model.image_size, model.image_size)
        x_T = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed + 1)).to(args.device)
        threads = torch.get_num_threads() if args.device == "cpu" else None
        print(
            f"Model {args.model}: latents {list(shape)}, batch {args.batch} ({len(args.prompts)} prompts), guidance "
            f"{args.scale}, {args.spacing} spacing, {args.device}" + (f" ({threads} threads)" if threads else "") + "."
        )
        run_table(
            denoise, x_T, sigma_fn, args.samplers, args.steps, args.reference_steps, args.reference_sampler, args.seed
        )


if __name__ == "__main__":
    main()
