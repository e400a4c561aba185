"""Full-size ControlNets' tensor names and shapes against diffusers' ControlNetModel, on the meta device."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel

from ldm.core.config import instantiate, load_config
from ldm.formats.controlnet_files import controlnet_names
from ldm.formats.detect import sd_config_path
from ldm.models.controlnet import ControlNet

FULL_SIZE = {  # diffusers' ControlNetModel configs of the released ControlNets (lllyasviel's sd15, SD 2.1, SDXL)
    "v1-inference.yaml": {"cross_attention_dim": 768},
    "v2-inference.yaml": {
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    "sd_xl_base.yaml": {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
}


@pytest.mark.parametrize("config", list(FULL_SIZE))
def test_full_size_controlnets_have_every_diffusers_tensor_in_its_shape(config):
    """At full size, on the meta device (shapes only): our ControlNet for SD 1.x, SD 2.x and SDXL models names every
    tensor of diffusers' ControlNetModel for that family, in its shape, and nothing else."""
    with torch.device("meta"):
        ours = ControlNet(instantiate(load_config(sd_config_path(config))["model"]["params"]["unet_config"]), 4, 8)
        theirs = ControlNetModel(**FULL_SIZE[config])
    names = controlnet_names(ours)
    assert {names[k]: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }
