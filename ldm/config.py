"""YAML configs -> modules, for our configs and the original SD 2.x inference YAMLs alike.

A config node is `{target: <name>, params: {...}}`. Targets are looked up in a fixed
table, never imported by name, so a config cannot run arbitrary code; the original
repository's class names map onto ours.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from ldm.errors import LdmError


class ConfigError(LdmError, ValueError):
    pass


class UnknownTargetError(ConfigError):
    pass


_OURS = {
    "ldm.model.LatentDiffusion": "ldm.model:LatentDiffusion",
    "ldm.unet.UNetModel": "ldm.unet:UNetModel",
    "ldm.vae.AutoencoderKL": "ldm.vae:AutoencoderKL",
    "ldm.text_encoder.FrozenOpenCLIPEmbedder": "ldm.text_encoder:FrozenOpenCLIPEmbedder",
    "ldm.text_encoder.OpenCLIP": "ldm.text_encoder:open_clip_model",
    "ldm.conditioning.LowResNoiseAugmentation": "ldm.conditioning:LowResNoiseAugmentation",
}
_ORIGINAL = {
    "ldm.models.diffusion.ddpm.LatentDiffusion": "ldm.model:LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentInpaintDiffusion": "ldm.model:LatentDiffusion",
    "ldm.models.diffusion.ddpm.LatentUpscaleDiffusion": "ldm.model:LatentDiffusion",
    "ldm.modules.diffusionmodules.openaimodel.UNetModel": "ldm.unet:UNetModel",
    "ldm.models.autoencoder.AutoencoderKL": "ldm.vae:AutoencoderKL",
    "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder": "ldm.text_encoder:FrozenOpenCLIPEmbedder",
    "ldm.modules.diffusionmodules.upscaling.ImageConcatWithNoiseAugmentation": "ldm.conditioning:LowResNoiseAugmentation",
}
# The reference repository's "linear" schedule is linear in sqrt(beta), which we call scaled_linear.
_ORIGINAL_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}
# Nodes the original YAMLs carry that only matter to training code we do not mirror.
_SKIPPED = {"torch.nn.Identity"}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ConfigError(f"{path} has no top-level 'model' section")
    return cfg


def _resolve(target: str):
    spec = _OURS.get(target) or _ORIGINAL.get(target)
    if spec is None:
        known = ", ".join(sorted(_OURS))
        raise UnknownTargetError(f"unknown config target {target!r}; known: {known} (and the original SD 2.x class names)")
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def translate_original(target: str, params: dict) -> dict:
    """Original-repository parameters that mean something else in ours."""
    params = dict(params)
    if target.startswith("ldm.models.diffusion.ddpm."):
        params["beta_schedule"] = _ORIGINAL_SCHEDULES[params.get("beta_schedule", "linear")]
        params.setdefault("parameterization", "eps")
    if target.endswith("ImageConcatWithNoiseAugmentation"):
        sched = dict(params.pop("noise_schedule_config", {}))
        sched["beta_schedule"] = _ORIGINAL_SCHEDULES[sched.get("beta_schedule", "linear")]
        params.update(sched)
    return params


def instantiate(node: dict[str, Any] | None, **overrides: Any) -> Any:
    """Build the module a config node describes; nested `*_config` nodes are built by the parent."""
    if node is None:
        return None
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(f"config node has no 'target': {node!r}")
    target = node["target"]
    if target in _SKIPPED:
        return None
    cls = _resolve(target)
    params = dict(node.get("params") or {})
    if target in _ORIGINAL:
        params = translate_original(target, params)
    params.update(overrides)
    try:
        return cls(**params)
    except LdmError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        # A misspelt or mistyped parameter in the YAML surfaces here (an unexpected keyword, a channel
        # count GroupNorm cannot split, a negative size torch cannot make a tensor of): name the node,
        # so the user knows which part of the file to fix.
        raise ConfigError(f"bad parameters for {target}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def model_from_config(cfg: dict | str | Path) -> Any:
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    return instantiate(cfg["model"])
