"""Writing a model as a diffusers folder, and a folder as one original file.

The pipeline follows the model's kind: StableDiffusionPipeline (text-to-image), StableDiffusionInpaintPipeline
(SD 2 inpainting, 9 U-Net input channels) or StableDiffusionUpscalePipeline (the x4 upscaler: 7 input
channels, the noise level as the U-Net's class embedding, `low_res_scheduler/` and `max_noise_level` from
our LowResNoiseAugmentation). The folder is written into a temporary folder beside the target and renamed
into place when complete, so a crash leaves no half folder under the target's name. Configs are those
diffusers and transformers read (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, DDIMScheduler,
DDPMScheduler); the tokenizer files (vocab.json, merges.txt) are built from open_clip's CLIP BPE vocabulary,
the same one SD's tokenizers use.

What diffusers' layout cannot hold is refused in one line before anything is written: labels other than an
embedding, a middle block without self-attention, per-block attention counts, scale-shift norms, a guidance
embedding (a distilled student), attention inside the autoencoder's levels, and a U-Net whose inputs do not fit its kind's pipeline.
ldm.formats.diffusers reads the folders back.
"""  # noqa: E501

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ldm.formats.detect import CONFIG_KEY, PREDICTION_KEY
from ldm.formats.diffusers import DIFFUSERS_VERSION, END, HF_TEXT, START, DiffusersFolderError, conditioning_kind
from ldm.io.checkpoint import save_state_dict
from ldm.io.diffusers_keys import to_diffusers, unet_names, vae_names
from ldm.io.hf_clip import hf_from_open_clip

SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}
OPEN_CLIP_ONLY = ("text_projection", "logit_scale")  # open_clip's CLIP head: SD reads the token states, not these


def _levels(value: int | list[int], levels: int) -> list[int]:
    return [value] * levels if isinstance(value, int) else list(value)


def unet_config(params: dict[str, Any], image_size: int) -> dict[str, Any]:
    """A UNet2DConditionModel config for our UNetModel params."""
    if params.get("guidance_embed"):
        raise DiffusersFolderError(
            "a guidance-distilled student (its U-Net takes the guidance scale, guidance_embed) "
            "has no diffusers layout: convert the model it was distilled from"
        )
    for key, plain in (
        ("num_attention_blocks", None),
        ("disable_middle_self_attn", False),
        ("use_scale_shift_norm", False),
    ):
        if params.get(key, plain) not in (plain, [], ()):
            raise DiffusersFolderError(f"a U-Net with {key}={params[key]!r} has no diffusers layout")
    labels = params.get("num_classes")
    if labels is not None and (isinstance(labels, bool) or not isinstance(labels, int)):
        raise DiffusersFolderError(
            f"a U-Net with num_classes={labels!r} has no diffusers layout (only a number of "
            f"labels: an embedding, as the x4 upscaler's noise level)"
        )
    mult, base = list(params.get("channel_mult", (1, 2, 4, 8))), params["model_channels"]
    levels = len(mult)
    attn = [2**level in params["attention_resolutions"] for level in range(levels)]
    heads = []
    for m in mult:
        ch = base * m
        nhc, legacy = params.get("num_head_channels", -1), params.get("legacy", True)
        count = params["num_heads"] if nhc == -1 else ch // nhc
        width = ch // count if (legacy or nhc == -1) else nhc
        if count * width != ch:  # diffusers' transformers are as wide as their blocks
            raise DiffusersFolderError(
                f"a U-Net level of {ch} channels with {count} heads of {width} has no diffusers layout"
            )
        heads.append(count)
    blocks = _levels(params["num_res_blocks"], levels)
    cross_only = [bool(d) for d in params.get("disable_self_attentions") or [False] * levels]
    if len(cross_only) != levels:
        raise DiffusersFolderError(f"disable_self_attentions {cross_only} needs one entry per level ({levels})")
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": image_size,
        "in_channels": params["in_channels"],
        "out_channels": params["out_channels"],
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "only_cross_attention": cross_only if any(cross_only) else False,
        "num_class_embeds": labels,
        "class_embed_type": None,
        "block_out_channels": [base * m for m in mult],
        "layers_per_block": blocks[0] if len(set(blocks)) == 1 else blocks,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "dropout": params.get("dropout", 0.0),
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": params["context_dim"],
        "transformer_layers_per_block": _levels(params.get("transformer_depth", 1), levels),
        "attention_head_dim": heads,
        "use_linear_projection": bool(params.get("use_linear_in_transformer", False)),
        "upcast_attention": False,
        "resnet_time_scale_shift": "default",
    }


def vae_config(params: dict[str, Any], scale_factor: float) -> dict[str, Any]:
    """An AutoencoderKL config for our autoencoder params."""
    dd = params["ddconfig"]
    if dd.get("attn_resolutions") or not dd.get("double_z", True) or dd["z_channels"] != params["embed_dim"]:
        raise DiffusersFolderError(
            "an autoencoder with attention in its levels, a single z or z_channels other than "
            "embed_dim has no diffusers AutoencoderKL layout"
        )
    levels = len(dd["ch_mult"])
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": params["embed_dim"],
        "norm_num_groups": dd.get("norm_groups", 32),
        "sample_size": dd["resolution"],
        "scaling_factor": float(scale_factor),
    }


def text_encoder_parts(encoder: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(CLIPTextModel config, its tensors) for our text encoder: the blocks it reads, up to its chosen layer."""
    tower = encoder.model
    blocks = tower.transformer.resblocks
    used = len(blocks) - encoder.layer_idx
    gelu = type(blocks[0].mlp.gelu).__name__
    act = {"QuickGELU": "quick_gelu", "GELU": "gelu"}.get(gelu)
    if act is None:
        raise DiffusersFolderError(f"a text encoder with {gelu} activations has no CLIPTextModel layout")
    state = {
        k: v
        for k, v in tower.state_dict().items()
        if k not in OPEN_CLIP_ONLY and not (k.startswith("transformer.resblocks.") and int(k.split(".")[2]) >= used)
    }
    width = state["ln_final.weight"].shape[0]
    config = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_attention_heads": blocks[0].attn.num_heads,
        "num_hidden_layers": used,
        "max_position_embeddings": state["positional_embedding"].shape[0],
        "vocab_size": state["token_embedding.weight"].shape[0],
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": width,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    return config, {HF_TEXT + k: v for k, v in hf_from_open_clip(state).items()}


def write_tokenizer(folder: Path, pad_token: str, max_length: int) -> None:
    """vocab.json and merges.txt of CLIP's BPE (open_clip's copy; its special tokens renamed as Hugging Face
    spells them) and the tokenizer configs."""
    import open_clip

    bpe = open_clip.tokenizer._tokenizer
    rename = {"<start_of_text>": START, "<end_of_text>": END}
    vocab = {rename.get(token, token): index for token, index in bpe.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **special,
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "do_lower_case": True,
                "errors": "replace",
                "add_prefix_space": False,
            },
            indent=2,
        )
    )


def scheduler_config(schedule: dict[str, Any], prediction: str) -> dict[str, Any]:
    """A DDIMScheduler config for our model's noise schedule (LatentDiffusion.schedule) and prediction type."""
    kind = schedule["kind"]
    if kind not in SCHEDULES or (kind == "cosine" and schedule.get("cosine_s", 8e-3) != 8e-3):
        raise DiffusersFolderError(
            f"beta schedule {kind!r} has no diffusers name (known: {', '.join(SCHEDULES)}; "
            f"cosine only with cosine_s 0.008)"
        )
    return {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": schedule["num_timesteps"],
        "beta_start": schedule["linear_start"],
        "beta_end": schedule["linear_end"],
        "beta_schedule": SCHEDULES[kind],
        "trained_betas": None,
        "prediction_type": PREDICTIONS[prediction],
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def low_res_scheduler_config(schedule: dict[str, Any]) -> dict[str, Any]:
    """The upscaler's DDPMScheduler that noises the low-res image (our LowResNoiseAugmentation's schedule)."""
    ddim = scheduler_config({**schedule, "cosine_s": 8e-3}, "eps")
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        **{
            k: ddim[k]
            for k in (
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "trained_betas",
                "prediction_type",
                "clip_sample",
            )
        },
        "variance_type": "fixed_small",
    }


_PARTS = {
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
}
# Each pipeline's model_index.json (what its save_pretrained writes), by class (our kinds' `diffusers`).
MODEL_INDEX = {
    "StableDiffusionPipeline": {**_PARTS, "requires_safety_checker": False},
    "StableDiffusionInpaintPipeline": {**_PARTS, "image_encoder": [None, None], "requires_safety_checker": False},
    "StableDiffusionUpscalePipeline": {
        **_PARTS,
        "low_res_scheduler": ["diffusers", "DDPMScheduler"],
        "watermarker": [None, None],
    },
}


def pipeline_index(model: torch.nn.Module, params: dict[str, Any]) -> dict[str, Any]:
    """model_index.json for the pipeline of the model's kind, once its U-Net's inputs are checked to be that
    pipeline's: text-to-image, inpainting (9 channels) or the x4 upscaler (7 channels and a noise level)."""
    unet, first = params["unet_config"]["params"], params["first_stage_config"]["params"]
    labels = unet.get("num_classes")
    shape = {
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        **({"num_classes": labels} if labels is not None else {}),
    }
    pipeline = model.kind.diffusers
    if conditioning_kind(pipeline, shape, first, "the model").key != model.kind.key:
        raise DiffusersFolderError(
            f"a {model.kind.name} model whose U-Net takes {unet['in_channels']} channels has no {pipeline} layout"
        )
    extra: dict[str, Any] = {}
    if model.kind.label:
        if model.low_scale is None:
            raise DiffusersFolderError(
                "an x4 upscaler without its low-res noise augmentation (low_scale_config) has "
                "no StableDiffusionUpscalePipeline layout"
            )
        extra["max_noise_level"] = int(model.low_scale.max_noise_level)
        if extra["max_noise_level"] >= labels:
            raise DiffusersFolderError(
                f"max_noise_level {extra['max_noise_level']} is beyond the U-Net's {labels} noise levels (num_classes)"
            )
    return {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION, **MODEL_INDEX[pipeline], **extra}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_folder(
    model: torch.nn.Module,
    config: dict[str, Any],
    out: str | Path,
    overwrite: bool = False,
    float_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` (built from `config`, {"model": node}) as a diffusers StableDiffusionPipeline folder."""
    out = Path(out)
    params = config["model"]["params"]
    if out.exists() and not (overwrite and out.is_dir()):
        raise DiffusersFolderError(
            f"{out} already exists"
            + ("" if out.is_dir() else " and is no folder")
            + (" (--overwrite replaces a folder)" if out.is_dir() else "")
        )
    unet_cfg = unet_config(params["unet_config"]["params"], params.get("image_size", 64))
    index = pipeline_index(model, params)
    vae_cfg = vae_config(params["first_stage_config"]["params"], model.scale_factor)
    text_cfg, text_state = text_encoder_parts(model.text_encoder)
    unet_state, vae_state = model.unet.state_dict(), model.vae.state_dict()
    unet_state = to_diffusers(unet_state, unet_names(list(unet_state), model.unet.num_res_blocks))
    vae_state = to_diffusers(vae_state, vae_names(list(vae_state), len(model.vae.decoder.up)))
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    with atomic_folder(out) as tmp:
        _write_json(tmp / "model_index.json", index)
        _write_json(tmp / "unet" / "config.json", unet_cfg)
        save_state_dict(unet_state, tmp / "unet" / "diffusion_pytorch_model.safetensors", meta, float_dtype)
        _write_json(tmp / "vae" / "config.json", vae_cfg)
        save_state_dict(vae_state, tmp / "vae" / "diffusion_pytorch_model.safetensors", meta, float_dtype)
        _write_json(tmp / "text_encoder" / "config.json", text_cfg)
        save_state_dict(text_state, tmp / "text_encoder" / "model.safetensors", meta, float_dtype)
        write_tokenizer(
            tmp / "tokenizer", END if model.text_encoder.pads_with_end else "!", model.text_encoder.max_length
        )
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_config(model.schedule, model.prediction))
        if model.low_scale is not None:
            _write_json(
                tmp / "low_res_scheduler" / "scheduler_config.json", low_res_scheduler_config(model.low_scale.schedule)
            )
    return out


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write a whole folder into: when the block ends without an error it becomes
    `out` (an existing `out` steps aside only then), otherwise it is removed, so readers see the old folder or the
    complete new one, never a half-written one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes an owner-only folder; give the usual permissions
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_single_file(
    model: torch.nn.Module,
    config: dict[str, Any],
    out: str | Path,
    overwrite: bool = False,
    float_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` as one .safetensors file in the original SD layout, its config in the metadata (so it
    loads alone; ldm.formats.detect reads it): how a diffusers folder becomes a single file."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise DiffusersFolderError(f"the output must end in .safetensors, got {out.name}")
    if out.exists() and not overwrite:
        raise DiffusersFolderError(f"{out} already exists (--overwrite replaces it)")
    meta = {"format": "pt", CONFIG_KEY: json.dumps(config), PREDICTION_KEY: model.prediction}
    save_state_dict(model.original_state_dict(), out, meta, float_dtype)
    return out
