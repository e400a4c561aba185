"""A ControlNet written in both layouts: the original file -> diffusers' folder (config.json and
diffusion_pytorch_model.safetensors, as ControlNetModel.save_pretrained writes) -> the original file again gives the
same tensors, and diffusers' own ControlNetModel.from_pretrained loads the folder and computes what ours does."""

from __future__ import annotations

import json
import types

import pytest
import torch
from diffusers import ControlNetModel
from factories import tiny_config

from ldm.formats.controlnet_files import ControlNetFileError, load_controlnet, save_controlnet, save_controlnet_folder
from ldm.io.checkpoint import load_state_dict
from ldm.models.controlnet import ControlNet
from ldm.models.unet import UNetModel

UNET = tiny_config()["model"]["params"]["unet_config"]["params"]


@pytest.fixture(scope="module")
def net() -> tuple[ControlNet, types.SimpleNamespace]:
    """A tiny f=8 ControlNet with every weight random (zero convolutions included), and a stand-in model for it."""
    unet = UNetModel(**UNET)
    torch.manual_seed(0)
    net = ControlNet(unet, 4, 8)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net.eval(), types.SimpleNamespace(unet=unet, latent_channels=4, downscale=8)


def test_original_to_diffusers_to_original_keeps_every_tensor(net, tmp_path):
    ours, standin = net
    original = save_controlnet(ours, tmp_path / "original.safetensors")
    folder = save_controlnet_folder(load_controlnet(original, standin), UNET, tmp_path / "controlnet-diffusers")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    again = save_controlnet(load_controlnet(folder, standin), tmp_path / "again.safetensors")
    first, second = load_state_dict(original), load_state_dict(again)
    assert first.keys() == second.keys() and len(first) == len(ours.state_dict())
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_diffusers_loads_the_folder_and_computes_the_same_residuals(net, tmp_path):
    ours, _ = net
    folder = save_controlnet_folder(ours, UNET, tmp_path / "controlnet-diffusers")
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "ControlNetModel" and config["cross_attention_dim"] == UNET["context_dim"]
    theirs = ControlNetModel.from_pretrained(folder, local_files_only=True).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    context, hint = torch.randn(2, 5, UNET["context_dim"]), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        residuals = ours(x, t, hint, context)
        down, mid = theirs(x, t, context, hint, return_dict=False)
    assert len(residuals) == len(down) + 1
    for a, b in zip(residuals, [*down, mid]):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-4


def test_a_controlnet_diffusers_cannot_hold_is_refused_in_one_line(tmp_path):
    f4 = ControlNet(UNetModel(**UNET), 4, 4)
    with pytest.raises(ControlNetFileError, match="diffusers' ControlNets take images down by f=8, this one by f=4"):
        save_controlnet_folder(f4, UNET, tmp_path / "f4")
    assert not (tmp_path / "f4").exists()
