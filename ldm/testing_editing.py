"""Tiny inpainting and x4-upscaler configs (the conditional layouts of SD 2) for tests and examples."""
from __future__ import annotations

from ldm.testing import tiny_config


def tiny_inpaint_config() -> dict:
    """SD 2 inpainting layout: 9 input channels [noisy latent 4, mask 1, masked-image latent 4]."""
    cfg = tiny_config(conditioning_key="hybrid")
    cfg["model"]["params"]["unet_config"]["params"]["in_channels"] = 9
    return cfg


def tiny_upscaler_config() -> dict:
    """x4-upscaler layout: f=4 VAE, [noisy latent 4, low-res RGB 3] input, noise-level label, v-prediction."""
    cfg = tiny_config(conditioning_key="hybrid-adm", parameterization="v", linear_start=0.0001, linear_end=0.02,
                      scale_factor=0.08333, image_size=16,
                      low_scale_config={"target": "ldm.conditioning.LowResNoiseAugmentation",
                                        "params": {"max_noise_level": 350}})
    params = cfg["model"]["params"]
    params["unet_config"]["params"].update(in_channels=7, num_classes=1000)
    params["first_stage_config"]["params"]["ddconfig"]["ch_mult"] = [1, 2, 2]
    return cfg


def _build(cfg: dict, seed: int):
    import torch

    from ldm.config import instantiate

    torch.manual_seed(seed)
    model = instantiate(cfg["model"])
    with torch.no_grad():
        for p in model.unet.parameters():
            if (p == 0).all() and p.ndim > 1:  # zero-initialised output layers would make the U-Net a no-op
                p.normal_(0, 0.02)
    return model.eval()


def tiny_inpaint_model(seed: int = 0):
    return _build(tiny_inpaint_config(), seed)


def tiny_upscaler_model(seed: int = 0):
    return _build(tiny_upscaler_config(), seed)
