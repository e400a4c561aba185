"""What both training streams (a captioned folder, ldm.training.data; WebDataset shards, ldm.training.shard_stream)
share below them: the data section's error, and the budget of unreadable images a run skips before it stops.
"""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from ldm.core.errors import LdmError
from ldm.data.folder import UnreadableImageError

log = logging.getLogger(__name__)


class DataConfigError(LdmError, ValueError):
    """Data settings that cannot give a training or validation set."""


class TooManyUnreadableImagesError(DataConfigError):
    """More images of the data set failed to decode than data.max_unreadable allows."""


class UnreadableImages:
    """Reads items, skipping images that fail to decode: each is named once in a warning and counted.

    An unreadable item is replaced by the next readable one in the data set's order, so the replacement
    depends only on the data: a resumed run, or one with other worker counts, sees the same batches.
    Above `limit` distinct unreadable files the run stops with one line: that many is more likely the
    wrong folder or a failing disk than a stray bad file. Each data-loader worker holds its own copy
    (and count), so with W workers up to W warnings may name the same file.
    """

    def __init__(self, limit: int = 0):
        self.limit = int(limit)
        # (data set, index) -> the error that named the file; keyed by both, since one count serves the
        # training and the validation set, whose indices overlap. Shard samples are keyed by url#key.
        self.skipped: dict[object, str] = {}

    def fetch(self, dataset: Dataset, index: int) -> tuple[int, dict]:
        """(the index actually read, its item): `index` itself, or the next readable one after it."""
        n = len(dataset)  # type: ignore[arg-type]
        for offset in range(n):
            candidate = (index + offset) % n
            if (id(dataset), candidate) in self.skipped:
                continue
            try:
                return candidate, dataset[candidate]
            except UnreadableImageError as exc:
                self.skip((id(dataset), candidate), exc)
        raise TooManyUnreadableImagesError(
            f"none of the {n} images can be read (the last: {self.skipped[id(dataset), index]})"
        )  # noqa: E501

    def skip(self, key: object, exc: UnreadableImageError) -> None:
        """Count an unreadable item once (a folder's (data set, index), a shard sample's key), warning or stopping."""
        if key in self.skipped:
            return
        self.skipped[key] = str(exc)
        count = len(self.skipped)
        if count > self.limit:
            raise TooManyUnreadableImagesError(
                f"more images could not be read than data.max_unreadable={self.limit} allows ({count}); "
                f"the latest: {exc}"
            )
        log.warning(
            "skipping an unreadable image (%d skipped, at most data.max_unreadable=%d): %s", count, self.limit, exc
        )


class SkipUnreadable(Dataset):
    """A map-style data set whose unreadable items are replaced as `UnreadableImages` does (for validation)."""

    def __init__(self, dataset: Dataset, unreadable: UnreadableImages):
        self.dataset, self.unreadable = dataset, unreadable

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return self.unreadable.fetch(self.dataset, index)[1]
