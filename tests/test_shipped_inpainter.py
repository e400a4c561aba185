"""The shipped inpainting model (checkpoints/emoji/inpaint.*): derived from the default model, strict loading,
used with no flags by `ldm inpaint` / `ldm outpaint` on the default model's own output, and better than
nothing at what it is for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from ldm.core.defaults import default_checkpoint_path, default_model_files
from ldm.formats.derived import split_derived
from ldm.formats.load import load_model
from ldm.interfaces.cli.main import main as cli_main
from ldm.io.checkpoint import load_state_dict
from ldm.tasks.inpaint import inpaint
from ldm.tasks.txt2img import txt2img

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inpainter():
    return load_model(task="inpaint")


def test_the_inpainter_is_shipped_as_a_change_to_the_default_model():
    files = default_model_files("inpaint")
    assert files is not None, "checkpoints/emoji/inpaint.yaml and inpaint.safetensors are shipped"
    config, weights = files
    with safe_open(str(weights), "pt") as f:
        meta = f.metadata()
        assert {f.get_slice(k).get_dtype() for k in f.keys() if not k.endswith(".alpha")} == {"F16"}
    assert meta["license"] == "CC-BY-SA-4.0" and int(meta["step"]) > 0 and meta["base_model"] == "model.safetensors"
    whole, lora = split_derived(load_state_dict(weights))
    assert sorted(whole) == ["unet.input_blocks.0.0.bias", "unet.input_blocks.0.0.weight"]
    assert whole["unet.input_blocks.0.0.weight"].shape[1] == 9 and lora
    assert weights.stat().st_size < 8 * 2**20  # a fraction of the default model's 29 MiB U-Net


def test_the_inpainter_loads_strictly_over_its_base(inpainter):
    assert inpainter.kind.task == "inpaint" and inpainter.identity["base_file"] == "model.safetensors"
    base = load_state_dict(default_checkpoint_path())
    first = inpainter.unet.input_blocks[0][0].weight
    assert first.shape[1] == 9 and first[:, 4:].abs().max() > 0  # the new channels learnt something
    # The text tower is the base's, untouched (the LoRA adapts the U-Net only).
    key = next(k for k in base if k.startswith("cond_stage_model.model.transformer."))
    ours = inpainter.original_state_dict()
    torch.testing.assert_close(ours[key], base[key].float())


def test_the_inpainter_keeps_what_is_outside_the_hole_and_fills_it_in_colour(inpainter):
    base = load_model()
    heart = txt2img(base, "red heart", seed=1, steps=10)[0]
    mask = np.zeros((64, 64), np.float32)
    mask[20:44, 20:44] = 1
    result = inpaint(inpainter, heart, mask, "red heart", seed=0, steps=10)
    out = result[0]
    a, b = np.asarray(out, np.float32), np.asarray(heart, np.float32)
    assert np.abs(a - b)[mask < 0.5].max() == 0  # pasted back exactly
    hole = a[mask >= 0.5]
    assert hole[:, 0].mean() > hole[:, 1].mean() + 40  # red, not grey noise
    assert result.settings["inpaint_mode"] == "model"


def test_inpaint_and_outpaint_use_it_with_no_flags_on_the_default_output(tmp_path):
    out = tmp_path / "out"
    assert cli_main(["txt2img", "red apple", "--steps", "8", "--outdir", str(out), "--no-progress"]) == 0
    sample = out / "samples" / "00000.png"
    mask = tmp_path / "mask.png"
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(mask)
    assert (
        cli_main(
            [
                "inpaint",
                str(sample),
                str(mask),
                "green apple",
                "--steps",
                "8",
                "--outdir",
                str(tmp_path / "a"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "outpaint",
                str(sample),
                "red apple",
                "--extend",
                "right=16",
                "--steps",
                "8",
                "--outdir",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "inpaint",
                str(sample),
                str(mask),
                "green apple",
                "--mode",
                "blend",
                "--steps",
                "8",
                "--outdir",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 0
    )
    for folder, mode, size, model_file in (
        ("a", "model", (64, 64), "inpaint.safetensors"),
        ("b", "model", (80, 64), "inpaint.safetensors"),
        ("c", "blend", (64, 64), "model.safetensors"),
    ):
        image = Image.open(tmp_path / folder / "samples" / "00000.png")
        settings = json.loads(image.text["ldm"]) if "ldm" in image.text else None
        assert image.size == size
        text = json.dumps(settings) if settings else str(image.text)
        assert mode in text and model_file in text, (folder, text[:300])
