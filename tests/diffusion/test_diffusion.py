"""Forward process, eps/v/x0 conversions, the training loss and the denoiser wrappers, against closed forms."""

import math

import pytest
import torch

from ldm.diffusion.parameterisation import (
    DiscreteTimeDenoiser,
    UnknownPredictionError,
    diffusion_loss,
    eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    q_sample,
    v_from_eps,
    v_target,
)
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas, sigmas_from_alphas_cumprod
from ldm.sampling.denoisers import CFGDenoiser, InvalidGuidanceError

SD = dict(linear_start=0.00085, linear_end=0.012)
AC = alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, **SD))


@pytest.mark.parametrize("t", [0, 300, 999])
def test_q_sample_marginal_mean_and_variance(t):
    """x_t | x0 ~ N(sqrt(ab) x0, 1 - ab): Monte-Carlo moments within 5 standard errors."""
    n = 200_000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
    xt = q_sample(x0, torch.full((n,), t), AC, noise)
    mean, var = 2.0 * AC[t].sqrt().item(), 1 - AC[t].item()
    assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / (n - 1))  # the sample variance's standard error


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_eps_v_x0_round_trips(kind):
    ac = alphas_cumprod_from_betas(make_betas(kind, 1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(16, 3, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(16, 3, 2, 2, generator=g, dtype=torch.float64),
    )
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (14,), generator=g)])
    xt = q_sample(x0, t, ac, eps)
    v = v_target(x0, eps, t, ac)
    torch.testing.assert_close(predict_x0_from_v(xt, t, v, ac), x0)
    torch.testing.assert_close(eps_from_v(xt, t, v, ac), eps)
    torch.testing.assert_close(v_from_eps(xt, t, eps, ac), v)
    torch.testing.assert_close(predict_eps_from_x0(xt, t, x0, ac), eps)
    ok = ac[t] > 1e-6  # x0 from eps divides by sqrt(ab): hopeless at the cosine schedule's very end
    torch.testing.assert_close(predict_x0_from_eps(xt, t, eps, ac)[ok], x0[ok])
    # (x_t, v) is (x0, eps) rotated by the angle with cos = sqrt(ab): elementwise squared norms agree.
    ab = ac[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xt**2 + v**2, x0**2 + eps**2)
    torch.testing.assert_close(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)


class PerfectNet(torch.nn.Module):
    """Knows x0, so it can output the exact eps or v for any x_t it is given; records its inputs."""

    def __init__(self, x0, prediction, channels):
        super().__init__()
        self.x0, self.prediction, self.channels, self.seen = x0, prediction, channels, []

    def forward(self, x_t, t, context=None, y=None):
        self.seen.append(dict(x_t=x_t, t=t, context=context, y=y))
        x_t = x_t[:, : self.channels]
        eps = predict_eps_from_x0(x_t, t, self.x0, AC)
        return eps if self.prediction == "eps" else v_from_eps(x_t, t, eps, AC)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_loss_of_a_perfect_network_is_zero(prediction):
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = PerfectNet(x0, prediction, 2)
    assert diffusion_loss(net, x0, None, AC, prediction, torch.Generator().manual_seed(0)).item() < 1e-16
    other = "v" if prediction == "eps" else "eps"
    assert diffusion_loss(net, x0, None, AC, other, torch.Generator().manual_seed(0)).item() > 1e-3


def test_diffusion_loss_inputs_and_seed():
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    context, y, concat = torch.randn(4, 77, 8), torch.randn(4, 5), torch.randn(4, 3, 3, 3, dtype=torch.float64)
    net = PerfectNet(x0, "eps", 2)
    a = diffusion_loss(net, x0, context, AC, "eps", torch.Generator().manual_seed(7), y=y, concat=concat)
    b = diffusion_loss(net, x0, context, AC, "eps", torch.Generator().manual_seed(7), y=y, concat=concat)
    assert a.item() < 1e-16 and a.item() == b.item()
    first, second = net.seen
    assert first["x_t"].shape == (4, 5, 3, 3) and torch.equal(first["x_t"][:, 2:], concat)
    assert first["context"] is context and first["y"] is y
    assert first["t"].dtype == torch.long and 0 <= first["t"].min() and first["t"].max() < 1000
    assert torch.equal(first["t"], second["t"]) and torch.equal(first["x_t"], second["x_t"])  # same seed, same draw
    # t and eps are those the generator gives, in that order.
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    assert torch.equal(first["t"], t)
    torch.testing.assert_close(first["x_t"][:, :2], q_sample(x0, t, AC, noise))
    with pytest.raises(UnknownPredictionError, match="eps, v"):
        diffusion_loss(net, x0, None, AC, "x0")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_discrete_denoiser_recovers_x0_from_an_oracle(prediction):
    """A network that outputs the true eps (or v) of its VP input makes the denoiser return the true x0."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 3, 3, generator=g), torch.randn(3, 4, 3, 3, generator=g)
    sigma = torch.tensor([0.05, 1.0, 14.0])
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    ab = (1 / (1 + sigma**2)).reshape(-1, 1, 1, 1)
    seen = {}

    def oracle(x_vp, t, context=None, y=None):
        seen.update(x_vp=x_vp, t=t)
        return eps if prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * x0

    den = DiscreteTimeDenoiser(oracle, AC.float(), prediction)
    torch.testing.assert_close(den(x, sigma), x0, rtol=1e-4, atol=1e-4)
    # The network sees the VP point sqrt(ab) x0 + sqrt(1 - ab) eps.
    torch.testing.assert_close(seen["x_vp"], ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-5, atol=1e-5)


def test_discrete_denoiser_timesteps_concat_and_range():
    sigmas = sigmas_from_alphas_cumprod(AC)
    seen = {}

    def net(x_vp, t, context=None, y=None):
        seen.update(x_vp=x_vp, t=t, context=context, y=y)
        return torch.zeros_like(x_vp[:, :2])

    den = DiscreteTimeDenoiser(net, AC.float(), "eps")
    assert den.sigma_min == pytest.approx(sigmas[0].item(), rel=1e-4)  # float32 ab: 1 - ab loses digits at t = 0
    assert den.sigma_max == pytest.approx(sigmas[-1].item(), rel=1e-5)
    x = torch.ones(2, 2, 1, 1)
    concat, context, y = torch.full((2, 3, 1, 1), 5.0), torch.randn(2, 77, 4), torch.randn(2, 3)
    out = den(x, sigmas[[10, 500]].float(), context=context, y=y, concat=concat)
    torch.testing.assert_close(seen["t"], torch.tensor([10.0, 500.0]), rtol=0, atol=1e-3)
    assert seen["x_vp"].shape == (2, 5, 1, 1) and torch.equal(seen["x_vp"][:, 2:], concat)  # concat: not scaled
    torch.testing.assert_close(seen["x_vp"][:, :2], x * AC[[10, 500]].sqrt().float().reshape(-1, 1, 1, 1))
    assert seen["context"] is context and seen["y"] is y
    assert torch.equal(out, x)  # zero eps: x0 = x
    den(x, torch.tensor(3.0))  # a scalar sigma serves the whole batch
    assert seen["t"].shape == (2,)
    with pytest.raises(UnknownPredictionError):
        DiscreteTimeDenoiser(net, AC, "sample")


def conditional(x, sigma, context=None, y=None, concat=None, calls=None):
    """A toy conditional denoiser: Gaussian data whose mean is the context (plus y, plus concat's mean)."""
    if calls is not None:
        calls.append(x.shape[0])
    mu = context.reshape(-1, *([1] * (x.ndim - 1)))
    if y is not None:
        mu = mu + y.reshape(-1, *([1] * (x.ndim - 1)))
    if concat is not None:
        mu = mu + concat.mean(dim=(1, 2, 3), keepdim=True)
    s2, sig2 = 0.25, sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (s2 * x + sig2 * mu) / (s2 + sig2)


def test_cfg_is_one_batched_call_with_the_guidance_formula():
    calls = []
    den = lambda x, sigma, **kw: conditional(x, sigma, calls=calls, **kw)
    cond, uncond = {"context": torch.tensor([1.0, -2.0])}, {"context": torch.tensor([0.0, 0.5])}
    x, sigma = torch.randn(2, 1, 4, 4) * 3, torch.tensor([3.0, 3.0])
    out = CFGDenoiser(den, cond, uncond, 7.5)(x, sigma)
    assert calls == [4]
    d_c, d_u = conditional(x, sigma, **cond), conditional(x, sigma, **uncond)
    torch.testing.assert_close(out, d_u + 7.5 * (d_c - d_u))
    calls.clear()
    assert torch.equal(CFGDenoiser(den, cond, uncond, 1.0)(x, sigma), d_c) and calls == [2]
    torch.testing.assert_close(CFGDenoiser(den, cond, uncond, 0.0)(x, sigma), d_u)


def test_cfg_extra_conditions_ride_along():
    # y on both sides, concat (an inpainting input) given on the conditional side only: used for both halves.
    concat = torch.randn(2, 3, 4, 4)
    cond = {"context": torch.tensor([1.0, 2.0]), "y": torch.tensor([0.5, 0.5]), "concat": concat}
    uncond = {"context": torch.tensor([0.0, 0.0]), "y": torch.tensor([0.1, 0.1])}
    x, sigma = torch.randn(2, 1, 4, 4), torch.tensor(2.0)
    out = CFGDenoiser(conditional, cond, uncond, 3.0)(x, sigma)
    d_c = conditional(x, sigma.expand(2), **cond)
    d_u = conditional(x, sigma.expand(2), **uncond, concat=concat)
    torch.testing.assert_close(out, d_u + 3.0 * (d_c - d_u))


def test_cfg_rescale_and_threshold():
    cond, uncond = {"context": torch.tensor([1.0])}, {"context": torch.tensor([0.0])}
    x, sigma = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 5, torch.tensor([5.0])
    plain = CFGDenoiser(conditional, cond, uncond, 7.0)(x, sigma)
    d_c = conditional(x, sigma, **cond)
    rescaled = CFGDenoiser(conditional, cond, uncond, 7.0, rescale=1.0)(x, sigma)
    assert rescaled.std().item() == pytest.approx(d_c.std().item(), rel=1e-5)
    half = CFGDenoiser(conditional, cond, uncond, 7.0, rescale=0.5)(x, sigma)
    torch.testing.assert_close(half, (plain + rescaled) / 2)
    clamped = CFGDenoiser(conditional, cond, uncond, 7.0, threshold=0.9)(x, sigma)
    s = max(torch.quantile(plain.abs().flatten(), 0.9).item(), 1.0)
    assert clamped.abs().max().item() == pytest.approx(s, rel=1e-5) and plain.abs().max() > s
    inside = plain.abs() < s
    assert torch.equal(clamped[inside], plain[inside])
    for bad in (dict(scale=-1.0), dict(scale=5.0, rescale=1.5), dict(scale=5.0, threshold=1.0)):
        with pytest.raises(InvalidGuidanceError):
            CFGDenoiser(conditional, cond, uncond, **bad)
