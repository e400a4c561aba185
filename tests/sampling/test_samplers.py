"""Samplers against closed forms: Gaussian data has an exact denoiser and an exact ODE solution.

For x0 ~ N(mu, s^2) per dimension: D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the
probability-flow ODE carries x at sigma_a to mu + (x - mu) sqrt(s^2 + sigma_b^2) / sqrt(s^2 + sigma_a^2)
at sigma_b; at sigma_b = 0 that is mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
"""

import math

import pytest
import torch

from ldm.diffusion.parameterisation import DiscreteTimeDenoiser
from ldm.diffusion.schedules import alphas_cumprod_from_betas, get_sigmas, karras_sigmas, make_betas, t_to_sigma
from ldm.sampling.denoisers import CFGDenoiser
from ldm.sampling.samplers import (
    DETERMINISTIC,
    SAMPLERS,
    InvalidStrengthError,
    UnknownSamplerError,
    get_sampler,
    truncate_sigmas,
)

MU = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.5, 0.6], dtype=torch.float64)
SIGMA_MAX = 14.6  # SD's


def gaussian_denoiser(x, sigma, mu=MU, s=S):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)


def flow(x, sigma_from, sigma_to):
    """Exact probability-flow ODE transport of x between two noise levels."""
    return MU + (x - MU) * (S**2 + sigma_to**2).sqrt() / (S**2 + sigma_from**2).sqrt()


def grid(n, sigma_min=1e-3):
    return torch.cat([karras_sigmas(sigma_min, SIGMA_MAX, n), torch.zeros(1, dtype=torch.float64)])


def slope(steps, errors):
    """Least-squares slope of -log(error) against log(steps): the observed order of convergence."""
    lx = torch.tensor(steps, dtype=torch.float64).log()
    ly = -torch.tensor(errors, dtype=torch.float64).log()
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


@pytest.mark.parametrize("name, order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("plms", 2)])
def test_error_shrinks_at_the_expected_order(name, order):
    """Max error to the exact ODE solution at sigma = 0; Karras grids (rho 7) down to sigma_min = 1e-3.

    The final jump from sigma_min to 0 costs at most sigma_min^2 / (2 s^2) |x - mu| ~ 1e-5, far below
    the errors compared. PLMS's constant Adams-Bashforth weights assume even steps, hence order 2.
    """
    x_t = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    exact = flow(x_t, torch.tensor(SIGMA_MAX), torch.tensor(0.0))
    steps = [8, 16, 32, 64]
    errors = [
        (SAMPLERS[name](gaussian_denoiser, x_t.clone(), grid(n), disable=True) - exact).abs().max().item()
        for n in steps
    ]
    assert errors == sorted(errors, reverse=True), errors
    assert slope(steps[1:], errors[1:]) == pytest.approx(order, abs=0.3), (name, errors)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_samples_have_the_data_mean_and_std(name):
    """Started from the exact marginal N(mu, s^2 + sigma_max^2), every sampler should end near N(mu, s^2).

    Means within 4 standard errors; stds within 12%, the bias ancestral Euler still has at 50 steps.
    """
    n = 8000
    x_t = (
        MU
        + torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        * (S**2 + SIGMA_MAX**2).sqrt()
    )
    out = SAMPLERS[name](gaussian_denoiser, x_t, grid(50), generator=torch.Generator().manual_seed(2), disable=True)
    z = (out.mean(0) - MU) / (S / math.sqrt(n))
    assert z.abs().max() < 4, z
    torch.testing.assert_close(out.std(0), S, rtol=0.12, atol=0)


def test_eta_zero_reduces_to_the_deterministic_solver():
    x_t = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    run = lambda name, **kw: SAMPLERS[name](
        gaussian_denoiser, x_t.clone(), grid(10), disable=True, generator=torch.Generator().manual_seed(3), **kw
    )
    euler = run("euler")
    torch.testing.assert_close(run("ddim"), euler)  # DDIM(eta = 0) is Euler in x / sqrt(ab) space
    torch.testing.assert_close(run("euler_ancestral", eta=0.0), euler)
    torch.testing.assert_close(run("dpmpp_2m_sde", eta=0.0), run("dpmpp_2m"))
    assert torch.equal(run("ddim", eta=1.0), run("ddpm"))
    # k-diffusion's ancestral split with eta = 1 is the DDPM posterior in sigma space: the same step.
    torch.testing.assert_close(run("euler_ancestral"), run("ddpm"))
    assert (run("ddim", eta=1.0) - euler).abs().max() > 1e-2


def test_ddim_eta_noise_is_the_ddpm_posterior_variance():
    """One DDIM(eta = 1) step from x with the exact denoiser: the spread of x' is the DDPM posterior std
    beta~ = (1 - ab') / (1 - ab) * (1 - ab / ab'), divided by sqrt(ab') to move from VP to sigma space."""
    sigma, sigma_next = torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    x = torch.full((100_000, 1), 0.7, dtype=torch.float64)
    zero = lambda x, s: torch.zeros_like(x)
    out = SAMPLERS["ddpm"](
        zero, x, torch.stack([sigma, sigma_next]), generator=torch.Generator().manual_seed(0), disable=True
    )
    ab, ab_next = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    std = ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).sqrt() / ab_next.sqrt()
    assert out.std().item() == pytest.approx(std.item(), rel=0.02)
    # Mean: x0 + sigma_down * eps with eps = x / sigma, sigma_down^2 = sigma_next^2 - std^2.
    assert out.mean().item() == pytest.approx((0.7 / sigma * (sigma_next**2 - std**2).sqrt()).item(), abs=0.01)


def test_plms_multistep_weights_integrate_polynomials_exactly():
    """With eps independent of x, eps = p(sigma), PLMS integrates dx/dsigma = p on an even grid. Adams-Bashforth
    with k steps is exact for p of degree < k, so for a cubic only the Heun, AB2 and AB3 start-up steps err,
    each by its own closed form, and the AB4 steps after them are exact."""
    p = lambda s: s**3 - 2 * s + 1
    integral = lambda a, b: (b**4 - a**4) / 4 - (b**2 - a**2) + (b - a)  # int_a^b p
    model = lambda x, sigma: x - sigma.reshape(-1, 1) * p(sigma.reshape(-1, 1))  # D = x - sigma * eps
    sigmas = torch.arange(7.0, -1.0, -1.0, dtype=torch.float64)
    x = torch.zeros(1, 1, dtype=torch.float64)
    out = SAMPLERS["plms"](model, x, sigmas, disable=True)
    expected = (
        -(p(7) + p(6)) / 2  # Heun: trapezoid from 7 to 6
        - (3 * p(6) - p(7)) / 2  # AB2 from 6 to 5
        - (23 * p(5) - 16 * p(6) + 5 * p(7)) / 12  # AB3 from 5 to 4
        + integral(4.0, 0.0)
    )  # AB4 from 4 to 0: exact for cubics
    assert out.item() == pytest.approx(expected, rel=1e-12)
    assert abs(expected - integral(7.0, 0.0)) > 1  # the start-up steps do err, so this tests their weights


def conditional_denoiser(x, sigma, context=None):
    # A toy conditional model: the "prompt" sets the data mean.
    return gaussian_denoiser(x, sigma, mu=context.reshape(-1, *([1] * (x.ndim - 1))), s=0.3)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_guided_on_a_batch_and_is_seeded(name):
    cond = {"context": torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)}
    uncond = {"context": torch.zeros(3, dtype=torch.float64)}
    model = CFGDenoiser(conditional_denoiser, cond, uncond, scale=3.0)
    x_t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    sigmas = grid(12)
    seen = []
    run = lambda seed: SAMPLERS[name](
        model, x_t.clone(), sigmas, generator=torch.Generator().manual_seed(seed), callback=seen.append, disable=True
    )
    a, b = run(5), run(5)
    assert torch.equal(a, b)
    assert torch.equal(run(6), a) == (name in DETERMINISTIC)
    # One callback per step: the state at sigmas[i] and its guided x0 estimate.
    assert [d["i"] for d in seen[:12]] == list(range(12)) and len(seen) == 12 * 3
    assert set(seen[0]) == {"i", "x", "sigma", "denoised"} and torch.equal(seen[0]["x"], x_t)
    for d in seen[:12]:
        assert d["sigma"] == sigmas[d["i"]]
        torch.testing.assert_close(d["denoised"], model(d["x"], d["sigma"].expand(3)))
    # Guidance pushes each sample's mean beyond its condition: uncond + 3 * (cond - uncond) = 3 * cond.
    means = a.mean(dim=(1, 2, 3))
    torch.testing.assert_close(means, 3 * cond["context"], rtol=0, atol=0.5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_discrete_time_wrapper_on_the_sd_schedule_matches_the_exact_denoiser(prediction):
    """An exact VP network (eps or v of N(mu, s^2) data at fractional timestep t) behind DiscreteTimeDenoiser
    gives the same samples as the exact sigma-space denoiser, on SD's own trailing grid."""
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012))
    log_sigmas = ((1 - ac) / ac).sqrt().log()

    def unet(x_vp, t, context=None, y=None):
        sigma = t_to_sigma(t.double(), log_sigmas).reshape(-1, 1)
        x = x_vp * (1 + sigma**2).sqrt()
        x0 = gaussian_denoiser(x, sigma)
        eps = (x - x0) / sigma
        ab = 1 / (1 + sigma**2)
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    sigmas = get_sigmas(ac, 20, "trailing").double()
    x_t = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    for name in ("dpmpp_2m", "euler_ancestral"):
        run = lambda den: SAMPLERS[name](
            den, x_t.clone(), sigmas, generator=torch.Generator().manual_seed(1), disable=True
        )
        # float32 sigma -> t -> sigma round trip inside the wrapper: agreement to ~1e-5, not bit-exact.
        torch.testing.assert_close(
            run(DiscreteTimeDenoiser(unet, ac, prediction)), run(gaussian_denoiser), rtol=1e-4, atol=1e-4
        )


def test_unknown_sampler_lists_the_known_ones():
    with pytest.raises(UnknownSamplerError) as err:
        get_sampler("euler_b")
    assert str(err.value).startswith("unknown sampler 'euler_b'; known: ddim, ")
    assert all(n in str(err.value) for n in SAMPLERS)
    assert get_sampler("heun") is SAMPLERS["heun"]


def test_truncate_sigmas():
    sigmas = grid(10)
    assert torch.equal(truncate_sigmas(sigmas, 1.0), sigmas)
    assert torch.equal(truncate_sigmas(sigmas, 0.0), sigmas[-1:])
    assert torch.equal(truncate_sigmas(sigmas, 0.5), sigmas[5:])
    assert len(truncate_sigmas(sigmas, 0.75)) == 8  # floor(7.5) = 7 steps, as the reference's int(strength * steps)
    assert len(truncate_sigmas(grid(100), 0.29)) == 30  # 0.29 * 100 is 28.999... in floating point
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(InvalidStrengthError, match="strength"):
            truncate_sigmas(sigmas, bad)
    # Running a truncated grid from x0 + noise * sigmas[0] with strength 0 returns the input untouched.
    x = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(SAMPLERS["euler"](gaussian_denoiser, x, truncate_sigmas(sigmas, 0.0), disable=True), x)


def test_benchmark_table_runs_on_the_analytic_case():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "samplers.py"
    spec = importlib.util.spec_from_file_location("bench_samplers", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, linear_start=0.00085, linear_end=0.012))
    denoise, exact = bench.gaussian_case((2, 3, 3))
    lines = []
    rows = bench.run_table(
        denoise,
        torch.randn(4, 2, 3, 3, dtype=torch.float64),
        lambda n: get_sigmas(ac, n, karras=True).double(),
        ["euler", "heun", "ddpm"],
        steps=(4, 16),
        reference_steps=200,
        exact=exact,
        print_fn=lines.append,
    )
    assert [(r["sampler"], r["steps"]) for r in rows] == [(s, n) for s in ("euler", "heun", "ddpm") for n in (4, 16)]
    assert [r["nfe"] for r in rows] == [4, 16, 7, 31, 4, 16]
    for name in ("euler", "heun"):  # deterministic: closer to the reference with more steps
        few, many = [r["rmse"] for r in rows if r["sampler"] == name]
        assert many < few / 2
    assert any(line.startswith("| heun | ") for line in lines) and any(line.startswith("| ddpm * | ") for line in lines)


def test_benchmark_runs_a_model_from_config_and_checkpoint(tmp_path, monkeypatch, capsys):
    """`benchmarks/samplers.py --model CONFIG:CHECKPOINT` drives the model's guided denoiser through run_table."""
    import importlib.util
    import sys
    from pathlib import Path

    import yaml
    from factories import tiny_config, tiny_model

    from ldm.io.checkpoint import save_state_dict

    cfg, ckpt = tmp_path / "tiny.yaml", tmp_path / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "samplers.py"
    spec = importlib.util.spec_from_file_location("bench_samplers_model", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "samplers.py",
            "--model",
            f"{cfg}:{ckpt}",
            "--samplers",
            "euler",
            "dpmpp_2m",
            "--steps",
            "3",
            "12",
            "--reference-steps",
            "60",
            "--batch",
            "2",
        ],
    )
    bench.main()
    out = capsys.readouterr().out
    assert "latents [4, 8, 8], batch 2" in out
    rows = [line for line in out.splitlines() if line.startswith("| euler | ") or line.startswith("| dpmpp_2m | ")]
    assert len(rows) == 4  # distance table and time table, one row per sampler each
    # The distance to the reference shrinks with steps for a deterministic solver on a real network too.
    few, many = (float(cell.split()[0]) for cell in rows[0].split("|")[2:4])
    assert many < few


def test_guidance_with_the_same_prompt_on_both_sides_is_one_call():
    """The empty prompt against the empty negative (a photo upscaled without a caption): u + s (c - u) = c, so
    CFGDenoiser calls the network once, on the batch as it is, and returns what the two calls would have."""
    calls = []

    def counting(x, sigma, **kw):
        calls.append(x.shape[0])
        return conditional_denoiser(x, sigma, **kw)

    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.full((3,), 2.0, dtype=torch.float64)
    context = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    same = CFGDenoiser(counting, {"context": context}, {"context": context.clone()}, scale=7.5)
    one = same(x, sigma)
    assert calls == [3]
    different = CFGDenoiser(counting, {"context": context}, {"context": torch.zeros(3, dtype=torch.float64)}, scale=7.5)
    different(x, sigma)
    assert calls == [3, 6]  # guidance proper: both halves in one batch
    both = conditional_denoiser(
        torch.cat([x, x]), torch.cat([sigma, sigma]), context=torch.cat([context, context])
    ).chunk(2)
    torch.testing.assert_close(one, both[0] + 7.5 * (both[1] - both[0]))
