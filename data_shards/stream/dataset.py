"""`ShardStream`: one split as this rank's strip of the epoch's order, from where the rank has got to.

Reading cost: every sample is read by seeking to its byte range (from the index's offset table), in a local
tar or in the node-local copy of a remote one (`data_shards.stream.cache`). Strips are contiguous in the
order (`data_shards.stream.deal`), so a shard block is needed by one rank, or two where strips meet, and a
remote shard is transferred about once per epoch for the whole job.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_shards.foreign import sample_reader
from data_shards.sample import Sample
from data_shards.stream.cache import ShardCache
from data_shards.stream.config import StreamConfig
from data_shards.stream.deal import Deal, Schedule
from data_shards.stream.order import LazyOrder, epoch_order, subset_size
from data_shards.stream.reader import CHUNK_ITEMS, ShardReader, Skipped, runs_by_block
from data_shards.stream.shards import resolve_shards, usable_shards


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if initialised else 0 if rank is None else rank
        world_size = torch.distributed.get_world_size() if initialised else 1 if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


class DealtStream(IterableDataset):
    """What a split and a mix share: the epoch, the deal of what is left of it, and this rank's progress."""

    config: StreamConfig
    rank: int
    world_size: int
    epoch: int
    deal: Deal
    batches: int  # micro-batches this rank has taken of the deal

    @property
    def epoch_samples(self) -> int:
        raise NotImplementedError

    def order(self) -> Any:
        raise NotImplementedError

    def open_readers(self) -> list[ShardReader]:
        raise NotImplementedError

    def read_positions(self, order: Any, readers: list[ShardReader], positions: np.ndarray) -> Iterator[Any]:
        raise NotImplementedError

    @property
    def reader_count(self) -> int:
        """Strips the epoch is dealt in: per rank, micro-batch of an optimizer step and strip of a micro-batch."""
        return self.world_size * self.config.accumulation * self.config.width

    def rewind(self) -> None:
        """Back to the start of the current epoch."""
        self.deal = Deal.whole(self.epoch_samples, self.reader_count, self.config.remainder)
        self.batches = 0

    def start_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self.rewind()

    def schedule(self) -> Schedule:
        c = self.config
        return Schedule(self.deal, self.rank, c.accumulation, c.batch_size, c.width)

    def __len__(self) -> int:
        """Samples this rank has still to read in the epoch."""
        return self.schedule().items_left(self.batches)

    @property
    def read_so_far(self) -> int:
        """Samples of the epoch some rank has read (padding repeats not counted)."""
        left = self.deal.rest(self.schedule().consumed(self.batches))
        return self.epoch_samples - sum(end - start for start, end in left)

    def progress(self) -> dict[str, Any]:
        rounds, extra = divmod(self.batches, self.config.accumulation)
        return {
            "epoch": self.epoch,
            "segment": [list(interval) for interval in self.deal.segment],
            "readers": self.deal.world_size,
            "remainder": self.deal.remainder,
            "batch_size": self.config.batch_size,
            "accumulation": self.config.accumulation,
            "width": self.config.width,
            "rounds": rounds,
            "extra": extra,
            "read": self.read_so_far,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue a saved progress: exactly, with as many readers giving as many samples a batch (whatever the
        split into ranks × accumulation × width); otherwise by dealing its unread rest."""
        self.epoch = state["epoch"]
        if "segment" not in state:  # saved by the interleaved deal: positions before `position` were read
            saved = Deal(((state["position"], self.epoch_samples),), 1, "drop")
            self.deal, self.batches = Deal(saved.rest([0]), self.reader_count, self.config.remainder), 0
            return
        segment = tuple((int(start), int(end)) for start, end in state["segment"])
        saved = Deal(segment, state["readers"], state["remainder"])
        rounds, extra = state["rounds"], state["extra"]
        layout = Schedule(saved, 0, state["accumulation"], state["batch_size"], state.get("width", 1))
        now = self.schedule()
        same_readers = (saved.world_size, saved.remainder, layout.per_reader) == (
            self.reader_count,
            self.config.remainder,
            now.per_reader,
        )
        if same_readers and (extra == 0 or (layout.accumulation, layout.width) == (now.accumulation, now.width)):
            self.deal, self.batches = saved, rounds * self.config.accumulation + extra
            return
        done = layout.consumed(rounds * layout.accumulation + extra)
        self.deal, self.batches = Deal(saved.rest(done), self.reader_count, self.config.remainder), 0

    def iter_batches(self, worker: int, workers: int) -> Iterator[list]:
        """This rank's micro-batches from its progress on, those of one DataLoader worker (round-robin), read a
        few thousand samples at a time."""
        schedule = self.schedule()
        mine = range(self.batches + worker, schedule.total_batches, workers)
        per_read = max(1, CHUNK_ITEMS // self.config.batch_size)
        order, readers = self.order(), self.open_readers()
        try:
            for first in range(0, len(mine), per_read):
                batches = [schedule.batch_positions(b) for b in mine[first : first + per_read]]
                samples = self.read_positions(order, readers, np.concatenate(batches))
                for positions in batches:
                    yield [next(samples) for _ in positions]
        finally:
            for reader in readers:
                reader.close()

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        for batch in self.iter_batches(*((info.id, info.num_workers) if info else (0, 1))):
            yield from batch


class ShardStream(DealtStream):
    """One split, as this rank's strip of the epoch's global order, from the current progress."""

    def __init__(
        self,
        source,
        *,
        index=None,
        config: StreamConfig | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        super().__init__()
        self.config = config or StreamConfig()
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.split, all_shards = resolve_shards(source, index)
        self.index = self.split.doc
        self.shards = usable_shards(all_shards, self.config.on_corrupt)
        self.to_sample = sample_reader(self.index)
        if not self.shards or sum(s.samples for s in self.shards) == 0:
            raise ValueError(f"{source}: no readable samples in {len(all_shards)} shards")
        self.epoch = 0
        self.rewind()

    @property
    def num_samples(self) -> int:
        """Samples in the split's readable shards."""
        return sum(shard.samples for shard in self.shards)

    @property
    def epoch_samples(self) -> int:
        """Samples in one epoch's order: all of them, or the `sample_fraction` subset."""
        return subset_size(self.num_samples, self.config.sample_fraction)

    def order(self) -> LazyOrder:
        c = self.config
        counts = [s.samples for s in self.shards]
        return epoch_order(counts, c.seed, self.epoch, c.shuffle, c.block_shards, c.sample_fraction)

    def plan(self) -> list[tuple[str, int]]:
        """(shard name, index in shard) of every sample this rank reads, in order, from its progress."""
        schedule = self.schedule()
        positions = [schedule.batch_positions(b) for b in range(self.batches, schedule.total_batches)]
        shard, sample, _ = self.order().items(np.concatenate(positions) if positions else np.empty(0, np.int64))
        return [(self.shards[s].name, i) for s, i in zip(shard.tolist(), sample.tolist())]

    def open_readers(self) -> list[ShardReader]:
        """Opened in the worker: the offset table is memory-mapped there, not pickled to it."""
        c = self.config
        cache = ShardCache(c.cache_dir, c.cache_bytes)
        offsets = self.split.offsets(cache)
        return [ShardReader(self.shards, offsets, cache, c.on_corrupt, c.decode, self.to_sample)]

    def read_positions(self, order, readers, positions) -> Iterator[Sample | Skipped]:
        shard, sample, block = order.items(positions)
        for run in runs_by_block(block):
            yield from readers[0].read(shard[run], sample[run])
