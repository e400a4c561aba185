"""T2I-Adapter files as diffusers writes them: a folder with config.json and diffusion_pytorch_model.safetensors
(T2IAdapter.save_pretrained), or that weights file alone, whose architecture is then read from its tensor shapes.

Tensor names are diffusers' (`adapter.conv_in.weight`, `adapter.body.0.resnets.0.block1.weight`, ...), the same as
ldm.models.t2i_adapter's, so `is_t2i_adapter` tells an adapter from a ControlNet by them: `--control IMAGE:FILE`
takes either (ldm.formats.controlnet_files.load_controlnet hands adapters here). Only safetensors are read (never
pickles, so loading never runs code); names, shapes and dtypes are checked before the load, and an adapter whose
feature maps do not fit the model's U-Net levels, or whose unshuffle is not the autoencoder's f, is refused in one
line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ldm.core.errors import LdmError, MissingFileError
from ldm.io.checkpoint import load_state_dict, state_problems
from ldm.models.t2i_adapter import ADAPTER_TYPES, T2IAdapter, level_ends

WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
MARK = "adapter."


class T2IAdapterFileError(LdmError, ValueError):
    """A file that is not a T2I-Adapter, or one that does not fit the model."""


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        weights = next((path / name for name in WEIGHTS if (path / name).is_file()), None)
        if weights is None:
            raise T2IAdapterFileError(f"{path} has no T2I-Adapter weights ({WEIGHTS[0]}; .bin files are not read)")
        return weights
    return path


def is_t2i_adapter(path: str | Path) -> bool:
    """Whether `path` (a file or a diffusers folder) holds a T2I-Adapter: its tensors are all under `adapter.`."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            try:
                return "adapter_type" in json.loads(config.read_text())
            except (OSError, ValueError):
                return False
        return False
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
    except Exception:  # not readable as safetensors: the ControlNet reader says why
        return False
    return bool(names) and all(name.startswith(MARK) for name in names)


def config_from_state(state: dict[str, torch.Tensor], downscale: int) -> dict[str, Any]:
    """diffusers' config of the adapter whose tensors are `state`, for an unshuffle of `downscale` (a lone weights
    file does not say it; the model's f is assumed, and the input channels follow from conv_in's)."""
    stages = sorted({int(key.split(".")[2]) for key in state if key.startswith("adapter.body.")})
    if not stages:
        raise T2IAdapterFileError("no adapter.body.* tensors: not a T2I-Adapter")
    blocks = {int(key.split(".")[4]) for key in state if key.startswith("adapter.body.0.resnets.")}
    if "adapter.conv_in.weight" in state:
        kind, unshuffled = "full_adapter", state["adapter.conv_in.weight"].shape[1]
        channels = [int(state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0]) for i in stages]
    else:
        kind, unshuffled = "light_adapter", state["adapter.body.0.in_conv.weight"].shape[1]
        channels = [int(state[f"adapter.body.{i}.out_conv.weight"].shape[0]) for i in stages[:-1]]
    if unshuffled % (downscale * downscale):
        raise T2IAdapterFileError(
            f"the adapter's first layer takes {unshuffled} channels: not an unshuffle by f={downscale}"
        )
    return {
        "in_channels": int(unshuffled // (downscale * downscale)),
        "channels": channels,
        "num_res_blocks": len(blocks),
        "downscale_factor": downscale,
        "adapter_type": kind,
    }


def read_t2i_adapter(path: str | Path, downscale: int = 8) -> T2IAdapter:
    """The T2I-Adapter in `path` (a diffusers folder, or its safetensors file), names and shapes checked."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"T2I-Adapter file not found: {path}")
    weights = _weights_file(path)
    if weights.suffix != ".safetensors":
        raise T2IAdapterFileError(f"{weights}: T2I-Adapters are read from .safetensors files only")
    state = load_state_dict(weights)
    config_path = path / "config.json" if path.is_dir() else None
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise T2IAdapterFileError(f"{config_path} is not readable JSON: {exc}") from exc
        if config.get("adapter_type", "full_adapter") not in ADAPTER_TYPES:
            raise T2IAdapterFileError(
                f"{path}: T2I-Adapter type {config.get('adapter_type')!r} is not supported "
                f"(only {', '.join(ADAPTER_TYPES)})"
            )
        keys = ("in_channels", "channels", "num_res_blocks", "downscale_factor", "adapter_type")
        config = {key: config[key] for key in keys if key in config}
    else:
        config = config_from_state(state, downscale)
    try:
        adapter = T2IAdapter(**config)
    except (TypeError, LdmError) as exc:
        raise T2IAdapterFileError(f"{path}: not a T2I-Adapter config: {str(exc).splitlines()[0]}") from exc
    problems = state_problems(adapter.state_dict(), state)
    if problems:
        raise T2IAdapterFileError(f"{path} does not fit its T2I-Adapter config: {'; '.join(problems)}")
    adapter.load_state_dict(state)
    return adapter.eval()


def load_t2i_adapter(path: str | Path, model: torch.nn.Module) -> T2IAdapter:
    """The T2I-Adapter in `path` for `model` (a LatentDiffusion): its unshuffle is the autoencoder's f and its
    feature maps have the widths of the U-Net's levels (one per level), else a one-line error."""
    adapter = read_t2i_adapter(path, model.downscale)
    if adapter.downscale != model.downscale:
        raise T2IAdapterFileError(
            f"{path}: the adapter unshuffles by {adapter.downscale}, this model's autoencoder takes images down by "
            f"f={model.downscale}"
        )
    unet = model.unet
    levels = [unet.input_blocks[end][0].in_layers[-1].out_channels for end in level_ends(unet.num_res_blocks)]
    channels = adapter.config["channels"]
    widths = channels + channels[-1:] if adapter.config["adapter_type"] == "light_adapter" else channels
    if widths != levels:
        raise T2IAdapterFileError(f"{path}: an adapter of feature widths {widths} for a U-Net of level widths {levels}")
    return adapter.to(unet.dtype)


def save_t2i_adapter(adapter: T2IAdapter, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """`adapter` as diffusers' T2IAdapter.save_pretrained writes it (config.json and the safetensors weights), each
    file written to a temporary name and renamed, so an interrupted save leaves no half file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "T2IAdapter", **adapter.config}
    state = {
        k: (v.to(dtype) if dtype is not None else v).detach().contiguous().cpu()
        for k, v in adapter.state_dict().items()
    }
    weights, temporary = folder / WEIGHTS[0], folder / (WEIGHTS[0] + ".partial")
    save_file(state, str(temporary))
    temporary.replace(weights)
    config_tmp = folder / "config.json.partial"
    config_tmp.write_text(json.dumps(config, indent=2))
    config_tmp.replace(folder / "config.json")
    return folder
