"""Copy a diffusion run's export into checkpoints/emoji as the shipped default model (fp16 weights).

    python scripts/ship_default_model.py runs/emoji-ldm

fp16 halves the download; the loader casts back to the model's fp32 parameters on load.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from ldm.checkpoint import load_state_dict, save_state_dict
from ldm.defaults import default_checkpoint_path, default_config_path


def ship(run_dir: str) -> None:
    run = Path(run_dir)
    save_state_dict(load_state_dict(run / "model.safetensors"), default_checkpoint_path(),
                    metadata={"format": "pt", "source": str(run)}, float_dtype=torch.float16)
    shutil.copyfile(run / "model.yaml", default_config_path())
    size = default_checkpoint_path().stat().st_size / 2**20
    print(f"shipped {default_checkpoint_path()} ({size:.1f} MiB) and {default_config_path()}")


if __name__ == "__main__":
    ship(sys.argv[1] if len(sys.argv) > 1 else "runs/emoji-ldm")
