"""Build modules without randomly initialising weights that a checkpoint is about to overwrite.

Building the shipped model spends a few hundred milliseconds filling its parameters with random values
(torch.nn.init's kaiming, uniform, normal, ... run by each layer's constructor) that a strict load then
replaces, every one of them. Inside `skipped_init()` those initialisers leave the tensor as allocated
(torch.empty: whatever the memory held), so only use it when every parameter is loaded afterwards, with a
strict load (ldm.io.checkpoint.load_into refuses a state dict that misses one).

Everything else a constructor computes is untouched: buffers derived from the config (noise schedules,
attention masks, position ids) are made as usual, which a meta-device build would lose.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

import torch

# The in-place initialisers of torch.nn.init that layers' constructors and reset_parameters() call.
_INITIALISERS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)
_lock = threading.Lock()
_active = False


def active() -> bool:
    """True inside skipped_init(): what is built now gets its weights from a checkpoint, not from the RNG."""
    return _active


def _leave(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """While inside, torch.nn.init's initialisers do nothing (process-wide; one build at a time)."""
    global _active
    with _lock:
        saved = [(module, name, fn) for module, name, fn in _bindings()]
        for module, name, _ in saved:
            setattr(module, name, _leave)
        _active = True
        try:
            yield
        finally:
            _active = False
            for module, name, fn in saved:
                setattr(module, name, fn)


def _bindings() -> Iterator[tuple[object, str, object]]:
    """(module, name, initialiser) for torch.nn.init's initialisers and the names torch.nn's layer modules bound
    them to at import (nn.MultiheadAttention calls the `xavier_uniform_` of torch/nn/modules/activation.py)."""
    init = torch.nn.init
    initialisers = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    yield from ((init, name, fn) for name, fn in initialisers.items())
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("torch.nn.modules.") and module is not None:
            for name, fn in initialisers.items():
                if getattr(module, name, None) is fn:
                    yield module, name, fn
