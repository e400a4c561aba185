"""Memory estimates made before any work, so a request too big for the machine fails at once with one line.

Without them `--height 8192`, `--n-samples 100000` or a huge input image take all the memory (or run
for hours) and then end in a traceback. The estimate is coarse on purpose: activations of the U-Net
(linear in latent pixels, plus the attention matrix of the finest level with attention on the CPU, where
torch materialises it: the latent's own tokens for SD, a quarter of them for SDXL, which has no attention at its
top level) and of the VAE decoder at full resolution, for a chunk of images. It was fitted to the shipped
emoji model on the CPU (peak RSS at 256, 512 and 768 px within about 20%).

The limit defaults to 80% of the device's memory; `--max-memory GIB` sets another (inf: no limit).
"""

from __future__ import annotations

import math
import os

import torch

from ldm.core.errors import ResourceLimitError

GIB = 1024**3
# Images generated at once at most: bigger chunks gain little speed, and every image of a chunk waits for
# the last before it is written.
MAX_CHUNK = 16
DEFAULT_FRACTION = 0.8

# The longest prompt (and negative prompt) taken, in characters: about 1,250 CLIP tokens, 17 of --long-prompts'
# 75-token chunks, more than any prompt A1111 users share, and every parser of a prompt stays fast up to it.
# A longer one is refused at once with one line (README, "Long prompts"; --help of the generating commands).
MAX_PROMPT_CHARS = 5000
# A prompt file (--from-file) is read up to this many bytes and this many prompts (lines that are not blank).
MAX_PROMPT_FILE_BYTES = 16 * 1024 * 1024
MAX_PROMPTS_PER_FILE = 10000


class PromptTooLongError(ResourceLimitError):
    """A prompt longer than MAX_PROMPT_CHARS."""


def check_prompt_length(text: str, name: str = "prompt") -> None:
    """Refuse a prompt over MAX_PROMPT_CHARS characters in one line that names it (`name`: "prompt", "negative
    prompt", "prompt 3 of prompts.txt", ...)."""
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptTooLongError(
            f"{name} is {len(text):,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
            "characters (ldm.core.limits.MAX_PROMPT_CHARS)"
        )


def device_memory(device: torch.device) -> int:
    """Total memory of the device in bytes (physical RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(device: torch.device, max_memory_gib: float | None = None) -> float:
    """The limit in bytes: `max_memory_gib` if given, else 80% of the device's memory."""
    if max_memory_gib is None:
        return DEFAULT_FRACTION * device_memory(device)
    if not max_memory_gib > 0:  # also NaN
        raise ResourceLimitError(f"--max-memory must be a positive number of GiB (or inf), got {max_memory_gib}")
    return max_memory_gib * GIB


def _attention_heads(model: torch.nn.Module) -> int:
    return max((int(m.heads) for m in model.unet.modules() if hasattr(m, "heads")), default=0)


def _finest_attention_downscale(model: torch.nn.Module) -> int:
    """The downscale (1, 2, 4, ...) of the U-Net's finest level with attention: 1 for SD, 2 for SDXL."""
    ds = 1
    for block in getattr(model.unet, "input_blocks", []):
        if any(hasattr(m, "heads") for m in block.modules()):
            return ds
        ds *= 2 if any(type(m).__name__ == "Downsample" for m in block.children()) else 1
    return ds


def sampling_bytes(model: torch.nn.Module, height: int, width: int, batch: int) -> float:
    """Estimated peak bytes to sample and decode `batch` images of height x width px (fp32)."""
    f = model.downscale
    tokens = (height // f) * (width // f)
    mc = int(getattr(model.unet, "model_channels", 320))
    guided = 2 * batch  # classifier-free guidance runs the conditional and unconditional halves together
    unet = 4 * guided * tokens * mc * 40
    if model.device.type == "cpu":  # fused attention kernels elsewhere keep it linear
        unet += 4 * batch * _attention_heads(model) * (tokens // _finest_attention_downscale(model) ** 2) ** 2
    decoder_channels = int(model.vae.decoder.conv_out.in_channels)
    decoder = 4 * batch * height * width * decoder_channels * 6
    return max(unet, decoder)


def _gib(n: float) -> str:
    return "inf" if math.isinf(n) else f"{n / GIB:.1f} GiB"


def plan_chunk(model: torch.nn.Module, height: int, width: int, count: int, limit: float) -> int:
    """How many images to make at once (at most MAX_CHUNK, and what fits the limit); refuses when not even one fits."""
    one = sampling_bytes(model, height, width, 1)
    if one > limit:
        raise ResourceLimitError(
            f"{width}x{height} px needs about {_gib(one)} per image, over the limit of {_gib(limit)}; "
            "choose a smaller size or raise --max-memory (GiB)"
        )
    chunk = min(max(1, count), MAX_CHUNK)
    while chunk > 1 and sampling_bytes(model, height, width, chunk) > limit:
        chunk //= 2
    return chunk
