"""Device names -> torch devices, checked: what --device and the app's device setting mean."""
from __future__ import annotations

import logging

import torch

from ldm.errors import InvalidOptionError

log = logging.getLogger("ldm")


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (the default everywhere, ldm.defaults.DEVICE) is cuda if available, else cpu, said in the log."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device: %s (auto: %s)", device, "CUDA is available" if device.type == "cuda" else "no CUDA")
        return device
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidOptionError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOptionError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidOptionError(f"device {name!r} requested but there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise InvalidOptionError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX). Without them PyTorch emulates bf16
    convolutions, measured ~50x slower than fp32 on an AVX2-only EPYC: bf16 autocast is then a trap."""
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True  # not Linux: say nothing rather than guess
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))
