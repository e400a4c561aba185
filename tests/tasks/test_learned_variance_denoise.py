"""txt2img_learned_variance goes through the one `denoise`: its images are exactly those of the loop it had of its own
(kept here as `own_loop`, the code it ran before), for text and class-conditional models, guided and not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import tiny_class_config, tiny_model, tiny_model_from

from ldm.io.images import tensor_to_pil
from ldm.sampling.options import SamplingOptions, check_finite_latents
from ldm.sampling.precision import autocast
from ldm.sampling.variance_sampler import GuidedVarianceDenoiser, LearnedVarianceDenoiser, sample_ddpm_learned_variance
from ldm.tasks.base import image_generators, model_sigmas, resolve_options, start_noise
from ldm.tasks.prompts import prompt_lists
from ldm.tasks.txt2img import image_size, prepare, txt2img, txt2img_learned_variance


@torch.no_grad()
def own_loop(model, prompts, options, seed, label=None):
    """The loop txt2img_learned_variance ran before it went through `denoise` (its code, unchanged)."""
    options = resolve_options(options, {}, model=model)
    prompts, negatives = prompt_lists(prompts, "")
    height, width = image_size(model, None, None)
    conditioning = prepare(model, prompts, negatives, options, label, size=(height, width))
    noise = start_noise(
        (model.latent_channels, height // model.downscale, width // model.downscale),
        [seed + i for i in range(len(prompts))],
        model.device,
    )
    sigmas = model_sigmas(model, options)
    denoiser = GuidedVarianceDenoiser(
        LearnedVarianceDenoiser(model.unet, model.parameterisation()),
        conditioning.cond,
        conditioning.uncond,
        options.guidance_scale,
    )
    with autocast(model.device, "fp32"):  # the default precision; no longer an option
        generators = image_generators(model.device, seed, len(prompts))
        latents = sample_ddpm_learned_variance(denoiser, noise * sigmas[0], sigmas, disable=True, generator=generators)
        check_finite_latents(latents)
        images = model.decode_latent(latents)
    return tensor_to_pil(images)


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


@pytest.fixture(scope="module")
def model():
    return tiny_model(3, learned_variance=True)


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(sampler="ddpm", steps=4, guidance_scale=2.0, spacing="leading"),
        SamplingOptions(sampler="ddpm", steps=3, guidance_scale=1.0, spacing="trailing", karras=True),
    ],
)
def test_the_learned_variance_images_are_those_of_its_own_loop(model, options):
    made = txt2img_learned_variance(model, ["a cat", "a dog"], seed=5, options=options, progress=False)
    own = own_loop(model, ["a cat", "a dog"], options, 5)
    assert len(made) == 2 and all(np.array_equal(a, b) for a, b in zip(pixels(made), pixels(own)))


def test_the_keyword_call_is_its_own_loop_with_trailing_spacing(model):
    made = txt2img_learned_variance(model, "a cat", seed=2, steps=3, guidance_scale=3.0, progress=False)
    options = SamplingOptions(sampler="ddpm", steps=3, guidance_scale=3.0, spacing="trailing")
    assert np.array_equal(pixels(made)[0], pixels(own_loop(model, "a cat", options, 2))[0])
    assert made.settings["sampler"] == "ddpm_learned_variance" and made.settings["learned_variance"] is True


def test_a_class_label_reaches_the_learned_variance_as_in_its_own_loop():
    cfg = tiny_class_config(["a", "b"])
    cfg["model"]["params"]["learned_variance"] = True
    cfg["model"]["params"]["unet_config"]["params"]["out_channels"] = 8  # [eps, raw v]
    model = tiny_model_from(cfg)
    options = SamplingOptions(sampler="ddpm", steps=3, guidance_scale=2.0)
    made = txt2img_learned_variance(model, "", seed=1, label="b", options=options, progress=False)
    assert np.array_equal(pixels(made)[0], pixels(own_loop(model, "", options, 1, label="b"))[0])


def test_the_plain_ddpm_sampler_still_draws_the_fixed_variance(model):
    options = SamplingOptions(sampler="ddpm", steps=3, guidance_scale=2.0, spacing="trailing")
    fixed = txt2img(model, "a cat", seed=2, options=options, progress=False)
    assert not np.array_equal(pixels(fixed)[0], pixels(own_loop(model, "a cat", options, 2))[0])
