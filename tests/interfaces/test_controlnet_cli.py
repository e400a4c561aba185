"""--control through the real command (tests/cli_runner.py): several ControlNets with their images, weights, steps'
window, resize and control modes, recorded in the PNG and made again by --from-png; bad specs are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import tiny_model, write_tiny_model_files
from PIL import Image
from test_controlnet import UNET, as_array, hint_image, randomised

from ldm.formats.controlnet_files import save_controlnet
from ldm.io.infotext import settings_from_infotext, settings_from_png
from ldm.models.controlnet import ControlNet
from ldm.models.unet import UNetModel

RUNNER = Path(__file__).parents[1] / "cli_runner.py"


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("controlnet-cli")
    write_tiny_model_files(root, "tiny", model=model)
    net = randomised(ControlNet(model.unet, model.latent_channels, model.downscale), 5)
    save_controlnet(net, root / "canny.safetensors")
    save_controlnet(net, root / "canny-unprefixed.safetensors", prefix=False)
    other = UNetModel(**{**UNET, "context_dim": 48})
    save_controlnet(ControlNet(other, 4, model.downscale), root / "other-family.safetensors")
    hint_image(0).save(root / "edges.png")
    hint_image(1).save(root / "depth.png")
    return root


def run_cli(workspace: Path, *argvs: list[str]) -> list[dict]:
    base = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--steps", "3", "--no-progress", "--no-grid"]
    cases = [{"argv": [*argv, *base], "cwd": str(workspace), "timeout": 120} for argv in argvs]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_control_through_the_command_is_recorded_and_made_again_from_the_png(workspace):
    made = workspace / "one" / "samples" / "00000.png"
    results = run_cli(
        workspace,
        ["txt2img", "a cat", "--outdir", "plain"],
        [
            "txt2img",
            "a cat",
            "--outdir",
            "one",
            "--control",
            "edges.png:canny.safetensors:0.8",
            "--control",
            "depth.png:canny-unprefixed.safetensors:0.5:0:0.5",
            "--control-resize",
            "crop",
            "--control-mode",
            "prompt",
        ],
        ["txt2img", "--from-png", str(made), "--outdir", "again"],  # runs after the one that makes it
        ["txt2img", "x", "--outdir", "bad", "--control", "edges.png"],
        ["txt2img", "x", "--outdir", "bad", "--control", "edges.png:other-family.safetensors"],
        ["txt2img", "x", "--outdir", "bad", "--control", "missing.png:canny.safetensors"],
        ["txt2img", "x", "--outdir", "bad", "--control", "edges.png:canny.safetensors:1:0.8:0.2"],
    )
    for result in results[:3]:
        assert result["rc"] == 0, result["stderr"][-3000:]
    plain, again = (workspace / name / "samples" / "00000.png" for name in ("plain", "again"))
    assert not np.array_equal(as_array(Image.open(plain)), as_array(Image.open(made)))
    assert np.array_equal(as_array(Image.open(made)), as_array(Image.open(again)))
    controls = settings_from_png(made)["controls"]
    assert controls == [
        {
            "image": "edges.png",
            "controlnet": "canny.safetensors",
            "weight": 0.8,
            "start": 0.0,
            "end": 1.0,
            "resize": "crop",
            "mode": "prompt",
        },
        {
            "image": "depth.png",
            "controlnet": "canny-unprefixed.safetensors",
            "weight": 0.5,
            "start": 0.0,
            "end": 0.5,
            "resize": "crop",
            "mode": "prompt",
        },
    ]
    assert settings_from_png(again)["controls"] == controls
    parameters = Image.open(made).text["parameters"]  # A1111's text, as its ControlNet extension writes the units
    assert (
        'ControlNet 0: "Module: none, Model: canny, Weight: 0.8, Resize Mode: Crop and Resize, Guidance Start: 0, '
        'Guidance End: 1, Control Mode: My prompt is more important"'
    ) in parameters
    assert 'ControlNet 1: "Module: none, Model: canny-unprefixed, Weight: 0.5' in parameters
    assert settings_from_infotext(parameters)["seed"] == settings_from_png(made)["seed"]  # the text still reads
    messages = [
        "give IMAGE:CONTROLNET[:WEIGHT[:START:END]]",
        "is a ControlNet for",
        "control image not found",
        "0 <= start <= end <= 1",
    ]
    for result, message in zip(results[3:], messages):
        errors = [line for line in result["stderr"].splitlines() if "error:" in line]
        assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
        assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]
    assert not list(workspace.glob("bad/**/*.png"))
