"""The global sample order of an epoch, computed a block at a time.

The order is a function of (shard counts, seed, epoch) alone: shards are shuffled, grouped into
blocks of `block_shards`, and samples are shuffled within each block (so a reader touches a few
shards at a time). A position is an index into that order; `BlockOrder.items` maps positions to
(shard, sample, block) and draws a block's permutation only when one of its positions is asked
for, so a reader holds its blocks, not the epoch: memory grows with the shards, not the samples.

A sample fraction f < 1 keeps round(f × N) samples (Python's round: the nearest integer, a tie to the even
one; at least one), drawn once from the seed alone out of the split's global sample list (shard by shard,
in the index's order): the same subset in every epoch and on every rank. Each epoch's order is the full
order with the other samples taken out, so positions count within the subset and f = 1 is the full order.
The subset is drawn over all N samples, so that order is held whole (`EpochOrder`, 24 bytes a sample).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

SUBSET_STREAM = 0x5AB5E7  # the subset's random stream, [seed, SUBSET_STREAM]: no epoch counts this far
KEPT_BLOCKS = 4  # block permutations a reader keeps at hand


@dataclass(frozen=True)
class EpochOrder:
    """An order held whole: the sample-fraction subset, and weighted mixes."""

    shard: np.ndarray  # shard number of each global position (length N)
    sample: np.ndarray  # index within that shard
    block: np.ndarray  # shuffle block of each global position

    def __len__(self) -> int:
        return len(self.shard)

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.shard[positions], self.sample[positions], self.block[positions]


class BlockOrder:
    """The full order of an epoch, drawn block by block on demand (same order as drawing it whole)."""

    def __init__(self, counts: list[int], seed: int, epoch: int, shuffle: bool, block_shards: int):
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        counts = np.asarray(counts, dtype=np.int64)
        shard_order = np.arange(len(counts))
        if shuffle:
            shard_order = np.random.default_rng([seed, epoch]).permutation(len(counts))
        self.members = [shard_order[start : start + block_shards] for start in range(0, len(counts), block_shards)]
        sizes = np.array([counts[m].sum() for m in self.members], dtype=np.int64)
        self.block_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.counts = counts
        self.kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.block_start[-1])

    def block_items(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, sample) of each position of one block, in order."""
        if block in self.kept:
            self.kept.move_to_end(block)
            return self.kept[block]
        members = self.members[block]
        shard_ids = np.repeat(members, self.counts[members])
        firsts = np.repeat(np.cumsum(self.counts[members]) - self.counts[members], self.counts[members])
        sample_ids = np.arange(len(shard_ids)) - firsts
        if self.shuffle:
            permutation = np.random.default_rng([self.seed, self.epoch, block]).permutation(len(shard_ids))
            shard_ids, sample_ids = shard_ids[permutation], sample_ids[permutation]
        self.kept[block] = (shard_ids, sample_ids)
        if len(self.kept) > KEPT_BLOCKS:
            self.kept.popitem(last=False)
        return shard_ids, sample_ids

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        positions = np.asarray(positions, dtype=np.int64)
        blocks = np.searchsorted(self.block_start, positions, side="right") - 1
        shard, sample = np.empty_like(positions), np.empty_like(positions)
        for block in np.unique(blocks).tolist():
            here = blocks == block
            shard_ids, sample_ids = self.block_items(block)
            local = positions[here] - self.block_start[block]
            shard[here], sample[here] = shard_ids[local], sample_ids[local]
        return shard, sample, blocks


def subset_size(total: int, fraction: float) -> int:
    """How many of `total` samples a sample fraction keeps: round(fraction × total), at least one."""
    return total if fraction >= 1 else min(total, max(1, round(fraction * total)))


def sample_subset(counts: list[int], fraction: float, seed: int) -> np.ndarray:
    """Which global sample numbers (shard by shard, in `counts` order) the fraction keeps, as a mask."""
    total = sum(counts)
    chosen = np.random.default_rng([seed, SUBSET_STREAM]).choice(total, subset_size(total, fraction), replace=False)
    keep = np.zeros(total, dtype=bool)
    keep[chosen] = True
    return keep


def epoch_order(
    counts: list[int], seed: int, epoch: int, shuffle: bool, block_shards: int, fraction: float = 1.0
) -> BlockOrder | EpochOrder:
    order = BlockOrder(counts, seed, epoch, shuffle, block_shards)
    if fraction >= 1:
        return order
    everything = order.items(np.arange(len(order)))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    kept = sample_subset(counts, fraction, seed)[first[everything[0]] + everything[1]]
    return EpochOrder(*(column[kept] for column in everything))
