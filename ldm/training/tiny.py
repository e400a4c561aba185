"""Tiny training configs (configs/train/tiny-*.yaml) pointed at given data and run folders: for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

from ldm.core.defaults import shipped_path
from ldm.core.errors import InvalidOptionError
from ldm.training.config import load_train_config

TINY_CONFIGS = {kind: shipped_path(f"configs/train/tiny-{kind}.yaml") for kind in ("ldm", "vae", "clip")}

# Quiet, fast settings for runs nobody watches.
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logging.tensorboard=false"]


def tiny_train_config(
    kind: str, data_root: str | os.PathLike, run_dir: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()
) -> dict:
    """The resolved tiny config of `kind` ("ldm", "vae" or "clip") reading data_root and writing run_dir."""
    if kind not in TINY_CONFIGS:
        raise InvalidOptionError(f"unknown tiny config {kind!r}; known: {', '.join(TINY_CONFIGS)}")
    base = [f"data.root={Path(data_root).as_posix()}", f"logging.run_dir={Path(run_dir).as_posix()}"]
    return load_train_config(TINY_CONFIGS[kind], base + QUIET + list(overrides))
