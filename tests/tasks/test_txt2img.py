"""Text-to-image end to end with a tiny model: CLI, Python API, reproducibility and errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_config, tiny_model
from PIL import Image

from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.tasks.txt2img import txt2img


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


def test_cli_writes_png_with_settings(model_files, tmp_path):
    cfg, ckpt = model_files
    out = tmp_path / "out"
    code = main(
        [
            "txt2img",
            "a red apple",
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "4",
            "--n-samples",
            "2",
            "--outdir",
            str(out),
            "--seed",
            "7",
            "--height",
            "16",
            "--width",
            "24",
            "--no-progress",
        ]
    )
    assert code == 0
    files = sorted((out / "samples").glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    img = Image.open(files[1])
    assert img.size == (24, 16) and img.mode == "RGB"
    settings = json.loads(img.text["ldm"])
    assert settings["prompt"] == "a red apple" and settings["seed"] == 8 and settings["steps"] == 4
    assert "a red apple" in img.text["parameters"]
    assert len(list(out.glob("grid-*.png"))) == 1
    # A second run continues the numbering instead of overwriting.
    main(
        [
            "txt2img",
            "x",
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "2",
            "--outdir",
            str(out),
            "--no-progress",
            "--height",
            "16",
            "--width",
            "16",
        ]
    )
    assert (out / "samples" / "00002.png").exists()


def test_console_script_runs_as_a_process(model_files, tmp_path):
    cfg, ckpt = model_files
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ldm.interfaces.cli.main",
            "txt2img",
            "cat",
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "2",
            "--outdir",
            str(tmp_path),
            "--no-progress",
            "--height",
            "16",
            "--width",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "samples" / "00000.png").exists()


def test_same_seed_same_image_different_seed_differs(model):
    a = txt2img(model, ["a cat"], seed=3, steps=4, progress=False)[0]
    b = txt2img(model, ["a cat"], seed=3, steps=4, progress=False)[0]
    c = txt2img(model, ["a cat"], seed=4, steps=4, progress=False)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_batch_image_equals_single_image_with_its_seed(model):
    batch = txt2img(model, ["a cat", "a dog"], seed=10, steps=3, progress=False)
    single = txt2img(model, ["a dog"], seed=11, steps=3, progress=False)[0]
    assert np.abs(np.asarray(batch[1], dtype=int) - np.asarray(single, dtype=int)).max() <= 1


def test_guidance_scale_one_is_the_conditional_prediction(model):
    from ldm.sampling.denoisers import CFGDenoiser
    from ldm.tasks.base import prompt_conditions

    cond, uncond = prompt_conditions(model, ["a red apple"], ["a green pear"])
    den = model.denoiser()
    x = torch.randn(1, 4, 8, 8) * 3
    sigma = torch.tensor([3.0])
    guided = CFGDenoiser(den, cond, uncond, 1.0)(x, sigma)
    assert torch.equal(guided, den(x, sigma, **cond))
    strong = CFGDenoiser(den, cond, uncond, 5.0)(x, sigma)
    assert (strong - guided).abs().max() > 1e-6


def test_negative_prompt_changes_the_image(model):
    a = txt2img(model, ["a cat"], seed=1, steps=3, progress=False)[0]
    b = txt2img(model, ["a cat"], negative_prompt="a dog", seed=1, steps=3, progress=False)[0]
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_bf16_autocast_runs_on_cpu(model):
    img = txt2img(model, ["a cat"], seed=1, steps=2, precision="bf16", progress=False)[0]
    assert img.size == (16, 16)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--height", "20"], "height 20 is not a positive multiple of 8"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--sampler", "nope"], "unknown sampler"),
        (["--precision", "fp16"], "fp16 needs a CUDA device"),
    ],
)
def test_bad_arguments_fail_with_one_line(model_files, tmp_path, capsys, args, message):
    cfg, ckpt = model_files
    code = main(["txt2img", "x", "--config", cfg, "--ckpt", ckpt, "--outdir", str(tmp_path), "--no-progress"] + args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert message in err and len(err.splitlines()) == 1


def test_missing_checkpoint_and_mismatched_checkpoint(model_files, tmp_path, capsys):
    cfg, _ = model_files
    assert main(["txt2img", "x", "--config", cfg, "--ckpt", str(tmp_path / "none.safetensors")]) != 0
    assert "checkpoint not found" in capsys.readouterr().err
    state = tiny_model().original_state_dict()
    state.pop("first_stage_model.decoder.conv_out.bias")
    bad = tmp_path / "bad.safetensors"
    save_state_dict(state, bad)
    assert main(["txt2img", "x", "--config", cfg, "--ckpt", str(bad), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip()
    assert "missing tensors: vae.decoder.conv_out.bias" in err and len(err.splitlines()) == 1


def test_unknown_config_target(tmp_path, capsys):
    cfg = tiny_config()
    cfg["model"]["params"]["unet_config"]["target"] = "os.system"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["txt2img", "x", "--config", str(path), "--ckpt", "unused.safetensors", "--no-progress"]) != 0
    assert "unknown config target 'os.system'" in capsys.readouterr().err


def test_prompt_file(model_files, tmp_path, capsys):
    cfg, ckpt = model_files
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["txt2img", "--from-file", str(empty), "--config", cfg, "--ckpt", ckpt]) != 0
    assert "has no prompts" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n\na dog\n")
    assert (
        main(
            [
                "txt2img",
                "--from-file",
                str(prompts),
                "--config",
                cfg,
                "--ckpt",
                ckpt,
                "--steps",
                "2",
                "--outdir",
                str(tmp_path / "o"),
                "--no-progress",
                "--height",
                "16",
                "--width",
                "16",
            ]
        )
        == 0
    )
    texts = [
        json.loads(Image.open(p).text["ldm"])["prompt"] for p in sorted((tmp_path / "o" / "samples").glob("*.png"))
    ]
    assert texts == ["a cat", "a dog"]
