"""Exponential moving average of weights: torch's AveragedModel with the reference's decay warm-up."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_updates: int) -> float:
    """The reference's warm-up: early averages forget quickly, so EMA weights are useful from the start."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def make_ema(module: nn.Module, decay: float) -> AveragedModel:
    """A frozen EMA copy of module; call `.update_parameters(module)` after each optimiser step."""

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        d = ema_decay_at(decay, int(num_averaged))
        torch._foreach_lerp_(ema_params, params, 1.0 - d)  # what get_ema_multi_avg_fn does, with decay d

    ema = AveragedModel(module, multi_avg_fn=update, use_buffers=True)
    ema.requires_grad_(False)  # never trained: DDP and the optimiser must ignore it
    ema.eval()
    return ema
