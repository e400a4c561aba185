"""A regular install works: the wheel carries the shipped models and configs, and runs from any folder."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kwargs):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{cmd}: {result.stderr[-2000:]}"
    return result


def test_wheel_installs_into_a_fresh_venv_and_generates_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)])
    wheel = next(dist.glob("ldm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "checkpoints/emoji/model.safetensors",
        "checkpoints/emoji/model.yaml",
        "checkpoints/emoji/student.safetensors",
        "checkpoints/emoji/student.yaml",
        "checkpoints/emoji/judge.safetensors",
        "configs/stable-diffusion/v2-inference.yaml",
        "configs/train/tiny-ldm.yaml",
    ):
        assert f"ldm/shipped/{shipped}" in names, shipped
    assert "ldm/interfaces/app/views/text.py" in names

    # A fresh venv without this checkout: the dependencies come from the test's own environment (a path
    # entry only, so its editable install of ldm is not seen), ldm from the wheel.
    # Without PYTHONPATH or LDM_HOME from here on: with PYTHONPATH at a checkout, pip would find ldm already
    # importable in the fresh venv and install nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LDM_HOME")}
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        env=env,
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import ldm, ldm.core.defaults as d; print(ldm.__file__); print(d.default_checkpoint_path())",
        ],
        cwd=elsewhere,
        env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    run(
        [
            str(venv / "bin" / "ldm"),
            "txt2img",
            "red apple",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--outdir",
            "out",
        ],
        cwd=elsewhere,
        env=env,
    )
    image = Image.open(elsewhere / "out" / "samples" / "00000.png")
    # The default: the shipped student, over the full model it names as its base (both found in the wheel).
    assert json.loads(image.text["ldm"])["model_file"] == "student.safetensors"
