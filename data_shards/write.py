"""Deterministic shard writing: `{split}/shard-000000.tar` + `{split}/index.json`.

Tar headers carry no timestamps or owners, members are written in a fixed order and each shard
depends only on its own samples, so the same input and seed give byte-identical shards whatever
the number of worker processes. A shard is written to `*.tmp` and renamed when complete; the index
is written last, so an interrupted build never lists a half shard.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_shards.index import save_index
from data_shards.sample import SCHEMA_VERSION, Sample, to_members


@dataclass(frozen=True)
class ShardLayout:
    max_samples: int = 1000
    max_bytes: int | None = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_samples < 1:
            raise ValueError(f"shard max_samples must be >= 1, got {self.max_samples}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"shard max_bytes must be >= 1, got {self.max_bytes}")


@dataclass
class ShardInfo:
    name: str
    samples: int
    bytes: int
    sha256: str
    offsets: list[int]
    keys: list[str]


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


def tar_key(index_in_split: int) -> str:
    return f"{index_in_split:09d}"


def plan_shards(sample_bytes: list[int], layout: ShardLayout) -> list[range]:
    """Consecutive sample ranges, each within the sample and byte limits (a lone oversize sample gets its own)."""
    ranges, start, used = [], 0, 0
    for index, size in enumerate(sample_bytes):
        count = index - start
        full = count >= layout.max_samples or (
            layout.max_bytes is not None and count > 0 and used + size > layout.max_bytes
        )
        if full:
            ranges.append(range(start, index))
            start, used = index, 0
        used += size
    if start < len(sample_bytes):
        ranges.append(range(start, len(sample_bytes)))
    return ranges


def tar_entry(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: Path, samples: Iterable[Sample], first_index: int) -> ShardInfo:
    """Write one shard atomically; record each sample's byte offset so readers can seek to it."""
    tmp = path.with_name(path.name + ".tmp")
    offsets, keys = [], []
    with open(tmp, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for position, sample in enumerate(samples):
                offsets.append(tar.offset)
                keys.append(sample.key)
                for name, data in to_members(sample, tar_key(first_index + position)):
                    tar.addfile(tar_entry(name, len(data)), io.BytesIO(data))
            offsets.append(tar.offset)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return ShardInfo(path.name, len(keys), path.stat().st_size, digest, offsets, keys)


def write_index(split_dir: Path, split: str, shards: list[ShardInfo], header: dict[str, Any]) -> Path:
    index = {
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "num_samples": sum(s.samples for s in shards),
        "num_bytes": sum(s.bytes for s in shards),
        **header,
        "shards": [asdict(s) for s in shards],
    }
    return save_index(split_dir, index)
