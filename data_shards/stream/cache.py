"""A node-local cache of remote shards: each shard is transferred once per node, then read by seeking.

Every reader on a node (ranks × DataLoader workers) shares one directory. A shard is fetched by the first
reader that needs it, under a per-shard lock, into `{sha256}.tar` (content-addressed: runs and datasets share
copies safely), and verified against the index's size and sha256 before it is renamed into place. A copy that
fails verification is kept only by the reader that fetched it, for the samples that can still be read, and
is fetched again by the next one. When the cache outgrows its limit the least recently used copies go; a
reader holding one open keeps reading it (POSIX unlink), and a copy needed again is fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from data_shards.stream.remote import download

log = logging.getLogger(__name__)
CACHE_ENV = "SHARDTUNE_CACHE"
HASH_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "shardtune-shards")


@dataclass(frozen=True)
class CachedCopy:
    handle: BinaryIO  # open before any eviction can unlink the file
    problem: str | None  # why the copy is not the indexed shard (then it is private to this reader)


@contextmanager
def locked(path: Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ShardCache:
    def __init__(self, directory: str | os.PathLike | None, limit_bytes: int):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.limit_bytes = limit_bytes
        self.fetches = 0

    def copy_of(self, url: str, size: int, sha256: str | None) -> CachedCopy:
        """A local copy of the shard at `url`, fetched unless one is already cached."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = sha256 or hashlib.sha256(url.encode()).hexdigest()
        target = self.directory / f"{name}.tar"
        with locked(self.directory / f"{name}.lock"):
            if target.exists():
                os.utime(target)
                return CachedCopy(open(target, "rb"), None)  # noqa: SIM115 -- the reader closes it
            fetched = self.fetch(url, target, size, sha256)
        if fetched.problem is None:
            self.evict(keep=target)
        return fetched

    def fetch(self, url: str, target: Path, size: int, sha256: str | None) -> CachedCopy:
        partial = target.with_name(f"{target.stem}.{os.getpid()}.part")
        self.fetches += 1
        try:
            download(url, partial)
            problem = verify(partial, size, sha256)
        except OSError as error:
            problem = f"transfer failed ({error})"
        if problem is None:
            os.replace(partial, target)
            return CachedCopy(open(target, "rb"), None)  # noqa: SIM115 -- the reader closes it
        log.warning("%s: %s; reading what can be read, not caching it", url, problem)
        handle = open(partial, "rb") if partial.exists() else open(os.devnull, "rb")  # noqa: SIM115
        partial.unlink(missing_ok=True)
        return CachedCopy(handle, problem)

    def evict(self, keep: Path) -> None:
        """Drop least recently used copies until the cache is within its limit (never `keep`)."""
        with locked(self.directory / ".evict.lock"):
            copies = sorted(self.directory.glob("*.tar"), key=lambda p: p.stat().st_mtime)
            used = sum(copy.stat().st_size for copy in copies)
            for copy in copies:
                if used <= self.limit_bytes:
                    break
                if copy != keep:
                    used -= copy.stat().st_size
                    copy.unlink(missing_ok=True)


def verify(path: Path, size: int, sha256: str | None) -> str | None:
    got = path.stat().st_size
    if got != size:
        return f"transferred {got} bytes, the index says {size}"
    if sha256 is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)
    return None if digest.hexdigest() == sha256 else "content differs from the index's sha256"
