"""txt2img's x4 upscale pass (ldm.tasks.upscale_pass): the same images as txt2img then upscale by hand with the same
seeds, recorded in the settings; refused in one line with the hires fix, bad options, or a model too large for the
shipped upscaler."""

import numpy as np
import pytest
from factories import tiny_model, tiny_upscaler_model

from ldm.tasks import upscale_pass
from ldm.tasks.hires import HiresOptions
from ldm.tasks.txt2img import txt2img
from ldm.tasks.upscale import upscale
from ldm.tasks.upscale_pass import UpscaleOptions, UpscalePassError


@pytest.fixture(scope="module")
def models():
    return tiny_model(), tiny_upscaler_model()


def test_the_pass_equals_txt2img_then_upscale_by_hand_with_the_same_seeds(models):
    model, upscaler = models
    chosen = UpscaleOptions(steps=2, noise_level=30, upscaler_model=upscaler)
    made = txt2img(model, ["a cat", "a dog"], seed=3, steps=2, progress=False, upscale=chosen)
    plain = txt2img(model, ["a cat", "a dog"], seed=3, steps=2, progress=False)
    assert [image.size for image in made] == [(64, 64), (64, 64)] and plain[0].size == (16, 16)
    for i, prompt in enumerate(["a cat", "a dog"]):
        by_hand = upscale(upscaler, plain[i], prompt, "", 30, seed=3 + i, steps=2, progress=False)[0]
        assert np.array_equal(np.asarray(made[i]), np.asarray(by_hand))
    assert not np.array_equal(np.asarray(made[0]), np.asarray(made[1]))
    settings = made.settings
    assert settings["upscale"] == 4 and settings["upscale_steps"] == 2 and settings["upscale_noise_level"] == 30
    assert settings["height"] == 16 and settings["width"] == 16  # the sampled size, which --from-png gives again


def test_the_upscalers_own_steps_are_used_and_recorded_when_none_are_given(models):
    model, upscaler = models
    made = txt2img(model, "a cat", seed=1, steps=1, progress=False, upscale=UpscaleOptions(upscaler_model=upscaler))
    assert made.settings["upscale_steps"] == 50  # the upscale task's default (this tiny upscaler has no own)


def test_with_the_hires_fix_or_bad_options_it_is_one_line(models):
    model, upscaler = models
    chosen = UpscaleOptions(upscaler_model=upscaler)
    with pytest.raises(UpscalePassError, match="the hires fix and the x4 upscale pass both enlarge"):
        txt2img(model, "a cat", steps=1, progress=False, upscale=chosen, hires=HiresOptions())
    with pytest.raises(UpscalePassError, match="upscale steps must be a whole number >= 1, got 0"):
        txt2img(model, "a cat", steps=1, progress=False, upscale=UpscaleOptions(steps=0, upscaler_model=upscaler))
    with pytest.raises(UpscalePassError, match="noise level must be a whole number >= 0, got -1"):
        txt2img(model, "a cat", steps=1, progress=False, upscale=UpscaleOptions(noise_level=-1))


def test_a_model_larger_than_the_shipped_upscalers_input_is_refused_unless_one_is_given(models, monkeypatch):
    _, upscaler = models  # its input is 16 px, standing in for the shipped one's 64 px
    monkeypatch.setattr(upscale_pass, "shipped_upscaler", lambda device: upscaler)
    large = tiny_model(image_size=16)  # 32 px images
    with pytest.raises(UpscalePassError, match="made for images of at most 16 px and this model's are 32 px"):
        txt2img(large, "a cat", steps=1, progress=False, upscale=UpscaleOptions(steps=1))
    given = txt2img(large, "a cat", steps=1, progress=False, upscale=UpscaleOptions(steps=1, upscaler_model=upscaler))
    assert given[0].size == (128, 128)
    small = txt2img(models[0], "a cat", steps=1, progress=False, upscale=UpscaleOptions(steps=1))  # the shipped one
    assert small[0].size == (64, 64)
