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
