"""Weighted mixes of several splits, `data.train=A:0.7,B:0.3`: one seeded order per epoch over all of them.

An epoch of the mix has as many samples as its sources hold together (N = Σ nᵢ, each source's sample fraction
applied), and source i fills mᵢ of its positions, wᵢ × N rounded by largest remainder (so that Σ mᵢ = N). A
source with mᵢ < nᵢ gives a seeded subset that changes from epoch to epoch; one with mᵢ > nᵢ gives its own epoch
orders one after another, so no sample comes twice before every other one of its source came once. A seeded
permutation interleaves the sources; from there the deal, ranks and workers are one split's
(`data_shards.stream.deal`): equal counts on every rank by construction, an exact resume, and the same rule when
the world size changes. Each source is read with its own shard reader, a run of consecutive items from one
shuffle block at a time.

The order is drawn one mix block at a time (`MixOrder`), so a reader holds a few blocks, not the epoch: the
epoch's positions are cut into ⌈N / MIX_BLOCK⌉ blocks, source i fills ⌊mᵢ × b / blocks⌋ positions before block
b (so every block holds every source in proportion, within one item), a seeded permutation per block interleaves
them, and source i's k-th item is item k of its own orders in turn, themselves drawn a shuffle block at a time.
A rank's strip is contiguous in the mix, so it is contiguous in each source's order too: read once still holds.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_shards.sample import Sample
from data_shards.stream.config import StreamConfig
from data_shards.stream.dataset import DealtStream, ShardStream
from data_shards.stream.order import KEPT_BLOCKS, LazyOrder, allocate, epoch_order
from data_shards.stream.reader import ShardReader, Skipped, runs_by_block

MIX_STREAM = 0x3A1C  # the interleaving's random stream, [seed, epoch, MIX_STREAM, block]
MIX_BLOCK = 65_536  # positions of the mix one permutation interleaves
PART = re.compile(r"^(?P<path>.+):(?P<weight>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)$")


@dataclass(frozen=True)
class MixPart:
    path: str
    weight: float


def parse_mix(text: str) -> list[MixPart] | None:
    """`A:0.7,B:0.3` → its parts; None when `text` is one split (a folder, brace pattern or pipe: command).
    Weights are relative (normalised to sum 1); each must be positive."""
    items = [PART.match(item.strip()) for item in str(text).split(",")]
    if len(items) < 2 or not all(items):
        return None
    parts = [MixPart(item["path"], float(item["weight"])) for item in items]
    bad = [f"{part.path}:{part.weight:g}" for part in parts if part.weight <= 0]
    if bad:
        raise ValueError(f"data.train mix {text!r}: weights must be positive ({', '.join(bad)})")
    return parts


class SourceTurns:
    """One source's items in a mix epoch: item k is item k mod n of the source's epoch order number k div n
    (its own epochs in turn, `rounds` of them per mix epoch), each drawn lazily."""

    def __init__(self, stream: ShardStream, part: int, mix_epoch: int, rounds: int):
        self.stream, self.part, self.first_epoch = stream, part, mix_epoch * rounds
        self.orders: OrderedDict[int, LazyOrder] = OrderedDict()

    def order(self, turn: int) -> LazyOrder:
        if turn not in self.orders:
            c, counts = self.stream.config, [shard.samples for shard in self.stream.shards]
            epoch = self.first_epoch + turn
            self.orders[turn] = epoch_order(counts, c.seed, epoch, c.shuffle, c.block_shards, c.sample_fraction)
            if len(self.orders) > KEPT_BLOCKS:
                self.orders.popitem(last=False)
        return self.orders[turn]

    def items(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, sample, run key) of items k; a run key names (source, turn, shuffle block)."""
        turns, within = np.divmod(k, self.stream.epoch_samples)
        shard, sample, run = (np.empty(len(k), dtype=np.int64) for _ in range(3))
        for turn in np.unique(turns).tolist():
            here = turns == turn
            shard[here], sample[here], block = self.order(turn).items(within[here])
            run[here] = block + (turn << 20) + (self.part << 40)
        return shard, sample, run


class MixOrder(LazyOrder):
    """The mix's order of one epoch, drawn a mix block at a time (same order however it is asked for)."""

    def __init__(self, shares: list[int], sources: list[SourceTurns], seed: int, epoch: int, shuffle: bool):
        blocks = max(1, math.ceil(sum(shares) / MIX_BLOCK))
        self.before = np.stack([share * np.arange(blocks + 1, dtype=np.int64) // blocks for share in shares])
        self.block_start = self.before.sum(axis=0)
        self.sources, self.seed, self.epoch, self.shuffle = sources, seed, epoch, shuffle
        self.kept = OrderedDict()

    def draw(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, item number within the source) of each position of one mix block."""
        first, counts = self.before[:, block], self.before[:, block + 1] - self.before[:, block]
        labels = np.repeat(np.arange(len(counts)), counts)
        if self.shuffle:
            labels = labels[np.random.default_rng([self.seed, self.epoch, MIX_STREAM, block]).permutation(len(labels))]
        item = np.empty(len(labels), dtype=np.int64)
        for part, count in enumerate(counts.tolist()):
            item[labels == part] = first[part] + np.arange(count)
        return labels, item

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(source, shard, sample, run key) of each position."""
        part, item, _ = super().items(positions)
        shard, sample, run = (np.empty_like(part) for _ in range(3))
        for source in np.unique(part).tolist():
            here = part == source
            shard[here], sample[here], run[here] = self.sources[source].items(item[here])
        return part, shard, sample, run


class MixStream(DealtStream):
    """A weighted mix of splits with `ShardStream`'s interface (epoch, position, length, `ShardLoader` state)."""

    def __init__(self, parts: list[MixPart], *, config: StreamConfig, rank: int, world_size: int):
        super().__init__()
        self.parts, self.config, self.rank, self.world_size = parts, config, rank, world_size
        self.streams = [ShardStream(p.path, config=config, rank=rank, world_size=world_size) for p in parts]
        fingerprints = [str(s.index.get("source", {}).get("fingerprint")) for s in self.streams]
        mix = ",".join(f"{p.path}:{p.weight:g}" for p in parts)
        self.index = {"source": {"fingerprint": f"mix {mix} of {'+'.join(fingerprints)}"}}
        self.epoch = 0
        self.rewind()

    @property
    def num_samples(self) -> int:
        return sum(stream.num_samples for stream in self.streams)

    @property
    def epoch_samples(self) -> int:
        return sum(stream.epoch_samples for stream in self.streams)

    def shares(self) -> list[int]:
        """Positions each source fills per epoch."""
        return allocate([part.weight for part in self.parts], self.epoch_samples)

    def describe(self) -> str:
        lines = [
            f"{part.path} (weight {part.weight:g}): {share} per epoch of {stream.epoch_samples} "
            f"({share / stream.epoch_samples:.2f}×)"
            for part, stream, share in zip(self.parts, self.streams, self.shares())
        ]
        return f"data.train mix, {self.epoch_samples} samples per epoch: " + "; ".join(lines)

    def order(self) -> MixOrder:
        shares = self.shares()
        sources = [
            SourceTurns(stream, part, self.epoch, max(1, math.ceil(share / stream.epoch_samples)))
            for part, (stream, share) in enumerate(zip(self.streams, shares))
        ]
        return MixOrder(shares, sources, self.config.seed, self.epoch, self.config.shuffle)

    def open_readers(self) -> list[ShardReader]:
        return [reader for stream in self.streams for reader in stream.open_readers()]

    def read_positions(self, order: MixOrder, readers, positions) -> Iterator[Sample | Skipped]:
        part, shard, sample, run = order.items(positions)
        for here in runs_by_block(run):
            yield from readers[int(part[here.start])].read(shard[here], sample[here])


def open_split(source: str, *, index=None, config: StreamConfig, rank: int, world_size: int):
    """A `ShardStream` over one split, or a `MixStream` when `source` is a weighted mix (`A:0.7,B:0.3`)."""
    parts = parse_mix(source)
    if parts is None:
        return ShardStream(source, index=index, config=config, rank=rank, world_size=world_size)
    if index:
        raise ValueError(f"data.index={index}: not with a mix ({source}); each split is read with its own index")
    return MixStream(parts, config=config, rank=rank, world_size=world_size)
