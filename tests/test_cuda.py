"""What only a CUDA GPU can check: half-precision sampling, the attention backends and a training step there.
Each test skips cleanly without CUDA (benchmarks/gpu.py measures the speed when one is lent)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from factories import tiny_model

from ldm.tasks.txt2img import txt2img

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def fp32_images_and_model():
    model = tiny_model(0)
    return txt2img(model, ["a cat", "a dog"], seed=1, steps=4, progress=False), model


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) for image in images])


@cuda
@pytest.mark.parametrize(
    "dtype, precision",
    [(torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp16"), (torch.float32, "bf16")],
)
def test_half_precision_sampling_on_cuda_is_close_to_fp32_on_cpu(fp32_images_and_model, dtype, precision):
    reference, model = fp32_images_and_model
    model = copy.deepcopy(model).to("cuda").networks_to(dtype)
    got = txt2img(model, ["a cat", "a dog"], seed=1, steps=4, progress=False, precision=precision)
    diff = np.abs(pixels(got) - pixels(reference))
    assert diff.mean() <= 3.0 and diff.max() <= 32, (diff.mean(), diff.max())


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["sdpa", "auto"])  # auto: xformers where installed
def test_attention_backends_match_the_plain_formula_on_cuda(dtype, backend, monkeypatch):
    import ldm.models.attention as attention

    if backend == "auto" and not attention.xformers_available():
        pytest.skip("xformers is not installed")
    heads, dim = 4, 64
    q, k, v = (torch.randn(2, 256, heads * dim, device="cuda", dtype=dtype) for _ in range(3))
    monkeypatch.setattr(attention, "_BACKEND", backend)
    got = attention.attention(q, k, v, heads).float()
    split = [t.float().reshape(2, 256, heads, dim).transpose(1, 2) for t in (q, k, v)]
    want = torch.softmax(split[0] @ split[1].transpose(-1, -2) / dim**0.5, dim=-1) @ split[2]
    assert (got - want.transpose(1, 2).reshape(2, 256, heads * dim)).abs().max() < 2e-2


@cuda
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_one_short_training_step_on_cuda(tmp_path, precision):
    from ldm.training.run import train
    from ldm.training.shapes import make_shapes_dataset
    from ldm.training.tiny import tiny_train_config

    root = make_shapes_dataset(tmp_path / "shapes", size=16, count=8)
    cfg = tiny_train_config(
        "ldm",
        root,
        tmp_path / "run",
        ["trainer.max_steps=2", "trainer.accelerator=gpu", "trainer.devices=1", f"trainer.precision={precision}"],
    )
    train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
