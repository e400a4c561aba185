"""The samplers of ldm.sampling.samplers_extra against closed forms and hand-written single steps of k-diffusion's
maths.

The Gaussian case of tests/sampling/test_samplers.py gives an exact denoiser and an exact ODE solution; a denoiser
that does
not depend on x (D = f(lambda)) gives exact integrals. Its step rules are also written out here from k-diffusion's
sampling.py and compared on one or two steps; k-diffusion itself runs beside ours in test_k_diffusion_parity.py.
"""

import math

import pytest
import torch
from test_samplers import MU, SIGMA_MAX, S, flow, gaussian_denoiser, grid, slope

from ldm.sampling.samplers import DETERMINISTIC, SAMPLERS
from ldm.sampling.samplers_extra import lms_coefficients

NEW = (
    "lms",
    "dpm_2",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_3m_sde",
    "unipc",
    "unipc_bh2",
    "lcm",
)


def run(name, model, x, sigmas, seed=3, **kw):
    return SAMPLERS[name](model, x.clone(), sigmas, disable=True, generator=torch.Generator().manual_seed(seed), **kw)


def test_the_new_samplers_are_registered_and_the_deterministic_ones_known():
    assert set(NEW) <= set(SAMPLERS)
    assert {"lms", "dpm_2", "unipc", "unipc_bh2"} <= set(DETERMINISTIC)
    assert not {"dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde", "lcm"} & set(DETERMINISTIC)


@pytest.mark.parametrize(
    "name, options, order",
    [
        ("lms", {}, 3.4),  # order 4 in theory; 3.4 observed over 16-64 Karras steps
        ("dpm_2", {}, 2),
        ("dpm_2_ancestral", {"eta": 0.0}, 2),
        ("dpmpp_2s_ancestral", {"eta": 0.0}, 2),
        ("dpmpp_sde", {"eta": 0.0}, 2),
        ("unipc", {}, 4),  # UniP of order 3 plus UniC, which raises the order by one
        ("unipc_bh2", {}, 4),
    ],
)
def test_error_shrinks_at_the_expected_order(name, options, order):
    """Max error to the exact probability-flow solution at sigma = 0 on Karras grids (as
    tests/sampling/test_samplers.py)."""
    x_t = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    exact = flow(x_t, torch.tensor(SIGMA_MAX), torch.tensor(0.0))
    steps = [8, 16, 32, 64]
    errors = [(run(name, gaussian_denoiser, x_t, grid(n), **options) - exact).abs().max().item() for n in steps]
    assert errors == sorted(errors, reverse=True), errors
    assert slope(steps[1:], errors[1:]) == pytest.approx(order, abs=0.35), (name, errors)


def test_dpmpp_3m_sde_at_eta_zero_converges_as_k_diffusion_s_does():
    """DPM-Solver++(3M) as k-diffusion (and DPM-Solver, diffusers) write it: its second-difference term is half of
    what makes a step exact for D quadratic in lambda (see the single-step test), so it converges at about order 2,
    though more accurately than dpmpp_2m."""
    x_t = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    exact = flow(x_t, torch.tensor(SIGMA_MAX), torch.tensor(0.0))
    steps = [8, 16, 32, 64]
    errors = [(run("dpmpp_3m_sde", gaussian_denoiser, x_t, grid(n), eta=0.0) - exact).abs().max().item() for n in steps]
    two_m = [(run("dpmpp_2m", gaussian_denoiser, x_t, grid(n)) - exact).abs().max().item() for n in steps]
    assert errors == sorted(errors, reverse=True), errors
    assert slope(steps[1:], errors[1:]) > 1.5
    assert all(e < e2 for e, e2 in zip(errors[1:], two_m[1:])), (errors, two_m)


def test_eta_zero_reduces_to_the_deterministic_solvers():
    x_t = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    sigmas = grid(10)
    torch.testing.assert_close(
        run("dpm_2_ancestral", gaussian_denoiser, x_t, sigmas, eta=0.0), run("dpm_2", gaussian_denoiser, x_t, sigmas)
    )
    # DPM++ SDE without noise is DPM-Solver++(2S), the deterministic part of DPM++ 2S a.
    torch.testing.assert_close(
        run("dpmpp_sde", gaussian_denoiser, x_t, sigmas, eta=0.0),
        run("dpmpp_2s_ancestral", gaussian_denoiser, x_t, sigmas, eta=0.0),
    )
    for name in ("dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_3m_sde"):
        assert torch.equal(
            run(name, gaussian_denoiser, x_t, sigmas, seed=1, eta=0.0),
            run(name, gaussian_denoiser, x_t, sigmas, seed=2, eta=0.0),
        )
        noisy = run(name, gaussian_denoiser, x_t, sigmas, seed=1)
        assert (noisy - run(name, gaussian_denoiser, x_t, sigmas, eta=0.0)).abs().max() > 1e-2


def test_lms_weights_integrate_polynomials_exactly_on_uneven_grids():
    """Order k weights integrate every polynomial of degree < k over the step from its values at the k nodes."""
    sigmas = [9.0, 6.5, 3.0, 2.2, 0.7, 0.0]
    for i in range(len(sigmas) - 1):
        for order in range(1, min(i + 1, 4) + 1):
            weights = lms_coefficients(sigmas, i, order)
            for degree in range(order):
                integral = (sigmas[i + 1] ** (degree + 1) - sigmas[i] ** (degree + 1)) / (degree + 1)
                quadrature = sum(w * sigmas[i - j] ** degree for j, w in enumerate(weights))
                assert quadrature == pytest.approx(integral, rel=1e-12, abs=1e-12)
    assert lms_coefficients(sigmas, 0, 1) == [sigmas[1] - sigmas[0]]  # order 1 is Euler


def test_lms_is_exact_for_a_cubic_derivative_after_its_start_up():
    """dx/dsigma = p(sigma) with p cubic, on an uneven grid: the order-4 steps (from the fourth on) are exact, the
    three start-up steps are the exact integrals of their interpolating polynomials (checked by the weights above)."""
    p = lambda s: s**3 - 2 * s + 1
    integral = lambda a, b: (b**4 - a**4) / 4 - (b**2 - a**2) + (b - a)
    model = lambda x, sigma: x - sigma.reshape(-1, 1) * p(sigma.reshape(-1, 1))  # d = (x - D) / sigma = p
    sigmas = torch.tensor([7.0, 5.5, 4.5, 3.0, 2.6, 1.0, 0.0], dtype=torch.float64)
    start = run("lms", model, torch.zeros(1, 1, dtype=torch.float64), sigmas[:4]).item()
    out = run("lms", model, torch.zeros(1, 1, dtype=torch.float64), sigmas).item()
    assert out - start == pytest.approx(integral(3.0, 0.0), rel=1e-10)
    assert abs(start - integral(7.0, 3.0)) > 1e-3  # the start-up steps are lower order and do err


def test_dpm_2_step_by_hand():
    """k-diffusion's DPM2 step: Euler to the geometric midpoint, then the full step with the midpoint's slope."""
    model = lambda x, sigma: 0.5 * x / (1 + sigma.reshape(-1, 1) ** 2) + 0.1
    sigma, sigma_next = torch.tensor(4.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    x = torch.tensor([[1.3]], dtype=torch.float64)
    d = (x - model(x, sigma.reshape(1))) / sigma
    mid = torch.tensor(2.0, dtype=torch.float64)  # sqrt(4 * 1)
    x_mid = x + d * (mid - sigma)
    expected = x + (x_mid - model(x_mid, mid.reshape(1))) / mid * (sigma_next - sigma)
    out = run("dpm_2", model, x, torch.stack([sigma, sigma_next]))
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)


def test_dpmpp_sde_step_by_hand_with_the_same_noise():
    """One DPM++ SDE step at eta = 1, written from k-diffusion's sample_dpmpp_sde with its two noises replaced by the
    Brownian increments built from the generator's two draws (the sampler's docstring)."""
    model = lambda x, sigma: torch.tanh(x) / (1 + sigma.reshape(-1, 1))
    sigma, sigma_next = torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.75, dtype=torch.float64)
    x = torch.tensor([[0.4], [-2.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    z1, z2 = (torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in range(2))

    def ancestral(a, b):  # get_ancestral_step(a, b, eta=1)
        up = min(b, (b**2 * (a**2 - b**2) / a**2) ** 0.5)
        return (b**2 - up**2) ** 0.5, up

    s, n = 3.0, 0.75
    mid = math.sqrt(s * n)
    down, up = ancestral(s, mid)
    x_s = down / s * x - (down / s - 1) * model(x, sigma.reshape(1)) + z1 * up
    down, up = ancestral(s, n)
    increment = (math.sqrt(s - mid) * z1 + math.sqrt(mid - n) * z2) / math.sqrt(s - n)
    expected = down / s * x - (down / s - 1) * model(x_s, torch.tensor([mid], dtype=torch.float64)) + increment * up
    out = run("dpmpp_sde", model, x, torch.stack([sigma, sigma_next]), seed=11)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dpmpp_2s_ancestral_step_by_hand():
    model = lambda x, sigma: x / (1 + sigma.reshape(-1, 1) ** 2) - 0.2
    sigma, sigma_next = 2.0, 0.5
    x = torch.tensor([[0.9]], dtype=torch.float64)
    up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    down = math.sqrt(sigma_next**2 - up**2)
    mid = math.sqrt(sigma * down)
    x_mid = mid / sigma * x - (mid / sigma - 1) * model(x, torch.tensor([sigma], dtype=torch.float64))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = down / sigma * x - (down / sigma - 1) * model(x_mid, torch.tensor([mid], dtype=torch.float64)) + z * up
    out = run("dpmpp_2s_ancestral", model, x, torch.tensor([sigma, sigma_next], dtype=torch.float64), seed=5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dpmpp_3m_third_step_by_hand():
    """The third step of DPM++ 3M (eta = 0) with D = f(lambda) independent of x, from k-diffusion's formula, and its
    distance to the exact step: k-diffusion's -phi_3 d2 is half the exact term -2 phi_3 d2 for quadratic f."""
    f = lambda lam: lam**2 + 0.5 * lam
    lams = torch.tensor([0.0, 0.4, 0.9, 1.3], dtype=torch.float64)
    sigmas = (-lams).exp()
    model = lambda x, sigma: torch.ones_like(x) * f(-sigma.log().reshape(-1, 1))
    x0 = torch.tensor([[0.7]], dtype=torch.float64)
    x2 = run("dpmpp_3m_sde", model, x0, sigmas[:3], eta=0.0)  # the first two steps
    x3 = run("dpmpp_3m_sde", model, x0, sigmas, eta=0.0)
    h, h1, h2 = 0.4, 0.5, 0.4
    r0, r1 = h1 / h, h2 / h
    d1_0, d1_1 = (f(0.9) - f(0.4)) / r0, (f(0.4) - f(0.0)) / r1
    d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
    phi_2 = math.expm1(-h) / h + 1
    phi_3 = phi_2 / h - 0.5
    common = math.exp(-h) * x2 - math.expm1(-h) * f(0.9) + phi_2 * d1
    torch.testing.assert_close(x3, common - phi_3 * d2, rtol=1e-12, atol=1e-12)
    # The exact step: e^{-h} x + int_0^h e^{-(h - u)} f(0.9 + u) du, in closed form for the quadratic.
    exact = math.exp(-h) * x2 + (-math.expm1(-h)) * f(0.9) + h * phi_2 * (2 * 0.9 + 0.5) + 2 * (-phi_3) * h**2
    torch.testing.assert_close(common - 2 * phi_3 * d2, exact, rtol=1e-12, atol=1e-12)


def test_unipc_first_steps_by_hand():
    """UniPC's first step (order 1): DPM-Solver++(1) predictor, then UniC with rho = 1/2, which for bh2
    (B(h) = e^{-h} - 1, data prediction) is the trapezoid x' = base - B(h) (D' - D) / 2; for bh1 B(h) = -h."""
    model = lambda x, sigma: 0.8 * x / (1 + sigma.reshape(-1, 1) ** 2) + 0.3
    sigmas = torch.tensor([5.0, 2.0, 0.0], dtype=torch.float64)
    x = torch.tensor([[1.1], [-0.4]], dtype=torch.float64)
    h = math.log(5.0 / 2.0)
    d0 = model(x, sigmas[:1])
    base = 2.0 / 5.0 * x - math.expm1(-h) * d0
    d1 = model(base, sigmas[1:2])
    for name, b_h in (("unipc_bh2", math.expm1(-h)), ("unipc", -h)):
        corrected = base - b_h * 0.5 * (d1 - d0)
        # To sigma = 0 the second step returns D at sigma = 2, evaluated (once) at the predictor's point.
        torch.testing.assert_close(run(name, model, x, sigmas), d1, rtol=1e-12, atol=1e-12)
        # To sigma = 1 instead: a first-order predictor step from the corrected point, without a corrector (the last).
        seen = []
        out = SAMPLERS[name](
            model, x.clone(), torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64), callback=seen.append, disable=True
        )
        torch.testing.assert_close(out, 0.5 * corrected - math.expm1(-math.log(2.0)) * d1, rtol=1e-12, atol=1e-12)
        assert torch.equal(seen[1]["x"], base) and torch.equal(seen[1]["denoised"], d1)  # where D was evaluated


def test_lcm_renoises_each_x0_estimate_and_has_its_closed_form_spread():
    """LCM with the exact Gaussian denoiser: x_{i+1} - mu = a_i (x_i - mu) + sigma_{i+1} z with
    a_i = s^2 / (s^2 + sigma_i^2), so the variance follows V_{i+1} = a_i^2 V_i + sigma_{i+1}^2 and the output's is a_{n-1}^2 V_{n-1}."""  # noqa: E501
    n, sigmas = 20000, grid(8)
    x_t = (
        MU
        + torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        * (S**2 + SIGMA_MAX**2).sqrt()
    )
    out = run("lcm", gaussian_denoiser, x_t, sigmas, seed=2)
    variance = S**2 + SIGMA_MAX**2
    for i in range(len(sigmas) - 1):
        variance = (S**2 / (S**2 + sigmas[i] ** 2)) ** 2 * variance + sigmas[i + 1] ** 2
    torch.testing.assert_close(out.std(0), variance.sqrt(), rtol=0.03, atol=0)
    assert ((out.mean(0) - MU) / (S / math.sqrt(n))).abs().max() < 4
    # One step from sigma to sigma': exactly D(x, sigma) + sigma' z with the generator's z.
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    step = torch.tensor([2.0, 0.5], dtype=torch.float64)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(
        run("lcm", gaussian_denoiser, x, step, seed=9), gaussian_denoiser(x, step[:1]) + 0.5 * z, rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("name", ["lms", "dpm_2", "unipc", "dpmpp_3m_sde"])
def test_a_grid_of_one_step_to_zero_returns_a_clean_sample(name):
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    sigmas = torch.tensor([3.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        run(name, gaussian_denoiser, x, sigmas), gaussian_denoiser(x, sigmas[:1]), rtol=1e-12, atol=1e-12
    )


@pytest.fixture(scope="module")
def tiny_models():
    from factories import tiny_inpaint_model, tiny_model

    return tiny_model(), tiny_inpaint_model()


@pytest.mark.parametrize("name", NEW)
def test_every_new_sampler_runs_every_task(tiny_models, name):
    """txt2img, img2img and inpainting pick the sampler by name (get_sampler) and record it in the settings."""
    from PIL import Image

    from ldm.tasks.img2img import img2img
    from ldm.tasks.inpaint import inpaint
    from ldm.tasks.txt2img import txt2img

    model, inpaint_model = tiny_models
    photo = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy())
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    common = {"steps": 4, "sampler": name, "progress": False}
    results = [
        txt2img(model, "a cat", height=32, width=32, **common),
        img2img(model, photo, "a cat", strength=0.6, **common),
        inpaint(inpaint_model, photo, mask.numpy(), "a cat", **common),
    ]
    for result in results:
        assert result[0].size == (32, 32) and result.settings["sampler"] == name
    again = txt2img(model, "a cat", height=32, width=32, **common)
    assert list(again[0].getdata()) == list(results[0][0].getdata())  # seeded: the same seed remakes the image


def test_dpm2_and_3m_sde_run_on_a1111_s_grid_without_its_next_to_last_sigma(tiny_models):
    from ldm.diffusion.schedules import get_sigmas
    from ldm.sampling.options import SamplingOptions
    from ldm.tasks.base import model_sigmas

    model = tiny_models[0]
    for name in ("dpm_2", "dpm_2_ancestral", "dpmpp_3m_sde"):
        for extra in ({}, {"karras": True}):
            grid = model_sigmas(model, SamplingOptions(sampler=name, steps=6, **extra)).cpu()
            finer = get_sigmas(model.alphas_cumprod, 7, **extra)
            assert len(grid) == 7 and torch.equal(grid, torch.cat([finer[:-2], finer[-1:]]))
    plain = model_sigmas(model, SamplingOptions(sampler="dpmpp_2m", steps=6)).cpu()
    assert torch.equal(plain, get_sigmas(model.alphas_cumprod, 6))
    # At the model's own number of timesteps there is no finer grid: the plain one.
    steps = len(model.alphas_cumprod)
    assert len(model_sigmas(model, SamplingOptions(sampler="dpm_2", steps=steps, spacing="trailing"))) == steps + 1
