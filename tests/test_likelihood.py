"""The variational bound (ldm.diffusion.likelihood), learned variances and their sampler (ldm.sampling.variance_sampler)."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.diffusion.likelihood import (
    ReverseProcess,
    UnknownVarianceError,
    bits_per_dim,
    gaussian_nll,
    hybrid_loss,
    stratified_timesteps,
    variational_bound,
)
from ldm.diffusion.parameterisation import VPParameterisation
from ldm.diffusion.schedules import get_sigmas
from ldm.sampling.samplers import sample_ddpm
from ldm.sampling.variance_sampler import LearnedVarianceDenoiser, sample_ddpm_learned_variance
from ldm.toys.points import ToyDiffusion, make_data, make_thin_line, toy_alphas_cumprod

STD = 0.5  # Gaussian test data N(0, STD^2 I) in 2-D


def gaussian_data(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points and their exact -log p in nats."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * STD
    return x, gaussian_nll(x, torch.zeros_like(x), torch.full_like(x, math.log(STD**2))).sum(1)


def optimal_x0(z: torch.Tensor, alpha2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """E[x0 | z = alpha x0 + sigma eps] for x0 ~ N(0, STD^2 I): the best denoiser there is."""
    return alpha2.sqrt() * STD**2 * z / (alpha2 * STD**2 + sigma2)


def test_the_discrete_bound_of_the_optimal_denoiser_matches_the_gaussian_closed_form():
    """Tolerance 0.03 bits/dim: one noise draw per step and point leaves a standard error of ~0.017 on 2,000
    points; beta~ (fixed_small) underestimates the reverse variance at high noise and is far looser."""
    x, exact = gaussian_data()
    ab = toy_alphas_cumprod("linear").double()
    process = ReverseProcess(ab)

    def predict(x_t, t):
        return optimal_x0(x_t, ab[t][:, None], 1 - ab[t][:, None]), None

    exact_bpd = bits_per_dim(float(exact.mean()), 2)
    large = variational_bound(predict, x, process, "fixed_large", generator=torch.Generator().manual_seed(0))
    small = variational_bound(predict, x, process, "fixed_small", generator=torch.Generator().manual_seed(0))
    assert abs(bits_per_dim(float(large["total"].mean()), 2) - exact_bpd) < 0.03
    assert bits_per_dim(float(small["total"].mean()), 2) > exact_bpd + 0.5


def test_a_stratified_estimate_agrees_with_the_full_sum():
    x, _ = gaussian_data(500)
    ab = toy_alphas_cumprod("cosine").double()
    process = ReverseProcess(ab)

    def predict(x_t, t):
        return optimal_x0(x_t, ab[t][:, None], 1 - ab[t][:, None]), None

    full = variational_bound(predict, x, process, "fixed_large", generator=torch.Generator().manual_seed(0))
    steps, weights = stratified_timesteps(1000, 100, torch.Generator().manual_seed(1))
    assert len(steps) == 100 and steps.unique().numel() == 100 and steps.min() >= 1
    assert float(weights.sum()) == pytest.approx(999)
    part = variational_bound(predict, x, process, "fixed_large", (steps, weights), torch.Generator().manual_seed(2))
    assert part["timesteps"] == 101 and full["timesteps"] == 1000
    # the decoder term (about -7 nats here) is exact in both; the rest, 8.7 nats, is estimated from 100 steps:
    # 0.2 nats per point (0.14 bits/dim) is about 2% of it, and the full sum's own noise is ~0.03
    assert abs(float(part["total"].mean() - full["total"].mean())) < 0.2


def test_the_learned_variance_interpolates_in_log_space_and_needs_its_output():
    process = ReverseProcess(toy_alphas_cumprod("linear"))
    t, like = torch.tensor([10, 500]), torch.zeros(2, 3)
    small, large = process.log_variance(t, like, "fixed_small"), process.log_variance(t, like, "fixed_large")
    assert (small < large).all()
    half = process.log_variance(t, like, "learned", torch.full_like(like, 0.5))
    assert torch.allclose(half, (small + large) / 2)
    with pytest.raises(UnknownVarianceError):
        process.log_variance(t, like, "learned")
    with pytest.raises(UnknownVarianceError):
        process.log_variance(t, like, "tiny")


def test_the_hybrid_loss_gives_a_finite_bound_and_trains_only_the_variance_through_it():
    torch.manual_seed(0)
    process = ReverseProcess(toy_alphas_cumprod("linear"))
    x0 = make_data("moons", 64)
    t = torch.randint(0, 1000, (64,))
    t[0] = 0  # the decoder term too
    noise = torch.randn_like(x0)
    x_t = (
        process.alphas_cumprod[t][:, None].sqrt() * x0 + (1 - process.alphas_cumprod[t][:, None]).sqrt() * noise
    ).float()
    eps_hat = (noise + 0.1 * torch.randn_like(noise)).requires_grad_(True)
    raw = torch.zeros_like(noise, requires_grad=True)
    loss, vlb = hybrid_loss(process, x0, x_t, t, noise, eps_hat, raw)
    assert torch.isfinite(loss) and torch.isfinite(vlb).all() and vlb.shape == (64,)
    simple_grad = torch.autograd.grad(torch.nn.functional.mse_loss(eps_hat, noise), eps_hat)[0]
    loss.backward()
    assert torch.allclose(eps_hat.grad, simple_grad)  # the mean is stop-gradiented in L_vlb
    assert raw.grad.abs().sum() > 0


def test_with_v_zero_the_learned_variance_sampler_is_ancestral_ddpm():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 4)
    ab = toy_alphas_cumprod("linear")
    par = VPParameterisation(ab, "eps")

    def zero_v(x, t, **cond):
        out = net(x)
        return torch.cat([out[:, :2], -torch.ones_like(out[:, 2:])], 1)  # raw -1 -> v = 0

    model = LearnedVarianceDenoiser(zero_v, par)
    sigmas = get_sigmas(ab, 8, spacing="trailing")
    x = torch.randn(16, 2) * sigmas[0]
    ours = sample_ddpm_learned_variance(model, x, sigmas, generator=torch.Generator().manual_seed(1), disable=True)
    ref = sample_ddpm(model.mean_only(), x, sigmas, generator=torch.Generator().manual_seed(1), disable=True)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_on_toy_data_the_learned_variance_beats_both_fixed_ones_in_nll():
    """On the thin line N(0, diag(1, 0.001^2)) (ldm.toys.points.make_thin_line), the right reverse variance is beta~_t
    across the line and beta_t along it: the learned v finds both, each fixed one has one wrong. Measured
    (seeds 0 and 1): learned -1.00 / -0.98 bits/dim, the best fixed bound of either model -0.91 / -0.87,
    fixed_small -0.52 / -0.50, so the margins asserted are a third and a half of those seen.

    On the spiral the learned bound beats beta_t by only ~0.004 bits/dim after 10,000 steps (there beta_t is
    near-optimal at every t; see README), too close and too slow for a test."""
    data, held = make_thin_line(2000, seed=0), make_thin_line(500, seed=1)
    fixed = ToyDiffusion(data, variance="fixed_small", seed=0, lr_decay_steps=1500)
    learned = ToyDiffusion(data, variance="learned", seed=0, lr_decay_steps=1500)
    fixed.train(1500)
    learned.train(1500)
    steps = stratified_timesteps(1000, 200, torch.Generator().manual_seed(0))
    bounds = {
        (name, variance): toy.nll(held, variance, timesteps=steps)["bits_per_dim"]
        for name, toy in (("simple", fixed), ("hybrid", learned))
        for variance in ("fixed_small", "fixed_large")
    }
    learned_bpd = learned.nll(held, "learned", timesteps=steps)["bits_per_dim"]
    assert math.isfinite(learned_bpd)
    assert learned_bpd < min(bounds.values()) - 0.03, (learned_bpd, bounds)  # beats fixed_large (beta_t)
    assert learned_bpd < bounds["hybrid", "fixed_small"] - 0.2, (learned_bpd, bounds)  # and beta~_t
    samples = learned.sample_learned_variance(200, steps=5)
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()


def test_a_decaying_learning_rate_follows_a_half_cosine_to_zero():
    toy = ToyDiffusion(make_data("moons", 64), hidden=16, lr=1e-2, batch_size=16, lr_decay_steps=4)
    assert [toy.learning_rate(k) for k in (0, 2, 4, 9)] == pytest.approx([1e-2, 5e-3, 0, 0])
    toy.train(4)
    assert toy.optimizer.param_groups[0]["lr"] == pytest.approx(toy.learning_rate(3))
    constant = ToyDiffusion(make_data("moons", 64), hidden=16)
    assert constant.learning_rate(10**6) == constant.lr
