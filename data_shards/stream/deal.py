"""Dealing what is left of an epoch to the ranks, in contiguous strips.

A deal is (segment, world size): the segment is the part of the epoch's order still to be read, as sorted,
disjoint intervals of positions (the whole order at the start of an epoch). Its T positions, in order, form
a list V, and rank r of W reads the strip V[r·n : (r+1)·n], where n = ceil(T / W) with `remainder="pad"` (the
last rank's strip runs past T and wraps to V's start: at most W − 1 repeats) or floor(T / W) with `"drop"`
(the last T − W·n positions are left out). Every rank reads n samples: equal counts by construction.

Strips are contiguous so that each shard block is read by one rank, or two where strips meet: remote shards
are transferred about once per epoch for the whole job (see `data_shards.stream.cache`).

Progress is `consumed`, how much of its strip each rank has read (the same on every rank). A resume at the
deal's world size continues every strip exactly where it was. At another world size, what no rank has read
(the strips' unread tails, padding left out) becomes the segment of a new deal: nothing repeated, nothing
skipped. Within a rank, local item j goes to DataLoader worker (j // batch_size) % num_workers; the
DataLoader collects batches from workers round-robin, so a rank's batches come out in strip order whatever
the worker count.
"""

from __future__ import annotations

from collections.abc import Iterator
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

    def positions(self, rank: int, items: np.ndarray) -> np.ndarray:
        """Order positions of strip items `items` (0 … per_rank − 1) of `rank`."""
        if not self.total:
            return np.empty(0, dtype=np.int64)
        starts = np.array([start for start, _ in self.segment], dtype=np.int64)
        lengths = np.array([end - start for start, end in self.segment], dtype=np.int64)
        before = np.cumsum(lengths) - lengths
        virtual = (rank * self.per_rank + np.asarray(items, dtype=np.int64)) % self.total
        interval = np.searchsorted(before, virtual, side="right") - 1
        return starts[interval] + virtual - before[interval]

    def rest(self, consumed: int) -> tuple[Interval, ...]:
        """The positions no rank has read once each has read `consumed` items of its strip."""
        unread = []
        for rank in range(self.world_size):
            first = rank * self.per_rank + consumed
            last = min((rank + 1) * self.per_rank, self.total)
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


def worker_chunks(count: int, batch_size: int, worker: int, num_workers: int, chunk: int) -> Iterator[np.ndarray]:
    """Local item numbers 0 … count − 1 of one DataLoader worker (whole batches, dealt round-robin), in runs
    of about `chunk` items, so a rank's items are never all held at once."""
    batches = range(worker, -(-count // batch_size), num_workers)
    per_run = max(1, chunk // batch_size)
    for first in range(0, len(batches), per_run):
        starts = np.asarray(batches[first : first + per_run], dtype=np.int64) * batch_size
        items = (starts[:, None] + np.arange(batch_size)).ravel()
        yield items[items < count]
