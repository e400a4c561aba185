"""Device names -> torch devices, checked: what --device and the app's device setting mean."""
from __future__ import annotations

import torch

from ldm.errors import InvalidOptionError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
