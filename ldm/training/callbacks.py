"""The callbacks Lightning does not already have: sample grids, the inference export, and resumable stops."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger

from ldm.io.images import make_grid, save_png

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
        path = save_png(grid, self.out_dir / f"step-{step:06d}.png")  # atomic; a full disk: one line (OutputError)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        log.info("sample grid: %s", path)
        return path

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
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


class ResumableStop(pl.Callback):
    """Makes every way a run ends leave `last.ckpt` at the step it reached, so `--resume` loses no steps.

    - SIGTERM (a preempted job): Lightning finishes the current step and raises SIGTERMException; the
      ModelCheckpoint (save_on_exception=True) then writes last.ckpt at that step.
    - Ctrl-C: the first one is turned into that same SIGTERM, instead of a KeyboardInterrupt that could land
      mid-step; a second Ctrl-C stops at once.
    - Either way `ldm train` then exits with 130 (Ctrl-C) or 143 (SIGTERM), not 0, so schedulers and scripts
      see that the run did not finish (ldm.training.run.TrainingStopped).
    - The end of training: ModelCheckpoint writes last.ckpt only at its periodic steps, so the final step
      (e.g. max_steps=1003 with checkpoints every 500) is written here.
    """

    def __init__(self, path: str | os.PathLike, checkpoint_every_n_steps: int = 0):
        self.path = Path(path)
        self.every = int(checkpoint_every_n_steps or 0)
        self._previous = None
        self.signum: int = signal.SIGTERM  # what stopped the run, if anything: Ctrl-C is turned into a SIGTERM

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread

        def finish_this_step(signum, frame):
            self.signum = signal.SIGINT
            log.warning("interrupted: finishing this step, then saving %s (Ctrl-C again to stop at once)", self.path)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGTERM)

        self._previous = signal.signal(signal.SIGINT, finish_this_step)

    def _restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()
        if not self.every or trainer.global_step % self.every:  # not a step ModelCheckpoint has just saved
            trainer.save_checkpoint(self.path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()
        log.warning("stopped at step %d (%s); continue with --resume", trainer.global_step, type(exception).__name__)
