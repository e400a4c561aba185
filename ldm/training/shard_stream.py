"""Training data from WebDataset shards: each rank and each loader worker reads its own part of every epoch.

The layout of an epoch (`ShardPlan`): the shards, in an order shuffled by (seed, epoch), are laid end to end
into one sequence of N samples. With R ranks and batch size B, every rank takes S = N // (R B) steps
("drop": the last N - R S B samples of the epoch's order are not seen) or S = ceil(N / (R B)) ("wrap": the
last ranks run past the end into the first samples again). Every rank thus takes the same number of
steps, which DDP needs: a rank that ran out early would leave the others waiting in all-reduce for ever.
Rank r reads the contiguous positions [r S B, (r + 1) S B), which touch only its own shards (a shard
may be split between two neighbouring ranks).

Within a rank, loader worker v of W reads a contiguous run of the rank's S batches (its own shards again),
and PyTorch's loader takes one batch from each worker in turn, so loader batch j is worker j % W's
(j // W)-th. That mapping of the rank's batch counter to (epoch, shard, offset) is all the state: a
resumed run opens the shard holding its position and skips to the sample, instead of starting again.
The order depends on W, so a run resumes with the data.num_workers it was started with (checked in
ldm.training.run). Samples inside a shard keep their stored order (img2dataset writes them in the order
of its input list); the shard order is shuffled every epoch.

An unreadable sample (no image, no caption, an image that does not decode, a shard that ends before its
counted samples) is replaced by the next readable one of the same reader, counted and named once, as for
folders (`UnreadableImages`): positions stay where they were, so resume and the step count are unaffected.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ldm.data.folder import UnreadableImageError
from ldm.data.shards import decode_sample, describe, raw_samples
from ldm.training.captions import CaptionSampling
from ldm.training.unreadable import DataConfigError, UnreadableImages

log = logging.getLogger(__name__)

REMAINDERS = ("drop", "wrap")


@dataclass(frozen=True)
class ShardPlan:
    """Where each rank's batches of each epoch lie in the shards (see the module docstring)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    world: int
    batch_size: int
    seed: int = 0
    remainder: str = "drop"

    def __post_init__(self) -> None:
        if self.remainder not in REMAINDERS:
            raise DataConfigError(f"data.remainder must be one of {', '.join(REMAINDERS)}, got {self.remainder!r}")
        if self.total == 0:
            raise DataConfigError(f"the {len(self.urls)} shard(s) hold no samples")
        if self.steps == 0:
            raise DataConfigError(
                f"{self.total} samples make no batch of {self.batch_size} on each of {self.world} "
                "rank(s): lower data.batch_size or set data.remainder=wrap"
            )

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def steps(self) -> int:
        """Batches per epoch on every rank."""
        per_step = self.world * self.batch_size
        return self.total // per_step if self.remainder == "drop" else -(-self.total // per_step)

    @property
    def per_rank(self) -> int:
        return self.steps * self.batch_size

    @property
    def leftover(self) -> int:
        """Samples per epoch dropped ("drop") or seen twice ("wrap")."""
        return abs(self.total - self.world * self.per_rank)

    def describe(self) -> str:
        what = "dropped (the end of each epoch's shard order)" if self.remainder == "drop" else "seen twice (wrapped)"
        return (
            f"{self.total} samples in {len(self.urls)} shard(s): {self.steps} steps per epoch on each of "
            f"{self.world} rank(s) at batch {self.batch_size}; {self.leftover} samples per epoch {what}"
        )

    def order(self, epoch: int) -> list[int]:
        """The shards' order in an epoch (indices into urls)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.urls), generator=g).tolist()

    def runs(self, epoch: int, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard index, first sample, count) covering positions [start, stop) of the epoch's sequence (mod N)."""
        order = self.order(epoch)
        position = start
        while position < stop:
            k = position % self.total
            for shard in order:
                if k < self.counts[shard]:
                    break
                k -= self.counts[shard]
            count = min(self.counts[shard] - k, stop - position)
            yield shard, k, count
            position += count


def worker_chunks(steps: int, workers: int) -> list[tuple[int, int]]:
    """(first batch, batches) of each worker's contiguous run of a rank's epoch."""
    sizes = [steps // workers + (v < steps % workers) for v in range(workers)]
    starts = [sum(sizes[:v]) for v in range(workers)]
    return list(zip(starts, sizes))


class ShardStream(IterableDataset):
    """One rank's endless stream of decoded shard samples, from loader batch `start_batch` on."""

    def __init__(
        self,
        plan: ShardPlan,
        rank: int = 0,
        start_batch: int = 0,
        size: int = 256,
        center_crop: bool = True,
        flip: bool = False,
        captions: CaptionSampling | None = None,
        caption_column: str | None = None,
        unreadable: UnreadableImages | None = None,
        control_key: str | None = None,
    ):
        super().__init__()
        self.control_key = control_key  # a ControlNet run's control image in each sample (ldm.data.shards)
        self.plan, self.rank, self.start_batch = plan, rank, start_batch
        self.size, self.center_crop, self.flip, self.caption_column = size, center_crop, flip, caption_column
        self.captions = captions if captions is not None and captions.active else None
        self.unreadable = unreadable if unreadable is not None else UnreadableImages(0)

    # ---- where a worker reads ------------------------------------------------------------------------
    def batch_positions(self, workers: int, worker: int) -> Iterator[tuple[int, int, int]]:
        """(loader batch j, epoch, first position of the epoch's sequence) of the batches this worker yields."""
        steps = self.plan.steps
        if workers > steps:
            raise DataConfigError(f"data.num_workers={workers} is more than the {steps} steps of an epoch")
        j = self.start_batch + worker
        v = j % workers  # the slot this worker plays: which run of the epoch's batches it reads
        first, size = worker_chunks(steps, workers)[v]
        epoch, i = divmod(j // workers, size)
        while True:
            yield j, epoch, self.rank * self.plan.per_rank + (first + i) * self.plan.batch_size
            j += workers
            i += 1
            if i == size:
                epoch, i = epoch + 1, 0

    def _raw(self, workers: int, worker: int) -> Iterator[dict]:
        """Raw samples in this worker's order: its contiguous run of each epoch, from the resume position on."""
        j = self.start_batch + worker
        first, size = worker_chunks(self.plan.steps, workers)[j % workers]
        epoch, i = divmod(j // workers, size)
        base, b = self.rank * self.plan.per_rank, self.plan.batch_size
        while True:
            for shard, offset, count in self.plan.runs(epoch, base + (first + i) * b, base + (first + size) * b):
                yield from self._read(shard, offset, count)
            epoch, i = epoch + 1, 0

    def _read(self, shard: int, first: int, count: int) -> Iterator[dict]:
        """`count` samples of a shard from sample `first`; a stand-in for each one the shard lacks."""
        url, got = self.plan.urls[shard], 0
        try:
            for k, sample in enumerate(raw_samples(url)):
                if k < first:
                    continue  # passed over without decoding
                yield sample
                got += 1
                if got == count:
                    return
        except Exception as exc:  # a truncated or unreachable shard: what it lacks is counted below
            log.warning(
                "shard %s stopped after %d samples: %s", url, first + got, str(exc).splitlines()[0] if str(exc) else exc
            )
        for k in range(first + got, first + count):
            yield {"__url__": url, "__key__": f"#{k}", "__missing__": self.plan.counts[shard]}

    # ---- decoding, with unreadable samples replaced --------------------------------------------------
    def _decode(self, sample: dict) -> dict | UnreadableImageError:
        if "__missing__" in sample:
            return UnreadableImageError(
                f"{describe(sample)}: the shard ends before its {sample['__missing__']} counted samples"
            )
        try:
            return decode_sample(sample, self.size, self.center_crop, self.caption_column, control_key=self.control_key)
        except UnreadableImageError as exc:
            return exc

    def _readable(self, raws: Iterator[dict]) -> Iterator[dict]:
        """Decoded items, one per raw sample; an unreadable one replaced by the next readable one."""
        ahead: deque[tuple[str, dict | UnreadableImageError]] = deque()

        def peek(i: int) -> dict | UnreadableImageError:
            while len(ahead) <= i:
                sample = next(raws)
                ahead.append((f"{sample['__url__']}#{sample['__key__']}", self._decode(sample)))
            key, result = ahead[i]
            if isinstance(result, UnreadableImageError):
                self.unreadable.skip(key, result)  # counted once per sample; raises above data.max_unreadable
            return result

        while True:
            i = 0
            while isinstance(peek(i), UnreadableImageError):
                i += 1
            yield ahead[i][1]  # type: ignore[misc]
            ahead.popleft()

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        items = self._readable(self._raw(workers, worker))
        for j, _, _ in self.batch_positions(workers, worker):
            for k in range(self.plan.batch_size):
                yield self._finish(dict(next(items)), j * self.plan.batch_size + k)

    def _finish(self, item: dict, position: int) -> dict:
        """Flip and caption sampling, decided by the stream position (the same on resume)."""
        extras = item.pop("extras", {})
        if self.flip:
            coin = torch.rand(
                (), generator=torch.Generator().manual_seed(self.plan.seed * 7919 + position * 31 + self.rank)
            )
            if coin < 0.5:
                item["image"] = item["image"].flip(-1)
                if "control" in item:
                    item["control"] = item["control"].flip(-1)
                item["key"] = f"{item['key']}#flip"
        if self.captions is not None:
            rng = random.Random(f"{self.plan.seed}:{self.rank}:{position}")
            item["caption"] = self.captions(item["caption"], extras, rng)
        return item


def shard_plan(
    urls: Sequence[str], counts: Sequence[int], world: int, batch_size: int, seed: int, remainder: str
) -> ShardPlan:
    return ShardPlan(tuple(urls), tuple(int(c) for c in counts), int(world), int(batch_size), int(seed), remainder)
