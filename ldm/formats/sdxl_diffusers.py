"""SDXL diffusers folders in and out: StableDiffusionXLPipeline (base), StableDiffusionXLImg2ImgPipeline (refiner)
and StableDiffusionXLInpaintPipeline (a 9-channel U-Net) <-> our model and config.

An SDXL folder has SD's parts (ldm.formats.diffusers) with two text towers: `text_encoder/` (CLIP ViT-L, a
CLIPTextModel, absent in the refiner) and `text_encoder_2/` (OpenCLIP bigG as a CLIPTextModelWithProjection:
`text_projection.weight` is open_clip's `text_projection` transposed), each with its tokenizer (`tokenizer/`
pads with the end token, `tokenizer_2/` with "!"). The U-Net has addition_embed_type "text_time": the vector
of the pooled output and the 256-wide micro-conditioning embeddings (ldm.io.sdxl_keys names it). model_index.json
says which numbers the vector holds (`requires_aesthetics_score`: the refiner's) and whether an empty negative
prompt is zeroed (`force_zeros_for_empty_prompt`, the base's). Both towers are read whole: SDXL reads the
penultimate layer and the pooled output after the last.

bigG's `logit_scale` (open_clip's contrastive temperature, which SDXL never uses) has no place in the folder:
read back, it is open_clip's initial value. Weights may be sharded or the fp16 variant, as SD's
(ldm.io.diffusers_files); writing goes to a temporary folder renamed into place when complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ldm.formats.diffusers import (
    DIFFUSERS_VERSION,
    END,
    HF_TEXT,
    _json,
    folder_config,
    load_folder_weights,
    schedule_params,
    text_params,
    unet_params,
    vae_params,
)
from ldm.formats.diffusers_export import (
    _write_json,
    atomic_folder,
    scheduler_config,
    unet_config,
    vae_config,
    write_folder,
    write_tokenizer,
)  # fmt: skip
from ldm.io.checkpoint import CheckpointError, load_into, save_state_dict
from ldm.io.diffusers_files import DiffusersFolderError, load_part
from ldm.io.diffusers_keys import from_diffusers, to_diffusers, vae_names
from ldm.io.hf_clip import hf_from_open_clip, open_clip_from_hf
from ldm.io.sdxl_keys import sdxl_unet_names
from ldm.models.latent_diffusion import CONDITIONING
from ldm.models.sdxl_text import BASE_MICRO, MICRO_CONDITIONS, MICRO_EMBED_DIM, REFINER_MICRO

# Pipeline class -> our conditioning kind; the refiner's folders are img2img pipelines of the text-to-image kind.
PIPELINES = {kind.diffusers_xl: kind for kind in CONDITIONING.values() if kind.diffusers_xl}
REFINER_PIPELINE = "StableDiffusionXLImg2ImgPipeline"
PIPELINES[REFINER_PIPELINE] = PIPELINES["StableDiffusionXLPipeline"]
VECTOR_KEYS = ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
PROJECTION = "text_projection.weight"  # CLIPTextModelWithProjection's, [projection, width]
TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}  # never built


def is_sdxl_model(model: torch.nn.Module) -> bool:
    return hasattr(getattr(model, "text_encoder", None), "micro_conditions")


# ---- reading ------------------------------------------------------------------------------------------------


def _tower_node(folder: Path, part: str, pad_expected: str) -> dict[str, Any]:
    cfg = _json(folder, f"{part}/config.json")
    tokenizer = part.replace("text_encoder", "tokenizer")
    pad = None
    if (folder / tokenizer / "special_tokens_map.json").is_file():
        pad = _json(folder / tokenizer, "special_tokens_map.json").get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad is not None and pad != pad_expected:
        raise DiffusersFolderError(f"{tokenizer}: pad token {pad!r}; SDXL's pads with {pad_expected!r}")
    where = f"{part}/config.json"
    if "CLIPTextModelWithProjection" in cfg.get("architectures", []):
        text = text_params({**cfg, "architectures": ["CLIPTextModel"]}, pad_expected, where)
        if text["activation"] != "gelu":
            raise DiffusersFolderError(f"{where}: hidden_act {text['activation']!r}; OpenCLIP bigG's is gelu")
        text_cfg = {"context_length": text["max_length"], "vocab_size": 49408, "width": text["width"]}
        text_cfg.update(heads=text["heads"], layers=text["layers"])
        arch = {"embed_dim": int(cfg.get("projection_dim", text["width"])), "vision_cfg": TINY_VISION}
        params = {"arch": {**arch, "text_cfg": text_cfg}, "layer": "penultimate", "max_length": text["max_length"]}
        return {"target": "ldm.models.text_encoder.FrozenOpenCLIPEmbedder", "params": params}
    text = text_params(cfg, pad_expected, where)
    return {"target": "ldm.models.text_encoder.FrozenCLIPEmbedder", "params": {**text, "layer": "penultimate"}}


def sdxl_folder_config(folder: str | Path, prediction: str | None = None) -> dict[str, Any]:
    """Our model config ({"model": node}) for an SDXL diffusers folder."""
    folder = Path(folder)
    index = _json(folder, "model_index.json")
    pipeline = index.get("_class_name")
    unet_cfg = _json(folder, "unet/config.json")
    if unet_cfg.get("addition_embed_type") != "text_time" or unet_cfg.get("addition_time_embed_dim") != 256:
        raise DiffusersFolderError(
            f"{folder}/unet/config.json: a {pipeline} needs an SDXL U-Net (addition_embed_type 'text_time', "
            f"addition_time_embed_dim 256)"
        )
    unet = unet_params({k: v for k, v in unet_cfg.items() if k not in VECTOR_KEYS})
    vector = int(unet_cfg["projection_class_embeddings_input_dim"])
    unet.update(num_classes="sequential", adm_in_channels=vector)
    vae, scale_factor = vae_params(_json(folder, "vae/config.json"))
    towers = [_tower_node(folder, "text_encoder", END)] if (folder / "text_encoder").is_dir() else []
    towers.append(_tower_node(folder, "text_encoder_2", "!"))
    if towers[-1]["target"] != "ldm.models.text_encoder.FrozenOpenCLIPEmbedder":
        raise DiffusersFolderError(f"{folder}/text_encoder_2 is no CLIPTextModelWithProjection (the pooled output's)")
    micro = REFINER_MICRO if index.get("requires_aesthetics_score") else BASE_MICRO
    pooled = towers[-1]["params"]["arch"]["embed_dim"]
    expected = pooled + sum(MICRO_CONDITIONS[n] for n in micro) * MICRO_EMBED_DIM
    if vector != expected:
        raise DiffusersFolderError(
            f"{folder}: the U-Net's vector is {vector} wide; pooled {pooled} and {micro} make {expected}"
        )
    latent = vae["embed_dim"]
    if unet["in_channels"] != (2 * latent + 1 if PIPELINES[pipeline].concat else latent):
        raise DiffusersFolderError(f"{folder}: a {pipeline} with a U-Net of {unet['in_channels']} input channels")
    zero = bool(index.get("force_zeros_for_empty_prompt", True))
    encoders = {"embedders": towers, "micro_conditions": list(micro), "zero_empty_negative": zero}
    params = {
        **schedule_params(_json(folder, "scheduler/scheduler_config.json"), prediction),
        "scale_factor": scale_factor,
        "conditioning_key": PIPELINES[pipeline].key,
        "image_size": unet_cfg.get("sample_size") or 128,
        "ddim_variant": "sd",
        "unet_config": {"target": "ldm.models.unet.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.vae.AutoencoderKL", "params": vae},
        "cond_stage_config": {"target": "ldm.models.sdxl_text.SDXLTextEncoders", "params": encoders},
    }
    return {"model": {"target": "ldm.models.latent_diffusion.LatentDiffusion", "params": params}}


def sdxl_folder_state(folder: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The folder's tensors under our names for `model` (built from sdxl_folder_config); tensors with no place keep
    their names, for the strict load to name them."""
    folder = Path(folder)
    unet, vae = load_part(folder, "unet"), load_part(folder, "vae")
    names = sdxl_unet_names(list(model.unet.state_dict()), model.unet.num_res_blocks)
    state = {f"unet.{k}": v for k, v in from_diffusers(unet, names).items()}
    vae_keys = vae_names(list(model.vae.state_dict()), len(model.vae.decoder.up))
    state.update({f"vae.{k}": v for k, v in from_diffusers(vae, vae_keys).items()})
    parts = [p for p in ("text_encoder", "text_encoder_2") if (folder / p).is_dir()]
    for number, (part, embedder) in enumerate(zip(parts, model.text_encoder.embedders)):
        tensors = {k.removeprefix(HF_TEXT): v for k, v in load_part(folder, part).items()}
        projection = tensors.pop(PROJECTION, None)
        tower, left = open_clip_from_hf(tensors)
        if projection is not None:
            tower["text_projection"] = projection.T.contiguous()
            tower["logit_scale"] = embedder.model.logit_scale.detach().clone()  # unused by SDXL; not in the folder
        prefix = f"text_encoder.embedders.{number}.model."
        state.update({prefix + k: v for k, v in {**tower, **left}.items()})
    return state


# ---- writing ------------------------------------------------------------------------------------------------


def _tower_parts(embedder: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of one of our towers as a CLIPTextModel, or CLIPTextModelWithProjection where it has a
    text projection; every block (SDXL reads the penultimate layer and pools after the last)."""
    tower = embedder.model
    state = {k: v for k, v in tower.state_dict().items() if k not in ("text_projection", "logit_scale")}
    blocks = tower.transformer.resblocks
    act = {"QuickGELU": "quick_gelu", "GELU": "gelu"}.get(type(blocks[0].mlp.gelu).__name__)
    if act is None:
        raise DiffusersFolderError(f"a text tower with {type(blocks[0].mlp.gelu).__name__} has no CLIPTextModel layout")
    width = state["ln_final.weight"].shape[0]
    tensors = {HF_TEXT + k: v for k, v in hf_from_open_clip(state).items()}
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": width,
              "intermediate_size": 4 * width, "num_attention_heads": blocks[0].attn.num_heads,
              "num_hidden_layers": len(blocks), "max_position_embeddings": state["positional_embedding"].shape[0],
              "vocab_size": state["token_embedding.weight"].shape[0], "hidden_act": act, "layer_norm_eps": 1e-5,
              "projection_dim": width, "attention_dropout": 0.0, "dropout": 0.0, "initializer_range": 0.02,
              "initializer_factor": 1.0, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
              "torch_dtype": "float32"}  # fmt: skip
    projection = getattr(tower, "text_projection", None)
    if projection is not None:
        weight = projection.weight if isinstance(projection, torch.nn.Linear) else projection.detach().T
        tensors[PROJECTION] = weight.contiguous()
        config.update(architectures=["CLIPTextModelWithProjection"], projection_dim=int(weight.shape[0]))
    return config, tensors


def _model_index(model: torch.nn.Module, towers: int) -> dict[str, Any]:
    refiner = "aesthetic_score" in model.text_encoder.micro_conditions
    pipeline = CONDITIONING[model.conditioning_key].diffusers_xl
    if pipeline == "StableDiffusionXLPipeline" and refiner:
        pipeline = REFINER_PIPELINE
    if not pipeline:
        raise DiffusersFolderError(
            f"an SDXL model with conditioning_key {model.conditioning_key!r} has no diffusers pipeline"
        )
    clip = ["transformers", "CLIPTextModel"] if towers == 2 else [None, None]
    return {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
            "force_zeros_for_empty_prompt": bool(model.text_encoder.zero_empty_negative),
            **({"requires_aesthetics_score": True} if refiner else {}),
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": clip,
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer": ["transformers", "CLIPTokenizer"] if towers == 2 else [None, None],
            "tokenizer_2": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}  # fmt: skip


def write_sdxl_folder(
    model: torch.nn.Module, config: dict[str, Any], out: str | Path, overwrite: bool = False,
    float_dtype: torch.dtype | None = None,
) -> Path:  # fmt: skip
    """Write an SDXL `model` (built from `config`) as a diffusers folder of its pipeline."""
    out = Path(out)
    params = config["model"]["params"]
    if out.exists() and not (overwrite and out.is_dir()):
        raise DiffusersFolderError(
            f"{out} already exists" + (" (--overwrite replaces a folder)" if out.is_dir() else "")
        )
    unet_params_ = dict(params["unet_config"]["params"])
    vector = int(unet_params_.pop("adm_in_channels"))
    unet_params_.pop("num_classes", None)
    unet_cfg = {
        **unet_config(unet_params_, params.get("image_size", 128)),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": MICRO_EMBED_DIM,
        "projection_class_embeddings_input_dim": vector,
    }
    towers = [_tower_parts(e) for e in model.text_encoder.embedders]
    index = _model_index(model, len(towers))
    unet_state = model.unet.state_dict()
    unet_state = to_diffusers(unet_state, sdxl_unet_names(list(unet_state), model.unet.num_res_blocks))
    vae_state = model.vae.state_dict()
    vae_state = to_diffusers(vae_state, vae_names(list(vae_state), len(model.vae.decoder.up)))
    vae_cfg = {**vae_config(params["first_stage_config"]["params"], model.scale_factor), "force_upcast": True}
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    with atomic_folder(out) as tmp:
        _write_json(tmp / "model_index.json", index)
        _write_json(tmp / "unet" / "config.json", unet_cfg)
        save_state_dict(unet_state, tmp / "unet" / "diffusion_pytorch_model.safetensors", meta, float_dtype)
        _write_json(tmp / "vae" / "config.json", vae_cfg)
        save_state_dict(vae_state, tmp / "vae" / "diffusion_pytorch_model.safetensors", meta, float_dtype)
        parts = ["text_encoder", "text_encoder_2"][-len(towers) :]
        for part, (cfg, tensors), embedder in zip(parts, towers, model.text_encoder.embedders):
            _write_json(tmp / part / "config.json", cfg)
            save_state_dict(tensors, tmp / part / "model.safetensors", meta, float_dtype)
            pad = END if part == "text_encoder" else "!"
            write_tokenizer(tmp / part.replace("text_encoder", "tokenizer"), pad, embedder.max_length)
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config(model.schedule, model.prediction))
    return out


def folder_pipeline(folder: str | Path) -> str | None:
    """The pipeline class a folder's model_index.json names, None where it cannot be read."""
    try:
        return json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


# The entry points for any diffusers folder, SD 1.x/2.x (ldm.formats.diffusers, ldm.formats.diffusers_export) or
# SDXL (above): this module builds on those two, so the choice between them is made here, above both.


def any_folder_config(folder: str | Path, prediction: str | None = None) -> dict[str, Any]:
    """Our model config for a diffusers folder of any supported pipeline (folder_config's, or SDXL's)."""
    index = Path(folder, "model_index.json")
    if index.is_file() and json.loads(index.read_text()).get("_class_name") in PIPELINES:
        return sdxl_folder_config(folder, prediction)
    return folder_config(folder, prediction)


def load_any_folder_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Fill `model` (built from any_folder_config) with the folder's weights; one line on any mismatch."""
    if not is_sdxl_model(model):
        return load_folder_weights(model, folder)
    try:
        load_into(model, sdxl_folder_state(folder, model))
    except CheckpointError as exc:
        raise type(exc)(f"{folder}: {exc}") from None


def write_any_folder(
    model: torch.nn.Module,
    config: dict[str, Any],
    out: str | Path,
    overwrite: bool = False,
    float_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` as the diffusers pipeline folder of its family (write_folder's, or SDXL's)."""
    if is_sdxl_model(model):
        return write_sdxl_folder(model, config, out, overwrite, float_dtype)
    if not model.kind.diffusers:
        raise DiffusersFolderError(f"a {model.kind.name} model has no diffusers folder here; keep its single file")
    return write_folder(model, config, out, overwrite, float_dtype)
