"""Decoding latents without NaNs at every precision.

SDXL's VAE overflows in fp16: some decoder activations pass 65504, fp16's largest number, become infinite and
then NaN, and the image comes out black (diffusers sets `force_upcast` in SDXL's VAE config and decodes in
float32; A1111 retries in float32 when the result holds NaNs; madebyollin's sdxl-vae-fp16-fix is a VAE
fine-tuned to stay in range, which `--vae` accepts).

Here a decode in fp16 (autocast fp16, or the VAE's weights in float16) runs in float32 instead for SDXL models
(their VAE is known to overflow), and for any other model when the fp16 result is not finite. The float32 run
casts the VAE's weights up for the call and back afterwards (float16 -> float32 -> float16 is exact) and turns
autocast off; bf16 has float32's range and is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger("ldm")


def _device_type(latents: torch.Tensor) -> str:
    return latents.device.type


def decodes_in_fp16(vae: nn.Module, latents: torch.Tensor) -> bool:
    """Whether a decode now would run in float16: autocast to fp16 is on, or the VAE's weights are float16."""
    device_type = _device_type(latents)
    autocast_fp16 = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
    weight = next(vae.parameters(), None)
    return autocast_fp16 or (weight is not None and weight.dtype == torch.float16)


def overflows_in_fp16(model: nn.Module) -> bool:
    """Models whose VAE is known to overflow fp16 (SDXL's; a VAE can also say so with `force_upcast`)."""
    flag = getattr(model.vae, "force_upcast", None)
    if flag is not None:
        return bool(flag)
    return hasattr(getattr(model, "text_encoder", None), "micro_conditions")


def decode_in_fp32(
    decode: Callable[[torch.Tensor], torch.Tensor], vae: nn.Module, latents: torch.Tensor
) -> torch.Tensor:
    """decode(latents) with the VAE's weights and the latents in float32 and autocast off; the weights go back
    to their dtype afterwards. The images come back in float32."""
    dtypes = {name: p.dtype for name, p in vae.named_parameters()}
    try:
        vae.float()
        with torch.autocast(_device_type(latents), enabled=False):
            images = decode(latents.float())
    finally:
        for name, p in vae.named_parameters():
            p.data = p.data.to(dtypes[name])
    return images


def decode_safely(
    decode: Callable[[torch.Tensor], torch.Tensor], vae: nn.Module, latents: torch.Tensor, upcast: bool
) -> torch.Tensor:
    """decode(latents) without fp16 overflow: in float32 at once where `upcast` (a VAE known to overflow), else in
    fp16 and again in float32 if the result holds NaN or infinity."""
    if not decodes_in_fp16(vae, latents):
        return decode(latents)
    if upcast:
        return decode_in_fp32(decode, vae, latents)
    images = decode(latents)
    if bool(torch.isfinite(images).all()):
        return images
    log.warning("the VAE overflowed fp16 (NaN in the image); decoding again in float32")
    return decode_in_fp32(decode, vae, latents)
