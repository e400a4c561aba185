"""--compile: the U-Net compiled by inductor with frozen weights samples what the eager one does."""

from __future__ import annotations

import copy

import numpy as np
import torch
from factories import tiny_model

from ldm.tasks.txt2img import txt2img


def test_compiled_unet_samples_like_the_eager_one():
    eager = tiny_model(0)
    compiled = copy.deepcopy(eager).compile_unet()
    assert compiled.unet is not eager.unet and hasattr(compiled.unet, "_orig_mod")
    made = [txt2img(model, ["a cat"], seed=3, steps=3, progress=False) for model in (eager, compiled)]
    a, b = (np.asarray(images[0], dtype=np.float64) for images in made)
    assert np.abs(a - b).max() <= 2  # float reassociation only; a wrong graph is off by far more
    assert compiled.dtype == torch.float32


def test_compile_with_cpu_bf16_compiles_the_bf16_unet_once_for_all_steps(monkeypatch):
    # What `--compile --precision bf16` does (ldm.interfaces.cli.common): bf16 channels-last weights, then compile.
    # Inductor takes minutes here under load, so the graph runs through aot_eager: the same capture, guards and
    # autocast handling, checked for one graph over every step; inductor's bf16 numerics are benchmarks/unet_speed.py's.
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    import ldm.interfaces.cli.common as common

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    eager = tiny_model(0)
    common.use_cpu_bf16(eager)
    compiled = copy.deepcopy(eager).compile_unet()
    made = [txt2img(m, ["a cat"], seed=3, steps=3, precision="bf16", progress=False) for m in (eager, compiled)]
    a, b = (np.asarray(images[0], dtype=np.float64) for images in made)
    assert compiled.dtype == torch.bfloat16 and hasattr(compiled.unet, "_orig_mod")
    diff = np.abs(a - b)  # bf16 rounding differs where the graph's ops are decomposed; a wrong graph is far off
    assert diff.max() <= 12 and diff.mean() <= 1.5, (diff.max(), diff.mean())
    assert counters["stats"]["unique_graphs"] == 1  # one capture serves all steps: no recompile per step
    torch._dynamo.reset()
