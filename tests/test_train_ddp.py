"""A 2-process DDP run on CPU (gloo), launched like a user would, in a subprocess so pytest is not disturbed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from ldm.training.shapes import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_ddp_on_cpu(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", size=16, count=16)
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--config",
        str(ROOT / "configs" / "train" / "tiny-ldm.yaml"),
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_steps=3",
        "data.batch_size=4",
        "data.val_fraction=0",
        "logging.sample_every_n_steps=0",
        "logging.tensorboard=false",
        "trainer.enable_progress_bar=false",
        f"data.root={data}",
        f"logging.run_dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    # Each rank estimated the scale factor from all ranks' latents: both logged the same value.
    estimates = re.findall(r"estimated scale_factor = ([0-9.]+)", proc.stdout + proc.stderr)
    assert len(estimates) == 2 and estimates[0] == estimates[1], estimates
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "model.yaml").is_file()
