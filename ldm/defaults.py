"""Where the shipped default model and configs live, in a checkout and in an installed wheel."""
from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

# ldm/shipped/ links to the repository's checkpoints/ and configs/; a wheel carries the files themselves
# there (pyproject.toml's package data). LDM_HOME points at another folder that holds the two.
SHIPPED = Path(str(files("ldm") / "shipped"))


def shipped_path(relative: str | os.PathLike) -> Path:
    """A file shipped with the package, e.g. "configs/stable-diffusion/v2-inference.yaml"."""
    home = os.environ.get("LDM_HOME")
    return (Path(home) if home else SHIPPED) / relative


def default_config_path() -> Path:
    return shipped_path("checkpoints/emoji/model.yaml")


def default_checkpoint_path() -> Path:
    return shipped_path("checkpoints/emoji/model.safetensors")
