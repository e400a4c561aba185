"""Toolbox features from the command line: sampler options (--sampler-option, e.g. pc's snr) and the learned-variance
sampler (--learned-variance), both recorded in the PNG and read back by --from-png."""

import json

import numpy as np
import pytest
from factories import tiny_class_config, tiny_model_from, write_tiny_learned_variance_files, write_tiny_model_files
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.interfaces.cli.common import option_value, parse_sampler_options
from ldm.interfaces.cli.main import main

SIZE = ["--height", "16", "--width", "16", "--no-progress", "--no-grid"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def learned_variance_files(tmp_path_factory):
    return write_tiny_learned_variance_files(tmp_path_factory.mktemp("tiny-lv"))


def run(files, out, *args) -> int:
    cfg, ckpt = files
    return main(["txt2img", *args, "--config", cfg, "--ckpt", ckpt, "--outdir", str(out), *SIZE])


def made(out) -> tuple[np.ndarray, dict]:
    png = sorted((out / "samples").glob("*.png"))[-1]
    image = Image.open(png)
    return np.asarray(image), json.loads(image.text["ldm"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_sampler_option_values_are_parsed_as_numbers_and_bools():
    assert option_value("2") == 2 and isinstance(option_value("2"), int)
    assert option_value("0.2") == 0.2 and option_value("1e-3") == 1e-3
    assert option_value("True") is True and option_value("false") is False
    assert option_value("trailing") == "trailing"
    assert parse_sampler_options(["snr=0.2", " corrector_steps = 2"]) == {"snr": 0.2, "corrector_steps": 2}
    for bad in ("snr", "=1", "snr=", "two words=1"):
        with pytest.raises(InvalidOptionError, match="KEY=VALUE"):
            parse_sampler_options([bad])
    for bad in ("snr=nan", "snr=inf"):
        with pytest.raises(InvalidOptionError, match="finite number"):
            parse_sampler_options([bad])
    with pytest.raises(InvalidOptionError, match="given twice"):
        parse_sampler_options(["snr=0.1", "snr=0.2"])


def test_pc_options_reach_the_sampler_are_recorded_and_restored_by_from_png(model_files, tmp_path):
    common = ["a cat", "--sampler", "pc", "--steps", "3", "--seed", "4"]
    assert run(model_files, tmp_path / "default", *common) == 0
    assert (
        run(
            model_files,
            tmp_path / "tuned",
            *common,
            "--sampler-option",
            "snr=0.3",
            "--sampler-option",
            "corrector_steps=2",
        )
        == 0
    )
    default, _ = made(tmp_path / "default")
    tuned, settings = made(tmp_path / "tuned")
    assert settings["sampler"] == "pc" and settings["snr"] == 0.3 and settings["corrector_steps"] == 2
    assert not np.array_equal(default, tuned)  # the options changed the sampling, not only the metadata
    png = sorted((tmp_path / "tuned" / "samples").glob("*.png"))[0]
    assert run(model_files, tmp_path / "again", "--from-png", str(png), "--steps", "1") == 0
    again, again_settings = made(tmp_path / "again")
    assert np.array_equal(again, tuned)  # steps, seed and the sampler's options all came from the image
    assert again_settings["snr"] == 0.3 and again_settings["corrector_steps"] == 2
    # An option given with --from-png changes the image's own.
    assert run(model_files, tmp_path / "changed", "--from-png", str(png), "--sampler-option", "corrector_steps=0") == 0
    changed, changed_settings = made(tmp_path / "changed")
    assert changed_settings["corrector_steps"] == 0 and changed_settings["snr"] == 0.3
    assert not np.array_equal(changed, tuned)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sampler", "euler", "--sampler-option", "snr=0.2"],
            "sampler 'euler' has no option 'snr' (samplers with snr: pc)",
        ),
        (["--sampler", "pc", "--sampler-option", "snr"], "give KEY=VALUE"),
        (["--sampler", "pc", "--sampler-option", "corrector_steps=-1"], "corrector_steps and snr must be >= 0"),
    ],
)
def test_bad_sampler_options_fail_in_one_line(model_files, tmp_path, capsys, args, message):
    assert run(model_files, tmp_path, "a cat", "--steps", "2", *args) != 0
    assert message in one_line_error(capsys)


def test_img2img_takes_sampler_options_too(model_files, tmp_path, capsys):
    cfg, ckpt = model_files
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "in.png")
    common = [
        "img2img",
        str(tmp_path / "in.png"),
        "a cat",
        "--config",
        cfg,
        "--ckpt",
        ckpt,
        "--steps",
        "4",
        "--no-progress",
        "--no-grid",
        "--sampler",
        "pc",
    ]
    assert main([*common, "--outdir", str(tmp_path / "out"), "--sampler-option", "corrector_steps=2"]) == 0
    assert made(tmp_path / "out")[1]["corrector_steps"] == 2
    assert main([*common, "--outdir", str(tmp_path / "bad"), "--sampler-option", "order=2"]) != 0
    assert "has no option 'order'" in one_line_error(capsys)


def test_learned_variance_sampler_from_the_cli_is_recorded_and_remade(learned_variance_files, tmp_path):
    common = ["a cat", "--sampler", "ddpm", "--steps", "3", "--seed", "2", "--scale", "2"]
    assert run(learned_variance_files, tmp_path / "fixed", *common) == 0
    assert run(learned_variance_files, tmp_path / "learned", *common, "--learned-variance") == 0
    fixed, fixed_settings = made(tmp_path / "fixed")
    learned, settings = made(tmp_path / "learned")
    assert settings["learned_variance"] is True and settings["sampler"] == "ddpm"
    assert "learned_variance" not in fixed_settings
    assert not np.array_equal(fixed, learned)  # the U-Net's variance, not the fixed one, drew the steps' noise
    # The same as the Python call makes with the CLI's spacing (the call's own default is trailing).
    from ldm.formats.load import load_model
    from ldm.tasks.txt2img import txt2img_learned_variance

    model = load_model(*learned_variance_files)
    python = txt2img_learned_variance(
        model, "a cat", seed=2, steps=3, guidance_scale=2, height=16, width=16, spacing="leading", progress=False
    )
    assert np.array_equal(np.asarray(python[0]), learned)
    png = sorted((tmp_path / "learned" / "samples").glob("*.png"))[0]
    assert run(learned_variance_files, tmp_path / "again", "--from-png", str(png)) == 0
    again, again_settings = made(tmp_path / "again")
    assert again_settings["learned_variance"] is True and np.array_equal(again, learned)
    # A DDPM image with the fixed variance is remade as one (its recorded eta 1 is DDPM's own, not an option).
    png = sorted((tmp_path / "fixed" / "samples").glob("*.png"))[0]
    assert run(learned_variance_files, tmp_path / "again-fixed", "--from-png", str(png)) == 0
    again_fixed, again_fixed_settings = made(tmp_path / "again-fixed")
    assert "learned_variance" not in again_fixed_settings and np.array_equal(again_fixed, fixed)


def test_learned_variance_needs_ddpm_and_a_model_that_has_one(model_files, learned_variance_files, tmp_path, capsys):
    assert run(model_files, tmp_path / "a", "a cat", "--sampler", "ddpm", "--steps", "2", "--learned-variance") != 0
    assert "this model has no learned variance" in one_line_error(capsys)
    assert (
        run(learned_variance_files, tmp_path / "b", "a cat", "--sampler", "euler", "--steps", "2", "--learned-variance")
        != 0
    )
    assert "give --sampler ddpm" in one_line_error(capsys)
    assert (
        run(
            learned_variance_files,
            tmp_path / "c",
            "a cat",
            "--sampler",
            "ddpm",
            "--steps",
            "2",
            "--guidance-rescale",
            "0.5",
            "--learned-variance",
        )
        != 0
    )
    assert "guidance rescale" in one_line_error(capsys)


def test_learned_variance_sampler_takes_a_class_label(tmp_path):
    """A class-conditional model with a learned variance: --label reaches the variance sampler and is recorded."""
    cfg = tiny_class_config(["a", "b"])
    cfg["model"]["params"]["learned_variance"] = True
    cfg["model"]["params"]["unet_config"]["params"]["out_channels"] = 8  # [eps, raw v]
    lv_files = write_tiny_model_files(tmp_path, "lv-class", cfg, tiny_model_from(cfg))
    common = ["x", "--sampler", "ddpm", "--steps", "3", "--learned-variance"]
    assert run(lv_files, tmp_path / "a", *common, "--label", "a") == 0
    assert run(lv_files, tmp_path / "b", *common, "--label", "b") == 0
    a, settings = made(tmp_path / "a")
    b, _ = made(tmp_path / "b")
    assert settings["label"] == "a" and settings["learned_variance"] is True and not np.array_equal(a, b)
