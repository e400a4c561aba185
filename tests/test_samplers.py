"""Samplers against closed forms: Gaussian data has an exact denoiser and an exact ODE solution.

For x0 ~ N(mu, s^2): D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and the
probability-flow ODE from sigma_max carries x_T to mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
"""
import math

import pytest
import torch

from ldm.denoisers import CFGDenoiser
from ldm.samplers import DETERMINISTIC, SAMPLERS, UnknownSamplerError, get_sampler, truncate_sigmas
from ldm.schedules import karras_sigmas

MU, S, SIGMA_MAX = 0.5, 0.3, 10.0


def gaussian_denoiser(x, sigma, mu=MU):
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + sigma**2 * mu) / (S**2 + sigma**2)


def grid(n):
    return torch.cat([karras_sigmas(0.002, SIGMA_MAX, n), torch.zeros(1, dtype=torch.float64)])


def start(n=256):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX


def exact(x_t):
    return MU + (x_t - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)


@pytest.mark.parametrize("name, order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("plms", 2)])
def test_error_shrinks_at_the_expected_order(name, order):
    x_t = start()
    steps = [8, 16, 32, 64]
    errors = [(SAMPLERS[name](gaussian_denoiser, x_t.clone(), grid(n), disable=True) - exact(x_t)).abs().max().item()
              for n in steps]
    slope = math.log(errors[1] / errors[-1]) / math.log(steps[-1] / steps[1])
    assert errors[-1] < errors[0]
    assert slope == pytest.approx(order, abs=0.35), (name, errors)


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_samplers_reach_the_data_distribution(name):
    x_t = torch.randn(20000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX
    gen = torch.Generator().manual_seed(2)
    out = SAMPLERS[name](gaussian_denoiser, x_t, grid(40), generator=gen, disable=True)
    assert out.mean().item() == pytest.approx(MU, abs=0.02)
    assert out.std().item() == pytest.approx(S, rel=0.1)


def test_ddim_eta_zero_equals_euler_and_eta_adds_noise():
    x_t = start()
    a = SAMPLERS["ddim"](gaussian_denoiser, x_t.clone(), grid(10), disable=True)
    b = SAMPLERS["euler"](gaussian_denoiser, x_t.clone(), grid(10), disable=True)
    torch.testing.assert_close(a, b)
    c = SAMPLERS["ddim"](gaussian_denoiser, x_t.clone(), grid(10), eta=1.0, disable=True,
                         generator=torch.Generator().manual_seed(0))
    assert (a - c).abs().max() > 1e-3


def conditional_denoiser(x, sigma, context=None):
    # A toy conditional model: the "prompt" moves the data mean.
    return gaussian_denoiser(x, sigma, mu=context.reshape(-1, *([1] * (x.ndim - 1))))


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_guided_on_a_batch_and_is_seeded(name):
    cond = {"context": torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)}
    uncond = {"context": torch.zeros(3, dtype=torch.float64)}
    model = CFGDenoiser(conditional_denoiser, cond, uncond, scale=3.0)
    x_t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    seen = []
    run = lambda: SAMPLERS[name](model, x_t.clone(), grid(12), generator=torch.Generator().manual_seed(5),
                                 callback=seen.append, disable=True)
    a, b = run(), run()
    assert torch.equal(a, b)
    assert len(seen) == 24 and set(seen[0]) == {"i", "x", "sigma", "denoised"}
    # Guidance pushes each sample's mean beyond its condition: uncond + 3 * (cond - uncond) = 3 * cond.
    means = a.mean(dim=(1, 2, 3))
    assert torch.all(torch.sign(means) == torch.sign(cond["context"]))
    assert means.abs().min() > 1.5


def test_cfg_scale_one_is_exactly_conditional_and_rescale_and_threshold():
    cond = {"context": torch.tensor([1.0])}
    uncond = {"context": torch.tensor([0.0])}
    x, sigma = torch.randn(1, 1, 4, 4) * 5, torch.tensor([5.0])
    assert torch.equal(CFGDenoiser(conditional_denoiser, cond, uncond, 1.0)(x, sigma), conditional_denoiser(x, sigma, **cond))
    plain = CFGDenoiser(conditional_denoiser, cond, uncond, 7.0)(x, sigma)
    rescaled = CFGDenoiser(conditional_denoiser, cond, uncond, 7.0, rescale=1.0)(x, sigma)
    cond_std = conditional_denoiser(x, sigma, **cond).std()
    assert rescaled.std().item() == pytest.approx(cond_std.item(), rel=1e-4)
    clamped = CFGDenoiser(conditional_denoiser, cond, uncond, 7.0, threshold=0.5)(x, sigma)
    assert clamped.abs().max() < plain.abs().max()


def test_unknown_sampler_lists_the_known_ones():
    with pytest.raises(UnknownSamplerError) as err:
        get_sampler("euler_b")
    assert "euler_b" in str(err.value) and all(n in str(err.value) for n in SAMPLERS)


def test_truncate_sigmas():
    sigmas = grid(10)
    assert torch.equal(truncate_sigmas(sigmas, 1.0), sigmas)
    assert len(truncate_sigmas(sigmas, 0.0)) == 1
    assert len(truncate_sigmas(sigmas, 0.5)) == 6
    with pytest.raises(ValueError, match="strength"):
        truncate_sigmas(sigmas, 1.5)
    assert set(DETERMINISTIC) < set(SAMPLERS)
