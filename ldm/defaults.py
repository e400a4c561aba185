"""Where the shipped default model lives."""
from __future__ import annotations

import os
from pathlib import Path

# The repository's checkpoints/ folder (the package is installed editable from the repo);
# LDM_HOME points elsewhere for other layouts.
ROOT = Path(os.environ.get("LDM_HOME", Path(__file__).resolve().parent.parent))


def default_config_path() -> Path:
    return ROOT / "checkpoints" / "emoji" / "model.yaml"


def default_checkpoint_path() -> Path:
    return ROOT / "checkpoints" / "emoji" / "model.safetensors"
