"""Image-to-image with a tiny model: strength limits, sizing, errors, CLI and the reference-style script."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from factories import tiny_config, tiny_model, tiny_upscaler_model
from PIL import Image

from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.io.images import InvalidImageError, pil_to_tensor, tensor_to_pil
from ldm.tasks.base import WrongModelError
from ldm.tasks.editing import ImageTooSmallError, StrengthError
from ldm.tasks.img2img import img2img
from ldm.tasks.txt2img import txt2img

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    cfg, ckpt = d / "tiny.yaml", d / "tiny.safetensors"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), ckpt)
    return str(cfg), str(ckpt)


def photo(w=24, h=16, seed=0):
    y, x = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    arr = np.stack([x * 9, y * 13, (x + y) * 5], -1) + rng.integers(0, 40, (h, w, 3))
    return Image.fromarray((arr % 256).astype(np.uint8))


def diff(a, b):
    return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))


def test_strength_zero_returns_the_vae_round_trip(model):
    img = photo()
    out = img2img(model, img, "a cat", strength=0.0, steps=5, progress=False)[0]
    round_trip = tensor_to_pil(model.decode_latent(model.encode_image(pil_to_tensor(img))))[0]
    assert np.array_equal(np.asarray(out), np.asarray(round_trip))


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_ancestral"])
def test_strength_one_equals_txt2img_with_the_same_seed(model, sampler):
    a = img2img(model, photo(), ["a cat", "a dog"], strength=1.0, seed=5, steps=4, sampler=sampler, progress=False)
    b = txt2img(model, ["a cat", "a dog"], height=16, width=24, seed=5, steps=4, sampler=sampler, progress=False)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_more_strength_moves_further_from_the_input(model):
    img = photo()
    base = img2img(model, img, "a cat", strength=0.0, progress=False, steps=6)[0]
    d = [diff(img2img(model, img, "a cat", strength=s, steps=6, progress=False)[0], base).mean() for s in (0.3, 0.9)]
    assert 0 < d[0] < d[1]


def test_any_size_is_resized_to_a_multiple_of_8_and_said(model, caplog):
    with caplog.at_level("INFO", logger="ldm"):
        out = img2img(model, photo(27, 20), "a cat", strength=0.5, steps=2, progress=False)[0]
    assert out.size == (24, 16)
    assert "resized image 27x20 to 24x16" in caplog.text


def test_bad_inputs(model, tmp_path):
    with pytest.raises(StrengthError, match=r"strength must be in \[0, 1\], got 1.5"):
        img2img(model, photo(), "x", strength=1.5)
    with pytest.raises(StrengthError):
        img2img(model, photo(), "x", strength=-0.1)
    with pytest.raises(ImageTooSmallError, match="too small"):
        img2img(model, photo(5, 16), "x")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InvalidImageError, match="cannot read image"):
        img2img(model, bad, "x")
    with pytest.raises(InvalidImageError, match="image not found"):
        img2img(model, tmp_path / "none.png", "x")
    with pytest.raises(WrongModelError, match="img2img needs a text-to-image model"):
        img2img(tiny_upscaler_model(), photo(), "x")


def test_cli_writes_png_with_settings(model_files, tmp_path):
    cfg, ckpt = model_files
    src = tmp_path / "in.png"
    photo(27, 20).save(src)
    out = tmp_path / "out"
    code = main(
        [
            "img2img",
            str(src),
            "a red apple",
            "--strength",
            "0.6",
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "4",
            "--n-samples",
            "2",
            "--seed",
            "3",
            "--outdir",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    files = sorted((out / "samples").glob("*.png"))
    assert len(files) == 2 and len(list(out.glob("grid-*.png"))) == 1
    img = Image.open(files[1])
    assert img.size == (24, 16)
    s = json.loads(img.text["ldm"])
    assert (s["task"], s["strength"], s["seed"], s["prompt"]) == ("img2img", 0.6, 4, "a red apple")
    assert s["init_image"] == str(src) and (s["width"], s["height"]) == (24, 16)


def test_cli_errors_are_one_line(model_files, tmp_path, capsys):
    cfg, ckpt = model_files
    src = tmp_path / "in.png"
    photo().save(src)
    assert main(["img2img", str(src), "x", "--strength", "2", "--config", cfg, "--ckpt", ckpt]) != 0
    assert main(["img2img", str(tmp_path / "missing.png"), "x", "--config", cfg, "--ckpt", ckpt]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "strength must be in [0, 1]" in err[0] and "image not found" in err[1]


def test_reference_style_script(model_files, tmp_path):
    spec = importlib.util.spec_from_file_location("img2img_script", ROOT / "scripts" / "img2img.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = script.translate(
        ["--init-img", "a.png", "--prompt=a cat", "--ddim_steps", "3", "--n_samples", "2", "--strength", "0.4"]
    )
    assert argv == ["img2img", "a.png", "a cat", "--steps", "3", "--n-samples", "2", "--strength", "0.4"]
    cfg, ckpt = model_files
    src = tmp_path / "in.png"
    photo().save(src)
    assert (
        main(
            script.translate(
                [
                    "--init-img",
                    str(src),
                    "--prompt",
                    "x",
                    "--ddim_steps",
                    "2",
                    "--config",
                    cfg,
                    "--ckpt",
                    ckpt,
                    "--outdir",
                    str(tmp_path / "o"),
                    "--no-progress",
                ]
            )
        )
        == 0
    )
    assert (tmp_path / "o" / "samples" / "00000.png").exists()
