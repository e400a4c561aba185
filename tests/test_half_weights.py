"""A model whose weights are bf16 (fp16 on CUDA) samples end to end, close to its fp32 self.

Each network casts its inputs to its weights' dtype (the samplers keep latents and sigmas in fp32), GroupNorm32
runs in fp32 with its weights cast along, and the noise schedule stays fp32 however the weights are cast.
The --precision autocast path (fp32 weights) is checked beside it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from factories import tiny_model
from golden.cases import picture

from ldm.models.unet import GroupNorm32
from ldm.tasks.img2img import img2img
from ldm.tasks.txt2img import txt2img

# Grey levels of the uint8 images (most, mean). Measured on the tiny model with bf16 weights: txt2img 2 and 0.5,
# img2img (the bf16 encoder too) 8 and 1.0; a schedule rounded to bf16 (the first sigmas become 0): 255 and 130.
TXT2IMG_TOLERANCE, IMG2IMG_TOLERANCE = (8, 1.5), (16, 2.5)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) for image in images])


def close(images, reference, tolerance=TXT2IMG_TOLERANCE) -> None:
    got, want = pixels(images), pixels(reference)
    diff = np.abs(got - want)
    assert diff.max() <= tolerance[0] and diff.mean() <= tolerance[1], (diff.max(), diff.mean())


def check_finite(info: dict) -> None:
    """A sampler callback: NaN or Inf latents would still make (black) uint8 images, so they are caught here."""
    assert torch.isfinite(info["denoised"]).all() and torch.isfinite(info["x"]).all(), f"step {info['i']}"


def make(model, **options):
    return txt2img(
        model, ["a cat", "a dog"], "blurry", seed=1, steps=4, progress=False, callback=check_finite, **options
    )


@pytest.fixture(scope="module")
def fp32_model():
    return tiny_model(0)


@pytest.fixture
def model(fp32_model):
    """A fresh copy of the fp32 tiny model, to cast (building one takes seconds, copying it a fraction)."""
    return copy.deepcopy(fp32_model)


@pytest.fixture(scope="module")
def fp32_images(fp32_model):
    return make(fp32_model)


def test_bf16_weights_sample_close_to_fp32(model, fp32_images):
    model.to(torch.bfloat16)
    assert model.unet.dtype == torch.bfloat16 and model.vae.dtype == torch.bfloat16
    close(make(model), fp32_images)
    close(make(model, precision="bf16"), fp32_images)  # bf16 weights under bf16 autocast too


def test_cpu_bf16_channels_last_samples_close_to_fp32(model, fp32_images):
    # What `--precision bf16` does on a CPU (ldm.interfaces.cli.common.use_cpu_bf16): bf16 weights, a channels-last U-Net.
    model.networks_to(torch.bfloat16, channels_last=True)
    convs = [m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    close(make(model, precision="bf16"), fp32_images)


def test_cli_precision_bf16_casts_the_model_on_cpu(fp32_model, monkeypatch, caplog):
    import ldm.core.devices
    import ldm.interfaces.cli.common as common

    for fast in (True, False):
        model = copy.deepcopy(fp32_model)
        monkeypatch.setattr(ldm.core.devices, "cpu_has_fast_bf16", lambda fast=fast: fast)
        caplog.clear()
        common.use_cpu_bf16(model)
        assert model.dtype == torch.bfloat16 and model.vae.dtype == torch.float32  # the U-Net only
        conv = next(m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        close(make(model, precision="bf16"), make(fp32_model))
        assert ("emulates bf16" in caplog.text) is not fast  # the slow case is said, not refused


def test_casting_the_weights_keeps_the_schedule_fp32(model):
    schedule = model.alphas_cumprod.clone()
    model.to(torch.bfloat16)
    assert model.alphas_cumprod.dtype == torch.float32 and torch.equal(model.alphas_cumprod, schedule)
    model.half().float()
    assert torch.equal(model.alphas_cumprod, schedule)


def test_bf16_autocast_with_fp32_weights_still_works(fp32_model, fp32_images):
    close(make(fp32_model, precision="bf16"), fp32_images)


def test_img2img_with_bf16_weights_encodes_and_decodes(model):
    reference = img2img(model, picture(0), "a cat", strength=0.6, seed=8, steps=4, progress=False)
    close(
        img2img(model.to(torch.bfloat16), picture(0), "a cat", strength=0.6, seed=8, steps=4, progress=False),
        reference,
        IMG2IMG_TOLERANCE,
    )


def test_group_norm32_with_half_weights_normalises_in_fp32():
    norm = GroupNorm32(32, 64)
    with torch.no_grad():
        norm.weight.normal_(1, 0.1), norm.bias.normal_(0, 0.1)
    x = torch.randn(2, 64, 4, 4) * 3 + 1
    want = norm(x)
    norm.to(torch.bfloat16)
    got = norm(x.bfloat16())
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 weights need a CUDA device")
def test_fp16_weights_on_cuda_sample_close_to_fp32(model):
    model.to("cuda")
    reference = make(model)
    close(make(model.half()), reference)
