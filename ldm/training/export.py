"""Inference exports of a training run: weights as safetensors plus the YAML that builds the model.

A diffusion run writes `model.safetensors` (EMA U-Net + VAE + text encoder, original SD key layout)
and `model.yaml` (the model node with the final scale_factor), which `ldm.formats.load.load_model` and
`ldm txt2img --config model.yaml --ckpt model.safetensors` read. An autoencoder run writes
`vae.safetensors` (bare AutoencoderKL keys, like standalone SD VAE files) and `vae.yaml`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
import yaml

from ldm.core.config import target_class
from ldm.io.checkpoint import OPEN_CLIP_LAYOUT, atomic_path, save_state_dict, to_original_keys, write_error


def _write_yaml_atomic(data: dict, path: Path) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            yaml.safe_dump(data, f, sort_keys=False)
    except OSError as exc:  # a full disk: one line naming the file
        raise write_error(path, exc) from exc


def inference_model_node(model_node: dict, scale_factor: float) -> dict:
    """The training config's model node as an inference config: final scale factor, no external weight paths."""
    node = copy.deepcopy(model_node)
    node.setdefault("params", {})["scale_factor"] = float(scale_factor)
    cond = node["params"].get("cond_stage_config") or {}
    (cond.get("params") or {}).pop("weights", None)  # its weights are in the exported file now
    return {"model": node}


def text_layout(model_node: dict) -> str:
    """How original checkpoints store the model node's text encoder (SD 1.x's: the Hugging Face layout)."""
    target = ((model_node.get("params") or {}).get("cond_stage_config") or {}).get("target")
    return getattr(target_class(target), "checkpoint_layout", OPEN_CLIP_LAYOUT) if target else OPEN_CLIP_LAYOUT


def export_diffusion(
    state: dict[str, torch.Tensor],
    model_node: dict,
    scale_factor: float,
    out_dir: str | os.PathLike,
    step: int | None = None,
) -> tuple[Path, Path]:
    """Write model.safetensors and model.yaml into out_dir; returns their paths."""
    out = Path(out_dir)
    weights, config = out / "model.safetensors", out / "model.yaml"
    node = inference_model_node(model_node, scale_factor)
    # The config travels inside the file too, so the weights alone load (ldm.formats.detect reads it).
    meta = {"format": "pt", "scale_factor": repr(float(scale_factor)), "ldm_config": json.dumps(node)}
    if step is not None:
        meta["step"] = str(step)
    save_state_dict(to_original_keys(state, text_layout(model_node)), weights, metadata=meta)
    _write_yaml_atomic(node, config)
    return weights, config


def export_autoencoder(
    state: dict[str, torch.Tensor], model_node: dict, out_dir: str | os.PathLike, step: int | None = None
) -> tuple[Path, Path]:
    """Write vae.safetensors and vae.yaml into out_dir; returns their paths."""
    out = Path(out_dir)
    weights, config = out / "vae.safetensors", out / "vae.yaml"
    save_state_dict(state, weights, metadata={"format": "pt", **({"step": str(step)} if step is not None else {})})
    _write_yaml_atomic({"model": copy.deepcopy(model_node)}, config)
    return weights, config


def export_clip(
    state: dict[str, torch.Tensor], model_node: dict, out_dir: str | os.PathLike, step: int | None = None
) -> tuple[Path, Path]:
    """Write clip.safetensors (fp16, open_clip keys) and clip.json (its open_clip config) into out_dir."""

    from ldm.models.text_encoder import open_clip_config

    out = Path(out_dir)
    weights, config = out / "clip.safetensors", out / "clip.json"
    save_state_dict(
        state,
        weights,
        metadata={"format": "pt", **({"step": str(step)} if step is not None else {})},
        float_dtype=torch.float16,
    )
    with atomic_path(config) as tmp:
        Path(tmp).write_text(json.dumps(open_clip_config(model_node["params"]["arch"]), indent=2) + "\n")
    return weights, config


def export_lora(
    module: torch.nn.Module, cfg: dict, out_dir: str | os.PathLike, step: int | None = None
) -> tuple[Path, Path]:
    """A LoRA run's export: lora.safetensors (the adapter alone, its config and base in the metadata) and
    lora.yaml, the base model's inference config, which the adapter is applied to (`--lora`)."""
    from ldm.adapters.lora import save_lora

    out = Path(out_dir)
    weights, config = out / "lora.safetensors", out / "lora.yaml"
    model = module.model  # type: ignore[attr-defined]
    model.__dict__.setdefault("identity", {})["model_sha256"] = _base_hash(cfg)
    whole = {
        f"{path}.{k}": v.detach()
        for path in cfg.get("lora", {}).get("train_whole") or ()
        for k, v in model.get_submodule(path).state_dict().items()
    }
    save_lora(
        model,
        weights,
        extra_metadata={
            "base_model": str(cfg["init"].get("checkpoint") or ""),
            **({"step": str(step)} if step is not None else {}),
        },
        whole=whole,
        kohya=hasattr(model.text_encoder, "micro_conditions"),  # SDXL LoRAs are shared in kohya's layout
    )
    _write_yaml_atomic(inference_model_node(cfg["model"], model.scale_factor), config)
    return weights, config


def _base_hash(cfg: dict) -> str:
    """The SHA-256 of the base checkpoint a LoRA was trained on (init.checkpoint), or "" when it was built
    from parts."""
    from ldm.io.checkpoint import file_sha256

    base = cfg["init"].get("checkpoint")
    return file_sha256(base) if base and Path(base).is_file() else ""


def export_controlnet(
    module: torch.nn.Module, cfg: dict, out_dir: str | os.PathLike, step: int | None = None
) -> tuple[Path, Path]:
    """A ControlNet run's export: controlnet.safetensors (fp16, the original layout under control_model., which
    ldm.formats.controlnet_files.load_controlnet reads; its control image type in the metadata) and
    controlnet.yaml, the base model's inference config, which the ControlNet is applied to (`--controlnet`); with
    controlnet.export_diffusers also the folder controlnet-diffusers/ (config.json and its weights, fp16)."""
    out = Path(out_dir)
    weights, config = out / export_names(module)[0], out / "controlnet.yaml"
    control = cfg["controlnet"]
    adapter = control.get("kind") == "t2i_adapter"  # diffusers' T2IAdapter names, which load_controlnet tells apart
    meta = {
        "format": "pt",
        "base_model": str(cfg["init"].get("checkpoint") or ""),
        "base_model_sha256": _base_hash(cfg),
        "preprocess": "file" if control.get("control_root") else str(control["preprocess"]),
        "thresholds": f"{control['low']},{control['high']}",
        **({"step": str(step)} if step is not None else {}),
    }
    prefix = "" if adapter else "control_model."
    state = {prefix + k: v for k, v in module.inference_state_dict().items()}  # type: ignore[operator]
    save_state_dict(state, weights, metadata=meta, float_dtype=torch.float16)
    if control.get("export_diffusers") and adapter:  # the folder diffusers' T2IAdapter.from_pretrained reads
        from ldm.formats.t2i_adapter_files import save_t2i_adapter

        save_t2i_adapter(module.controlnet, out / "t2i-adapter-diffusers", torch.float16)
    elif control.get("export_diffusers"):  # the same weights as diffusers' ControlNetModel.save_pretrained writes them
        from ldm.formats.controlnet_files import save_controlnet_folder

        unet_params = cfg["model"]["params"]["unet_config"]["params"]
        save_controlnet_folder(module.controlnet, unet_params, out / "controlnet-diffusers", torch.float16, meta)
    _write_yaml_atomic(inference_model_node(cfg["model"], module.model.scale_factor), config)  # type: ignore[union-attr]
    return weights, config


def export_module(
    module: torch.nn.Module, cfg: dict, out_dir: str | os.PathLike, step: int | None = None
) -> tuple[Path, Path]:
    """Export a LatentDiffusionModule or AutoencoderModule according to the run's config."""
    from ldm.training.clip_module import ClipModule
    from ldm.training.controlnet_module import ControlNetModule
    from ldm.training.ldm_module import LatentDiffusionModule

    if isinstance(module, ClipModule):
        return export_clip(module.inference_state_dict(), cfg["model"], out_dir, step)
    if isinstance(module, ControlNetModule):
        return export_controlnet(module, cfg, out_dir, step)
    if isinstance(module, LatentDiffusionModule) and module.lora is not None:
        return export_lora(module, cfg, out_dir, step)
    if isinstance(module, LatentDiffusionModule):
        return export_diffusion(module.inference_state_dict(), cfg["model"], module.model.scale_factor, out_dir, step)
    return export_autoencoder(module.inference_state_dict(), cfg["model"], out_dir, step)  # type: ignore[operator]


def export_names(module: torch.nn.Module) -> tuple[str, str]:
    """The two files export_module writes for this module (weights, config), by the same rule."""
    from ldm.training.clip_module import ClipModule
    from ldm.training.controlnet_module import ControlNetModule
    from ldm.training.ldm_module import LatentDiffusionModule

    if isinstance(module, ClipModule):
        return "clip.safetensors", "clip.json"
    if isinstance(module, ControlNetModule):
        adapter = (module.control or {}).get("kind") == "t2i_adapter"
        return ("t2i-adapter.safetensors" if adapter else "controlnet.safetensors"), "controlnet.yaml"
    if isinstance(module, LatentDiffusionModule):
        return ("lora.safetensors", "lora.yaml") if module.lora is not None else ("model.safetensors", "model.yaml")
    return "vae.safetensors", "vae.yaml"
