"""Dealing what is left of an epoch to readers, in contiguous strips.

A deal is (segment, readers): the segment is the part of the epoch's order still to be read, as sorted,
disjoint intervals of positions (the whole order at the start of an epoch). Its T positions, in order, form
a list V, and reader j of R reads the strip V[j·n : (j+1)·n], where n = ceil(T / R) with `remainder="pad"`
(the last strip runs past T and wraps to V's start: at most R − 1 repeats) or floor(T / R) with `"drop"`
(the last T − R·n positions are left out). Every reader reads n samples: equal counts by construction.

There are world size × accumulation × width readers: rank r's micro-batch b is batch b // A of readers
(r·A + b % A)·c … + c − 1, c = `width` (`Schedule`). So an optimizer step takes batch k of every reader, whatever
the split into ranks, micro-steps and width: 2 ranks, and 1 rank accumulating 2 micro-batches, train on the same
samples step by step; so do micro-batch 4 × accumulation 2 and micro-batch 8 with width 2. A width of the batch
size makes a step's samples a function of the global batch alone, at the cost of a reader (a block of shards in
flight) per sample of the global batch.

Strips are contiguous so that each shard block is read by one reader, or two where strips meet: remote shards
are transferred about once per epoch for the whole job (see `data_shards.stream.cache`).

Progress is how many micro-batches each rank has taken (the same on every rank). A resume with the same
number of readers (and batch size) continues every strip exactly where it was, even on another world size
(2 ranks → 1 rank × 2 micro-batches). Otherwise what no reader has read (the strips' unread tails, padding
left out) becomes the segment of a new deal: nothing repeated, nothing skipped. DataLoader workers take a
rank's micro-batches round-robin, as the DataLoader collects them, so the sequence does not depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REMAINDERS = ("pad", "drop")
Interval = tuple[int, int]


def samples_per_rank(total: int, world_size: int, remainder: str) -> int:
    """How many samples each rank reads out of `total` (equal on every rank)."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    return total // world_size if remainder == "drop" else -(-total // world_size)


def merged(intervals: list[Interval]) -> tuple[Interval, ...]:
    """Sorted, with empty intervals dropped and touching ones joined."""
    out: list[list[int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((start, end) for start, end in out)


@dataclass(frozen=True)
class Deal:
    segment: tuple[Interval, ...]
    world_size: int
    remainder: str

    @classmethod
    def whole(cls, total: int, world_size: int, remainder: str) -> Deal:
        return cls(((0, total),) if total else (), world_size, remainder)

    @property
    def total(self) -> int:
        return sum(end - start for start, end in self.segment)

    @property
    def per_rank(self) -> int:
        return samples_per_rank(self.total, self.world_size, self.remainder)

    def positions(self, reader: int, items: np.ndarray) -> np.ndarray:
        """Order positions of strip items `items` (0 … per_rank − 1) of `reader`."""
        if not self.total:
            return np.empty(0, dtype=np.int64)
        starts = np.array([start for start, _ in self.segment], dtype=np.int64)
        lengths = np.array([end - start for start, end in self.segment], dtype=np.int64)
        before = np.cumsum(lengths) - lengths
        virtual = (reader * self.per_rank + np.asarray(items, dtype=np.int64)) % self.total
        interval = np.searchsorted(before, virtual, side="right") - 1
        return starts[interval] + virtual - before[interval]

    def rest(self, consumed: list[int]) -> tuple[Interval, ...]:
        """The positions no reader has read once reader j has read `consumed[j]` items of its strip."""
        unread = []
        for reader, done in enumerate(consumed):
            first = reader * self.per_rank + done
            last = min((reader + 1) * self.per_rank, self.total)
            unread += self.virtual_to_order(first, last)
        return merged(unread)

    def virtual_to_order(self, first: int, last: int) -> list[Interval]:
        """The order intervals covering V[first:last]."""
        out, before = [], 0
        for start, end in self.segment:
            low, high = max(first, before), min(last, before + end - start)
            if low < high:
                out.append((start + low - before, start + high - before))
            before += end - start
        return out


@dataclass(frozen=True)
class Schedule:
    """One rank's micro-batches in a deal to world size × `accumulation` × `width` readers: a micro-batch is one
    batch from each of `width` readers (`batch_size / width` items from each)."""

    deal: Deal
    rank: int
    accumulation: int
    batch_size: int
    width: int = 1

    @property
    def per_reader(self) -> int:
        """Items a reader gives each micro-batch."""
        return self.batch_size // self.width

    @property
    def batches_per_reader(self) -> int:
        return -(-self.deal.per_rank // self.per_reader)

    @property
    def total_batches(self) -> int:
        return self.accumulation * self.batches_per_reader

    def readers_of(self, batch: int) -> range:
        slot = self.rank * self.accumulation + batch % self.accumulation
        return range(slot * self.width, (slot + 1) * self.width)

    def batch_positions(self, batch: int) -> np.ndarray:
        """Order positions of micro-batch `batch`: batch `batch // A` of each of its readers."""
        start = batch // self.accumulation * self.per_reader
        items = np.arange(start, min(start + self.per_reader, self.deal.per_rank))
        return np.concatenate([self.deal.positions(reader, items) for reader in self.readers_of(batch)])

    def consumed(self, batches: int) -> list[int]:
        """Items every reader (of every rank) has read once each rank has taken `batches` micro-batches."""
        rounds, extra = divmod(batches, self.accumulation)
        return [
            min(self.deal.per_rank, self.per_reader * (rounds + (reader // self.width % self.accumulation < extra)))
            for reader in range(self.deal.world_size)
        ]

    def items_left(self, batches: int) -> int:
        per_rank = self.accumulation * self.width
        mine = self.consumed(batches)[self.rank * per_rank : (self.rank + 1) * per_rank]
        return sum(self.deal.per_rank - done for done in mine)
