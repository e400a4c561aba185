"""The shipped default model (checkpoints/emoji): strict loading, real pictures, the README's main command,
the autoencoder and the judge CLIP that `ldm eval` uses."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ldm.core.defaults import default_checkpoint_path, default_config_path
from ldm.formats.load import load_model
from ldm.io.checkpoint import load_state_dict
from ldm.io.images import pil_to_tensor
from ldm.tasks.txt2img import txt2img

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "emoji"
# Prompts of different kinds (a shape, a face, an animal, a flag, a person, an object); v2 gets 4 of 6 or more.
CANDIDATES = ["red heart", "grinning face", "cat face", "flag: Japan", "police officer", "red apple"]


@pytest.fixture(scope="module")
def model():
    """The full model (model.safetensors): the student's base, and the model of every other task."""
    return load_model(variant="full")


# What load_model() gives: the few-step student where it is shipped, sampled with its own settings (4 steps);
# the full model with 20 guided steps at scale 5.
VARIANTS = {"full": {"steps": 20, "guidance_scale": 5.0}, "default": {}}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def any_model(request, model):
    return (model if request.param == "full" else load_model()), VARIANTS[request.param]


def test_shipped_files_are_safetensors_and_small():
    for path in (
        default_config_path(),
        default_checkpoint_path(),
        SHIPPED / "judge.safetensors",
        SHIPPED / "judge.json",
    ):
        assert path.is_file(), f"{path} is missing"
    total = sum(p.stat().st_size for p in (ROOT / "checkpoints").rglob("*") if p.is_file())
    assert total < 100 * 2**20, f"checkpoints/ holds {total / 2**20:.1f} MiB"
    assert default_checkpoint_path().read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    from safetensors import safe_open

    with safe_open(str(default_checkpoint_path()), "pt") as f:
        meta = f.metadata()
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    # The licence that OpenMoji's ShareAlike imposes on weights trained on it, and the EMA step, travel in the file.
    assert meta["license"] == "CC-BY-SA-4.0" and meta["weights"] == "EMA" and int(meta["step"]) > 0


def test_default_checkpoint_loads_strictly(model):
    shipped = load_state_dict(default_checkpoint_path())
    ours = model.original_state_dict()
    assert set(shipped) == set(ours)  # no missing and no unexpected tensors
    for key, tensor in shipped.items():
        assert tensor.shape == ours[key].shape, key
    # Loaded, not left at initialisation: the weights equal the file's (fp16 on disk, fp32 in the model).
    key = next(k for k in shipped if k.startswith("model.diffusion_model.out."))
    torch.testing.assert_close(ours[key], shipped[key].float())
    assert model.scale_factor != 1.0  # the estimate made during training travels in model.yaml


def _smoothness(image: np.ndarray) -> float:
    """Mean absolute difference between horizontally neighbouring pixels, in [0, 255]."""
    return float(np.abs(np.diff(image.astype(np.float32), axis=1)).mean())


def test_generates_emoji_like_pictures_not_noise(any_model):
    model, settings = any_model
    images = txt2img(model, ["red heart", "grinning face"], seed=0, progress=False, **settings)
    for image in images:
        arr = np.asarray(image)
        assert arr.shape == (model.default_image_size, model.default_image_size, 3)
        # Emoji sit on a white background: a bright border, a non-blank centre, and locally smooth colour.
        border = np.concatenate(
            [arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3), arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)]
        )
        assert border.mean() > 200, border.mean()
        centre = arr[arr.shape[0] // 4 : -arr.shape[0] // 4, arr.shape[1] // 4 : -arr.shape[1] // 4]
        assert centre.std() > 20
        noise = np.random.default_rng(0).integers(0, 256, arr.shape)
        assert _smoothness(arr) < 0.3 * _smoothness(noise)
    heart, face = (np.asarray(im).astype(np.float32) for im in images)
    # The heart is red (R well above G in the picture's coloured pixels); the face is yellow (R and G high, B low).
    coloured = lambda a: a[(a.max(axis=2) - a.min(axis=2)) > 60]
    assert coloured(heart)[:, 0].mean() > coloured(heart)[:, 1].mean() + 40
    face_px = coloured(face)
    assert face_px[:, 1].mean() > face_px[:, 2].mean() + 60


def test_prompts_are_followed_by_the_judge_clip(any_model):
    """The judge CLIP (trained apart from the model's text encoder) picks each sample's own prompt out of six."""
    model, settings = any_model
    from ldm.evaluation.metrics import ClipFeatures
    from ldm.models.clip import load_clip

    clip = load_clip(SHIPPED / "judge.safetensors", SHIPPED / "judge.json")
    images = txt2img(model, CANDIDATES, seed=0, progress=False, **settings)
    features = ClipFeatures(clip)
    image_emb = features(torch.cat([pil_to_tensor(im) for im in images]))  # [-1, 1] pixels, as the CLIP was trained
    text_emb = torch.nn.functional.normalize(features.encode_text(CANDIDATES), dim=-1)
    picked = (image_emb @ text_emb.T).argmax(dim=1).tolist()
    correct = sum(p == i for i, p in enumerate(picked))
    assert correct >= 4, [CANDIDATES[p] for p in picked]


def test_readme_main_command_writes_a_png_with_settings(tmp_path):
    out = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "ldm.interfaces.cli.main", "txt2img", "red heart", "--outdir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    image = Image.open(out / "samples" / "00000.png")
    assert image.size == (64, 64)
    settings = json.loads(image.text["ldm"])
    # The shipped default is the 4-step student (its own steps and spacing), and the PNG says so.
    assert settings["prompt"] == "red heart" and settings["steps"] == 4 and settings["spacing"] == "trailing"
    assert settings["model_file"] == "student.safetensors" and "4-step student" in settings["model_name"]


def test_sample_sheet_script(model, tmp_path):
    spec = importlib.util.spec_from_file_location("sample_sheet", ROOT / "scripts" / "sample_sheet.py")
    sheet_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sheet_mod)
    from ldm.sampling.options import SamplingOptions

    heldout_dir = tmp_path / "data" / "heldout"
    heldout_dir.mkdir(parents=True)
    (heldout_dir / "captions.jsonl").write_text(json.dumps({"file": "images/0.png", "caption": "rocket"}) + "\n")
    heldout = sheet_mod.heldout_captions(str(tmp_path / "data"))
    assert heldout == {"rocket"}
    assert sheet_mod.row_labels(["rocket, twemoji style", "family: man, woman, boy", "rocket ship"], heldout) == [
        "rocket, twemoji style (held out)",
        "family: man, woman, boy",
        "rocket ship",
    ]
    sheet = sheet_mod.sample_sheet(
        model, ["red apple", "rocket"], 3, SamplingOptions(steps=4, guidance_scale=3.0), zoom=2, heldout=heldout
    )
    cell = model.default_image_size * 2
    label_width = sheet.width - 3 * (cell + 4)
    assert sheet.height == 2 * (cell + 4) and label_width > 100  # room for "rocket (held out)"
    arr = np.asarray(sheet)
    assert (arr[:, label_width - 6 : label_width] == 255).all()  # the longest label ends before the samples
    first, second = (
        arr[:cell, label_width : label_width + cell],
        arr[:cell, label_width + cell + 4 : label_width + 2 * cell + 4],
    )
    assert not np.array_equal(first, second)  # different seeds, different samples


def test_the_autoencoder_reconstructs_a_64px_emoji_like_picture(model):
    im = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((10, 12, 54, 56), fill=(220, 30, 40), outline=(90, 10, 10), width=2)
    d.rectangle((30, 4, 34, 14), fill=(60, 160, 40))
    x = pil_to_tensor(im)
    with torch.no_grad():
        z = model.vae.encode(x).mode()
        y = model.vae.decode(z).clamp(-1, 1)
    assert z.shape == (1, 4, 16, 16)
    psnr = 10 * math.log10(1 / ((y - x) / 2).pow(2).mean().item())
    assert psnr > 20, psnr  # 25 dB on the held-out emoji (docs/default-model-v2.md); noise is ~5 dB


def test_the_judge_is_apart_from_the_text_encoder_and_loads_strictly(model):
    from ldm.models.clip import load_clip

    config = json.loads((SHIPPED / "judge.json").read_text())
    clip = load_clip(SHIPPED / "judge.safetensors", SHIPPED / "judge.json")
    assert config["text_cfg"]["width"] == 64 != model.text_encoder.model.transformer.width
    shipped = load_state_dict(SHIPPED / "judge.safetensors")
    torch.testing.assert_close(clip.state_dict()["visual.conv1.weight"], shipped["visual.conv1.weight"].float())
