"""`ldm eval --nll` on a latent model (ldm.evaluate_likelihood)."""
from __future__ import annotations

import math

import pytest
import torch

from factories import tiny_inpaint_model, tiny_model
from ldm.errors import InvalidOptionError
from ldm.evaluate_likelihood import latent_nll


def test_the_latent_bound_is_finite_and_says_it_is_in_latent_space():
    model = tiny_model().eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = latent_nll(model, images, ["a", "b", "c"], timesteps=8, batch_size=2)
    T = model.parameterisation().num_timesteps  # the tiny model has only a few: all of them are evaluated
    assert math.isfinite(result.bits_per_dim) and result.images == 3 and result.timesteps == min(9, T)
    assert result.dims == model.latent_channels * (32 // model.downscale) ** 2
    assert "latent space" in result.line()
    small = latent_nll(model, images, ["a", "b", "c"], timesteps=8, variance="fixed_small", batch_size=2)
    assert small.bits_per_dim != result.bits_per_dim


def test_the_latent_bound_refuses_what_it_cannot_evaluate():
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(InvalidOptionError):
        latent_nll(tiny_model(), images, ["a"], variance="learned")
    with pytest.raises(InvalidOptionError):
        latent_nll(tiny_inpaint_model(), images, ["a"])
