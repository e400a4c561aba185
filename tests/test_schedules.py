"""Beta schedules, sigma / log-SNR conversions and sigma grids against their closed forms."""

import math

import pytest
import torch

from ldm.diffusion.schedules import (
    InvalidStepsError,
    UnknownScheduleError,
    UnknownSpacingError,
    alphas_cumprod_from_betas,
    alphas_cumprod_from_sigmas,
    get_sigmas,
    karras_sigmas,
    log_snr,
    make_betas,
    sigma_from_log_snr,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    timesteps_for,
)

SD = dict(linear_start=0.00085, linear_end=0.012)


@pytest.fixture(scope="module")
def sd_ac():
    return alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, **SD))


def test_linear_and_scaled_linear_endpoints():
    b = make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(2e-2)
    assert b[500].item() == pytest.approx(1e-4 + (2e-2 - 1e-4) * 500 / 999, rel=1e-12)
    s = make_betas("scaled_linear", 1000, **SD)
    assert s[0].item() == pytest.approx(0.00085) and s[-1].item() == pytest.approx(0.012)
    lo, hi = 0.00085**0.5, 0.012**0.5
    assert s[500].item() == pytest.approx((lo + (hi - lo) * 500 / 999) ** 2, rel=1e-12)
    assert s[500] < 0.00085 + (0.012 - 0.00085) * 500 / 999  # convex in t: below the plain linear one


def test_cosine_follows_its_alpha_bar_and_is_clipped():
    c = make_betas("cosine", 1000)
    ac = alphas_cumprod_from_betas(c)
    f = lambda t: math.cos((t / 1000 + 8e-3) / 1.008 * math.pi / 2) ** 2
    for t in (0, 250, 500, 900):
        assert ac[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert c.max().item() == pytest.approx(0.999)  # the last beta would be 1 without the clip


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_schedules_are_monotone(kind):
    ac = alphas_cumprod_from_betas(make_betas(kind, 1000))
    assert torch.all(ac[1:] < ac[:-1]) and 0 < ac[-1] < ac[0] < 1
    lam = log_snr(ac)
    assert torch.all(lam[1:] < lam[:-1])
    sig = sigmas_from_alphas_cumprod(ac)
    assert torch.all(sig[1:] > sig[:-1])


def test_sd_sigma_range_and_conversions(sd_ac):
    sig = sigmas_from_alphas_cumprod(sd_ac)
    assert sig[0].item() == pytest.approx(0.0292, abs=1e-4) and sig[-1].item() == pytest.approx(14.6146, abs=1e-3)
    torch.testing.assert_close(log_snr(sd_ac), -2 * sig.log())
    torch.testing.assert_close(alphas_cumprod_from_sigmas(sig), sd_ac)
    torch.testing.assert_close(sigma_from_log_snr(log_snr(sd_ac)), sig)


def test_bad_schedule_arguments():
    with pytest.raises(UnknownScheduleError, match="linear, scaled_linear, cosine"):
        make_betas("quadratic")
    with pytest.raises(InvalidStepsError):
        make_betas("linear", 0)


def test_sigma_t_round_trip(sd_ac):
    log_sigmas = sigmas_from_alphas_cumprod(sd_ac).log()
    t = torch.tensor([0.0, 10.5, 999.0, 321.25], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, log_sigmas), log_sigmas), t)
    # Integer timesteps give the model's own sigmas; half-way is the geometric mean (linear in log).
    torch.testing.assert_close(t_to_sigma(torch.tensor([7.0], dtype=torch.float64), log_sigmas), log_sigmas[7:8].exp())
    mid = (log_sigmas[10] + log_sigmas[11]).div(2).exp().reshape(1)
    assert sigma_to_t(mid, log_sigmas).item() == pytest.approx(10.5, abs=1e-9)
    # Outside the trained range: clamped to the end timesteps.
    assert sigma_to_t(torch.tensor([0.0, 1e3], dtype=torch.float64), log_sigmas).tolist() == [0.0, 999.0]


def test_timestep_spacings():
    # The reference DDIM's 50 steps: 981, 961, ..., 1.
    assert timesteps_for(1000, 50, "leading").tolist() == [float(t) for t in range(981, 0, -20)]
    assert timesteps_for(1000, 10, "trailing").tolist() == [float(t) for t in range(999, 0, -100)]
    assert timesteps_for(1000, 3, "trailing").tolist() == [999.0, 666.0, 332.0]
    assert timesteps_for(1000, 5, "linspace").tolist() == [999.0, 749.25, 499.5, 249.75, 0.0]
    # 1000 leading steps would step off the schedule with the +1 offset; they must stay distinct.
    full = timesteps_for(1000, 1000, "leading")
    assert full[0] == 999 and full[-1] == 0 and torch.all(full[1:] < full[:-1])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_get_sigmas_shape_order_and_final_zero(sd_ac, spacing, steps):
    s = get_sigmas(sd_ac, steps, spacing)
    assert s.dtype == torch.float32 and s.shape == (steps + 1,) and s[-1] == 0
    assert torch.all(s[1:] < s[:-1])
    ts = timesteps_for(1000, steps, spacing)
    torch.testing.assert_close(
        s[:-1].double(), t_to_sigma(ts, sigmas_from_alphas_cumprod(sd_ac).log()), rtol=1e-6, atol=0
    )


def test_karras_grid(sd_ac):
    k = get_sigmas(sd_ac, 10, karras=True, rho=7.0)
    sig = sigmas_from_alphas_cumprod(sd_ac)
    assert k[0].item() == pytest.approx(sig[-1].item(), rel=1e-6) and k[-2].item() == pytest.approx(
        sig[0].item(), rel=1e-6
    )
    # Equally spaced in sigma^(1/rho).
    root = k[:-1].double() ** (1 / 7)
    torch.testing.assert_close(root.diff(), root.diff().mean().expand(9), rtol=1e-4, atol=0)
    assert len(karras_sigmas(0.1, 10.0, 2000)) == 2000 and len(get_sigmas(sd_ac, 2000, karras=True)) == 2001


def test_get_sigmas_errors(sd_ac):
    for bad in (0, -3, 2.5):
        with pytest.raises(InvalidStepsError, match="steps"):
            get_sigmas(sd_ac, bad)
    with pytest.raises(InvalidStepsError, match="1000 timesteps"):
        get_sigmas(sd_ac, 1001, "trailing")
    with pytest.raises(UnknownSpacingError, match="leading, trailing, linspace"):
        get_sigmas(sd_ac, 10, "random")
