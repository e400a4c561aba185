"""diffusers folders in and out: a Stable Diffusion pipeline folder <-> our model and config.

Three pipelines: StableDiffusionPipeline (text-to-image), StableDiffusionInpaintPipeline (SD 2 inpainting:
a 9-channel U-Net input, latent + mask + masked-image latent; with a plain 4-channel U-Net it is a
text-to-image model) and StableDiffusionUpscalePipeline (the x4 upscaler: latent + low-res RGB in, the noise
level as the U-Net's class label, `num_class_embeds`; `low_res_scheduler/` noises the low-res image up to
model_index.json's `max_noise_level`, which is our LowResNoiseAugmentation).

A folder holds `model_index.json` and one sub-folder per part: `unet/` and `vae/` (config.json and
diffusion_pytorch_model.safetensors), `text_encoder/` (a Hugging Face CLIPTextModel: config.json and
model.safetensors), `tokenizer/` and `scheduler/scheduler_config.json`. Weights may also be sharded or the
fp16 variant (ldm.io.diffusers_files). Reading builds our config from those config.json files (ldm.io.diffusers_keys
renames the tensors); writing (ldm.formats.diffusers_export) does the reverse, into a temporary folder beside the
target that is renamed into place when complete. SDXL folders: ldm.formats.sdxl_diffusers.

The text encoder is run as our FrozenCLIPEmbedder at the folder's sizes, reading its last layer: SD 1.x's
(quick-GELU, padded with the end token) as it is, and SD 2.x's OpenCLIP ViT-H tower as diffusers'
conversion stores it, with GELU and the unused last block already dropped (23 of 24), so its last layer is
SD 2's penultimate one; its tokenizer pads with "!" (id 0), as open_clip does. Exporting our SD 2 tower
drops the unused blocks in the same way, and the open_clip projection and logit scale, which SD never
uses. The prediction type is the scheduler's `prediction_type` (epsilon or v_prediction).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ldm.formats.detect import check_prediction
from ldm.io.checkpoint import CheckpointError, file_sha256, load_into
from ldm.io.diffusers_files import WEIGHTS, DiffusersFolderError, load_part, part_files
from ldm.io.diffusers_keys import from_diffusers, unet_names, vae_names
from ldm.io.hf_clip import open_clip_from_hf
from ldm.models.latent_diffusion import CONDITIONING, ConditioningKind

log = logging.getLogger(__name__)

DIFFUSERS_VERSION = "0.42.0"  # the version whose configs these are written as (and tested against)
# Pipeline class -> our conditioning kind. An inpainting folder may hold a plain 4-channel U-Net (diffusers
# inpaints with those too): that is a text-to-image model here.
PIPELINES = {kind.diffusers: kind for kind in CONDITIONING.values() if kind.diffusers}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}
SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
HF_TEXT = "text_model."  # CLIPTextModel's own prefix
START, END = "<|startoftext|>", "<|endoftext|>"  # CLIP's special tokens as Hugging Face spells them
UNET_DEFAULTS = {
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "attention_head_dim": 8,
    "cross_attention_dim": 1280,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "transformer_layers_per_block": 1,
    "use_linear_projection": False,
    "sample_size": 64,
    "dropout": 0.0,
}
# UNet2DConditionModel options that change the network beyond what our U-Net builds: (default, meaning).
# num_class_embeds (an nn.Embedding label, the upscaler's noise level) and per-level only_cross_attention
# (the original's disable_self_attentions) are built; the mid block has self-attention whatever they say.
UNET_UNSUPPORTED = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "time_cond_proj_dim": None,
    "class_embeddings_concat": False,
    "dual_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "act_fn": "silu",
    "norm_num_groups": 32,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "time_embedding_type": "positional",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "reverse_transformer_layers_per_block": None,
}
VAE_UNSUPPORTED = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}


def is_folder(path: str | Path | None) -> bool:
    return path is not None and Path(path).is_dir()


def _json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise DiffusersFolderError(f"{folder} is no complete diffusers folder: {name} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffusersFolderError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DiffusersFolderError(f"{path} holds no JSON object")
    return data


def _refuse_options(cfg: dict[str, Any], supported: dict[str, Any], where: str) -> None:
    for key, value in supported.items():
        given = cfg.get(key, value)
        if isinstance(given, list) and not isinstance(value, list):  # per-level flags (only_cross_attention)
            given = value if all(g == value for g in given) else given
        if given != value:
            raise DiffusersFolderError(f"{where}: {key}={given!r} is not supported (only {value!r})")


def _levels_of(channels: list[int], where: str) -> tuple[int, list[int]]:
    """(base channels, channel multipliers) of diffusers' block_out_channels."""
    base = channels[0]
    if any(c % base for c in channels):
        raise DiffusersFolderError(f"{where}: block_out_channels {channels} are not multiples of the first")
    return base, [c // base for c in channels]


def _per_level(value: Any, levels: int, key: str, where: str) -> list[Any]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * levels
    if len(values) != levels:
        raise DiffusersFolderError(f"{where}: {key} needs one entry per level ({levels}), got {values}")
    return values


def unet_params(cfg: dict[str, Any], where: str = "unet/config.json") -> dict[str, Any]:
    """Our UNetModel params for a UNet2DConditionModel config."""
    if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise DiffusersFolderError(f"{where}: {cfg['_class_name']} is not a UNet2DConditionModel")
    _refuse_options(cfg, UNET_UNSUPPORTED, where)
    cfg = {**UNET_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    base, mult = _levels_of(cfg["block_out_channels"], where)
    levels, down, up = len(mult), list(cfg["down_block_types"]), list(cfg["up_block_types"])
    attn = [t == "CrossAttnDownBlock2D" for t in down]
    if (
        any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down)
        or len(down) != levels
        or up != [("CrossAttnUpBlock2D" if a else "UpBlock2D") for a in reversed(attn)]
    ):
        raise DiffusersFolderError(
            f"{where}: blocks {down} / {up} are not SD's (CrossAttn)DownBlock2D and the mirrored (CrossAttn)UpBlock2D"
        )
    # diffusers' attention_head_dim is, for SD, the number of heads (num_attention_heads overrides it).
    heads = _per_level(cfg.get("num_attention_heads") or cfg["attention_head_dim"], levels, "attention_head_dim", where)
    used = [level for level in range(levels) if attn[level]] + [levels - 1]  # the last level's heads: middle block
    if any(cfg["block_out_channels"][level] % heads[level] for level in used):
        raise DiffusersFolderError(f"{where}: heads {heads} do not divide block_out_channels")
    head_channels = {cfg["block_out_channels"][level] // heads[level] for level in used}
    params: dict[str, Any] = {"num_heads": heads[used[0]]} if len({heads[lv] for lv in used}) == 1 else {}
    if not params:
        if len(head_channels) != 1:
            raise DiffusersFolderError(f"{where}: heads {heads} give neither one head count nor one head width")
        params["num_head_channels"] = head_channels.pop()
    cross_only = _per_level(cfg.get("only_cross_attention") or False, levels, "only_cross_attention", where)
    if any(cross_only):
        params["disable_self_attentions"] = [bool(c) for c in cross_only]
    if cfg.get("num_class_embeds") is not None:
        params["num_classes"] = int(cfg["num_class_embeds"])
    return {
        **params,
        "in_channels": cfg["in_channels"],
        "out_channels": cfg["out_channels"],
        "model_channels": base,
        "channel_mult": mult,
        "num_res_blocks": _per_level(cfg["layers_per_block"], levels, "layers_per_block", where),
        "attention_resolutions": [2**level for level in range(levels) if attn[level]],
        "transformer_depth": _per_level(
            cfg["transformer_layers_per_block"], levels, "transformer_layers_per_block", where
        ),
        "context_dim": cfg["cross_attention_dim"],
        "use_linear_in_transformer": bool(cfg["use_linear_projection"]),
        "dropout": cfg["dropout"],
        "legacy": False,
    }


def vae_params(cfg: dict[str, Any], where: str = "vae/config.json") -> tuple[dict[str, Any], float]:
    """(our AutoencoderKL params, the latent scale factor) for a diffusers AutoencoderKL config."""
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise DiffusersFolderError(f"{where}: {cfg['_class_name']} is not an AutoencoderKL")
    _refuse_options(cfg, VAE_UNSUPPORTED, where)
    channels = cfg.get("block_out_channels", [64])
    base, mult = _levels_of(channels, where)
    if set(cfg.get("down_block_types", [])) != {"DownEncoderBlock2D"} or set(cfg.get("up_block_types", [])) != {
        "UpDecoderBlock2D"
    }:
        raise DiffusersFolderError(f"{where}: only DownEncoderBlock2D / UpDecoderBlock2D autoencoders are supported")
    latent = cfg.get("latent_channels", 4)
    ddconfig = {
        "double_z": True,
        "z_channels": latent,
        "resolution": cfg.get("sample_size", 256),
        "in_channels": cfg.get("in_channels", 3),
        "out_ch": cfg.get("out_channels", 3),
        "ch": base,
        "ch_mult": mult,
        "num_res_blocks": cfg.get("layers_per_block", 1),
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    if cfg.get("norm_num_groups", 32) != 32:
        ddconfig["norm_groups"] = cfg["norm_num_groups"]
    return {"embed_dim": latent, "ddconfig": ddconfig}, float(cfg.get("scaling_factor", 0.18215))


def _pad_token(folder: Path) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / "tokenizer" / name).is_file():
            pad = _json(folder / "tokenizer", name).get("pad_token")
            return pad.get("content") if isinstance(pad, dict) else pad
    return None


def text_params(cfg: dict[str, Any], pad_token: str | None, where: str = "text_encoder/config.json") -> dict[str, Any]:
    """Our FrozenCLIPEmbedder params for a CLIPTextModel config and its tokenizer's pad token."""
    if "CLIPTextModel" not in cfg.get("architectures", ["CLIPTextModel"]):
        raise DiffusersFolderError(f"{where}: {cfg['architectures']} is no CLIPTextModel (only those are supported)")
    width, act = cfg.get("hidden_size", 512), cfg.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise DiffusersFolderError(f"{where}: hidden_act {act!r} is not supported (quick_gelu or gelu)")
    if (
        cfg.get("intermediate_size", 2048) != 4 * width
        or cfg.get("vocab_size", 49408) != 49408
        or cfg.get("layer_norm_eps", 1e-5) != 1e-5
    ):
        raise DiffusersFolderError(
            f"{where}: only CLIP's text tower (MLP 4x wide, 49408 tokens, LayerNorm eps 1e-5) is supported"
        )
    if pad_token is None:  # what each family's tokenizer pads with: SD 1.x the end token, SD 2.x "!"
        pad_token = END if act == "quick_gelu" else "!"
        log.warning("%s: no tokenizer config: padding with %r as the %s family does", where, pad_token, act)
    if pad_token not in (END, "!"):
        raise DiffusersFolderError(f"tokenizer: pad token {pad_token!r} is neither {END} nor '!' (id 0)")
    return {
        "width": width,
        "layers": cfg.get("num_hidden_layers", 12),
        "heads": cfg.get("num_attention_heads", 8),
        "layer": "last",
        "max_length": cfg.get("max_position_embeddings", 77),
        "activation": act,
        "pads_with_end": pad_token == END,
    }


def schedule_params(
    cfg: dict[str, Any], prediction: str | None, where: str = "scheduler/scheduler_config.json"
) -> dict[str, Any]:
    if cfg.get("trained_betas") is not None or cfg.get("beta_schedule", "linear") not in SCHEDULES:
        raise DiffusersFolderError(
            f"{where}: beta_schedule {cfg.get('beta_schedule')!r} is not supported (known: {', '.join(SCHEDULES)})"
        )
    found = cfg.get("prediction_type", "epsilon")
    if prediction is None and found not in PREDICTIONS:
        raise DiffusersFolderError(f"{where}: prediction_type {found!r} is not supported (epsilon or v_prediction)")
    return {
        "timesteps": cfg.get("num_train_timesteps", 1000),
        "beta_schedule": SCHEDULES[cfg.get("beta_schedule", "linear")],
        "linear_start": cfg.get("beta_start", 0.0001),
        "linear_end": cfg.get("beta_end", 0.02),
        "parameterization": prediction or PREDICTIONS[found],
    }


def low_scale_params(
    cfg: dict[str, Any], max_noise_level: Any, where: str = "low_res_scheduler/scheduler_config.json"
) -> dict[str, Any]:
    """Our LowResNoiseAugmentation params: the upscaler's low-res scheduler (its betas noise the low-res image)
    and the pipeline's max_noise_level."""
    if isinstance(max_noise_level, bool) or not isinstance(max_noise_level, int) or max_noise_level < 0:
        raise DiffusersFolderError(f"model_index.json: max_noise_level {max_noise_level!r} is no whole number >= 0")
    schedule = schedule_params(cfg, "eps", where)  # its prediction type is never used
    if max_noise_level >= schedule["timesteps"]:
        raise DiffusersFolderError(
            f"{where}: max_noise_level {max_noise_level} is beyond its {schedule['timesteps']} timesteps"
        )
    return {
        "max_noise_level": max_noise_level,
        "timesteps": schedule["timesteps"],
        "beta_schedule": schedule["beta_schedule"],
        "linear_start": schedule["linear_start"],
        "linear_end": schedule["linear_end"],
    }


def conditioning_kind(pipeline: str, unet: dict[str, Any], vae: dict[str, Any], where: str) -> ConditioningKind:
    """Our conditioning kind for a pipeline class, checked against its U-Net's inputs: text-to-image takes the
    latent; inpainting the latent, the mask and the masked image's latent; the upscaler the latent and the
    low-res image, with a noise-level label."""
    latent, image = vae["embed_dim"], vae["ddconfig"]["in_channels"]
    kind = PIPELINES[pipeline]
    if kind.task == "inpaint" and kind.concat and unet["in_channels"] == latent:
        kind = next(k for k in CONDITIONING.values() if not k.concat)
    takes = {
        "txt2img": (latent, "the latent"),
        "inpaint": (2 * latent + 1, "latent + mask + masked-image latent"),
        "upscale": (latent + image, "latent + low-res image"),
    }[kind.task]
    if unet["in_channels"] != takes[0] or unet["out_channels"] != latent:
        raise DiffusersFolderError(
            f"{where}: a U-Net of {unet['in_channels']} input / {unet['out_channels']} output "
            f"channels does not fit a {pipeline} with {latent} latent channels (input: "
            f"{takes[1]} = {takes[0]})"
        )
    if ("num_classes" in unet) != kind.label:
        raise DiffusersFolderError(
            f"{where}: a {pipeline} U-Net "
            + (
                "needs a noise-level embedding (num_class_embeds)"
                if kind.label
                else "with a class embedding (num_class_embeds) is not supported"
            )
        )
    return kind


def folder_config(folder: str | Path, prediction: str | None = None) -> dict[str, Any]:
    """Our model config ({"model": node}) for an SD 1.x/2.x folder; `prediction` overrides the scheduler's."""
    folder = Path(folder)
    check_prediction(prediction)
    index = _json(folder, "model_index.json")
    pipeline = index.get("_class_name")
    if pipeline not in PIPELINES:
        raise DiffusersFolderError(f"{folder}: {pipeline!r} folders are not supported (only {', '.join(PIPELINES)})")
    unet = unet_params(_json(folder, "unet/config.json"))
    vae, scale_factor = vae_params(_json(folder, "vae/config.json"))
    text = text_params(_json(folder, "text_encoder/config.json"), _pad_token(folder))
    kind = conditioning_kind(pipeline, unet, vae, str(folder))
    params = {
        **schedule_params(_json(folder, "scheduler/scheduler_config.json"), prediction),
        "scale_factor": scale_factor,
        "conditioning_key": kind.key,
        "image_size": _json(folder, "unet/config.json").get("sample_size") or 64,
        "unet_config": {"target": "ldm.models.unet.UNetModel", "params": unet},
        "first_stage_config": {"target": "ldm.models.vae.AutoencoderKL", "params": vae},
        "cond_stage_config": {"target": "ldm.models.text_encoder.FrozenCLIPEmbedder", "params": text},
    }
    if kind.label:  # the upscaler: its low-res image is noised to the level it is told
        low = low_scale_params(
            _json(folder, "low_res_scheduler/scheduler_config.json"), index.get("max_noise_level", 350)
        )
        if low["max_noise_level"] >= unet["num_classes"]:
            raise DiffusersFolderError(
                f"{folder}: max_noise_level {low['max_noise_level']} is beyond the U-Net's "
                f"{unet['num_classes']} noise levels (num_class_embeds)"
            )
        params["low_scale_config"] = {"target": "ldm.models.conditioning.LowResNoiseAugmentation", "params": low}
    return {"model": {"target": "ldm.models.latent_diffusion.LatentDiffusion", "params": params}}


def folder_state(folder: str | Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The folder's tensors under our names (`unet.`, `vae.`, `text_encoder.model.`) for `model`, built from
    folder_config. Tensors with no place keep their names, for the strict load to report."""
    folder = Path(folder)
    unet, vae, text = (load_part(folder, part) for part in ("unet", "vae", "text_encoder"))
    state = {
        f"unet.{k}": v
        for k, v in from_diffusers(unet, unet_names(list(model.unet.state_dict()), model.unet.num_res_blocks)).items()
    }
    levels = len(model.vae.decoder.up)
    state.update(
        {f"vae.{k}": v for k, v in from_diffusers(vae, vae_names(list(model.vae.state_dict()), levels)).items()}
    )
    tower, left = open_clip_from_hf({k.removeprefix(HF_TEXT): v for k, v in text.items()})
    state.update({f"text_encoder.model.{k}": v for k, v in {**tower, **left}.items()})
    return state


def folder_identity(folder: str | Path) -> str:
    """One SHA-256 for a folder's weights: of the parts' names and their files' hashes."""
    folder = Path(folder)
    lines = [
        f"{part}/{path.name} {file_sha256(path)}"
        for part in WEIGHTS
        if (folder / part).is_dir()
        for path in part_files(folder, part)
    ]  # SD folders have no text_encoder_2, SDXL refiners no text_encoder
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def load_folder_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Fill `model` (built from folder_config) with the folder's weights; one line on any mismatch."""
    try:
        load_into(model, folder_state(folder, model))
    except CheckpointError as exc:
        raise type(exc)(f"{folder}: {exc}") from None
