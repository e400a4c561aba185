"""SDXL precision and memory (issue 39): the fp16 VAE overflow and its upcast, and the memory estimate of a U-Net
without attention at its top level."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ldm.core.limits import _finest_attention_downscale, sampling_bytes
from ldm.models.unet import UNetModel
from ldm.models.vae import AutoencoderKL
from ldm.models.vae_precision import decode_safely, decodes_in_fp16, overflows_in_fp16

FP16_MAX = 65504.0


def fixed_ddconfig() -> dict:
    return {
        "double_z": True,
        "z_channels": 4,
        "resolution": 16,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def overflowing_vae() -> tuple[AutoencoderKL, float]:
    """A tiny VAE whose decoder's first activations pass fp16's largest number (as SDXL's do in places), and that
    largest activation measured in float32."""
    torch.manual_seed(0)
    vae = AutoencoderKL(fixed_ddconfig(), embed_dim=4, scale_factor=0.13025).eval()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(20000.0)
    peak = {}
    hook = vae.decoder.conv_in.register_forward_hook(lambda m, i, out: peak.update(value=out.abs().max().item()))
    with torch.no_grad():
        vae.decode_from_latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)))
    hook.remove()
    return vae, peak["value"]


def test_the_fp16_vae_overflows_without_the_upcast_and_not_with_it():
    vae, peak = overflowing_vae()
    assert peak > FP16_MAX  # the activations really leave fp16's range (finite in float32)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    vae.half()
    weights = {k: v.clone() for k, v in vae.state_dict().items()}
    with torch.no_grad():
        plain = vae.decode_from_latent(latents.half())
        upcast = decode_safely(vae.decode_from_latent, vae, latents.half(), upcast=True)
        fallback = decode_safely(vae.decode_from_latent, vae, latents.half(), upcast=False)
        reference = vae.float().decode_from_latent(latents.half().float())
    vae.half()
    assert decodes_in_fp16(vae, latents)
    assert not torch.isfinite(plain).all()  # NaN or infinity without the upcast
    assert torch.isfinite(upcast).all() and torch.isfinite(fallback).all()
    assert torch.allclose(upcast, reference, atol=1e-5) and torch.equal(upcast, fallback)
    assert all(torch.equal(weights[k], v) for k, v in vae.state_dict().items())  # the weights go back as they were
    assert next(vae.parameters()).dtype == torch.float16


def test_sdxl_models_upcast_at_once_and_float32_decodes_are_left_alone():
    """SDXL (a text encoder with micro-conditionings) decodes in float32 from the start; a VAE can say so itself;
    a float32 decode runs as it is."""
    vae, _ = overflowing_vae()
    sdxl = SimpleNamespace(vae=SimpleNamespace(), text_encoder=SimpleNamespace(micro_conditions=("crop",)))
    sd = SimpleNamespace(vae=SimpleNamespace(), text_encoder=SimpleNamespace())
    assert overflows_in_fp16(sdxl) and not overflows_in_fp16(sd)
    assert overflows_in_fp16(SimpleNamespace(vae=SimpleNamespace(force_upcast=True), text_encoder=None))
    calls = []

    def decode(z: torch.Tensor) -> torch.Tensor:
        calls.append(z.dtype)
        return vae.decode_from_latent(z)

    with torch.no_grad():
        decode_safely(decode, vae, torch.zeros(1, 4, 8, 8), upcast=True)
    assert calls == [torch.float32] and not decodes_in_fp16(vae, torch.zeros(1))


def tiny_unet(attention_resolutions: list[int]) -> UNetModel:
    return UNetModel(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        attention_resolutions=attention_resolutions,
        num_res_blocks=1,
        channel_mult=[1, 2, 2],
        num_head_channels=16,
        use_linear_in_transformer=True,
        context_dim=32,
        legacy=False,
    )


@pytest.mark.parametrize("resolutions, downscale", [([1, 2, 4], 1), ([4, 2], 2), ([4], 4)])
def test_the_memory_estimate_takes_attention_where_it_is(resolutions, downscale):
    """SD attends at the latent's own size; SDXL's finest attention is at half of it: a quarter of the tokens and a
    sixteenth of the attention matrix. At 1024 px the SDXL estimate is not the whole latent's 16384^2 matrix."""
    decoder = SimpleNamespace(conv_out=SimpleNamespace(in_channels=1))
    model = SimpleNamespace(unet=tiny_unet(resolutions), downscale=8, device=torch.device("cpu"))
    model.vae = SimpleNamespace(decoder=decoder)
    assert _finest_attention_downscale(model) == downscale
    heads = max(m.heads for m in model.unet.modules() if hasattr(m, "heads"))
    linear = 4 * 2 * (128 * 128) * 32 * 40
    assert sampling_bytes(model, 1024, 1024, 1) == linear + 4 * heads * (128 * 128 // downscale**2) ** 2


def test_vae_accepts_a_separate_vae_in_diffusers_layout(tmp_path):
    """`--vae` takes a fixed VAE as diffusers ships it (sdxl-vae-fp16-fix's diffusion_pytorch_model.safetensors) as
    well as in the original layout."""
    from ldm.io.checkpoint import save_state_dict
    from ldm.io.diffusers_keys import to_diffusers, vae_names
    from ldm.models.latent_diffusion import LatentDiffusion

    fixed, _ = overflowing_vae()
    theirs = to_diffusers(fixed.state_dict(), vae_names(list(fixed.state_dict()), len(fixed.decoder.up)))
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in theirs
    save_state_dict(theirs, tmp_path / "diffusion_pytorch_model.safetensors")
    torch.manual_seed(3)
    holder = SimpleNamespace(vae=AutoencoderKL(fixed_ddconfig(), embed_dim=4), identity={})
    assert not torch.equal(holder.vae.decoder.conv_in.weight, fixed.decoder.conv_in.weight)
    LatentDiffusion.load_vae_weights(holder, tmp_path / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(holder.vae.state_dict().values(), fixed.state_dict().values()))
    assert holder.identity["vae_file"] == "diffusion_pytorch_model.safetensors"
