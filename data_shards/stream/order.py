"""The global sample order of an epoch, computed a block at a time.

The order is a function of (shard counts, seed, epoch) alone: shards are shuffled, grouped into
blocks of `block_shards`, and samples are shuffled within each block (so a reader touches a few
shards at a time). A position is an index into that order; `BlockOrder.items` maps positions to
(shard, sample, block) and draws a block's permutation only when one of its positions is asked
for, so a reader holds its blocks, not the epoch: memory grows with the shards, not the samples.

A sample fraction f < 1 keeps round(f × N) samples (Python's round: the nearest integer, a tie to the even
one; at least one), the same subset in every epoch and on every rank: each shard keeps its share of them
(in proportion to its samples, by largest remainder), and which of its samples is drawn from the seed and the
shard's number alone. Each epoch's order is the full order with the other samples taken out, so positions
count within the subset and f = 1 is the full order; it is drawn a block at a time as well (`SubsetOrder`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

SUBSET_STREAM = 0x5AB5E7  # the subset's random streams, [seed, SUBSET_STREAM, shard]: no epoch counts this far
KEPT_BLOCKS = 4  # block permutations a reader keeps at hand


class LazyOrder:
    """An order made of blocks, each drawn only when one of its positions is asked for; a few are kept."""

    block_start: np.ndarray  # first position of each block, and the length at the end
    kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return int(self.block_start[-1])

    def draw(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def block_items(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The two columns of one block (for a split: shard and sample of each position), in order."""
        if block in self.kept:
            self.kept.move_to_end(block)
            return self.kept[block]
        self.kept[block] = self.draw(block)
        if len(self.kept) > KEPT_BLOCKS:
            self.kept.popitem(last=False)
        return self.kept[block]

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first column, second column, block) of each position: for a split (shard, sample, block)."""
        positions = np.asarray(positions, dtype=np.int64)
        blocks = np.searchsorted(self.block_start, positions, side="right") - 1
        first, second = np.empty_like(positions), np.empty_like(positions)
        for block in np.unique(blocks).tolist():
            here = blocks == block
            column_one, column_two = self.block_items(block)
            local = positions[here] - self.block_start[block]
            first[here], second[here] = column_one[local], column_two[local]
        return first, second, blocks


class BlockOrder(LazyOrder):
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

    def draw(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, sample) of each position of one block, in order."""
        members = self.members[block]
        shard_ids = np.repeat(members, self.counts[members])
        firsts = np.repeat(np.cumsum(self.counts[members]) - self.counts[members], self.counts[members])
        sample_ids = np.arange(len(shard_ids)) - firsts
        if self.shuffle:
            permutation = np.random.default_rng([self.seed, self.epoch, block]).permutation(len(shard_ids))
            shard_ids, sample_ids = shard_ids[permutation], sample_ids[permutation]
        return shard_ids, sample_ids


class SubsetOrder(LazyOrder):
    """The full order with the samples a sample fraction leaves out taken out, block by block."""

    def __init__(self, full: BlockOrder, kept_counts: np.ndarray, seed: int):
        self.full, self.kept_counts, self.seed = full, kept_counts, seed
        sizes = np.array([kept_counts[m].sum() for m in full.members], dtype=np.int64)
        self.block_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.kept: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def draw(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        shard_ids, sample_ids = self.full.block_items(block)
        mask = np.zeros(len(shard_ids), dtype=bool)
        for shard in self.full.members[block].tolist():
            here = shard_ids == shard
            count, kept = int(self.full.counts[shard]), int(self.kept_counts[shard])
            mask[here] = kept_samples(self.seed, shard, count, kept)[sample_ids[here]]
        return shard_ids[mask], sample_ids[mask]


def subset_size(total: int, fraction: float) -> int:
    """How many of `total` samples a sample fraction keeps: round(fraction × total), at least one."""
    return total if fraction >= 1 else min(total, max(1, round(fraction * total)))


def allocate(weights, total: int) -> list[int]:
    """`total` positions shared out in proportion to `weights`, by largest remainder (ties to the first)."""
    exact = np.asarray(weights, dtype=float) / np.sum(weights) * total
    shares = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - shares), kind="stable")[: total - int(shares.sum())]:
        shares[index] += 1
    return [int(share) for share in shares]


def kept_samples(seed: int, shard: int, count: int, kept: int) -> np.ndarray:
    """Which of a shard's `count` samples the subset keeps (a mask of `kept` of them), from the seed and shard."""
    mask = np.zeros(count, dtype=bool)
    mask[np.random.default_rng([seed, SUBSET_STREAM, shard]).choice(count, kept, replace=False)] = True
    return mask


def epoch_order(
    counts: list[int], seed: int, epoch: int, shuffle: bool, block_shards: int, fraction: float = 1.0
) -> LazyOrder:
    order = BlockOrder(counts, seed, epoch, shuffle, block_shards)
    if fraction >= 1:
        return order
    kept = np.asarray(allocate(counts, subset_size(sum(counts), fraction)), dtype=np.int64)
    return SubsetOrder(order, kept, seed)
