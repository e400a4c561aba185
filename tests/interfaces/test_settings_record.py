"""One settings record per image: what an API call returns (`Generated.settings.image(i)`) is what `ldm txt2img` and
`ldm img2img` write into image i's PNG for the same call (the command adding only the files the call never saw), and
what the app's download carries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from factories import write_tiny_model_files
from PIL import Image

from ldm.formats.load import load_model
from ldm.interfaces.app.text import generate
from ldm.interfaces.cli.main import main
from ldm.sampling.options import SamplingOptions
from ldm.tasks.img2img import img2img
from ldm.tasks.inpaint import outpaint
from ldm.tasks.txt2img import txt2img

SIZE = ["--height", "16", "--width", "16", "--no-progress", "--no-grid"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("tiny"))


def written(out) -> list[tuple[np.ndarray, dict]]:
    """Each PNG of a run, in order: (pixels, its settings as JSON)."""
    pngs = sorted((out / "samples").glob("*.png"))
    return [(np.asarray(Image.open(p)), json.loads(Image.open(p).text["ldm"])) for p in pngs]


def as_json(settings: dict) -> dict:
    return json.loads(json.dumps(settings))


def test_txt2img_returns_the_settings_its_pngs_carry(model_files, tmp_path):
    cfg, ckpt = model_files
    args = ["a cat", "--negative-prompt", "blur", "--seed", "7", "--steps", "2", "--sampler", "euler_ancestral"]
    assert (
        main(["txt2img", *args, "--n-samples", "2", "--config", cfg, "--ckpt", ckpt, "--outdir", str(tmp_path)] + SIZE)
        == 0
    )
    pngs = written(tmp_path)
    made = txt2img(
        load_model(cfg, ckpt),
        ["a cat", "a cat"],  # the command's call: each prompt n times
        "blur",
        16,
        16,
        seed=7,
        steps=2,
        sampler="euler_ancestral",
        progress=False,
    )
    assert len(pngs) == 2 and made.settings["seed"] == 7 and made.settings["model_file"] == "tiny.safetensors"
    for i, (pixels, settings) in enumerate(pngs):
        assert np.array_equal(pixels, np.asarray(made[i]))
        assert settings == as_json(made.settings.image(i)) and settings["seed"] == 7 + i
    assert made.settings.image(1)["prompt"] == "a cat" and made.settings.image(1)["negative_prompt"] == "blur"


def test_img2img_returns_the_settings_its_pngs_carry_less_the_input_file(model_files, tmp_path):
    cfg, ckpt = model_files
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(source)
    args = ["img2img", str(source), "a dog", "--seed", "3", "--steps", "2", "--strength", "0.5", "--n-samples", "2"]
    assert (
        main([*args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(tmp_path / "out"), "--no-progress", "--no-grid"])
        == 0
    )
    made = img2img(load_model(cfg, ckpt), source, ["a dog", "a dog"], 0.5, seed=3, steps=2, progress=False)
    pngs = written(tmp_path / "out")
    assert len(pngs) == 2
    for i, (pixels, settings) in enumerate(pngs):
        assert np.array_equal(pixels, np.asarray(made[i]))
        assert settings == {**as_json(made.settings.image(i)), "init_image": str(source)}
        assert settings["task"] == "img2img" and settings["seed"] == 3 + i and settings["strength"] == 0.5


def test_the_app_downloads_the_settings_the_call_returned(model_files):
    model = load_model(*model_files)
    options = SamplingOptions(steps=2, sampler="ddim")
    image, settings = generate(model, "a cat", "blur", options, seed=4, height=16, width=16)
    made = txt2img(model, "a cat", "blur", 16, 16, 4, options, progress=False)
    assert settings == made.settings.image(0) == made.settings and settings["ddim_variant"] == "k"
    assert np.array_equal(np.asarray(image), np.asarray(made[0]))


def test_outpaint_returns_the_settings_its_pngs_carry_less_the_input_file(model_files, tmp_path):
    cfg, ckpt = model_files
    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(source)
    args = ["outpaint", str(source), "a wall", "--extend", "left=8", "--seed", "2", "--steps", "2"]
    assert (
        main([*args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(tmp_path / "out"), "--no-progress", "--no-grid"])
        == 0
    )
    made = outpaint(load_model(cfg, ckpt), source, "a wall", left=8, seed=2, steps=2, progress=False)
    [(pixels, settings)] = written(tmp_path / "out")
    assert np.array_equal(pixels, np.asarray(made[0]))
    assert settings == {**as_json(made.settings.image(0)), "init_image": str(source)}
    assert settings["task"] == "outpaint" and settings["extend"] == "left=8"
