"""Fetching samples by (shard, index): a seek into the local tar, or into the node-local copy of a remote one."""

from __future__ import annotations

import logging
import subprocess
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from data_shards.index import OffsetTable
from data_shards.sample import Sample, SchemaError, from_members
from data_shards.stream.cache import ShardCache
from data_shards.stream.shards import Shard
from data_shards.tario import CorruptShardError, members_in_range

log = logging.getLogger(__name__)
CHUNK_ITEMS = 4096
OPEN_SHARDS = 32  # file handles a reader keeps; a block needs `block_shards` of them


@dataclass
class Skipped:
    """Stands in for a sample that could not be read (policy `skip`), so every rank keeps its count."""

    shard: str
    index: int
    reason: str


def runs_by_block(blocks: np.ndarray) -> Iterator[slice]:
    """Slices of consecutive items in the same shuffle block, in order."""
    breaks = np.flatnonzero(np.diff(blocks)) + 1
    edges = [0, *breaks.tolist(), len(blocks)]
    for start, end in zip(edges, edges[1:]):
        if end > start:
            yield slice(start, end)


@dataclass
class ShardReader:
    shards: list[Shard]
    offsets: OffsetTable
    cache: ShardCache
    on_corrupt: str
    decode_images: bool
    to_sample: Callable[[dict[str, bytes]], Sample] = from_members
    handles: OrderedDict[int, BinaryIO] = field(default_factory=OrderedDict)
    damaged: dict[int, str] = field(default_factory=dict)

    def read(self, shard_ids: np.ndarray, sample_ids: np.ndarray) -> Iterator[Sample | Skipped]:
        """Fetch a run's raw bytes shard by shard, in file order, then decode each sample as it is yielded,
        so only one decoded sample is alive at a time."""
        fetched: dict[tuple[int, int], dict[str, bytes] | Exception] = {}
        for shard_id in np.unique(shard_ids).tolist():
            wanted = sorted(set(sample_ids[shard_ids == shard_id].tolist()))
            fetched.update({(shard_id, s): raw for s, raw in self.fetch(shard_id, wanted).items()})
        for shard_id, sample_id in zip(shard_ids.tolist(), sample_ids.tolist()):
            yield self.decode(self.shards[shard_id], sample_id, fetched[(shard_id, sample_id)])

    def fetch(self, shard_id: int, wanted: list[int]) -> dict[int, dict[str, bytes] | Exception]:
        shard = self.shards[shard_id]
        try:
            handle = self.handle(shard_id)
        except (OSError, subprocess.SubprocessError) as error:
            return dict.fromkeys(wanted, error)
        found: dict[int, dict[str, bytes] | Exception] = {}
        for sample in wanted:
            start, end = self.offsets.span(shard.name, sample)
            handle.seek(start)
            data = handle.read(end - start)
            where = f"{shard.url} sample {sample}"
            if len(data) < end - start:
                found[sample] = CorruptShardError(f"{where}: shard ends early ({self.damaged.get(shard_id, '')})")
                continue
            try:
                found[sample] = members_in_range(data, where)
            except CorruptShardError as error:
                found[sample] = error
        return found

    def handle(self, shard_id: int) -> BinaryIO:
        """An open file for the shard (the local tar, or the cached copy of a remote one), least recently used
        ones closed beyond `OPEN_SHARDS`."""
        if shard_id in self.handles:
            self.handles.move_to_end(shard_id)
            return self.handles[shard_id]
        shard = self.shards[shard_id]
        if shard.is_remote:
            copy = self.cache.copy_of(shard.url, shard.bytes, shard.sha256)
            handle = copy.handle
            if copy.problem:
                self.damaged[shard_id] = copy.problem
        else:
            handle = open(shard.url, "rb")  # noqa: SIM115 -- kept open across reads until evicted or close()
        self.handles[shard_id] = handle
        if len(self.handles) > OPEN_SHARDS:
            self.handles.popitem(last=False)[1].close()
        return handle

    def decode(self, shard: Shard, sample: int, raw: dict[str, bytes] | Exception) -> Sample | Skipped:
        try:
            if isinstance(raw, Exception):
                raise raw
            decoded = self.to_sample(raw)
            if self.decode_images:
                for image in decoded.images:
                    image.decode()
            return decoded
        except (CorruptShardError, SchemaError, OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
            if self.on_corrupt == "fail":
                raise CorruptShardError(f"{shard.url} sample {sample}: {error}") from error
            log.warning("skipping %s sample %d: %s", shard.url, sample, error)
            return Skipped(shard.name, sample, f"{type(error).__name__}: {error}")

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()
