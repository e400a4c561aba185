"""SD 1.x's text encoder weights: Hugging Face `CLIPTextModel` names <-> open_clip's text tower.

SD 1.x checkpoints store OpenAI CLIP ViT-L/14's text tower as `cond_stage_model.transformer.text_model.*`,
in the layout of Hugging Face transformers. We run it as open_clip's text transformer (the same network:
pre-norm blocks, quick-GELU, causal mask), so the names are translated on load and back on save. The one
change of shape: transformers keeps separate q/k/v projections where torch's MultiheadAttention, which
open_clip uses, holds them stacked in one `in_proj` (q, then k, then v).

Keys here are relative: after `text_model.` on the Hugging Face side, after the tower's own prefix on ours.
"""

from __future__ import annotations

import re

import torch

from ldm.core.errors import LdmError


class TextTowerKeyError(LdmError, ValueError):
    """A tensor that has no place in the Hugging Face layout of a CLIP text tower."""


# Whole-tower tensors. position_ids is left out: an integer index buffer (0..76) that older transformers
# versions saved, with no weights in it; open_clip adds the position embedding without one.
HF_TO_OPEN_CLIP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
DROPPED = {"embeddings.position_ids"}
# Per-block name parts that only change name (everything but q/k/v).
HF_BLOCK_TO_OPEN_CLIP = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "self_attn.out_proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
QKV = ("q", "k", "v")  # the order of the stacked in_proj
HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
HF_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
OPEN_CLIP_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")


def open_clip_from_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(open_clip tensors, tensors left untranslated) for a Hugging Face CLIP text tower's state dict.

    What is not recognised, or a block missing one of q/k/v, comes back under its own name, so the strict
    load that follows names it as unexpected instead of it vanishing here.
    """
    out: dict[str, torch.Tensor] = {}
    left: dict[str, torch.Tensor] = {}
    stacked: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}  # (layer, weight|bias) -> q/k/v
    for key, value in state.items():
        if key in DROPPED:
            continue
        if key in HF_TO_OPEN_CLIP:
            out[HF_TO_OPEN_CLIP[key]] = value
            continue
        layer = HF_LAYER.fullmatch(key)
        if layer is None:
            left[key] = value
            continue
        number, rest = layer.groups()
        if (qkv := HF_QKV.fullmatch(rest)) is not None:
            stacked.setdefault((number, qkv[2]), {})[qkv[1]] = (key, value)
            continue
        prefix = next((p for p in HF_BLOCK_TO_OPEN_CLIP if rest.startswith(p)), None)
        if prefix is None:
            left[key] = value
            continue
        out[f"transformer.resblocks.{number}.{HF_BLOCK_TO_OPEN_CLIP[prefix]}{rest[len(prefix) :]}"] = value
    for (number, kind), parts in stacked.items():
        if set(parts) != set(QKV):
            left.update(dict(parts.values()))
            continue
        out[f"transformer.resblocks.{number}.attn.in_proj_{kind}"] = torch.cat([parts[p][1] for p in QKV])
    return out, left


def hf_from_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of open_clip_from_hf for our SD 1.x text tower's state dict (names under `text_model.`).

    The split q/k/v are copies, not views of the stacked tensor: safetensors refuses tensors sharing memory.
    """
    to_hf = {v: k for k, v in HF_TO_OPEN_CLIP.items()}
    block_to_hf = {v: k for k, v in HF_BLOCK_TO_OPEN_CLIP.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in to_hf:
            out[to_hf[key]] = value
            continue
        layer = OPEN_CLIP_LAYER.fullmatch(key)
        if layer is None:
            raise TextTowerKeyError(f"{key} has no name in the Hugging Face CLIP text layout")
        number, rest = layer.groups()
        block = f"encoder.layers.{number}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            for name, part in zip(QKV, value.chunk(3)):
                out[f"{block}self_attn.{name}_proj.{kind}"] = part.clone()
            continue
        prefix = next((p for p in block_to_hf if rest.startswith(p)), None)
        if prefix is None:
            raise TextTowerKeyError(f"{key} has no name in the Hugging Face CLIP text layout")
        out[f"{block}{block_to_hf[prefix]}{rest[len(prefix) :]}"] = value
    return out
