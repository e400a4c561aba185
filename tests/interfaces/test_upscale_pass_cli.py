"""`ldm txt2img --upscale`: the x4 upscale pass from the command line, written in our JSON and A1111's infotext
(Postprocess upscale by/upscaler), made again bit for bit by --from-png; bad combinations are one line."""

import json
import logging

import numpy as np
import pytest
from factories import tiny_upscaler_config, tiny_upscaler_model, write_tiny_model_files
from PIL import Image

from ldm.interfaces.cli.main import main
from ldm.io.infotext import format_infotext, settings_from_infotext

SIZE = ["--no-progress", "--no-grid", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = write_tiny_model_files(folder)
    _, upscaler = write_tiny_model_files(folder, "tiny-up", tiny_upscaler_config(), tiny_upscaler_model())
    return model, upscaler


def run(files, out, *args) -> int:
    (cfg, ckpt), _ = files
    return main(["txt2img", *args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(out), *SIZE])


def made(out) -> tuple[Image.Image, dict, str]:
    png = sorted((out / "samples").glob("*.png"))[-1]
    image = Image.open(png)
    return image, json.loads(image.text["ldm"]), image.text["parameters"]


def test_an_upscaled_image_is_recorded_and_made_again_bit_for_bit_from_its_png(files, tmp_path, caplog):
    up = ["--upscale", "--upscaler", files[1], "--upscale-steps", "2", "--upscale-noise-level", "30"]
    assert run(files, tmp_path / "first", "a cat", *up) == 0
    image, settings, text = made(tmp_path / "first")
    assert image.size == (64, 64) and settings["height"] == 16
    assert settings["upscale"] == 4 and settings["upscale_steps"] == 2 and settings["upscale_noise_level"] == 30
    assert settings["upscaler_file"] == "tiny-up.safetensors" and len(settings["upscaler_sha256"]) == 64
    assert "Postprocess upscale by: 4, Postprocess upscaler: LDM x4, Upscale steps: 2, Upscale noise level: 30" in text
    png = sorted((tmp_path / "first" / "samples").glob("*.png"))[0]
    assert run(files, tmp_path / "again", "--from-png", str(png), "--upscaler", files[1]) == 0
    again, settings_again, _ = made(tmp_path / "again")
    assert np.array_equal(np.asarray(image), np.asarray(again)) and settings_again["upscale_noise_level"] == 30
    # Another upscaler is used when given, and said to differ from the image's.
    folder = tmp_path / "other-upscaler"
    folder.mkdir()
    _, other = write_tiny_model_files(folder, "tiny-up", tiny_upscaler_config(), tiny_upscaler_model(seed=1))
    with caplog.at_level(logging.WARNING, logger="ldm"):
        assert run(files, tmp_path / "swapped", "--from-png", str(png), "--upscaler", other) == 0
    assert "was upscaled by another upscaler" in caplog.text
    assert not np.array_equal(np.asarray(made(tmp_path / "swapped")[0]), np.asarray(image))
    # Another noise level makes another image: the option reaches the upscaler.
    assert run(files, tmp_path / "other", "a cat", *up[:-1], "200") == 0
    assert not np.array_equal(np.asarray(made(tmp_path / "other")[0]), np.asarray(image))


def test_the_upscale_pass_in_a1111s_text_is_read_back_and_others_upscalers_are_left_out():
    text = (
        "a cat\nSteps: 4, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 64x64, Postprocess upscale by: 4, "
        "Postprocess upscaler: LDM x4, Upscale steps: 20, Upscale noise level: 20"
    )
    settings = settings_from_infotext(text)
    assert settings["upscale"] == 4 and settings["upscale_steps"] == 20 and settings["upscale_noise_level"] == 20
    assert "Postprocess upscale by: 4, Postprocess upscaler: LDM x4, Upscale steps: 20" in format_infotext(settings)
    other = settings_from_infotext(text.replace("LDM x4", "R-ESRGAN 4x+"))
    assert "upscale" not in other and other["seed"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upscale-steps", "4"], "--upscale-steps sets the x4 upscale pass; turn it on with --upscale"),
        (["--upscale", "--hires-scale", "2"], "--upscale and the hires fix (--hires-scale) both enlarge the image"),
        (["--upscale", "--upscaler", "missing.safetensors"], "upscaler file not found: missing.safetensors"),
        (["--upscale", "--upscale-steps", "0"], "upscale steps must be a whole number >= 1, got 0"),
    ],
)
def test_bad_combinations_are_one_line(files, tmp_path, capsys, args, message):
    assert run(files, tmp_path, "a cat", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
