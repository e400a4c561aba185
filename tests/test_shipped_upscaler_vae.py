"""The x4 upscaler's autoencoder kept in checkpoints/ (f=4, 8 latent channels): it loads strictly from its
safetensors file and reconstructs a flat-colour picture, which an untrained or mis-keyed one does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from ldm.core.config import instantiate
from ldm.io.checkpoint import load_state_dict

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS, CONFIG = ROOT / "checkpoints/emoji/upscaler-vae.safetensors", ROOT / "checkpoints/emoji/upscaler-vae.yaml"


def test_upscaler_autoencoder_loads_strictly_and_reconstructs():
    vae = instantiate(yaml.safe_load(CONFIG.read_text())["model"]).eval()
    missing, unexpected = vae.load_state_dict({k: v.float() for k, v in load_state_dict(WEIGHTS).items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    image = Image.new("RGB", (128, 128), "white")
    ImageDraw.Draw(image).ellipse((24, 24, 104, 104), fill=(220, 30, 40), outline=(90, 10, 10), width=4)
    x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).mode()
        assert z.shape == (1, 8, 32, 32)  # f=4, 8 channels
        y = vae.decode(z).clamp(-1, 1)
    mse = ((y - x) / 2).pow(2).mean().item()
    assert 10 * np.log10(1 / mse) > 25, f"PSNR {10 * np.log10(1 / mse):.1f} dB"
