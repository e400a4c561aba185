"""What a run has made survives its end: a stopped generation keeps every image it wrote, a second run keeps the
first one's images and grid, and a terminated training run exits 143 once its checkpoint is written."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from factories import tiny_config, tiny_model, with_ctrl_c
from PIL import Image

from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

DEADLINE_SECONDS = 240


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), d / "tiny.safetensors")
    return str(d / "tiny.yaml"), str(d / "tiny.safetensors")


def wait_for(proc: subprocess.Popen, done, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {DEADLINE_SECONDS} s")
        time.sleep(0.1)


@pytest.mark.parametrize(
    "signum, status, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_stopped_generation_keeps_every_image_it_wrote(model_files, tmp_path, signum, status, said):
    cfg, ckpt = model_files
    samples = tmp_path / "out" / "samples"
    # A million images are not refused: they are made in chunks and written as they come.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ldm.interfaces.cli.main",
            "txt2img",
            "x",
            "--config",
            cfg,
            "--ckpt",
            ckpt,
            "--steps",
            "1",
            "--height",
            "16",
            "--width",
            "16",
            "--n-samples",
            "1000000",
            "--seed",
            "5",
            "--no-progress",
            "--outdir",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=with_ctrl_c,
    )
    try:
        wait_for(proc, lambda: len(list(samples.glob("*.png"))) > 16, "a second chunk of images")  # chunks are 16
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    assert f"ldm txt2img: {said}" in err and "Traceback" not in err, err[-3000:]
    files = sorted(samples.iterdir())
    assert [f.name for f in files] == [
        f"{i:05d}.png" for i in range(len(files))
    ]  # whole images only, no temporary file
    for i, path in enumerate(files):
        with Image.open(path) as image:
            image.load()
            assert json.loads(image.text["ldm"])["seed"] == 5 + i


def test_a_second_run_numbers_after_the_highest_image_and_grid(model_files, tmp_path):
    cfg, ckpt = model_files
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    earlier = [out / "samples" / "00041.png", out / "grid-0007.png"]  # gaps below them: counting files would overwrite
    for path in earlier:
        Image.new("RGB", (16, 16), "blue").save(path)
    before = {path: path.read_bytes() for path in earlier}
    args = [
        "txt2img",
        "x",
        "--config",
        cfg,
        "--ckpt",
        ckpt,
        "--steps",
        "1",
        "--height",
        "16",
        "--width",
        "16",
        "--n-samples",
        "2",
        "--no-progress",
        "--outdir",
        str(out),
    ]
    handler = signal.getsignal(signal.SIGTERM)
    assert main(args) == 0
    assert main(args) == 0
    assert (
        signal.getsignal(signal.SIGTERM) is handler
    )  # main's own SIGTERM handler is not left behind for a later train
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "00041.png",
        "00042.png",
        "00043.png",
        "00044.png",
        "00045.png",
    ]
    assert sorted(p.name for p in out.glob("grid-*.png")) == ["grid-0007.png", "grid-0008.png", "grid-0009.png"]
    assert all(path.read_bytes() == data for path, data in before.items())


def test_a_terminated_training_run_exits_143_after_writing_last_ckpt(tmp_path):
    shapes = make_shapes_dataset(tmp_path / "shapes", size=16, count=8)
    run_dir = tmp_path / "run"
    cfg = tiny_train_config(
        "vae",
        shapes,
        run_dir,
        [
            "trainer.max_steps=100000",
            "logging.checkpoint_every_n_steps=3",
            "logging.sample_every_n_steps=0",
            "data.val_fraction=0",
            "logging.csv=false",
            "data.batch_size=2",
            "model.params.ddconfig.ch_mult=[1]",
            "training.disc_start=null",
        ],
    )
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldm.interfaces.cli.main", "train", "--config", str(tmp_path / "vae.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(proc, (run_dir / "checkpoints" / "step-000003.ckpt").exists, "the first periodic checkpoint")
        proc.send_signal(signal.SIGTERM)  # what a scheduler preempting the job sends
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    stopped = re.search(r"ldm train: error: stopped by SIGTERM at step (\d+); last.ckpt is saved", err)
    assert stopped, err[-3000:]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == int(stopped.group(1)) >= 3
    assert not (run_dir / "vae.safetensors").exists()  # an unfinished run is not exported
