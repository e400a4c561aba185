"""Nothing a user made is overwritten or lost (issue 36): concurrent runs into one output folder keep every image,
one training per run folder, named outputs refused unless --overwrite, and a full disk stops in one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_config, tiny_model
from PIL import Image
from test_tiny_example import tiny_example_commands

from ldm.interfaces.cli.main import main
from ldm.io.checkpoint import save_state_dict
from ldm.training.run import train  # imported here: Lightning's log handler then holds no test's captured stream
from ldm.training.shapes import make_shapes_dataset
from ldm.training.tiny import tiny_train_config

RUNNER = Path(__file__).parents[1] / "cli_runner.py"
VAE_FAST = [
    "logging.sample_every_n_steps=0",
    "data.val_fraction=0",
    "logging.csv=false",
    "data.batch_size=2",
    "model.params.ddconfig.ch_mult=[1]",
    "training.disc_start=null",
]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("tiny")
    (d / "tiny.yaml").write_text(yaml.safe_dump(tiny_config()))
    save_state_dict(tiny_model().original_state_dict(), d / "tiny.safetensors")
    return ["--config", str(d / "tiny.yaml"), "--ckpt", str(d / "tiny.safetensors")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), size=16, count=8)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


def assert_one_line_refusal(rc: int, err: str, said: str) -> None:
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and said in lines[0], err[-3000:]


def png_seed(path: Path) -> int:
    with Image.open(path) as image:
        return json.loads(image.text["ldm"])["seed"]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---- numbered images ---------------------------------------------------------------------------------------------


def test_four_runs_into_one_folder_at_once_keep_all_twenty_images(model_files, tmp_path):
    out = tmp_path / "out"
    common = [
        *model_files,
        "--steps",
        "2",
        "--height",
        "16",
        "--width",
        "16",
        "--n-iter",
        "5",
        "--no-progress",
        "--outdir",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ldm.interfaces.cli.main", "txt2img", "x", *common, "--seed", str(1000 * k)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for k in range(4)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for e in errs]
    files = sorted((out / "samples").iterdir())
    assert len(files) == 20 and all(f.suffix == ".png" for f in files), [f.name for f in files]
    seeds = [png_seed(f) for f in files]
    assert sorted(seeds) == sorted(1000 * k + i for k in range(4) for i in range(5))  # every image, none replaced
    assert len(list(out.glob("grid-*.png"))) == 4  # each run's grid kept too
    for path in (files[0], files[-1]):  # the files hold the images their metadata describes
        again = tmp_path / f"again-{path.stem}"
        assert (
            main(
                ["txt2img", "--from-png", str(path), *model_files, "--no-progress", "--no-grid", "--outdir", str(again)]
            )
            == 0
        )
        [made] = list((again / "samples").iterdir())
        assert np.array_equal(pixels(made), pixels(path)) and png_seed(made) == png_seed(path)


# ---- one training per run folder -----------------------------------------------------------------------------------


def wait_until(proc: subprocess.Popen, done, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {seconds} s")
        time.sleep(0.1)


def test_a_second_training_on_a_live_run_folder_is_refused_and_a_killed_run_resumes(shapes, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "vae.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_train_config(
                "vae", shapes, run_dir, [*VAE_FAST, "trainer.max_steps=100000", "logging.checkpoint_every_n_steps=2"]
            )
        )
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "ldm.interfaces.cli.main", "train", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(first, (run_dir / "checkpoints" / "step-000002.ckpt").exists, "the first periodic checkpoint")
        # A new run, a resume, a restart: each would share the folder. Run as real commands, forked from one process
        # that has imported torch once (tests/cli_runner.py), so the three cost one start-up.
        cases = [
            {"argv": ["train", "--config", str(cfg), *extra], "timeout": 240}
            for extra in ([], ["--resume"], ["--overwrite"])
        ]
        r = subprocess.run(
            [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stderr[-3000:]
        for result in json.loads(r.stdout):
            assert_one_line_refusal(
                result["rc"], result["stderr"], f"{run_dir} is in use by a running training (pid {first.pid})"
            )
        assert first.poll() is None  # the live run goes on
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert main(["train", "--config", str(cfg), "--resume", f"trainer.max_steps={step + 2}"]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 2


# ---- named outputs -----------------------------------------------------------------------------------------------


def user_files(folder: Path) -> dict[str, bytes]:
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), "purple").save(folder / "images" / "0000.png")
    (folder / "captions.jsonl").write_text('{"file": "images/0000.png", "caption": "my own picture"}\n')
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_tiny_examples_data_step_refuses_a_users_dataset_unless_overwrite(tmp_path, monkeypatch, capsys):
    [data_step] = [argv for argv in tiny_example_commands() if argv[0] == "data"]  # ldm data shapes data/shapes ...
    monkeypatch.chdir(tmp_path)
    folder = Path(data_step[2])
    before = user_files(folder)
    rc = main(data_step)
    assert_one_line_refusal(rc, capsys.readouterr().err, f"{folder} already holds files")
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert main([*data_step, "--overwrite"]) == 0
    captions = (folder / "captions.jsonl").read_text().splitlines()
    assert len(captions) == 48 and "my own picture" not in captions[0]
    assert (folder / "images" / "0000.png").read_bytes() != before["images/0000.png"]


def test_walk_refuses_an_existing_out_file_and_frames_unless_overwrite(model_files, tmp_path, capsys):
    out, frames = tmp_path / "existing.gif", tmp_path / "frames"
    out.write_bytes(b"the user's own animation")
    frames.mkdir()
    (frames / "0001.png").write_bytes(b"the user's own frame")
    walk = ["walk", "a", "b", *model_files, "--steps", "2", "--frames", "3", "--no-progress", "--out", str(out)]
    assert_one_line_refusal(main(walk), capsys.readouterr().err, f"{out} already exists (--overwrite replaces it)")
    assert_one_line_refusal(
        main([*walk[:-2], "--out", str(tmp_path / "new.gif"), "--frames-dir", str(frames)]),
        capsys.readouterr().err,
        f"{frames / '0001.png'} already exists",
    )
    assert out.read_bytes() == b"the user's own animation" and not (tmp_path / "new.gif").exists()
    assert (frames / "0001.png").read_bytes() == b"the user's own frame" and sorted(os.listdir(frames)) == ["0001.png"]
    assert main([*walk, "--frames-dir", str(frames), "--overwrite"]) == 0
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.n_frames == 3
    assert sorted(os.listdir(frames)) == ["0000.png", "0001.png", "0002.png"]
    assert pixels(frames / "0001.png").shape == (16, 16, 3)


def test_export_only_refuses_existing_exports_unless_overwrite(shapes, tmp_path, capsys):
    from ldm.io.checkpoint import load_state_dict

    run_dir = tmp_path / "run"
    train(tiny_train_config("vae", shapes, run_dir, [*VAE_FAST, "trainer.max_steps=2"]))
    weights = run_dir / "vae.safetensors"
    weights.write_bytes(b"the user's own weights")
    export = ["train", "--export-only", "--resume", str(run_dir)]
    assert_one_line_refusal(
        main(export), capsys.readouterr().err, f"{weights} already exists (--overwrite replaces it)"
    )
    # the same through a process of its own (scripts/export.py, which did this, went: `python -m ldm` is the command)
    process = subprocess.run([sys.executable, "-m", "ldm", *export], capture_output=True, text=True, timeout=300)
    assert_one_line_refusal(process.returncode, process.stderr, "already exists")
    assert weights.read_bytes() == b"the user's own weights"
    assert main([*export, "--overwrite"]) == 0
    assert "encoder.conv_in.weight" in load_state_dict(weights)


# ---- a full disk -------------------------------------------------------------------------------------------------


class HalfWrites:
    """A file on a disk that fills up: each write puts half its bytes on disk, then fails with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_during_generation_stops_in_one_line_and_leaves_no_partial_image(
    model_files, tmp_path, monkeypatch, capsys
):
    real_fdopen, opened = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):  # how the PNG writer opens its temporary file
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" not in mode:
            return f
        opened.append(fd)
        return f if len(opened) == 1 else HalfWrites(f)  # the first image fits, the disk is full after it

    monkeypatch.setattr(os, "fdopen", fdopen)
    out = tmp_path / "out"
    rc = main(["txt2img", "x", *model_files, "--steps", "2", "--n-samples", "3", "--no-progress", "--outdir", str(out)])
    assert_one_line_refusal(
        rc, capsys.readouterr().err, f"cannot write {out / 'samples' / '00001.png'}: No space left on device"
    )
    assert sorted(os.listdir(out / "samples")) == ["00000.png"]  # the whole first image, no partial one, no temp file
    assert pixels(out / "samples" / "00000.png").shape == (16, 16, 3)


def test_a_full_disk_during_training_stops_in_one_line_and_keeps_the_last_good_checkpoint(
    shapes, tmp_path, monkeypatch, capsys
):
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    run_dir = tmp_path / "run"
    cfg = tmp_path / "vae.yaml"
    cfg.write_text(
        yaml.safe_dump(
            tiny_train_config(
                "vae", shapes, run_dir, [*VAE_FAST, "trainer.max_steps=6", "logging.checkpoint_every_n_steps=1"]
            )
        )
    )
    real_save = TorchCheckpointIO.save_checkpoint
    saves = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        saves.append(path)
        if len(saves) <= 2:  # step 1: step-000001.ckpt and last.ckpt
            return real_save(self, checkpoint, path, storage_options)
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")  # what a full disk leaves of the file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", save_checkpoint)
    rc = main(["train", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert_one_line_refusal(rc, err, f"cannot write {run_dir / 'checkpoints'}")
    assert error_lines(err)[0].endswith(".ckpt: No space left on device"), err[-2000:]
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["last.ckpt", "step-000001.ckpt"]  # no half file, no temp
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", real_save)
    assert main(["train", "--config", str(cfg), "--resume", "trainer.max_steps=2"]) == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_eval_and_clip_refuse_existing_outputs_unless_overwrite(tmp_path, capsys):
    """`ldm eval --out/--table` and `ldm clip --out` are named outputs too: refused before any work."""
    results = tmp_path / "results.json"
    results.write_text("the user's earlier results")
    table = tmp_path / "table.md"
    table.write_text("the user's table")
    rc = main(["eval", "--data", str(tmp_path / "no-data"), "--out", str(results)])
    assert_one_line_refusal(rc, capsys.readouterr().err, f"{results} already exists (--overwrite replaces it)")
    rc = main(["eval", "--compare", f"a={results}", "--table", str(table)])
    assert_one_line_refusal(rc, capsys.readouterr().err, f"{table} already exists (--overwrite replaces it)")
    assert results.read_text() == "the user's earlier results" and table.read_text() == "the user's table"
    # with --overwrite the command goes on to its own checks (here: the results file is not ldm eval's)
    rc = main(["eval", "--compare", f"a={results}", "--table", str(table), "--overwrite"])
    assert_one_line_refusal(rc, capsys.readouterr().err, "is not the --out file of ldm eval")

    clip_out = tmp_path / "clip"
    clip_out.mkdir()
    (clip_out / "clip.safetensors").write_bytes(b"the user's CLIP")
    rc = main(["clip", "--data", str(tmp_path / "no-data"), "--out", str(clip_out)])
    assert_one_line_refusal(rc, capsys.readouterr().err, "clip.safetensors already exists (--overwrite replaces it)")
    assert (clip_out / "clip.safetensors").read_bytes() == b"the user's CLIP"
