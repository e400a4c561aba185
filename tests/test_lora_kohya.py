"""The kohya names of our U-Net modules against an independent source: diffusers' own LDM -> diffusers converter.

kohya names a module after its diffusers path; ldm.adapters.kohya derives that path from the U-Net's config.
For U-Nets whose levels differ (attention or not, conv or linear projections, several res blocks), every
module a LoRA can target must get the name diffusers gives the same weight.
"""

import copy
from pathlib import Path

import pytest
import yaml

from ldm.adapters.kohya import diffusers_block_prefixes, diffusers_name
from ldm.adapters.lora_layers import model_targets
from ldm.models.unet import UNetModel

s = pytest.importorskip("diffusers.loaders.single_file_utils")

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stable-diffusion" / "v2-inference.yaml"


@pytest.mark.parametrize(
    "unet",
    [
        {"attention_resolutions": [4, 2], "use_linear_in_transformer": True},  # attention on the deeper levels
        {"attention_resolutions": [1], "use_linear_in_transformer": False},  # only level 0: upsamplers at position 1
    ],
)
def test_kohya_unet_names_are_diffusers_names(unet):
    cfg = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    params = cfg["model"]["params"]["unet_config"]["params"]
    params.update(
        model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2, context_dim=32, num_head_channels=16, **unet
    )
    ours = UNetModel(**params)
    ckpt = {"model.diffusion_model." + k: v for k, v in ours.state_dict().items()}
    theirs = s.convert_ldm_unet_checkpoint(ckpt, s.create_unet_diffusers_config_from_ldm(cfg, ckpt))
    by_tensor = {v.data_ptr(): k for k, v in theirs.items()}
    blocks = diffusers_block_prefixes(ours.num_res_blocks)
    targets = model_targets(ours)
    assert {t.group for t in targets.values()} == {"attn", "proj", "ff", "conv"}
    for name in targets:
        weight = ours.get_submodule(name).weight
        assert diffusers_name(name, blocks) + ".weight" == by_tensor[weight.data_ptr()], name
