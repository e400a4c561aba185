"""`ldm txt2img PROMPT --control edges.png`, no other flag, on the shipped default model: its canny ControlNet is
used (checkpoints/emoji/controlnet-canny.safetensors, ldm.core.defaults) with the variant chosen for it, and both
are recorded; a model that is not the shipped one, or an inpainting model, refuses it in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from factories import tiny_model, write_tiny_model_files
from PIL import Image, ImageDraw

from ldm.core.defaults import CONTROLNET_VARIANT, DEFAULT_CONTROLNET
from ldm.interfaces.cli.controlnet_args import resolved_controlnet
from ldm.io.control_images import control_image
from ldm.io.infotext import settings_from_png

RUNNER = Path(__file__).parents[1] / "cli_runner.py"


def test_control_without_a_controlnet_uses_the_shipped_one_and_other_models_refuse_it(tmp_path):
    square = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(square).rectangle((14, 14, 50, 50), fill="black")
    control_image(square).save(tmp_path / "edges.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    write_tiny_model_files(tmp_path, "tiny", model=tiny_model(0))
    tiny = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--steps", "2"]
    cases = [
        ["txt2img", "red apple", "--control", "edges.png", "--outdir", "out", "--no-grid", "--no-progress"],
        ["txt2img", "x", "--control", "edges.png", "--outdir", "bad", *tiny],
        ["inpaint", "edges.png", "mask.png", "x", "--control", "edges.png", "--outdir", "bad"],
        ["txt2img", "x", "--control", "missing.png", "--outdir", "bad"],
    ]
    runs = [{"argv": argv, "cwd": str(tmp_path), "timeout": 300} for argv in cases]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(runs), capture_output=True, text=True, timeout=900, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    made, *refused = json.loads(r.stdout)
    assert made["rc"] == 0, made["stderr"][-3000:]
    settings = settings_from_png(tmp_path / "out" / "samples" / "00000.png")
    # recorded by its name in the package (not this machine's path), which --from-png resolves anywhere
    assert settings["controls"][0]["controlnet"] == DEFAULT_CONTROLNET
    assert Path(resolved_controlnet(settings["controls"][0]["controlnet"])).is_file()
    assert (
        Path(settings["model_file"]).name
        == {"student": "student.safetensors", "full": "model.safetensors"}[CONTROLNET_VARIANT]
    )
    messages = ["names no ControlNet, which only the shipped default", "names no ControlNet", "control image not found"]
    for result, message in zip(refused, messages):
        errors = [line for line in result["stderr"].splitlines() if "error:" in line]
        assert result["rc"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
        assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]
    assert not (tmp_path / "bad").exists()
