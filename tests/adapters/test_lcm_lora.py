"""LCM-LoRA files (latent-consistency/lcm-lora-sdv1-5's `pytorch_lora_weights.safetensors`) load with `--lora`.

That file is in the kohya / A1111 layout: each module of the diffusers U-Net the LCM-LoRA training script adapts
(diffusers' train_lcm_distill_lora_sd_wds.py: attention projections, transformer proj_in / proj_out and
feed-forward, res-block convolutions, shortcuts and time-embedding projections, down- and upsampler convolutions)
under `lora_unet_<diffusers path, dots as underscores>` with `.lora_down.weight`, `.lora_up.weight` and `.alpha`;
no text-encoder keys. The file here is built the same way for the tiny model, its names taken from diffusers' own
LDM -> diffusers converter, so where each update lands is checked against an independent source.
"""

from __future__ import annotations

import copy

import pytest
import torch
from factories import tiny_model, write_lcm_lora

from ldm.adapters.lora import merge_lora, read_lora
from ldm.adapters.lora_layers import model_targets

pytest.importorskip("diffusers")  # the file's names come from diffusers' own converter


def test_an_lcm_lora_file_adapts_every_unet_module_it_names_where_diffusers_puts_it(tmp_path):
    model = tiny_model()
    path = tmp_path / "lcm-lora.safetensors"
    updates = write_lcm_lora(model, path)
    weights = read_lora(path, model)
    # Every module the LCM-LoRA adapts is one our LoRAs reach, and the file names all of them: the whole U-Net
    # part of our targets (attn, proj, ff, conv), nothing of the text encoder.
    assert set(weights.modules) == set(model_targets(model, ("attn", "proj", "ff", "conv")))
    assert len(updates) == len(weights.modules)
    merged = copy.deepcopy(model)
    merge_lora(merged, path, 1.0)
    before, after = model.state_dict(), merged.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(updates)
    for name, delta in updates.items():
        torch.testing.assert_close(after[name] - before[name], delta, rtol=1e-4, atol=1e-6)
