"""A trained 2-D toy model (ldm.toys.points.ToyDiffusion) as one safetensors file: the MLP's weights, and its
config as the file's metadata (JSON), so loading never runs code and needs no config file beside it.

    save_toy(toy, "spiral.safetensors");  toy = load_toy("spiral.safetensors")

Only what the model needs to denoise and to evaluate its bound is kept (schedule, T, width, variance); the
optimiser state and training data are not, so a loaded model evaluates and samples; `train` on it needs data.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ldm.core.errors import LdmError, MissingFileError
from ldm.diffusion.likelihood import VARIANCES
from ldm.io.checkpoint import atomic_path
from ldm.toys.points import ToyDiffusion

FORMAT = "ldm-toy2d"
CONFIG_KEYS = ("schedule", "num_timesteps", "hidden", "variance")


class ToyFileError(LdmError, ValueError):
    pass


def save_toy(toy: ToyDiffusion, path: str | Path) -> None:
    """Write the toy's weights and config (atomically: a crash leaves no half-written file)."""
    config = {key: getattr(toy, key) for key in CONFIG_KEYS}
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in toy.net.state_dict().items()}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, tmp, metadata={"format": FORMAT, "config": json.dumps(config)})


def read_config(path: str | Path) -> dict:
    """The config stored in a toy file; ToyFileError for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"toy model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ToyFileError(
            f"{path} is not a safetensors file: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from exc
    if metadata.get("format") != FORMAT:
        raise ToyFileError(f"{path} is not a toy model file (saved by ldm.toys.files.save_toy)")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ToyFileError(f"{path}: the toy model's config is missing or not JSON") from exc
    if not isinstance(config, dict) or set(config) != set(CONFIG_KEYS) or config["variance"] not in VARIANCES:
        raise ToyFileError(f"{path}: the toy model's config needs exactly {', '.join(CONFIG_KEYS)}")
    return config


def load_toy(path: str | Path, data: torch.Tensor | None = None) -> ToyDiffusion:
    """The toy saved at `path`, in eval mode; `data` ([N, 2], default none) only matters to train it further."""
    config = read_config(path)
    with safe_open(str(path), framework="pt") as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    try:
        toy = ToyDiffusion(torch.zeros(0, 2) if data is None else data, **config)
        toy.net.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ToyFileError(f"{path}: the weights do not fit the config {config}: {str(exc).splitlines()[0]}") from exc
    toy.net.eval()
    return toy
