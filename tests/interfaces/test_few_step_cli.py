"""The few-step commands of docs/few-step-models.md through the real command: an SD model with an LCM-LoRA
(`--lora lcm-lora.safetensors:1 --sampler lcm --spacing trailing --steps 4 --scale 1`) and an SD-Turbo-style run
(`--sampler lcm --spacing trailing --steps 1`, at `--scale 1`, diffusers' guidance_scale 0.0, and at `--scale 0`)."""

import json

import numpy as np
import pytest
from factories import tiny_model, write_lcm_lora, write_tiny_model_files
from PIL import Image

from ldm.interfaces.cli.main import main

pytest.importorskip("diffusers")  # the LCM-LoRA file's names come from diffusers' own converter

SIZE = ["--height", "16", "--width", "16", "--no-progress", "--no-grid", "--seed", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("few-step")
    model = tiny_model()
    cfg, ckpt = write_tiny_model_files(folder, model=model)
    lora = folder / "lcm-lora.safetensors"
    write_lcm_lora(model, lora, alpha=64.0)  # a strong update, so that it shows in a 16 px image
    return cfg, ckpt, str(lora)


def made(files, out, *args) -> tuple[np.ndarray, dict, str]:
    cfg, ckpt, _ = files
    assert main(["txt2img", *args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(out), *SIZE]) == 0
    image = Image.open(sorted((out / "samples").glob("*.png"))[-1])
    return np.asarray(image), json.loads(image.text["ldm"]), image.text["parameters"]


def test_an_lcm_lora_samples_in_four_steps_at_guidance_1(files, tmp_path):
    lcm = ["--sampler", "lcm", "--spacing", "trailing", "--steps", "4", "--scale", "1"]
    pixels, settings, text = made(files, tmp_path / "lora", "a cat", "--lora", f"{files[2]}:1", *lcm)
    assert settings["sampler"] == "lcm" and settings["steps"] == 4 and settings["guidance_scale"] == 1
    assert "Steps: 4, Sampler: LCM" in text and "lcm-lora" in text  # the LoRA is named in A1111's field
    base, _, _ = made(files, tmp_path / "base", "a cat", *lcm)
    off, _, _ = made(files, tmp_path / "off", "a cat", "--lora", f"{files[2]}:0", *lcm)
    assert not np.array_equal(pixels, base)  # the LoRA changed the image
    assert np.array_equal(off, base)  # at weight 0 it is the base model bit for bit


def test_an_sd_turbo_style_run_takes_one_trailing_step_at_guidance_1_or_0(files, tmp_path):
    turbo = ["--sampler", "lcm", "--spacing", "trailing", "--steps", "1"]
    cat, settings, _ = made(files, tmp_path / "cat", "a cat", *turbo, "--scale", "1")
    assert settings["steps"] == 1 and settings["spacing"] == "trailing"
    dog, _, _ = made(files, tmp_path / "dog", "a dog", *turbo, "--scale", "1")
    assert not np.array_equal(cat, dog)  # guidance 1: the conditional prediction, so the prompt matters
    # Guidance 0 is the unconditional prediction alone (as k-diffusion's and A1111's CFG): the prompt is not used.
    cat0, settings0, _ = made(files, tmp_path / "cat0", "a cat", *turbo, "--scale", "0")
    dog0, _, _ = made(files, tmp_path / "dog0", "a dog", *turbo, "--scale", "0")
    assert settings0["guidance_scale"] == 0 and np.array_equal(cat0, dog0) and not np.array_equal(cat0, cat)
