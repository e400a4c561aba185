"""Bad input through the real `ldm` command: a non-zero exit, one line naming the problem, no traceback, and
nothing that was already there changed.

Each case runs as its own `python -m ldm.interfaces.cli.main` process (tests/cli_runner.py forks them from one process that
has imported torch once), in a workspace holding a tiny model, images, a data set, an earlier output folder
and an earlier run; every file there is compared before and after each case.
"""  # noqa: E501

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from factories import tiny_config, tiny_depth_config, tiny_model, tiny_model_from
from PIL import Image

from ldm.io.checkpoint import save_state_dict
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import TINY_CONFIGS

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
OLD_RUN_CHECKPOINT = Path(__file__).parents[1] / "data" / "vae-run-e4731bb.ckpt"  # a tiny VAE run (ch_mult [1])
MODEL = ["--config", "tiny.yaml", "--ckpt", "tiny.safetensors", "--steps", "2", "--no-progress", "--outdir", "out"]
DEPTH = ["--config", "depth.yaml", "--ckpt", "depth.safetensors", "--steps", "2", "--no-progress", "--outdir", "out"]
TRAIN = [
    "train",
    "--config",
    str(TINY_CONFIGS["vae"]),
    "data.root=shapes",
    "logging.run_dir=new-run",
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "logging.tensorboard=false",
]

# (argv, what the error line must say)
CASES = [
    (["txt2img", "x", *MODEL, "--device", "bogus"], "unknown device 'bogus'"),
    (["outpaint", "photo.png", "x", *MODEL, "--extend", ""], "nothing to extend"),
    (["img2img", "bomb.png", "x", *MODEL], "bomb.png is too large to open safely"),
    (
        ["txt2img", "x", *MODEL, "--height", "8192", "--width", "8192", "--max-memory", "1"],
        "8192x8192 px needs about",
    ),  # refused by the memory estimate before any work
    (["txt2img", "x", *MODEL, "--scale", "nan"], "guidance scale must be a finite number, got nan"),
    (["txt2img", "x", *MODEL, "--eta", "inf"], "eta must be a finite number"),
    (["txt2img", "x", *MODEL, "--height", "0"], "height 0 is not a positive multiple of 8"),
    (["txt2img", "x", *MODEL, "--n-samples", "0"], "--n-samples must be at least 1"),
    (["txt2img", "x", *MODEL, "--seed", str(2**70)], "--seed must be between -2**63 and 2**63-1"),
    (["txt2img", "x", *MODEL, "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["txt2img", "x", "--config", "tiny.yaml", "--outdir", "out"], "--config needs --ckpt"),
    (
        ["txt2img", "x", "--ckpt", "bare.safetensors", "--outdir", "out"],
        "bare.safetensors matches no known model family",
    ),
    (["txt2img", "x", *MODEL, "--ckpt", "cut.safetensors"], "cut.safetensors"),
    (["txt2img", "x", *MODEL, "--config", "odd-channels.yaml"], "bad parameters for ldm.models.unet.UNetModel"),
    (["txt2img", "x", *MODEL, "--config", "negative-size.yaml"], "bad parameters for ldm.models.unet.UNetModel"),
    (["txt2img", "x", *MODEL, "--outdir", "a-file/out"], "cannot write to a-file/out/samples"),
    (["txt2img", "--from-file", "no-such-prompts.txt", *MODEL], "prompt file not found: no-such-prompts.txt"),
    (["img2img", "not-an-image.png", "x", *MODEL], "cannot read image not-an-image.png"),
    (["img2img", "photo.png", "x", *MODEL, "--strength", "1.5"], "strength must be in [0, 1]"),
    (["inpaint", "photo.png", "small-mask.png", "x", *MODEL], "mask is 16x16 but the image is 32x24"),
    (["upscale", "photo.png", "x", *MODEL], "upscaling needs the x4 upscaler"),
    (["inpaint", "photo.png", "small-mask.png", "x", *MODEL, "--mask-padding", "-1"], "--mask-padding must be >= 0"),
    (["txt2img", "x", *MODEL, "--hires-upscaler", "model"], "--hires-upscaler sets the hires fix's second pass"),
    (["txt2img", "x", *MODEL, "--hires-scale", "9"], "hires scale must be a number in [1, 8], got 9.0"),
    (["walk", "a", "b", *MODEL, "--out", "a-file/walk.gif"], "cannot write to a-file"),
    (["walk", "a", "b", *MODEL, "--out", "walk.avi"], "--out must end in .gif or .mp4"),
    (
        ["txt2img", "a cat AND a dog", *MODEL, "--prompt-syntax", "a1111"],
        "the prompt uses AND (A1111's composable diffusion), which is not supported",
    ),
    (["img2img", "photo.png", "x AND y", *MODEL, "--prompt-editing"], "the prompt uses AND"),
    (["txt2img", "x", *MODEL, "--prompt-syntax", "sd"], "argument --prompt-syntax: invalid choice: 'sd'"),
    (["walk", "[a:b:1]", "c", *MODEL, "--prompt-syntax", "a1111"], "prompt editing ([from:to:when], [a|b]) is not"),
    ([*TRAIN, "--resume", "cut.ckpt"], "cannot read checkpoint cut.ckpt"),
    ([*TRAIN, "--resume", "weights.ckpt"], "weights.ckpt is not a training checkpoint"),
    ([*TRAIN, "--resume", str(OLD_RUN_CHECKPOINT)], "does not match the config's model"),
    ([*TRAIN, "logging.checkpoint_every_n_steps=-5"], "logging.checkpoint_every_n_steps must be an integer >= 0"),
    ([*TRAIN, "trainer.max_steps=-3"], "trainer section: `max_steps` must be a non-negative integer"),
    ([*TRAIN, "model.params.ddconfig.ch=-3"], "bad parameters for ldm.models.vae.AutoencoderKL"),
    ([*TRAIN, "logging.run_dir=earlier-run"], "earlier-run already holds a run"),
    ([*TRAIN, "logging.run_dir=a-file/run"], "cannot write to the run folder a-file/run"),
    ([*TRAIN, "data.root=no-such-folder"], "dataset folder not found: no-such-folder"),
    (["data", "emoji", "--out", "emoji", "--size", "4"], "image size must be at least 8 pixels, got 4"),
    (["control-image", "photo.png", "--out", "edges.jpg"], "--out must end in .png, got 'edges.jpg'"),
    (["control-image", "not-an-image.png", "--out", "edges.png"], "cannot read image not-an-image.png"),
    (["control-image", "photo.png", "--low", "300", "--out", "edges.png"], "edge thresholds must satisfy 0 <= low"),
    (["control-image", "photo.png", "--out", "a-file/edges.png"], "cannot write to a-file"),
    ([*TRAIN, "controlnet.train=true"], "controlnet.train applies to diffusion runs, not to this autoencoder run"),
    (["img2img", "photo.png", "x", *DEPTH], "this depth model needs --depth-map DEPTH.png"),  # SD 2 depth
    (["img2img", "photo.png", "x", *DEPTH, "--depth-map", "small-mask.png"], "the depth map holds one value"),
    (["img2img", "photo.png", "x", *MODEL, "--depth-map", "photo.png"], "--depth-map needs a depth model"),
    (["img2img", "photo.png", "x", *MODEL, "--refiner", "tiny.safetensors"], "--refiner is for SDXL models"),
    (["outpaint", "photo.png", "x", *MODEL, "--extend", "right=8", "--crop", "0,8"], "--crop is for SDXL models"),
]


def bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG a few dozen bytes long whose header says side x side pixels (400 MP, over twice PIL's limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), root / "tiny.safetensors")
    shutil.copy(root / "tiny.safetensors", root / "bare.safetensors")  # no config in it or beside it
    (root / "depth.yaml").write_text(yaml.safe_dump(tiny_depth_config(original=True)))  # SD 2 depth's layout
    save_state_dict(tiny_model_from(tiny_depth_config()).original_state_dict(), root / "depth.safetensors")
    (root / "cut.safetensors").write_bytes((root / "tiny.safetensors").read_bytes()[:2000])
    odd = tiny_config()
    odd["model"]["params"]["unet_config"]["params"]["model_channels"] = 30  # GroupNorm's 32 groups cannot split it
    (root / "odd-channels.yaml").write_text(yaml.safe_dump(odd))
    negative = tiny_config()
    negative["model"]["params"]["unet_config"]["params"]["model_channels"] = -32
    (root / "negative-size.yaml").write_text(yaml.safe_dump(negative))
    Image.new("RGB", (32, 24), (200, 40, 40)).save(root / "photo.png")
    Image.new("L", (16, 16), 255).save(root / "small-mask.png")
    (root / "not-an-image.png").write_bytes(b"plain text, not a PNG\n")
    bomb_png(root / "bomb.png")
    (root / "a-file").write_text("a file where a folder is expected\n")
    make_shapes_dataset(root / "shapes", size=16, count=8)
    (root / "cut.ckpt").write_bytes(OLD_RUN_CHECKPOINT.read_bytes()[:4096])
    torch.save({"weight": torch.zeros(3)}, root / "weights.ckpt")
    (root / "earlier-run" / "checkpoints").mkdir(parents=True)
    shutil.copy(OLD_RUN_CHECKPOINT, root / "earlier-run" / "checkpoints" / "last.ckpt")
    (root / "out" / "samples").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(root / "out" / "samples" / "00000.png")
    Image.new("RGB", (32, 16), "blue").save(root / "out" / "grid-0000.png")
    return root


@pytest.fixture(scope="module")
def results(workspace) -> list[dict]:
    cases = [{"argv": argv, "cwd": str(workspace), "watch": str(workspace), "timeout": 120} for argv, _ in CASES]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600, check=False
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("number", range(len(CASES)), ids=[" ".join(argv[:1] + argv[-2:])[:60] for argv, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(results, number):
    message = CASES[number][1]
    result = results[number]
    errors = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["rc"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(errors) == 1 and message in errors[0], result["stderr"][-3000:]
    assert result["changed"] == []


def test_the_workspace_holds_what_the_cases_need(workspace):
    # Guards the cases above: each bad file is bad in the way meant, and the good ones are good.
    with pytest.raises(Image.DecompressionBombError):
        Image.open(workspace / "bomb.png")
    assert (workspace / "bomb.png").stat().st_size < 200
    with Image.open(workspace / "photo.png") as photo:
        assert photo.size == (32, 24)
    old = torch.load(OLD_RUN_CHECKPOINT, weights_only=True)
    assert old["global_step"] == 2 and old["ldm"]["config"]["model"]["params"]["ddconfig"]["ch_mult"] == [1]


def test_a_forked_case_ends_as_a_fresh_process_does(workspace, results):
    # Guards the runner: the first case, run by a fresh interpreter, gives the same status and line.
    argv = CASES[0][0]
    fresh = subprocess.run(
        [sys.executable, "-m", "ldm.interfaces.cli.main", *argv],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert fresh.returncode == results[0]["rc"] == 2
    assert fresh.stderr.strip().splitlines()[-1] == results[0]["stderr"].strip().splitlines()[-1]
