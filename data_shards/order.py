"""The global sample order of an epoch and each rank's and worker's slice of it.

The order is a function of (shard counts, seed, epoch) alone: shards are shuffled, grouped into
blocks of `block_shards`, and samples are shuffled within each block (so a reader touches a few
shards at a time). A position is a *global* sample count into that order. From a start position
P, rank r of W takes positions P + r, P + r + W, ... — every rank gets the same number of samples
by construction, and after a restart with a different world size the remaining samples are
still exactly order[P:], none repeated, none skipped.

A sample fraction f < 1 keeps round(f × N) samples (Python's round: the nearest integer, a tie to the even
one; at least one), drawn once from the seed alone out of the split's global sample list (shard by shard,
in the index's order): the same subset in every epoch and on every rank. Each epoch's order is the full
order with the other samples taken out, so positions count within the subset and f = 1 is the full order.

Within a rank, local item j goes to DataLoader worker (j // batch_size) % num_workers. PyTorch's
DataLoader collects batches from workers round-robin, so the rank's batches come out in exactly
the rank's local order whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REMAINDERS = ("pad", "drop")
SUBSET_STREAM = 0x5AB5E7  # the subset's random stream, [seed, SUBSET_STREAM]: no epoch counts this far


@dataclass(frozen=True)
class EpochOrder:
    shard: np.ndarray  # shard number of each global position (length N)
    sample: np.ndarray  # index within that shard
    block: np.ndarray  # shuffle block of each global position

    def __len__(self) -> int:
        return len(self.shard)


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
) -> EpochOrder:
    order = full_epoch_order(counts, seed, epoch, shuffle, block_shards)
    if fraction >= 1:
        return order
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    kept = sample_subset(counts, fraction, seed)[first[order.shard] + order.sample]
    return EpochOrder(order.shard[kept], order.sample[kept], order.block[kept])


def full_epoch_order(counts: list[int], seed: int, epoch: int, shuffle: bool, block_shards: int) -> EpochOrder:
    shard_order = np.random.default_rng([seed, epoch]).permutation(len(counts)) if shuffle else np.arange(len(counts))
    shards, samples, blocks = [], [], []
    for block, start in enumerate(range(0, len(shard_order), block_shards)):
        members = shard_order[start : start + block_shards]
        shard_ids = np.concatenate([np.full(counts[s], s) for s in members]) if len(members) else np.empty(0, int)
        sample_ids = np.concatenate([np.arange(counts[s]) for s in members]) if len(members) else np.empty(0, int)
        if shuffle:
            permutation = np.random.default_rng([seed, epoch, block]).permutation(len(shard_ids))
            shard_ids, sample_ids = shard_ids[permutation], sample_ids[permutation]
        shards.append(shard_ids)
        samples.append(sample_ids)
        blocks.append(np.full(len(shard_ids), block))
    if not shards:
        empty = np.empty(0, dtype=np.int64)
        return EpochOrder(empty, empty, empty)
    return EpochOrder(np.concatenate(shards), np.concatenate(samples), np.concatenate(blocks))


def samples_per_rank(total: int, position: int, world_size: int, remainder: str) -> int:
    """How many samples each rank reads from `position` to the end of the epoch (equal on every rank)."""
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")
    left = max(0, total - position)
    if remainder == "drop":
        return left // world_size
    return -(-left // world_size)


def rank_positions(total: int, position: int, rank: int, world_size: int, remainder: str) -> np.ndarray:
    """Indices into the epoch order of this rank's samples (positions past the end wrap: padding)."""
    count = samples_per_rank(total, position, world_size, remainder)
    if total == 0:
        return np.empty(0, dtype=np.int64)
    return (position + rank + world_size * np.arange(count)) % total


def worker_items(num_items: int, batch_size: int, worker: int, num_workers: int) -> np.ndarray:
    """Local item numbers for one DataLoader worker: whole batches, dealt round-robin."""
    items = np.arange(num_items)
    return items[(items // batch_size) % num_workers == worker]
