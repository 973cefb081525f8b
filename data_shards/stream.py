"""Stream built shards to every rank: equal counts by construction, exact resume, corrupt-shard policy.

`ShardStream` is an IterableDataset over one split; `ShardLoader` wraps it in a DataLoader and
keeps the resumable position (a global sample count, see `data_shards.order`).

Reading cost: local shards are read by seeking to each sample's byte range (recorded in the
index), so every sample is read once per epoch in total. `pipe:` shards (object stores) cannot
seek: a worker reads each shard of a block it needs front to back and keeps its own samples,
so each shard is transferred once per worker per rank that touches it (up to ranks × workers
times per epoch). Prefer a node-local copy for large runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_shards.foreign import sample_reader
from data_shards.index import INDEX_NAME, load_index
from data_shards.order import EpochOrder, epoch_order, rank_positions, samples_per_rank, subset_size, worker_items
from data_shards.sample import Sample, SchemaError, from_members
from data_shards.tario import CorruptShardError, iter_samples, members_in_range

log = logging.getLogger(__name__)
POLICIES = ("skip", "fail")
CHUNK_ITEMS = 4096


@dataclass(frozen=True)
class Shard:
    url: str
    name: str
    samples: int
    bytes: int
    offsets: tuple[int, ...]

    @property
    def is_pipe(self) -> bool:
        return self.url.startswith("pipe:")


@dataclass
class Skipped:
    """Stands in for a sample that could not be read (policy `skip`), so every rank keeps its count."""

    shard: str
    index: int
    reason: str


def resolve_shards(
    source: str | os.PathLike | Sequence[str], index: str | os.PathLike | None
) -> tuple[dict, list[Shard]]:
    """Shards of a split from a folder, a brace pattern, a list of URLs, or `pipe:` commands."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        index_doc = load_index(Path(source) / INDEX_NAME)
        urls = [str(Path(source) / shard["name"]) for shard in index_doc["shards"]]
    else:
        urls = [
            url
            for pattern in ([source] if isinstance(source, (str, os.PathLike)) else source)
            for url in braceexpand(str(pattern))
        ]
        index_doc = read_index(index if index is not None else default_index(urls))
    entries = {shard["name"]: shard for shard in index_doc["shards"]}
    shards = []
    for url in urls:
        name = shard_basename(url)
        if name not in entries:
            raise ValueError(f"{url}: shard {name!r} is not in the index")
        entry = entries[name]
        shards.append(Shard(url, name, entry["samples"], entry["bytes"], tuple(entry["offsets"])))
    return index_doc, shards


def shard_basename(url: str) -> str:
    return url.rstrip().split()[-1].rsplit("/", 1)[-1] if url.startswith("pipe:") else Path(url).name


def default_index(urls: list[str]) -> Path:
    if not urls or urls[0].startswith("pipe:"):
        raise ValueError("pipe: shards need index= (a path, or a pipe: command printing index.json)")
    return Path(urls[0]).parent / INDEX_NAME


def read_index(index: str | os.PathLike) -> dict:
    if str(index).startswith("pipe:"):
        output = subprocess.run(str(index)[5:], shell=True, capture_output=True, check=True).stdout
        return json.loads(output)
    return load_index(Path(index))


def usable_shards(shards: list[Shard], policy: str) -> list[Shard]:
    """Drop (or fail on) local shards whose size differs from the index: every rank decides alike."""
    usable = []
    for shard in shards:
        problem = None if shard.is_pipe else local_shard_problem(shard)
        if problem is None:
            usable.append(shard)
        elif policy == "fail":
            raise CorruptShardError(f"{shard.url}: {problem}")
        else:
            log.warning("skipping shard %s: %s (%d samples)", shard.url, problem, shard.samples)
    return usable


def local_shard_problem(shard: Shard) -> str | None:
    try:
        size = os.path.getsize(shard.url)
    except OSError as error:
        return f"cannot read ({error.strerror})"
    return None if size == shard.bytes else f"size {size} bytes, index says {shard.bytes} (truncated or replaced)"


@dataclass
class StreamConfig:
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    block_shards: int = 8
    remainder: str = "pad"
    decode: bool = True
    on_corrupt: str = "skip"
    sample_fraction: float = 1.0  # a seeded subset, the same every epoch and on every rank (data_shards.order)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_shards < 1:
            raise ValueError(f"batch_size and block_shards must be >= 1, got {self.batch_size}, {self.block_shards}")
        if not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")
        if self.on_corrupt not in POLICIES:
            raise ValueError(f"on_corrupt must be one of {POLICIES}, got {self.on_corrupt!r}")
        samples_per_rank(0, 0, 1, self.remainder)


class ShardStream(IterableDataset):
    """One split, as this rank's slice of the epoch's global order, from the current position."""

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
        self.index, all_shards = resolve_shards(source, index)
        self.shards = usable_shards(all_shards, self.config.on_corrupt)
        self.to_sample = sample_reader(self.index, [shard.url for shard in all_shards])
        if not self.shards or sum(s.samples for s in self.shards) == 0:
            raise ValueError(f"{source}: no readable samples in {len(all_shards)} shards")
        self.epoch = 0
        self.position = 0

    @property
    def num_samples(self) -> int:
        """Samples in the split's readable shards."""
        return sum(shard.samples for shard in self.shards)

    @property
    def epoch_samples(self) -> int:
        """Samples in one epoch's order: all of them, or the `sample_fraction` subset."""
        return subset_size(self.num_samples, self.config.sample_fraction)

    def order(self) -> EpochOrder:
        c = self.config
        counts = [s.samples for s in self.shards]
        return epoch_order(counts, c.seed, self.epoch, c.shuffle, c.block_shards, c.sample_fraction)

    def __len__(self) -> int:
        return samples_per_rank(self.epoch_samples, self.position, self.world_size, self.config.remainder)

    def plan(self) -> list[tuple[str, int]]:
        """(shard name, index in shard) of every sample this rank reads, in order, from the position."""
        order = self.order()
        positions = rank_positions(len(order), self.position, self.rank, self.world_size, self.config.remainder)
        return [(self.shards[order.shard[p]].name, int(order.sample[p])) for p in positions]

    def __iter__(self) -> Iterator[Sample | Skipped]:
        order = self.order()
        positions = rank_positions(len(order), self.position, self.rank, self.world_size, self.config.remainder)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = positions[worker_items(len(positions), self.config.batch_size, worker, workers)]
        reader = ShardReader(self.shards, self.config, self.to_sample)
        try:
            for chunk in chunks_by_block(mine, order.block):
                yield from reader.read(order.shard[chunk], order.sample[chunk])
        finally:
            reader.close()


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if initialised else 0 if rank is None else rank
        world_size = torch.distributed.get_world_size() if initialised else 1 if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def chunks_by_block(positions: np.ndarray, blocks: np.ndarray) -> Iterator[np.ndarray]:
    """Runs of consecutive positions in the same shuffle block (capped in length), in order."""
    if len(positions) == 0:
        return
    block_of = blocks[positions]
    breaks = np.flatnonzero(np.diff(block_of)) + 1
    for run in np.split(positions, breaks):
        for start in range(0, len(run), CHUNK_ITEMS):
            yield run[start : start + CHUNK_ITEMS]


@dataclass
class ShardReader:
    """Fetches samples by (shard, index): seeks in local tars, scans `pipe:` streams."""

    shards: list[Shard]
    config: StreamConfig
    to_sample: Callable[[dict[str, bytes]], Sample] = from_members
    handles: dict[int, Any] = field(default_factory=dict)

    def read(self, shard_ids: np.ndarray, sample_ids: np.ndarray) -> Iterator[Sample | Skipped]:
        """Fetch a chunk's raw bytes shard by shard (sequential reads), then decode each sample as it is
        yielded, so only one decoded sample is alive at a time."""
        fetched: dict[tuple[int, int], dict[str, bytes] | Exception | None] = {}
        for shard_id in np.unique(shard_ids):
            wanted = sorted(set(sample_ids[shard_ids == shard_id].tolist()))
            fetched.update({(int(shard_id), s): raw for s, raw in self.fetch(int(shard_id), wanted).items()})
        for shard_id, sample_id in zip(shard_ids.tolist(), sample_ids.tolist()):
            yield self.decode(self.shards[shard_id], sample_id, fetched.get((shard_id, sample_id)))

    def fetch(self, shard_id: int, wanted: list[int]) -> dict[int, dict[str, bytes] | Exception]:
        shard = self.shards[shard_id]
        try:
            return self.scan_pipe(shard, wanted) if shard.is_pipe else self.seek_local(shard_id, wanted)
        except (CorruptShardError, OSError, subprocess.SubprocessError) as error:
            return dict.fromkeys(wanted, error)

    def seek_local(self, shard_id: int, wanted: list[int]) -> dict[int, dict[str, bytes] | Exception]:
        shard = self.shards[shard_id]
        if shard_id not in self.handles:
            self.handles[shard_id] = open(shard.url, "rb")  # noqa: SIM115 -- kept open across reads until close()
        handle, found = self.handles[shard_id], {}
        for sample in wanted:
            start, end = shard.offsets[sample], shard.offsets[sample + 1]
            handle.seek(start)
            try:
                found[sample] = members_in_range(handle.read(end - start), f"{shard.url} sample {sample}")
            except CorruptShardError as error:
                found[sample] = error
        return found

    def scan_pipe(self, shard: Shard, wanted: list[int]) -> dict[int, dict[str, bytes] | Exception]:
        """Read front to back; samples past a damaged point become errors, those before it are kept."""
        process = subprocess.Popen(shard.url[5:], shell=True, stdout=subprocess.PIPE)
        targets, found = set(wanted), {}
        try:
            for position, members in enumerate(iter_samples(process.stdout, shard.url)):
                if position in targets:
                    found[position] = members
                if len(found) == len(targets):
                    break
        except CorruptShardError as error:
            found.update(dict.fromkeys(targets - found.keys(), error))
        finally:
            process.stdout.close()
            process.kill()
            process.wait()
        return found

    def decode(self, shard: Shard, sample: int, raw) -> Sample | Skipped:
        try:
            if raw is None:
                raise CorruptShardError(f"{shard.url}: sample {sample} missing (stream ended early)")
            if isinstance(raw, Exception):
                raise raw
            decoded = self.to_sample(raw)
            if self.config.decode:
                for image in decoded.images:
                    image.decode()
            return decoded
        except (CorruptShardError, SchemaError, OSError, ValueError, KeyError, subprocess.SubprocessError) as error:
            if self.config.on_corrupt == "fail":
                raise CorruptShardError(f"{shard.url} sample {sample}: {error}") from error
            log.warning("skipping %s sample %d: %s", shard.url, sample, error)
            return Skipped(shard.name, sample, f"{type(error).__name__}: {error}")

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles.clear()


class CountingCollate:
    """Runs in the worker: counts positions (skipped ones included) and drops the stand-ins."""

    def __init__(self, collate_fn: Callable[[list[Sample]], Any] | None):
        self.collate_fn = collate_fn

    def __call__(self, items: list[Sample | Skipped]) -> tuple[int, int, Any]:
        samples = [item for item in items if not isinstance(item, Skipped)]
        batch = self.collate_fn(samples) if self.collate_fn else samples
        return len(items), len(items) - len(samples), batch


def ignore_stop_signals(_worker_id: int) -> None:
    """SLURM signals every process of a job step: the main process checkpoints; workers must not die first."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class ShardLoader:
    """The trainer's view: batches for the current epoch, and a position it can save and restore."""

    def __init__(
        self,
        stream: ShardStream,
        num_workers: int = 0,
        collate_fn=None,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        self.stream = stream
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.stream.epoch:
            self.stream.epoch, self.stream.position = epoch, 0

    def __len__(self) -> int:
        return -(-len(self.stream) // self.stream.config.batch_size)

    def __iter__(self) -> Iterator[Any]:
        loader = DataLoader(
            self.stream,
            batch_size=self.stream.config.batch_size,
            num_workers=self.num_workers,
            collate_fn=CountingCollate(self.collate_fn),
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_stop_signals,
        )
        start, consumed = self.stream.position, 0
        batches = iter(loader)
        try:
            for positions, skipped, batch in batches:
                consumed += positions
                self.skipped += skipped
                self.stream.position = start + consumed * self.stream.world_size
                yield batch
        finally:
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()  # now, not when a kept exception's traceback is collected (5 s per worker)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.stream.epoch,
            "position": self.stream.position,
            "seed": self.stream.config.seed,
            "num_samples": self.stream.num_samples,
            "sample_fraction": self.stream.config.sample_fraction,
            "world_size": self.stream.world_size,
            "fingerprint": self.stream.index.get("source", {}).get("fingerprint"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {"sample_fraction": 1.0, **state}  # states saved before sample_fraction read every sample
        now = self.state_dict()
        keys = ("seed", "num_samples", "sample_fraction", "fingerprint")
        mismatched = [key for key in keys if saved.get(key) != now[key]]
        if mismatched:
            details = ", ".join(f"{k}: saved {saved.get(k)!r} now {now[k]!r}" for k in mismatched)
            raise ValueError(f"cannot resume the data stream, it changed ({details})")
        self.stream.epoch, self.stream.position = state["epoch"], state["position"]
