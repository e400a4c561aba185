"""SDXL tensor names: the original single files' conditioner and diffusers' SDXL U-Net <-> ours.

Original SDXL files (sd_xl_base_1.0.safetensors, sd_xl_refiner_1.0.safetensors) hold the text towers under
`conditioner.embedders.N.`: CLIP ViT-L/14 in Hugging Face's layout (`transformer.text_model.*`), OpenCLIP
ViT-bigG/14 in open_clip's (`model.*`, no visual tower). Ours keeps both as open_clip towers under
`text_encoder.embedders.N.model.` (ldm.models.sdxl_text); ldm.io.hf_clip translates the Hugging Face names. The U-Net
and
VAE use SD's prefixes (ldm.io.checkpoint); `denoiser.sigmas` is the reference denoiser's schedule, derived here.

diffusers' SDXL U-Net (UNet2DConditionModel, addition_embed_type "text_time") names the vector's embedding
`add_embedding.linear_1/2`, ours (and the original) `label_emb.0.0/0.2`; the rest is ldm.io.diffusers_keys'.
"""

from __future__ import annotations

import re

import torch

from ldm.io.diffusers_keys import unet_names
from ldm.io.hf_clip import hf_from_open_clip, open_clip_from_hf

CONDITIONER = "conditioner.embedders."
OURS = "text_encoder.embedders."
HF_TOWER = "transformer.text_model."  # sgm's FrozenCLIPEmbedder: a Hugging Face CLIPTextModel
OPEN_CLIP_TOWER = "model."  # sgm's FrozenOpenCLIPEmbedder2: open_clip's CLIP without its visual tower
EMBEDDER = re.compile(r"conditioner\.embedders\.(\d+)\.(.+)")
OUR_EMBEDDER = re.compile(r"text_encoder\.embedders\.(\d+)\.model\.(.+)")
# diffusers' add_embedding (TimestepEmbedding: linear_1, SiLU, linear_2) is our label_emb.0 (Linear, SiLU, Linear).
VECTOR_EMBEDDING = {"label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}


def is_sdxl(keys) -> bool:
    """The original SDXL layout: a conditioner with embedders."""
    return any(k.startswith(CONDITIONER) for k in keys)


def conditioner_from_original(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(our text-tower tensors, the rest of the state untouched). A tower tensor without a place in our layout keeps
    its original name in the rest, so the strict load that follows names it."""
    ours: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    hf_towers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = EMBEDDER.fullmatch(key)
        if match is None:
            rest[key] = value
        elif match[2].startswith(HF_TOWER):
            hf_towers.setdefault(match[1], {})[match[2][len(HF_TOWER) :]] = value
        elif match[2].startswith(OPEN_CLIP_TOWER):
            ours[f"{OURS}{match[1]}.model.{match[2][len(OPEN_CLIP_TOWER) :]}"] = value
        else:
            rest[key] = value
    for number, tower in hf_towers.items():
        translated, untranslated = open_clip_from_hf(tower)
        ours.update({f"{OURS}{number}.model.{k}": v for k, v in translated.items()})
        rest.update({f"{CONDITIONER}{number}.{HF_TOWER}{k}": v for k, v in untranslated.items()})
    return ours, rest


def conditioner_to_original(
    state: dict[str, torch.Tensor], layouts: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the text towers under the original names, the rest of our state untouched); layouts[N] is embedder N's,
    "hf_clip" or "open_clip" (ldm.models.sdxl_text.SDXLTextEncoders.layouts)."""
    towers: dict[int, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = OUR_EMBEDDER.fullmatch(key)
        if match is None:
            rest[key] = value
        else:
            towers.setdefault(int(match[1]), {})[match[2]] = value
    out: dict[str, torch.Tensor] = {}
    for number, tower in towers.items():
        if layouts[number] == "hf_clip":
            out.update({f"{CONDITIONER}{number}.{HF_TOWER}{k}": v for k, v in hf_from_open_clip(tower).items()})
        else:
            out.update({f"{CONDITIONER}{number}.{OPEN_CLIP_TOWER}{k}": v for k, v in tower.items()})
    return out, rest


def sdxl_unet_names(keys: list[str], num_res_blocks: list[int]) -> dict[str, str]:
    """Our SDXL U-Net key -> diffusers' (UNet2DConditionModel with addition_embed_type "text_time")."""
    names = {}
    for key in keys:
        prefix = next((p for p in VECTOR_EMBEDDING if key.startswith(p)), None)
        if prefix is not None:
            names[key] = VECTOR_EMBEDDING[prefix] + key[len(prefix) :]
    names.update(unet_names([k for k in keys if k not in names], num_res_blocks))
    return names


def embedder_layouts(keys) -> tuple[str, ...]:
    """The layout of each text tower an original SDXL file holds, by embedder number: "hf_clip" or "open_clip"
    (embedders without tensors, the micro-conditionings', are left out)."""
    found: dict[int, str] = {}
    for key in keys:
        match = EMBEDDER.fullmatch(key)
        if match is not None and match[2].startswith(HF_TOWER):
            found[int(match[1])] = "hf_clip"
        elif match is not None and match[2].startswith(OPEN_CLIP_TOWER):
            found[int(match[1])] = "open_clip"
    return tuple(found[n] for n in sorted(found))
