"""The kohya / A1111 LoRA key layout, mapped onto this project's module names.

kohya's sd-scripts name a LoRA module after the diffusers module it patches, dots made underscores:
`lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`, and the text encoder after
transformers' CLIPTextModel: `lora_te_text_model_encoder_layers_3_self_attn_q_proj`. Each module has
`.lora_down.weight` [rank, in(, k, k)], `.lora_up.weight` [out, rank(, 1, 1)] and `.alpha` (a scalar;
rank when absent), and the update is W + (alpha / rank) * up @ down.

This project keeps the original LDM layout (input_blocks / middle_block / output_blocks, ResBlock's
in_layers / emb_layers / out_layers; open_clip's resblocks with a fused in_proj). The U-Net's block
correspondence follows from its number of res blocks per level: level l of the down path is
`down_blocks.l` (its res blocks, each followed by its attention where the level has one, then a
downsampler unless it is the last level), the middle block is `mid_block`, and the up path holds the
same levels in reverse, each with one more res block and an upsampler after the last one (but level 0).
Names are mapped from our side (every module we have gets its kohya name), so underscores never need
to be split back into dots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ldm.adapters.lora_layers import LoraError, Target

# ResBlock inner names -> diffusers ResnetBlock2D's.
RESNET_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
# open_clip text transformer -> transformers' CLIPTextModel (what kohya names the SD 2 text encoder after).
TEXT_NAMES = {
    "attn.in_proj_q": "self_attn_q_proj",
    "attn.in_proj_k": "self_attn_k_proj",
    "attn.in_proj_v": "self_attn_v_proj",
    "attn.out_proj": "self_attn_out_proj",
    "mlp.c_fc": "mlp_fc1",
    "mlp.c_proj": "mlp_fc2",
}
UNET_PREFIX, TEXT_PREFIX = "lora_unet_", "lora_te_"
# SDXL's two towers: kohya's lora_te1_ (CLIP ViT-L) and lora_te2_ (OpenCLIP bigG), both in CLIPTextModel's names.
SDXL_TEXT_PREFIXES = ("lora_te1_", "lora_te2_")
KOHYA_PREFIXES = (UNET_PREFIX, TEXT_PREFIX, *SDXL_TEXT_PREFIXES)


def diffusers_block_prefixes(num_res_blocks: Sequence[int]) -> dict[str, str]:
    """LDM block prefix -> diffusers block prefix, for a U-Net with these res blocks per channel_mult level.

    Both an attention and an upsampler can sit at position 1 of an output block; the upsampler's entry
    (`output_blocks.N.1.conv.`) is the longer prefix, which `diffusers_name` prefers.
    """
    levels = len(num_res_blocks)
    out = {
        "input_blocks.0.0.": "conv_in.",
        "time_embed.0.": "time_embedding.linear_1.",
        "time_embed.2.": "time_embedding.linear_2.",
        "out.0.": "conv_norm_out.",
        "out.2.": "conv_out.",
        "middle_block.0.": "mid_block.resnets.0.",
        "middle_block.1.": "mid_block.attentions.0.",
        "middle_block.2.": "mid_block.resnets.1.",
    }
    index = 1
    for level, count in enumerate(num_res_blocks):
        for j in range(count):
            out[f"input_blocks.{index}.0."] = f"down_blocks.{level}.resnets.{j}."
            out[f"input_blocks.{index}.1."] = f"down_blocks.{level}.attentions.{j}."
            index += 1
        if level != levels - 1:
            out[f"input_blocks.{index}.0.op."] = f"down_blocks.{level}.downsamplers.0.conv."
            index += 1
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(num_res_blocks[level] + 1):
            out[f"output_blocks.{index}.0."] = f"up_blocks.{up}.resnets.{j}."
            out[f"output_blocks.{index}.1."] = f"up_blocks.{up}.attentions.{j}."
            if level and j == num_res_blocks[level]:  # after an attention (position 2) or not (position 1)
                out[f"output_blocks.{index}.1.conv."] = f"up_blocks.{up}.upsamplers.0.conv."
                out[f"output_blocks.{index}.2.conv."] = f"up_blocks.{up}.upsamplers.0.conv."
            index += 1
    return out


def diffusers_name(path: str, blocks: dict[str, str]) -> str | None:
    """A module path inside our U-Net -> its diffusers path (None where diffusers has no such module)."""
    key = path + "."
    matches = [p for p in blocks if key.startswith(p)]
    if not matches:
        return None
    prefix = max(matches, key=len)
    rest = key[len(prefix) :]
    if ".resnets." in blocks[prefix]:
        for ours, theirs in RESNET_NAMES.items():
            if rest.startswith(ours + "."):
                rest = theirs + "." + rest[len(ours) + 1 :]
                break
    return (blocks[prefix] + rest).rstrip(".")


def text_name(path: str) -> str | None:
    """A target name inside the text encoder (`model.transformer.resblocks.N.attn.in_proj_q`) -> kohya's stem."""
    _, sep, rest = path.partition("model.transformer.resblocks.")
    if not sep:
        return None
    layer, _, inner = rest.partition(".")
    return f"{TEXT_PREFIX}text_model_encoder_layers_{layer}_{TEXT_NAMES[inner]}" if inner in TEXT_NAMES else None


def kohya_names(model, targets: dict[str, Target]) -> dict[str, str]:
    """kohya stem (`lora_unet_...`, `lora_te_...`) -> our target name, for every target of the model."""
    from ldm.models.text_encoder import FrozenTextEncoder
    from ldm.models.unet import UNetModel

    unets = [(p, m) for p, m in model.named_modules() if isinstance(m, UNetModel)]
    texts = [p for p, m in model.named_modules() if isinstance(m, FrozenTextEncoder)]
    out = {}
    for prefix, unet in unets[:1]:
        blocks = diffusers_block_prefixes(unet.num_res_blocks)
        start = prefix + "." if prefix else ""
        for name in targets:
            if name.startswith(start) and (theirs := diffusers_name(name[len(start) :], blocks)):
                out[UNET_PREFIX + theirs.replace(".", "_")] = name
    two_towers = len(texts) == 2 and all(".embedders." in p for p in texts)  # SDXL (ldm.models.sdxl_text)
    for number, prefix in enumerate(texts if two_towers else texts[:1]):
        start = prefix + "." if prefix else ""
        for name in targets:
            if name.startswith(start) and (theirs := text_name(name[len(start) :])):
                out[theirs.replace(TEXT_PREFIX, SDXL_TEXT_PREFIXES[number], 1) if two_towers else theirs] = name
    return out


def to_kohya(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """An adapter's tensors by our target names (ldm.adapters.lora.lora_state_dict) under kohya's stems instead
    (`lora_unet_...`, `lora_te1_...`): the layout SDXL LoRAs are shared in, which A1111, ComfyUI and ours read."""
    suffixes = (".lora_down.weight", ".lora_up.weight", ".alpha")
    parts = {key: next((key[: -len(s)], s) for s in suffixes if key.endswith(s)) for key in state}
    targets = {target for target, _ in parts.values()}
    stems = {ours: theirs for theirs, ours in kohya_names(model, dict.fromkeys(targets)).items()}
    missing = sorted(targets - set(stems))
    if missing:
        raise LoraError(f"{missing[0]} has no name in kohya's LoRA layout; save this adapter in ours")
    return {stems[target] + suffix: state[key] for key, (target, suffix) in parts.items()}
