"""`ldm txt2img --hires-*`: the options reach the hires fix, are written in A1111's infotext fields and our JSON, and
--from-png makes the image again bit for bit; options of the second pass without --hires-scale are one line."""

import json

import numpy as np
import pytest
from factories import write_tiny_model_files
from PIL import Image

from ldm.interfaces.cli.main import main
from ldm.io.infotext import format_infotext, settings_from_infotext

SIZE = ["--height", "16", "--width", "16", "--no-progress", "--no-grid", "--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("tiny"))


def run(files, out, *args) -> int:
    cfg, ckpt = files
    return main(["txt2img", *args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(out), *SIZE])


def made(out) -> tuple[Image.Image, dict, str]:
    png = sorted((out / "samples").glob("*.png"))[-1]
    image = Image.open(png)
    return image, json.loads(image.text["ldm"]), image.text["parameters"]


@pytest.mark.parametrize("upscaler", ["latent", "bicubic"])
def test_a_hires_image_is_made_again_bit_for_bit_from_its_png(model_files, tmp_path, upscaler):
    hires = ["--hires-scale", "2", "--hires-steps", "3", "--hires-strength", "0.5", "--hires-upscaler", upscaler]
    assert run(model_files, tmp_path / "first", "a cat", *hires) == 0
    image, settings, text = made(tmp_path / "first")
    assert image.size == (32, 32)
    assert settings["hires_scale"] == 2 and settings["hires_steps"] == 3 and settings["strength"] == 0.5
    assert settings["hires_upscaler"] == upscaler and settings["height"] == 16
    name = {"latent": "Latent", "bicubic": "Bicubic"}[upscaler]
    assert "Denoising strength: 0.5, " in text and f"Hires upscale: 2, Hires steps: 3, Hires upscaler: {name}" in text
    png = sorted((tmp_path / "first" / "samples").glob("*.png"))[0]
    assert run(model_files, tmp_path / "again", "--from-png", str(png)) == 0
    again, settings_again, _ = made(tmp_path / "again")
    assert np.array_equal(np.asarray(image), np.asarray(again))
    assert settings_again["hires_scale"] == 2 and settings_again["hires_upscaler"] == upscaler
    # Without the hires fix the same settings make a different, smaller image: the fix was really re-run.
    assert run(model_files, tmp_path / "plain", "a cat") == 0
    assert made(tmp_path / "plain")[0].size == (16, 16)


def test_an_a1111_hires_text_is_read_and_written_back_alike():
    text = (
        "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.5, "
        "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent"
    )
    settings = settings_from_infotext(text)
    assert settings["hires_scale"] == 2 and settings["hires_steps"] == 10 and settings["hires_upscaler"] == "latent"
    assert settings["strength"] == 0.5
    assert "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent" in format_infotext(settings)
    # Hires steps 0 ("the first pass's") is not written, as A1111; read back as 0.
    zero = settings_from_infotext(format_infotext({**settings, "hires_steps": 0}))
    assert zero["hires_steps"] == 0
    assert "Hires steps" not in format_infotext({**settings, "hires_steps": 0})


def test_second_pass_options_without_hires_scale_and_a_bad_upscaler_are_one_line(model_files, tmp_path, capsys):
    assert run(model_files, tmp_path / "a", "a cat", "--hires-steps", "4") == 2
    assert "--hires-steps sets the hires fix's second pass; turn it on with --hires-scale" in capsys.readouterr().err
    assert run(model_files, tmp_path / "b", "a cat", "--hires-scale", "0.5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hires scale must be a number in [1, 8]" in err


def test_an_a1111_image_with_an_upscaler_we_lack_is_refused_naming_ours(model_files, tmp_path, capsys):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(
        "parameters",
        "a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 16x16, Denoising strength: 0.5, "
        "Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+",
    )
    Image.new("RGB", (32, 32)).save(tmp_path / "a1111.png", pnginfo=info)
    assert run(model_files, tmp_path / "out", "--from-png", str(tmp_path / "a1111.png")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("unknown hires upscaler 'R-ESRGAN 4x+'; known: latent, bicubic, model"), err


def test_a_hires_image_with_prompt_editing_is_made_again_bit_for_bit(model_files, tmp_path):
    # First pass 2 steps; the hires pass runs 3 of its 6 (strength 0.5): "[...:3]" switches after its step 1.
    hires = ["--hires-scale", "2", "--hires-steps", "6", "--hires-strength", "0.5", "--prompt-syntax", "a1111"]
    assert run(model_files, tmp_path / "first", "[a cat:a dog:3]", *hires) == 0
    image, settings, _ = made(tmp_path / "first")
    assert settings["prompt_editing"] is True and settings["prompt"] == "[a cat:a dog:3]"
    png = sorted((tmp_path / "first" / "samples").glob("*.png"))[0]
    assert run(model_files, tmp_path / "again", "--from-png", str(png)) == 0
    again, settings_again, _ = made(tmp_path / "again")
    assert np.array_equal(np.asarray(image), np.asarray(again)) and settings_again["prompt_editing"] is True
    # The edit acted: the first text throughout makes another image.
    assert run(model_files, tmp_path / "cat", "a cat", *hires) == 0
    assert not np.array_equal(np.asarray(made(tmp_path / "cat")[0]), np.asarray(image))
