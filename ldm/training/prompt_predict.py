"""A prompt file over many devices and machines, through Lightning's Trainer.predict: a thin wrapper around a plain
function that makes one job's images (ldm.tasks.prompt_file.PromptJob -> [(name, image, settings)]).

Rank 0 writes the manifest and finds the jobs still missing; every rank then takes every world_size-th of them
(no DistributedSampler: its padding would make an image twice) and writes its images as they come
(ImageFileWriter, atomically, never replacing a file). Lightning launches the processes (ddp: it starts the
command again per device; torchrun and SLURM start them themselves) and moves the model to each rank's device.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from ldm.core.errors import InvalidOptionError
from ldm.io.images import save_png
from ldm.tasks.prompt_file import PromptJob

Made = list[tuple[str, Image.Image, dict[str, Any]]]


def _as_is(job: PromptJob) -> PromptJob:
    return job


class PromptFileModule(pl.LightningModule):
    """The model (so that Lightning puts it on the rank's device) and the two plain functions: `prepare` (rank 0
    only: write the manifest, return the jobs to do) and `make` (one job's images)."""

    def __init__(self, model: torch.nn.Module, make: Callable[[PromptJob], Made], prepare: Callable[[int], list]):
        super().__init__()
        self.model = model
        self._make, self._prepare = make, prepare
        self.todo: list[PromptJob] = []

    def setup(self, stage: str) -> None:
        todo = self._prepare(self.trainer.world_size) if self.trainer.is_global_zero else None
        self.todo = self.trainer.strategy.broadcast(todo, src=0)  # one list for all ranks: the disk changes soon

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        share = self.todo[self.global_rank :: self.trainer.world_size]
        return torch.utils.data.DataLoader(share, batch_size=None, collate_fn=_as_is)

    def predict_step(self, job: PromptJob, batch_idx: int) -> Made:
        return self._make(PromptJob(*job))


class ImageFileWriter(BasePredictionWriter):
    """Writes each job's images into `samples` when the job is done; an image already there (a job cut short by a
    kill, made again whole on --resume) is kept as it is."""

    def __init__(self, samples: Path):
        super().__init__(write_interval="batch")
        self.samples = Path(samples)
        self.written = 0

    def write_on_batch_end(self, trainer, pl_module, prediction: Made, batch_indices, batch, batch_idx, dataloader_idx):  # noqa: E501
        for name, image, settings in prediction:
            path = self.samples / name
            if not path.exists():
                save_png(image, path, settings, exclusive=True)  # exclusive: never replaces an image
                self.written += 1


class FileProgress(pl.Callback):
    """One bar on rank 0 over the whole file's images, counting those in `samples` (every rank's, and those an
    earlier attempt made) after each of its own jobs and while it waits for the other ranks."""

    def __init__(self, samples: Path, names: list[str], enabled: bool = True):
        self.samples, self.names, self.enabled = Path(samples), set(names), enabled
        self.bar = None

    def count(self) -> int:
        return len(self.names & {p.name for p in self.samples.glob("p*-s*.png")})

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.enabled = self.enabled and trainer.is_global_zero

    def update(self) -> None:
        if not self.enabled:
            return
        done = self.count()
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(self.names), initial=done, unit="image", desc="prompt file")
        elif done != self.bar.n:
            self.bar.n = done
            self.bar.refresh()

    def on_predict_start(self, trainer, pl_module) -> None:
        self.update()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.update()

    def close(self) -> None:
        if self.bar is not None:  # none in a process that made no image (ddp_fork's parent)
            self.update()
            self.bar.close()
            self.bar = None


def prompt_file_trainer(
    accelerator: str, devices: Any, num_nodes: int, strategy: str, callbacks: list[pl.Callback]
) -> pl.Trainer:
    """A Trainer for prediction only: no logger, checkpoints or Lightning's own bar (FileProgress counts the file);
    Lightning's refusal of its own arguments becomes one line. Lightning's notices (which accelerators exist, tips)
    are kept to warnings: the command says what it does in its own lines."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=callbacks,
        )
    except (TypeError, ValueError, MisconfigurationException, RuntimeError) as exc:
        said = str(exc).splitlines()[0]
        raise InvalidOptionError(f"--accelerator/--devices/--num-nodes/--strategy: {said}") from None


def predict_file(trainer: pl.Trainer, module: PromptFileModule, progress: FileProgress | None = None) -> None:
    """Run the jobs on every rank; returns on rank 0 once every rank has finished (showing the file's progress while
    it waits), so that the command ends when the file is done, not when rank 0's share is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
        # The writer takes the job from the batch, not its index from a sampler; and Lightning's own deprecation.
        warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        trainer.predict(module, return_predictions=False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        work = torch.distributed.barrier(async_op=True)
        while not work.is_completed():
            if progress is not None:
                progress.update()
            time.sleep(0.2)
        work.wait()
    if progress is not None:
        progress.close()
