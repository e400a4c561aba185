"""Seamless tiling (--tiling, tiling=): on the shipped default model the left and right edges of a tiled image join,
and the model is unchanged after the run."""

import numpy as np
import pytest
import torch

from ldm.formats.load import load_model
from ldm.tasks.base import start_noise
from ldm.tasks.txt2img import txt2img


@pytest.fixture(scope="module")
def model():
    return load_model(variant="full")


def seam_ratio(image: np.ndarray) -> float:
    """Mean |last column - first column| over the mean |column j+1 - column j| inside the picture: about 1 when
    the right edge runs on into the left as the picture's own columns do into each other."""
    return float(np.abs(image[:, -1] - image[:, 0]).mean() / np.abs(np.diff(image, axis=1)).mean())


def test_a_tiled_image_has_no_left_right_edge_and_the_model_is_unchanged(model):
    # The emoji model draws on white, so a plain image's edges are both white (seam ratio 0.04-0.25 measured) and its
    # seam alone shows nothing. What shows the join: with tiling, rolling the start noise by half the width rolls the
    # picture by half its width, exactly (the picture is the same wherever it is cut); a plain picture changes.
    noise = start_noise((model.latent_channels, 16, 16), [0], model.device)
    rolled = noise.roll(8, -1)

    def run(latents: torch.Tensor, **tiling) -> np.ndarray:
        out = txt2img(model, "a red heart", steps=6, height=64, width=64, latents=latents, progress=False, **tiling)
        return np.asarray(out[0], dtype=float)

    plain, plain_rolled = run(noise), run(rolled)
    tiled, tiled_rolled = run(noise, tiling="x"), run(rolled, tiling="x")
    assert np.abs(tiled_rolled - np.roll(tiled, 32, axis=1)).mean() < 0.05  # measured 0.000 grey levels
    assert np.abs(plain_rolled - np.roll(plain, 32, axis=1)).mean() > 20  # measured 45
    assert 0.5 < seam_ratio(tiled) < 1.5  # measured 1.13: the edge joins like any two neighbouring columns
    assert np.abs(tiled - plain).mean() > 5  # the option did change the picture
    assert np.array_equal(run(noise), plain)  # a later plain run is the plain run before: the model is unchanged
