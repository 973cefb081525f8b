"""A split's shards and their index, from a folder, a brace pattern, URLs or `pipe:` commands."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from data_shards.index import INDEX_NAME, OffsetTable, has_tables, load_index, parse_index
from data_shards.stream.cache import ShardCache
from data_shards.stream.remote import download, is_remote, read_remote, sibling
from data_shards.tario import CorruptShardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    url: str
    name: str
    samples: int
    bytes: int
    sha256: str | None

    @property
    def is_remote(self) -> bool:
        return is_remote(self.url)


@dataclass(frozen=True)
class SplitIndex:
    """The summary document, where it came from, and (on demand) its offset table."""

    doc: dict
    location: str

    def offsets(self, cache: ShardCache) -> OffsetTable:
        """Memory-mapped from beside the index; a remote table is fetched into the cache directory first."""
        if not has_tables(self.doc):
            return OffsetTable.load(self.doc, None, self.location)
        name = self.doc["tables"]["offsets"]
        if not is_remote(self.location):
            return OffsetTable.load(self.doc, Path(self.location).parent / name, self.location)
        identity = f"{self.doc.get('source', {}).get('fingerprint')} {len(self.doc['shards'])} {self.location}"
        local = cache.directory / f"offsets-{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npy"
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            partial = local.with_name(f"{local.name}.{os.getpid()}.part")
            download(sibling(self.location, name), partial)
            os.replace(partial, local)
        return OffsetTable.load(self.doc, local, self.location)


def resolve_shards(
    source: str | os.PathLike | Sequence[str], index: str | os.PathLike | None
) -> tuple[SplitIndex, list[Shard]]:
    """Shards of a split from a folder, a brace pattern, a list of URLs, or `pipe:` commands."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        split = read_index(Path(source) / INDEX_NAME)
        urls = [str(Path(source) / shard["name"]) for shard in split.doc["shards"]]
    else:
        urls = [
            url
            for pattern in ([source] if isinstance(source, (str, os.PathLike)) else source)
            for url in braceexpand(str(pattern))
        ]
        split = read_index(index) if index is not None else read_default_index(urls)
    entries = {shard["name"]: shard for shard in split.doc["shards"]}
    shards = []
    for url in urls:
        name = shard_basename(url)
        if name not in entries:
            raise ValueError(f"{url}: shard {name!r} is not in the index")
        entry = entries[name]
        shards.append(Shard(url, name, entry["samples"], entry["bytes"], entry.get("sha256")))
    return split, shards


def shard_basename(url: str) -> str:
    return url.rstrip().split()[-1].rsplit("/", 1)[-1] if url.startswith("pipe:") else url.rsplit("/", 1)[-1]


def read_default_index(urls: list[str]) -> SplitIndex:
    """The index beside the first shard: the same folder, URL prefix, or `pipe:` command with the shard's name
    replaced (`pipe:aws s3 cp s3://b/x/shard-000000.tar -` → `pipe:aws s3 cp s3://b/x/index.json -`)."""
    if not urls:
        raise ValueError("no shards given")
    location = sibling(urls[0], INDEX_NAME) if is_remote(urls[0]) else str(Path(urls[0]).parent / INDEX_NAME)
    try:
        return read_index(location)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{location}: cannot read the split's index beside its shards ({error}); pass index="
        ) from error


def read_index(index: str | os.PathLike) -> SplitIndex:
    location = str(index)
    if is_remote(location):
        return SplitIndex(parse_index(read_remote(location), location), location)
    return SplitIndex(load_index(Path(index)), location)


def usable_shards(shards: list[Shard], policy: str) -> list[Shard]:
    """Drop (or fail on) local shards whose size differs from the index: every rank decides alike."""
    usable = []
    for shard in shards:
        problem = None if shard.is_remote else local_shard_problem(shard)
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
