"""The training config's `controlnet:` section (ldm.training.config reads it; ldm.training.config_checks checks it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ControlNetSection:
    """Train a ControlNet on the frozen model (ldm.training.controlnet_module) instead of the model itself: off
    while `train` is false. Control images are made from each training image by `preprocess` (a type of
    ldm.io.control_images, with its thresholds `low` and `high`), or read from `control_root`, a folder with a
    control image under each training image's relative path, or with data.shards from the file `control_key` of
    each sample (ldm.data.shards.CONTROL_KEY, "control.png": KEY.control.png in the tar). Exported as
    controlnet.safetensors (fp16, the original layout), and with `export_diffusers` also as the folder
    controlnet-diffusers/ (diffusers' layout)."""

    train: bool = False
    preprocess: str = "canny"
    low: float = 100.0
    high: float = 200.0
    control_root: str | None = None
    control_key: str | None = None
    export_diffusers: bool = False
    # kind "t2i_adapter" trains a T2I-Adapter (ldm.models.t2i_adapter) of `adapter_type` with `adapter_blocks`
    # residual blocks per level instead, exported as t2i-adapter.safetensors (fp16, diffusers' names)
    kind: str = "controlnet"
    adapter_type: str = "full_adapter"
    adapter_blocks: int = 2
