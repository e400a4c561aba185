"""ldm verify: three images made by the tiny model, one altered pixel-wise with its metadata kept, one PNG without
metadata: verify names the altered one with its PSNR, passes the others, and exits non-zero. Through the real command
(tests/cli_runner.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from factories import tiny_config, tiny_model
from PIL import Image, PngImagePlugin

from ldm.io.checkpoint import save_state_dict

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
MODEL = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--device", "cpu"]


def run_cli(root: Path, *argvs: list[str]) -> list[dict]:
    cases = [{"argv": argv, "cwd": str(root), "timeout": 240} for argv in argvs]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("verify")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), root / "tiny.safetensors")
    (root / "empty").mkdir()
    common = ["--steps", "2", "--outdir", "out", "--no-grid", "--no-progress", *MODEL]
    made = run_cli(
        root,
        ["txt2img", "a red heart", "--n-samples", "2", *common],
        ["txt2img", "a green tree", "--tiling", "x", "--seed", "7", *common],  # the tiling is read back too
    )
    assert [m["rc"] for m in made] == [0, 0], [m["stderr"][-500:] for m in made]
    samples = root / "out" / "samples"
    with Image.open(samples / "00001.png") as image:
        info = PngImagePlugin.PngInfo()
        for key in ("parameters", "ldm"):
            info.add_text(key, image.info[key])
        pixels = np.asarray(image.convert("RGB")).copy()
    pixels[:4, :4] = 255 - pixels[:4, :4]  # a corner inverted, the metadata kept
    Image.fromarray(pixels).save(samples / "00001.png", pnginfo=info)
    Image.new("RGB", (8, 8), "blue").save(samples / "plain.png")  # no metadata
    return root, run_cli(root, ["verify", "out/samples", *MODEL], ["verify", "empty", *MODEL])


def test_verify_names_the_altered_image_and_passes_the_others(made):
    root, (verify, _) = made
    with Image.open(root / "out" / "samples" / "00002.png") as image:
        assert json.loads(image.info["ldm"])["tiling"] == "x" and "Tiling: x" in image.info["parameters"]
    lines = dict(line.split(": ", 1) for line in verify["stdout"].splitlines() if ".png: " in line)
    assert lines["00000.png"] == "exact" and lines["00002.png"] == "exact"
    assert lines["00001.png"].startswith("differs: PSNR ") and lines["00001.png"].endswith(" dB")
    assert 10 < float(lines["00001.png"].split()[2]) < 60
    assert lines["plain.png"] == "no metadata"
    assert verify["rc"] == 1 and "2 of 3 re-made exactly, 1 without metadata" in verify["stdout"]


def test_a_folder_without_pngs_is_a_one_line_error(made):
    _, (_, empty) = made
    assert empty["rc"] == 2 and empty["stderr"].strip().splitlines() == ["ldm verify: error: empty holds no PNG images"]
