"""Tensor names: our U-Net and autoencoder (the original SD layout) <-> diffusers' UNet2DConditionModel and AutoencoderKL.

The networks are the same; only the names differ, plus one change of shape: the autoencoder's attention
projects with 1x1 convolutions in the original layout ([c, c, 1, 1]) and with linear layers in diffusers'
([c, c]). The maps are built from our names (which say where each block sits) and the number of
ResBlocks per U-Net level, which is what places a block in diffusers' down/up blocks. Keys are relative:
after `unet.`/`vae.` on our side, after nothing on diffusers' side (each network has its own file there).

The text encoder's names are ldm.io.hf_clip's (diffusers folders keep a Hugging Face CLIPTextModel).
"""  # noqa: E501

from __future__ import annotations

import torch

from ldm.core.errors import LdmError


class DiffusersKeyError(LdmError, ValueError):
    """A tensor of ours that has no place in diffusers' layout."""


UNET_TOP = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
    "label_emb.": "class_embedding.",  # the upscaler's noise-level embedding (an nn.Embedding on both sides)
}
UNET_RESNET = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
VAE_RESNET = {"nin_shortcut.": "conv_shortcut."}  # norm1/conv1/norm2/conv2 keep their names
VAE_ATTENTION = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def _rename(rest: str, table: dict[str, str], key: str) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    raise DiffusersKeyError(f"{key} has no name in diffusers' layout")


def _unet_block(rest: str, resnets_and_attentions: str, index: int, key: str) -> str:
    """A sub-module of one of our TimestepEmbedSequential blocks, told by its own names."""
    if rest.startswith(tuple(UNET_RESNET)):
        return f"{resnets_and_attentions}.resnets.{index}.{_rename(rest, UNET_RESNET, key)}"
    if rest.startswith("op."):  # Downsample
        return f"{resnets_and_attentions}.downsamplers.0.conv.{rest[3:]}"
    if rest.startswith("conv."):  # Upsample
        return f"{resnets_and_attentions}.upsamplers.0.{rest}"
    return f"{resnets_and_attentions}.attentions.{index}.{rest}"  # SpatialTransformer: names shared with diffusers


def unet_names(keys: list[str], num_res_blocks: list[int]) -> dict[str, str]:
    """Our U-Net key -> diffusers' (UNet2DConditionModel), for a U-Net with `num_res_blocks` per level.

    Our input_blocks run level by level: the level's ResBlocks (each with its transformer, if any), then a
    Downsample (not after the last level); output_blocks run the levels in reverse with one ResBlock more.
    """
    levels = len(num_res_blocks)
    down: list[tuple[int, int]] = [(0, 0)]  # input block -> (level, index in level); block 0 is conv_in
    for level, count in enumerate(num_res_blocks):
        down += [(level, j) for j in range(count)] + ([(level, 0)] if level != levels - 1 else [])
    up = [(u, j) for u in range(levels) for j in range(num_res_blocks[levels - 1 - u] + 1)]
    names = {}
    for key in keys:
        if key.startswith(tuple(UNET_TOP)):
            names[key] = _rename(key, UNET_TOP, key)
            continue
        part, _, rest = key.partition(".")
        if part == "middle_block":
            sub, _, rest = rest.partition(".")
            kind = "attentions.0" if sub == "1" else f"resnets.{int(sub) // 2}"
            names[key] = f"mid_block.{kind}.{_rename(rest, UNET_RESNET, key) if sub != '1' else rest}"
            continue
        if part not in ("input_blocks", "output_blocks"):
            raise DiffusersKeyError(f"{key} has no name in diffusers' layout")
        block, _, rest = rest.partition(".")
        _sub, _, rest = rest.partition(".")
        table = down if part == "input_blocks" else up
        if int(block) >= len(table):
            raise DiffusersKeyError(f"{key}: block {block} beyond the U-Net's {len(table)} blocks")
        where, index = table[int(block)]
        prefix = f"down_blocks.{where}" if part == "input_blocks" else f"up_blocks.{where}"
        names[key] = _unet_block(rest, prefix, index, key)
    return names


def vae_names(keys: list[str], levels: int) -> dict[str, str]:
    """Our autoencoder key -> diffusers' (AutoencoderKL), for `levels` resolution levels.

    Our decoder's `up` is indexed by level (lowest resolution last, like the encoder); diffusers' up_blocks
    run in decoding order, lowest resolution first.
    """
    names = {}
    for key in keys:
        half, _, rest = key.partition(".")
        if half not in ("encoder", "decoder"):
            names[key] = key  # quant_conv, post_quant_conv
            continue
        part, _, rest = rest.partition(".")
        if part in ("conv_in", "conv_out"):
            names[key] = key
        elif part == "norm_out":
            names[key] = f"{half}.conv_norm_out.{rest}"
        elif part == "mid":
            sub, _, rest = rest.partition(".")
            if sub == "attn_1":
                names[key] = f"{half}.mid_block.attentions.0.{_rename(rest, VAE_ATTENTION, key)}"
            else:
                index = {"block_1": 0, "block_2": 1}[sub]
                names[key] = (
                    f"{half}.mid_block.resnets.{index}.{rest if not rest.startswith('nin_') else _rename(rest, VAE_RESNET, key)}"  # noqa: E501
                )
        elif part in ("down", "up"):
            level, _, rest = rest.partition(".")
            block = f"{half}.{part}_blocks.{int(level) if part == 'down' else levels - 1 - int(level)}"
            kind, _, rest = rest.partition(".")
            if kind == "block":
                index, _, rest = rest.partition(".")
                inner = _rename(rest, VAE_RESNET, key) if rest.startswith("nin_") else rest
                names[key] = f"{block}.resnets.{index}.{inner}"
            elif kind in ("downsample", "upsample"):
                names[key] = f"{block}.{kind}rs.0.{rest}"
            else:  # per-level attention: diffusers' SD autoencoder has none
                raise DiffusersKeyError(f"{key}: diffusers' AutoencoderKL has no attention outside the middle block")
        else:
            raise DiffusersKeyError(f"{key} has no name in diffusers' layout")
    return names


def _is_vae_attention_projection(our_key: str) -> bool:
    return (
        ".mid.attn_1." in f".{our_key}"
        and our_key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out")
        and our_key.endswith(".weight")
    )


def to_diffusers(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Our tensors under diffusers' names (the autoencoder's attention projections as linear weights)."""
    out = {}
    for key, value in state.items():
        if _is_vae_attention_projection(key) and value.ndim == 4:
            value = value[:, :, 0, 0].contiguous()
        out[names[key]] = value
    return out


def from_diffusers(state: dict[str, torch.Tensor], names: dict[str, str]) -> dict[str, torch.Tensor]:
    """diffusers' tensors under our names; a tensor with no place keeps its own name, so the strict load that
    follows reports it rather than it vanishing here."""
    ours = {theirs: key for key, theirs in names.items()}
    out = {}
    for key, value in state.items():
        own = ours.get(key, key)
        if own in names and _is_vae_attention_projection(own) and value.ndim == 2:
            value = value[:, :, None, None]
        out[own] = value
    return out
