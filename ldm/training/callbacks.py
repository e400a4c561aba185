"""The two callbacks Lightning does not already have: sample grids and the inference export."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from ldm.images import make_grid

log = logging.getLogger(__name__)


class SampleGrid(pl.Callback):
    """Every n optimiser steps (and at the end), rank 0 writes `samples/step-NNNNNN.png` and logs it to TensorBoard.

    The module's `sample_grid_images(**kwargs)` makes the images: EMA samples for fixed prompts
    (diffusion) or originals next to reconstructions (autoencoder).
    """

    def __init__(self, out_dir: str | os.PathLike, every_n_steps: int, **sample_kwargs: Any):
        self.out_dir = Path(out_dir)
        self.every = int(every_n_steps or 0)
        self.kwargs = sample_kwargs
        self._last = -1

    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        step = trainer.global_step
        self._last = step
        if not trainer.is_global_zero:
            return None
        images = pl_module.sample_grid_images(**self.kwargs)  # type: ignore[operator]
        if not images:
            return None
        grid = make_grid(images)
        path = self.out_dir / f"step-{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        log.info("sample grid: %s", path)
        return path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every > 0 and step > 0 and step % self.every == 0 and step != self._last:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every > 0 and trainer.global_step != self._last:
            self.write(trainer, pl_module)


class ExportOnTrainEnd(pl.Callback):
    """Writes the inference export (model.safetensors + model.yaml, or vae.*) into the run dir when training ends."""

    def __init__(self, out_dir: str | os.PathLike, cfg: dict):
        self.out_dir, self.cfg = Path(out_dir), cfg

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            from ldm.training.export import export_module

            weights, config = export_module(pl_module, self.cfg, self.out_dir, step=trainer.global_step)
            log.info("exported %s and %s", weights, config)
