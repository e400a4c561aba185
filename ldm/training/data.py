"""Training data: a captioned image folder as an endless, resumable stream of batches (WebDataset shards:
ldm.training.shard_stream, chosen by `ImageTextDataModule` when data.shards is set).

Training is counted in steps, not epochs, so the training set is an endless stream: the
item at position p of rank r is item `perm(seed + epoch)[p * world + r - epoch * n]`. The
stream starts at the position the model has reached (its `batches_seen` counter, restored
from the checkpoint before the loader is made), so a resumed run sees exactly the batches
an uninterrupted one would, on any number of data-loader workers.

An image that fails to decode is skipped (see `UnreadableImages`): one corrupt file in a folder of
thousands must not end a run that has trained for hours, nor every `--resume` after it, which would
meet the same file at the same position.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, get_worker_info

from ldm.data.folder import CaptionedImageFolder, folder_extras
from ldm.training.captions import CaptionSampling
from ldm.training.unreadable import DataConfigError, SkipUnreadable, UnreadableImages

log = logging.getLogger(__name__)


class SampleStream(IterableDataset):
    """An endless stream of a map-style dataset's items for one rank, starting at a given batch.

    Worker w of W yields batches w, w + W, ...; PyTorch's loader returns worker batches round-robin,
    so the loader's batch order does not depend on the number of workers.
    `flip` mirrors items with probability 1/2, decided by the position (reproducible on resume).
    `weighted` draws each epoch's n items with replacement in proportion to the folder's per-image
    `weight` (captions.jsonl) instead of a permutation; `captions` samples keyword/style captions.
    `unreadable` skips images that fail to decode (default: none may).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, flip: bool = False, weighted: bool = False,
                 captions: CaptionSampling | None = None, unreadable: UnreadableImages | None = None):
        super().__init__()
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise DataConfigError("the training set is empty")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.start_batch, self.flip = rank, world_size, start_batch, flip
        self.extras = folder_extras(dataset)
        self.weights = torch.tensor([float(e.get("weight", 1.0)) for e in self.extras], dtype=torch.float64) if weighted else None  # noqa: E501
        self.captions = captions if captions is not None and captions.active else None
        self.unreadable = unreadable if unreadable is not None else UnreadableImages(0)
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, position: int) -> int:
        n = len(self.dataset)  # type: ignore[arg-type]
        epoch, k = divmod(position * self.world_size + self.rank, n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(n, generator=g) if self.weights is None else \
                torch.multinomial(self.weights, n, replacement=True, generator=g)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def item(self, position: int) -> dict:
        index, item = self.unreadable.fetch(self.dataset, self._index(position))
        item = dict(item)
        if self.flip:
            coin = torch.rand((), generator=torch.Generator().manual_seed(self.seed * 7919 + position * 31 + self.rank))
            if coin < 0.5:
                item["image"] = item["image"].flip(-1)
                if "key" in item:
                    item["key"] = f"{item['key']}#flip"
        if self.captions is not None:
            rng = random.Random(f"{self.seed}:{self.rank}:{position}")  # str seeds are hashed the same in every process
            item["caption"] = self.captions(item["caption"], self.extras[index], rng)
        return item

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = self.start_batch + worker
        while True:
            first = batch * self.batch_size
            for position in range(first, first + self.batch_size):
                yield self.item(position)
            batch += workers


def split_validation(dataset: Dataset, fraction: float, seed: int = 1234) -> tuple[Dataset, Dataset | None]:
    """A fixed random `fraction` of the items held out for validation (at least one when fraction > 0)."""
    n = len(dataset)  # type: ignore[arg-type]
    if fraction <= 0:
        return dataset, None
    k = max(1, int(round(n * fraction)))
    if k >= n:
        raise DataConfigError(f"data.val_fraction={fraction} leaves no training images out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(perm[k:])), Subset(dataset, sorted(perm[:k]))


class ImageTextDataModule(pl.LightningDataModule):
    """Captioned image folder(s) -> the training stream and an optional validation loader."""

    def __init__(self, root: str | os.PathLike, size: int, batch_size: int, flip: bool = False, center_crop: bool = True,  # noqa: E501
                 num_workers: int = 0, val_fraction: float = 0.0, val_root: str | os.PathLike | None = None,
                 val_batch_size: int | None = None, seed: int = 0, weighted: bool = False,
                 captions: CaptionSampling | None = None, max_unreadable: int = 10,
                 shards: str | list[str] | None = None, remainder: str = "drop", caption_column: str | None = None,
                 label_field: str | None = None, classes: list[str] | None = None, control_key: str | None = None):
        super().__init__()
        if control_key is not None and shards is None:
            raise DataConfigError("controlnet.control_key reads control images from data.shards; a folder's are in "
                                  "controlnet.control_root")
        if root is None and shards is None:
            raise DataConfigError("data.root is not set: give the folder of captioned images (or data.shards)")
        if root is not None and shards is not None:
            raise DataConfigError("set data.root (a folder) or data.shards (WebDataset tars), not both")
        if shards is not None and val_fraction:
            raise DataConfigError("data.val_fraction needs a folder; with data.shards validate on data.val_root")
        if shards is not None and label_field is not None:
            raise DataConfigError("data.label_field needs a folder's captions.jsonl; it does not apply to data.shards")
        if shards is not None and weighted:
            raise DataConfigError("data.weighted needs a folder's captions.jsonl weights; it does not apply to data.shards")  # noqa: E501
        self.root, self.size, self.batch_size, self.flip = root, int(size), int(batch_size), bool(flip)
        self.center_crop, self.num_workers, self.seed = bool(center_crop), int(num_workers), int(seed)
        self.val_fraction, self.val_root = float(val_fraction), val_root
        self.val_batch_size = int(val_batch_size or batch_size)
        self.weighted, self.captions = bool(weighted), captions
        self.unreadable = UnreadableImages(max_unreadable)  # one count for training and validation
        self.shards, self.remainder, self.caption_column = shards, remainder, caption_column
        # A class-conditional model's labels: each item gets "label", its class's index (ldm.training.labels).
        self.label_field, self.classes = label_field, list(classes) if classes is not None else None
        self.control_key = control_key  # a ControlNet run's control image in each shard sample (KEY.control.png)
        self.shard_counts: list[int] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or self.shard_counts is not None:
            return
        if self.shards is not None:
            self._setup_shards()
            return
        # Flipping is done by the stream (reproducibly), so the folder itself never flips.
        roots = self.root if isinstance(self.root, (list, tuple)) else [self.root]
        more = (self.label_field,) if self.label_field is not None else ()
        folders = [CaptionedImageFolder(r, self.size, center_crop=self.center_crop, flip=False,
                                        caption_column=self.caption_column, more_fields=more) for r in roots]
        full = folders[0] if len(folders) == 1 else ConcatDataset(folders)
        self.train_set, self.val_set = split_validation(full, self.val_fraction)
        if self.val_root is not None:
            if self.val_set is not None:
                raise DataConfigError("set data.val_fraction or data.val_root, not both")
            self.val_set = CaptionedImageFolder(self.val_root, self.size, center_crop=True, flip=False,
                                                caption_column=self.caption_column, more_fields=more)
        if self.label_field is not None:
            from ldm.training.labels import LabelledDataset, classes_in_data

            if self.classes is None:
                self.classes = classes_in_data({"label_field": self.label_field, "root": self.root, "size": self.size,
                                                "val_root": self.val_root, "caption_column": self.caption_column})
            self.train_set = LabelledDataset(self.train_set, self.label_field, self.classes)
            if self.val_set is not None:
                self.val_set = LabelledDataset(self.val_set, self.label_field, self.classes)
        log.info("training on %d images%s", len(self.train_set),  # type: ignore[arg-type]
                 f", validating on {len(self.val_set)}" if self.val_set is not None else "")  # type: ignore[arg-type]

    def _setup_shards(self) -> None:
        from ldm.data.shards import count_samples, expand_shards

        started = time.monotonic()
        self.shard_urls = expand_shards(self.shards)  # type: ignore[arg-type]
        self.shard_counts = [count_samples(url) for url in self.shard_urls]
        log.info("training on %d samples in %d shard(s) (counted in %.1f s)", sum(self.shard_counts),
                 len(self.shard_urls), time.monotonic() - started)
        if self.val_root is not None:
            self.val_set = CaptionedImageFolder(self.val_root, self.size, center_crop=True, flip=False,
                                                caption_column=self.caption_column)

    def shard_plan(self, world_size: int = 1):  # -> ShardPlan
        from ldm.training.shard_stream import shard_plan

        self.setup()
        return shard_plan(self.shard_urls, self.shard_counts, world_size, self.batch_size, self.seed,  # type: ignore[arg-type]
                          self.remainder)

    def has_validation(self) -> bool:
        self.setup()
        return self.val_set is not None

    def stream(self, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> IterableDataset:
        """This rank's training stream from loader batch `start_batch` on (a SampleStream, or a ShardStream)."""
        self.setup()
        if self.shards is not None:
            from ldm.training.shard_stream import ShardStream

            return ShardStream(self.shard_plan(world_size), rank, start_batch, self.size, self.center_crop, self.flip,
                               self.captions, self.caption_column, self.unreadable, self.control_key)
        assert self.train_set is not None
        return SampleStream(self.train_set, self.batch_size, self.seed, rank, world_size, start_batch, self.flip,
                            weighted=self.weighted, captions=self.captions, unreadable=self.unreadable)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start, rank, world = 0, 0, 1
        if trainer is not None:
            # Called after a resumed checkpoint is restored: continue where the model stopped.
            start = int(getattr(trainer.lightning_module, "batches_seen", 0))
            rank, world = trainer.global_rank, trainer.world_size
        workers = self.num_workers
        if self.shards is not None:
            plan = self.shard_plan(world)
            if rank == 0:
                log.info("%s", plan.describe())
            if workers > plan.steps:  # each worker reads a run of an epoch's batches: at least one each
                log.warning("data.num_workers=%d is more than the %d steps of an epoch: using %d", workers, plan.steps, plan.steps)  # noqa: E501
                workers = plan.steps
        return DataLoader(self.stream(start, rank, world), batch_size=self.batch_size, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if not self.has_validation():
            return []
        return DataLoader(SkipUnreadable(self.val_set, self.unreadable), batch_size=self.val_batch_size,  # type: ignore[arg-type]
                          shuffle=False, num_workers=self.num_workers)
