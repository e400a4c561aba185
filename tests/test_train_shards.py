"""Training on WebDataset shards end to end: 2 DDP processes on CPU (gloo) read disjoint samples that together
cover the set, an uneven split still ends, and a run resumed in the middle of a shard epoch repeats nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ldm.data.shards import write_shards
from ldm.training.shapes import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "shard_runner.py"
COMMON = ["data.batch_size=4", "logging.sample_every_n_steps=0", "trainer.accelerator=cpu", "training.text_cache=0"]


def run(out: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(out), *COMMON, *overrides],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def keys(out: Path, rank: int) -> list[str]:
    path = out / f"keys-rank{rank}.txt"
    return [k.split("#")[1] for k in path.read_text().split()] if path.is_file() else []


def shards(tmp_path: Path, count: int, per_shard: int) -> str:
    return write_shards(make_shapes_dataset(tmp_path / "folder", size=16, count=count), tmp_path / "shards", per_shard)


def test_two_ranks_read_disjoint_samples_covering_the_set(tmp_path):
    pattern = shards(tmp_path, 24, 6)  # 4 shards of 6: 24 samples = 3 steps x 2 ranks x batch 4
    out = tmp_path / "run"
    run(
        out,
        f"data.shards={pattern}",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.max_steps=3",
        f"logging.run_dir={out}",
    )
    rank0, rank1 = keys(out, 0), keys(out, 1)
    assert len(rank0) == len(rank1) == 12
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == [f"{i:09d}" for i in range(24)]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_uneven_shards_end_with_equal_steps_and_say_what_was_dropped(tmp_path):
    pattern = shards(tmp_path, 19, 5)  # shards of 5, 5, 5, 4: 19 samples, 2 steps x 2 ranks x 4 = 16 per epoch
    out = tmp_path / "run"
    # 5 steps: two and a half epochs, so both ranks cross epoch ends in shards of different sizes
    proc = run(
        out,
        f"data.shards={pattern}",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.max_steps=5",
        f"logging.run_dir={out}",
    )
    assert "3 samples per epoch dropped" in proc.stdout + proc.stderr
    rank0, rank1 = keys(out, 0), keys(out, 1)
    assert len(rank0) == len(rank1) == 20
    first_epoch = rank0[:8] + rank1[:8]  # steps 0-1 of each rank
    assert len(set(first_epoch)) == 16  # no sample twice within an epoch
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_resume_mid_shard_epoch_repeats_and_skips_nothing(tmp_path):
    workers = (
        2  # two loader workers, each reading its own run of shards (no workers: tests/training/test_shard_stream.py)
    )
    pattern = shards(tmp_path, 28, 5)  # 6 shards (5 x 5 + 3): 7 steps per epoch at batch 4
    common = [f"data.shards={pattern}", f"data.num_workers={workers}", "logging.checkpoint_every_n_steps=0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run(whole, *common, "trainer.max_steps=9", f"logging.run_dir={whole}")
    run(parts, *common, "trainer.max_steps=3", f"logging.run_dir={parts}")  # stops inside the first epoch's 3rd shard
    assert len(keys(parts, 0)) == 12
    run(parts, "--resume", *common, "trainer.max_steps=9", f"logging.run_dir={parts}")
    assert keys(parts, 0) == keys(whole, 0)  # the same 36 samples in the same order, 9 steps across an epoch end
    epoch = keys(whole, 0)[:28]
    assert len(set(epoch)) == 28
