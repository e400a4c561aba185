"""Copy a diffusion run's export into checkpoints/emoji as the shipped default model (fp16 weights).

    ldm train --config configs/emoji/ldm.yaml --resume --export-only --out runs/v2-snap
    python scripts/ship_default_model.py runs/v2-snap    # or runs/emoji-ldm, which a finished run exports to

fp16 halves the download; the loader casts back to the model's fp32 parameters on load. The export holds the
EMA weights (what the run's sample grids and validation loss show) and the training step, which travels in the
shipped file's metadata with the licence that the training data imposes (OpenMoji is CC BY-SA 4.0).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from ldm.core.defaults import default_checkpoint_path, default_config_path
from ldm.io.checkpoint import load_state_dict, save_state_dict

LICENSE = "CC-BY-SA-4.0"


def ship(export_dir: str) -> None:
    export = Path(export_dir)
    weights = export / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        metadata = dict(f.metadata() or {})  # the export's config (ldm_config) lets the file load on its own
    step = metadata.setdefault("step", "unknown")
    metadata.update({"format": "pt", "source": str(export), "weights": "EMA", "license": LICENSE})
    save_state_dict(load_state_dict(weights), default_checkpoint_path(), metadata=metadata, float_dtype=torch.float16)
    shutil.copyfile(export / "model.yaml", default_config_path())
    size = default_checkpoint_path().stat().st_size / 2**20
    print(f"shipped {default_checkpoint_path()} ({size:.1f} MiB, step {step}) and {default_config_path()}")


if __name__ == "__main__":
    ship(sys.argv[1] if len(sys.argv) > 1 else "runs/emoji-ldm")
