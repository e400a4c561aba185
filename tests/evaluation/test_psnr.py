"""PSNR (ldm.evaluation.metrics.psnr), the one the scripts and benchmarks use, on images of each value range."""

import math

import numpy as np
import torch

from ldm.evaluation.metrics import psnr


def test_psnr_of_a_known_error_in_each_range():
    a = np.zeros((2, 3, 4, 4))
    assert math.isclose(psnr(a, a + 0.1), 20.0)  # [0, 1]: mse 0.01
    assert math.isclose(psnr(torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.2), data_range=2), 20.0, rel_tol=1e-6)
    assert math.isclose(psnr(np.zeros(8, np.uint8), np.full(8, 51, np.uint8), data_range=255), 20 * math.log10(5))
    assert psnr(a, a) == math.inf


def test_psnr_is_the_same_for_tensors_and_arrays():
    x, y = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(3, 8, 8)
    assert math.isclose(psnr(x, y), psnr(x.numpy(), y.numpy()), rel_tol=1e-12)
