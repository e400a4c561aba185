"""The predictor-corrector sampler against the analytic Gaussian denoiser (see test_samplers' docstring):
for data N(mu, s^2) per dimension, D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) exactly, so PC samples
must come out with mean mu and std s, and the Langevin corrector must bring them nearer than the predictor alone."""

import math

import pytest
import torch
from test_samplers import MU, SIGMA_MAX, S, gaussian_denoiser, grid

from ldm.sampling.samplers import SAMPLERS, InvalidSamplerOptionError, langevin_step_size, sample_pc

N = 20000


def run(steps: int, corrector_steps: int = 1, seed: int = 2) -> torch.Tensor:
    x_t = (
        MU
        + torch.randn(N, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        * (S**2 + SIGMA_MAX**2).sqrt()
    )
    return sample_pc(
        gaussian_denoiser,
        x_t,
        grid(steps),
        generator=torch.Generator().manual_seed(seed),
        disable=True,
        corrector_steps=corrector_steps,
    )


def std_error(out: torch.Tensor) -> float:
    return float((out.std(0) / S - 1).abs().max())


def test_pc_samples_have_the_data_mean_and_std():
    out = run(50)
    z = (out.mean(0) - MU) / (S / math.sqrt(N))
    assert z.abs().max() < 4, z
    torch.testing.assert_close(out.std(0), S, rtol=0.07, atol=0)


def test_the_corrector_brings_the_samples_nearer_and_more_steps_converge():
    with_corrector = [std_error(run(n)) for n in (10, 20, 50)]
    assert with_corrector == sorted(with_corrector, reverse=True), with_corrector
    for n in (20, 50):  # the predictor alone (reverse-SDE Euler-Maruyama) is further off at the same grid
        assert std_error(run(n, corrector_steps=0)) > 1.25 * std_error(run(n)), n


def test_the_step_rule_keeps_the_signal_to_noise_ratio():
    score, z = torch.randn(64, 3, 4, 4) * 7.0, torch.randn(64, 3, 4, 4)
    step = langevin_step_size(score, z, snr=0.2)
    ratio = (step * score).flatten(1).norm(dim=1).mean() / (2 * step).sqrt() / z.flatten(1).norm(dim=1).mean()
    assert float(ratio) == pytest.approx(0.2, rel=1e-5)


def test_pc_is_registered_costs_one_plus_corrector_calls_a_step_and_refuses_bad_options():
    assert SAMPLERS["pc"] is sample_pc
    calls = []
    counting = lambda x, sigma: calls.append(1) or gaussian_denoiser(x, sigma)
    sample_pc(counting, torch.randn(8, 4, dtype=torch.float64) * SIGMA_MAX, grid(7), disable=True, corrector_steps=2)
    assert len(calls) == 7 + 2 * 6  # no corrector after the last step, which lands on sigma = 0
    with pytest.raises(InvalidSamplerOptionError):
        sample_pc(gaussian_denoiser, torch.zeros(2, 4), grid(3), corrector_steps=-1)
