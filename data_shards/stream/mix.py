"""Weighted mixes of several splits, `data.train=A:0.7,B:0.3`: one seeded order per epoch over all of them.

An epoch of the mix has as many samples as its sources hold together (N = Σ nᵢ, each source's sample fraction
applied), and source i fills mᵢ of its positions, wᵢ × N rounded by largest remainder (so that Σ mᵢ = N). A
source with mᵢ < nᵢ gives a seeded subset that changes from epoch to epoch; one with mᵢ > nᵢ gives its own epoch
orders one after another, so no sample comes twice before every other one of its source came once. A seeded
permutation interleaves the sources; from there the deal, ranks and workers are one split's
(`data_shards.stream.deal`): equal counts on every rank by construction, an exact resume, and the same rule when
the world size changes. Each source is read with its own shard reader, a run of consecutive items from one
shuffle block at a time. The mix's order is held whole (about 32 bytes a sample), unlike one split's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_shards.sample import Sample
from data_shards.stream.config import StreamConfig
from data_shards.stream.dataset import DealtStream, ShardStream
from data_shards.stream.order import epoch_order
from data_shards.stream.reader import ShardReader, Skipped, runs_by_block

MIX_STREAM = 0x3A1C  # the interleaving's random stream, [seed, epoch, MIX_STREAM]
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


def allocate(weights: list[float], total: int) -> list[int]:
    """`total` positions shared out in proportion to `weights`, by largest remainder (ties to the first)."""
    exact = np.asarray(weights, dtype=float) / sum(weights) * total
    shares = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - shares), kind="stable")[: total - int(shares.sum())]:
        shares[index] += 1
    return [int(share) for share in shares]


@dataclass(frozen=True)
class MixOrder:
    part: np.ndarray  # source of each global position
    shard: np.ndarray  # shard number within that source
    sample: np.ndarray  # index within that shard
    run: np.ndarray  # (source, its epoch, shuffle block): what one reader reads in one go

    def __len__(self) -> int:
        return len(self.part)

    def items(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.part[positions], self.shard[positions], self.sample[positions], self.run[positions]


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

    def source_items(self, part: int, share: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(shard, sample, run key) of the `share` items source `part` gives this epoch: its own epochs in turn."""
        stream, c = self.streams[part], self.config
        counts = [shard.samples for shard in stream.shards]
        rounds = max(1, math.ceil(share / stream.epoch_samples))
        shards, samples, runs = [], [], []
        for turn in range(rounds):
            epoch = self.epoch * rounds + turn
            order = epoch_order(counts, c.seed, epoch, c.shuffle, c.block_shards, c.sample_fraction)
            shard, sample, block = order.items(np.arange(len(order)))
            shards.append(shard)
            samples.append(sample)
            runs.append(block + (turn << 20) + (part << 40))
        return np.concatenate(shards)[:share], np.concatenate(samples)[:share], np.concatenate(runs)[:share]

    def order(self) -> MixOrder:
        shares = self.shares()
        labels = np.concatenate([np.full(share, part) for part, share in enumerate(shares)])
        if self.config.shuffle:
            labels = labels[np.random.default_rng([self.config.seed, self.epoch, MIX_STREAM]).permutation(len(labels))]
        shard, sample, run = (np.empty(len(labels), dtype=np.int64) for _ in range(3))
        for part, share in enumerate(shares):
            where = np.flatnonzero(labels == part)
            shard[where], sample[where], run[where] = self.source_items(part, share)
        return MixOrder(labels, shard, sample, run)

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
