"""Schedules and the forward process against their closed forms."""
import math

import pytest
import torch

from ldm.denoisers import DiscreteTimeDenoiser
from ldm.diffusion import (diffusion_loss, eps_from_v, predict_x0_from_eps, predict_x0_from_v, q_sample,
                           v_target)
from ldm.schedules import (InvalidStepsError, UnknownScheduleError, alphas_cumprod_from_betas, get_sigmas,
                           log_snr, make_betas, sigma_to_t, sigmas_from_alphas_cumprod, t_to_sigma)

SD = dict(linear_start=0.00085, linear_end=0.012)


def test_schedule_endpoints_and_monotonicity():
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(2e-2)
    s = make_betas("scaled_linear", 1000, **SD)
    assert s[0].item() == pytest.approx(0.00085) and s[-1].item() == pytest.approx(0.012)
    lo, hi = 0.00085**0.5, 0.012**0.5
    assert s[500].item() == pytest.approx((lo + (hi - lo) * 500 / 999) ** 2, rel=1e-9)
    c = make_betas("cosine", 1000)
    ac = alphas_cumprod_from_betas(c)
    # alpha_bar follows cos^2((t/T + s) / (1 + s) * pi/2) / cos^2(s / (1 + s) * pi/2)
    f = lambda t: math.cos((t / 1000 + 8e-3) / 1.008 * math.pi / 2) ** 2
    assert ac[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)
    assert c.max() <= 0.999
    for betas in (b, s, c):
        ac = alphas_cumprod_from_betas(betas)
        assert torch.all(ac[1:] < ac[:-1]) and 0 < ac[-1] < ac[0] < 1
        assert torch.all(log_snr(ac)[1:] < log_snr(ac)[:-1])
    # SD's well-known sigma range
    ac = alphas_cumprod_from_betas(s)
    sig = sigmas_from_alphas_cumprod(ac)
    assert sig[0].item() == pytest.approx(0.0292, abs=1e-3) and sig[-1].item() == pytest.approx(14.61, abs=0.01)
    with pytest.raises(UnknownScheduleError, match="scaled_linear"):
        make_betas("quadratic")


def test_q_sample_marginals():
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, **SD)).float()
    n = 200000
    x0 = torch.full((n, 1), 2.0)
    t = torch.full((n,), 300)
    xt = q_sample(x0, t, ac, torch.randn(n, 1, generator=torch.Generator().manual_seed(0)))
    mean, var = 2.0 * ac[300].sqrt().item(), 1 - ac[300].item()
    se = math.sqrt(var / n)
    assert abs(xt.mean().item() - mean) < 5 * se
    assert xt.var().item() == pytest.approx(var, rel=0.02)


def test_eps_v_x0_round_trips():
    ac = alphas_cumprod_from_betas(make_betas("cosine", 1000)).float()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    xt = q_sample(x0, t, ac, eps)
    v = v_target(x0, eps, t, ac)
    torch.testing.assert_close(predict_x0_from_eps(xt, t, eps, ac), x0, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(predict_x0_from_v(xt, t, v, ac), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(eps_from_v(xt, t, v, ac), eps, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_discrete_denoiser_recovers_x0_from_an_oracle(prediction):
    """A network that outputs the true eps (or v) makes the denoiser return the true x0 at any sigma."""
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, **SD)).float()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    sigma = torch.tensor([0.5, 7.0])
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    ab = (1 / (1 + sigma**2)).reshape(-1, 1, 1, 1)

    def oracle(inp, t, context=None, y=None):
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    torch.testing.assert_close(DiscreteTimeDenoiser(oracle, ac, prediction)(x, sigma), x0, rtol=1e-4, atol=1e-4)


def test_sigma_t_round_trip_and_grids():
    ac = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, **SD))
    log_sigmas = sigmas_from_alphas_cumprod(ac).log()
    t = torch.tensor([0.0, 10.5, 999.0, 321.25], dtype=torch.float64)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, log_sigmas), log_sigmas), t)
    for spacing in ("leading", "trailing", "linspace"):
        s = get_sigmas(ac, 10, spacing)
        assert len(s) == 11 and s[-1] == 0 and torch.all(s[1:] < s[:-1])
    # the reference DDIM's first timestep for 50 steps is 981
    assert get_sigmas(ac, 50, "leading")[0].item() == pytest.approx(sigmas_from_alphas_cumprod(ac)[981].item(), rel=1e-5)
    assert get_sigmas(ac, 10, "trailing")[0].item() == pytest.approx(14.61, abs=0.01)
    k = get_sigmas(ac, 10, karras=True)
    assert k[0].item() == pytest.approx(14.61, abs=0.01) and k[-2].item() == pytest.approx(0.0292, abs=1e-3)
    for bad in (0, -3):
        with pytest.raises(InvalidStepsError):
            get_sigmas(ac, bad)
    with pytest.raises(UnknownScheduleError, match="spacing"):
        get_sigmas(ac, 10, "random")


def test_diffusion_loss_targets():
    ac = alphas_cumprod_from_betas(make_betas("linear", 1000)).float()
    x0 = torch.randn(4, 2, 3, 3)

    class Perfect(torch.nn.Module):
        """Knows the noise: the training loss of a perfect eps-model is zero."""

        def forward(self, x_t, t, context=None, y=None):
            ab = ac[t].reshape(-1, 1, 1, 1)
            return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    assert diffusion_loss(Perfect(), x0, None, ac, "eps", torch.Generator().manual_seed(0)).item() < 1e-8
    assert diffusion_loss(Perfect(), x0, None, ac, "v", torch.Generator().manual_seed(0)).item() > 1e-3
    with pytest.raises(ValueError, match="prediction"):
        diffusion_loss(Perfect(), x0, None, ac, "x0")
