"""The hires fix (ldm.tasks.hires): txt2img at the base size, upscale, img2img at the target size, one composition of
the existing tasks, so its result is bit for bit what the three stages give by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import tiny_model, tiny_upscaler_model
from PIL import Image

import ldm.tasks.hires as hires_module
import ldm.tasks.txt2img as txt2img_module
from ldm.core.errors import LdmError
from ldm.sampling.samplers import strength_steps
from ldm.tasks.hires import HiresError, HiresOptions
from ldm.tasks.img2img import img2img
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale import upscale

PROMPTS = ["a cat", "a dog"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_bicubic_hires_is_txt2img_then_resize_then_img2img_by_hand(model):
    hires = HiresOptions(scale=2, steps=4, strength=0.6, upscaler="bicubic")
    made = txt2img(model, PROMPTS, height=16, width=16, seed=5, steps=3, hires=hires, progress=False)
    first = txt2img(model, PROMPTS, height=16, width=16, seed=5, steps=3, progress=False)
    for i, prompt in enumerate(PROMPTS):
        big = first[i].resize((32, 32), Image.Resampling.BICUBIC)
        # each image's second pass reuses its own seed (seed + i), as A1111's does; it runs all 4 of its steps, the
        # last 4 of a grid of int(4 / 0.6) = 6 (A1111's), which img2img at strength 4 / 6 of 6 steps runs
        by_hand = img2img(model, big, prompt, strength=4 / 6, seed=5 + i, steps=6, progress=False)[0]
        assert same(made[i], by_hand)
    assert made[0].size == (32, 32)
    assert made.settings["hires_scale"] == 2 and made.settings["hires_upscaler"] == "bicubic"
    assert made.settings["strength"] == 0.6 and made.settings["hires_steps"] == 4
    assert made.settings["height"] == 16  # the base size, as A1111's Size


def test_model_hires_is_txt2img_then_x4_upscaler_then_resize_then_img2img_by_hand(model):
    upscaler = tiny_upscaler_model()
    hires = HiresOptions(scale=2, strength=0.5, upscaler="model", upscaler_model=upscaler)
    made = txt2img(model, "a cat", height=16, width=16, seed=2, steps=2, hires=hires, progress=False)[0]
    first = txt2img(model, "a cat", height=16, width=16, seed=2, steps=2, progress=False)[0]
    four_times = upscale(upscaler, first, "a cat", seed=2, progress=False)[0]
    assert four_times.size == (64, 64)
    big = four_times.resize((32, 32), Image.Resampling.BICUBIC)
    # steps 0: the first pass's 2, run as the last 2 of a grid of int(2 / 0.5) = 4
    by_hand = img2img(model, big, "a cat", strength=2 / 4, seed=2, steps=4, progress=False)[0]
    assert same(made, by_hand)


def test_latent_hires_gives_img2img_the_first_pass_latent_resized_bilinearly(model, monkeypatch):
    first_latents, given = [], []
    denoise, img2img_latents = txt2img_module.denoise, hires_module.img2img_latents
    monkeypatch.setattr(
        txt2img_module, "denoise", lambda *a, **k: first_latents.append(denoise(*a, **k)) or first_latents[-1]
    )
    monkeypatch.setattr(
        hires_module, "img2img_latents", lambda m, x, *a, **k: given.append(x) or img2img_latents(m, x, *a, **k)
    )
    hires = HiresOptions(scale=1.5)
    made = txt2img(model, PROMPTS, height=16, width=24, seed=1, steps=2, hires=hires, progress=False)
    assert [im.size for im in made] == [(32, 24)] * 2  # 24x16 x1.5 = 36x24 px, down to whole 8 px steps: 32x24
    f = model.downscale
    for i in range(2):
        expected = F.interpolate(first_latents[0][i : i + 1], size=(24 // f, 32 // f), mode="bilinear", antialias=False)
        assert torch.equal(given[i], expected)


def test_a_batch_image_is_the_image_its_seed_gives_alone(model):
    hires = HiresOptions(upscaler="latent", steps=2)
    batch = txt2img(model, PROMPTS, height=16, width=16, seed=7, steps=2, hires=hires, progress=False)
    alone = txt2img(model, PROMPTS[1], height=16, width=16, seed=8, steps=2, hires=hires, progress=False)
    assert same(batch[1], alone[0])


@pytest.mark.parametrize(
    "steps, strength, grid",
    [(20, 0.7, 28), (20, 0.5, 40), (4, 0.6, 6), (30, 1.0, 30), (3, 0.999, 3), (20, 0.01, 1000), (5, 0.0, 5)],
)
def test_the_second_pass_runs_all_its_steps_on_a1111s_stretched_grid(steps, strength, grid):
    """A1111's setup_img2img_steps with the steps given: a grid of int(steps / min(strength, 0.999)) steps (here
    capped at the model's 1000 timesteps), of which the last `steps` run; strength 0 runs none."""
    got_grid, got_strength = hires_module.hires_grid(steps, strength, 1000)
    assert got_grid == grid
    assert strength_steps(got_grid, got_strength) == (steps if strength else 0)


def test_the_second_pass_makes_one_model_call_per_requested_step(model, monkeypatch):
    calls = []
    unet_forward = model.unet.forward
    monkeypatch.setattr(model.unet, "forward", lambda *a, **k: calls.append(1) or unet_forward(*a, **k))
    hires = HiresOptions(scale=2, steps=5, strength=0.3, upscaler="latent")
    txt2img(model, "a cat", height=16, width=16, steps=2, guidance_scale=1.0, hires=hires, progress=False)
    assert len(calls) == 2 + 5  # floor(0.3 x 5) = 1 before: the second pass now runs all five, as A1111's


def test_bad_hires_options_are_refused_by_name(model):
    for bad, match in (
        (HiresOptions(upscaler="esrgan"), "unknown hires upscaler 'esrgan'"),
        (HiresOptions(scale=0.5), "hires scale"),
        (HiresOptions(steps=-1), "hires steps"),
        (HiresOptions(strength=1.5), "strength"),
    ):
        with pytest.raises(LdmError, match=match):
            txt2img(model, "a cat", height=16, width=16, steps=1, hires=bad, progress=False)
    with pytest.raises(HiresError):
        HiresOptions(scale=float("nan")).validate()
