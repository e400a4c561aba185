"""Mask reading, feathering and random training masks; upscaler degradations."""

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.core.masks import (
    EmptyMaskError,
    MaskError,
    MaskSizeError,
    border_mask,
    check_mask,
    feather,
    mask_from_image,
    random_border_mask,
    random_box_mask,
    random_mask,
    random_stroke_mask,
)
from ldm.data.degradations import Degradation, DegradationError, add_noise, downscale, gaussian_blur, jpeg_roundtrip


def test_mask_from_l_rgb_and_rgba_alpha():
    arr = np.zeros((8, 8), np.uint8)
    arr[2:5, 3:6] = 255
    expected = arr / 255.0
    assert np.array_equal(mask_from_image(Image.fromarray(arr, "L")), expected)
    assert np.array_equal(mask_from_image(Image.fromarray(arr, "L").convert("RGB")), expected)
    rgba = np.zeros((8, 8, 4), np.uint8)  # black paint everywhere: only alpha says what to repaint
    rgba[..., 3] = arr
    assert np.array_equal(mask_from_image(Image.fromarray(rgba, "RGBA")), expected)
    # Opaque RGBA is a plain image saved with alpha: its brightness is the mask.
    assert np.array_equal(mask_from_image(Image.fromarray(arr, "L").convert("RGBA")), expected)


def test_check_mask_errors():
    with pytest.raises(MaskSizeError, match="mask is 8x6 but the image is 8x8"):
        check_mask(np.ones((6, 8), np.float32), (8, 8))
    with pytest.raises(EmptyMaskError, match="all black"):
        check_mask(np.full((8, 8), 0.2, np.float32), (8, 8))
    check_mask(np.ones((8, 8), np.float32), (8, 8))


def test_feather_ramps_inside_the_hole_only():
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    f = feather(m, 3)
    assert (f[m == 0] == 0).all()  # kept pixels stay exactly kept
    assert f[0, 0, 16, 16] == 1  # deep inside: fully repainted
    assert 0 < f[0, 0, 16, 8] < f[0, 0, 16, 9] < f[0, 0, 16, 10] < 1  # a ramp inward from the edge
    edge = torch.ones(1, 1, 8, 8)
    assert torch.equal(feather(edge, 3), edge)  # the image border is no seam
    assert torch.equal(feather(m, 0), m)


def test_border_mask():
    m = border_mask(10, 12, left=2, top=3)
    assert m[:3].all() and m[:, :2].all() and m[3:, 2:].sum() == 0
    with pytest.raises(MaskError, match="leave nothing"):
        border_mask(10, 12, left=6, right=6)


@pytest.mark.parametrize("make", [random_box_mask, random_stroke_mask, random_border_mask])
def test_random_masks_are_binary_partial_and_reproducible(make):
    a = make(64, 48, np.random.default_rng(5))
    b = make(64, 48, np.random.default_rng(5))
    c = make(64, 48, np.random.default_rng(6))
    assert a.shape == (64, 48) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < a.mean() < 1
    assert set(np.unique(a)) <= {0.0, 1.0}


def test_random_mask_mixture_and_full_prob():
    rng = np.random.default_rng(0)
    masks = [random_mask(32, 32, rng, kinds=("box", "stroke")) for _ in range(20)]
    assert all(0 < m.mean() < 1 for m in masks)
    assert len({m.tobytes() for m in masks}) == 20
    assert random_mask(16, 16, rng, full_prob=1.0).all()
    with pytest.raises(MaskError, match="unknown mask kinds"):
        random_mask(16, 16, rng, kinds=("circle",))


def _photo(size=64):
    y, x = np.mgrid[:size, :size]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], -1) % 256
    return Image.fromarray(arr.astype(np.uint8))


def test_degradation_steps():
    img = _photo()
    assert downscale(img, 4).size == (16, 16)
    with pytest.raises(DegradationError, match="not divisible"):
        downscale(img.crop((0, 0, 62, 64)), 4)
    blurred = np.asarray(gaussian_blur(img, 2.0), float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(np.asarray(img, float), axis=1)).mean()
    noisy = np.asarray(add_noise(img, 10.0, np.random.default_rng(0)), float)
    assert 5 < np.std(noisy - np.asarray(img, float)) < 15
    jpg = np.asarray(jpeg_roundtrip(img, 10), float)
    assert 0 < np.abs(jpg - np.asarray(img, float)).mean() < 40
    with pytest.raises(DegradationError, match="JPEG quality"):
        jpeg_roundtrip(img, 0)


def test_degradation_pipeline_reproducible():
    deg = Degradation(blur_prob=1, noise_prob=1, jpeg_prob=1)
    a, pa = deg(_photo(), np.random.default_rng(1))
    b, pb = deg(_photo(), np.random.default_rng(1))
    assert a.size == (16, 16) and pa == pb and np.array_equal(np.asarray(a), np.asarray(b))
    assert set(pa) == {"blur_sigma", "resample", "noise_std", "jpeg_quality"}
    plain, p = Degradation(blur_prob=0, noise_prob=0, jpeg_prob=0, resamplers=("bicubic",))(
        _photo(), np.random.default_rng(1)
    )
    assert p == {"resample": "bicubic"}
    assert np.array_equal(np.asarray(plain), np.asarray(downscale(_photo(), 4)))
