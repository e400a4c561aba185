"""kohya-layout SDXL LoRAs (issue 39): lora_unet_* on the U-Net, lora_te1_* on CLIP ViT-L and lora_te2_* on
OpenCLIP bigG, each update W + weight * (alpha / rank) * up @ down landing on the module kohya names."""

from __future__ import annotations

import pytest
import torch
from test_sdxl import tiny_encoders_node, tiny_unet_params

from ldm.adapters.lora import LoraError, apply_lora, merge_lora, remove_lora
from ldm.core.config import instantiate, load_config
from ldm.formats.detect import sd_config_path
from ldm.io.checkpoint import save_state_dict

RANK, ALPHA, WEIGHT = 2, 1.0, 0.5


@pytest.fixture(scope="module")
def model():
    node = load_config(sd_config_path("sd_xl_base.yaml"))["model"]
    params = node["params"]
    params["unet_config"]["params"] = tiny_unet_params()
    params["cond_stage_config"] = tiny_encoders_node()
    params["first_stage_config"]["params"]["ddconfig"].update(ch=32, ch_mult=[1, 2])
    torch.manual_seed(0)
    return instantiate(node).eval()


def pair(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, in_features, generator=generator), torch.randn(out_features, RANK, generator=generator)


def test_kohya_sdxl_lora_merges_into_both_towers_and_the_unet(model, tmp_path):
    text = model.text_encoder.embedders
    clip_l, big_g = text[0].model.transformer.resblocks, text[1].model.transformer.resblocks
    attn = model.unet.input_blocks[4][1].transformer_blocks[0].attn1.to_q  # down_blocks.1.attentions.0
    cases = {  # kohya stem -> (our weight, the rows it changes)
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (attn.weight, slice(None)),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (clip_l[0].attn.in_proj_weight, slice(0, 32)),
        "lora_te2_text_model_encoder_layers_2_self_attn_v_proj": (big_g[2].attn.in_proj_weight, slice(96, 144)),
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": (big_g[1].mlp.c_fc.weight, slice(None)),
    }
    state, expected = {}, {}
    for seed, (stem, (weight, rows)) in enumerate(cases.items()):
        out_features = weight[rows].shape[0]
        down, up = pair(out_features, weight.shape[1], seed)
        state |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up, f"{stem}.alpha": torch.tensor(ALPHA)}
        after = weight.detach().clone()
        after[rows] += WEIGHT * (ALPHA / RANK) * up @ down
        expected[stem] = after
    save_state_dict(state, tmp_path / "kohya_sdxl.safetensors")
    untouched = model.unet.input_blocks[4][1].transformer_blocks[0].attn1.to_k.weight.detach().clone()
    merge_lora(model, tmp_path / "kohya_sdxl.safetensors", WEIGHT)
    for stem, (weight, _) in cases.items():
        assert torch.allclose(weight, expected[stem], atol=1e-6), stem
    assert torch.equal(model.unet.input_blocks[4][1].transformer_blocks[0].attn1.to_k.weight, untouched)


def test_a_kohya_key_for_a_layer_the_tower_lacks_is_refused(model, tmp_path):
    down, up = pair(32, 32, 9)
    bad = {"lora_te1_text_model_encoder_layers_7_self_attn_q_proj.lora_down.weight": down,
           "lora_te1_text_model_encoder_layers_7_self_attn_q_proj.lora_up.weight": up}  # fmt: skip
    save_state_dict(bad, tmp_path / "bad.safetensors")
    with pytest.raises(LoraError, match="layers_7_self_attn_q_proj.lora_down.weight names no LoRA-able module"):
        apply_lora(model, tmp_path / "bad.safetensors")
    good = {k.replace("layers_7", "layers_1"): v for k, v in bad.items()}
    save_state_dict(good, tmp_path / "good.safetensors")
    name = apply_lora(model, tmp_path / "good.safetensors")  # applied to the forward, then taken off again
    remove_lora(model, name)
