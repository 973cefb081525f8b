"""Minimal reading of the ustar shards our writer produces: by byte range (seek) or as a stream (pipe).

Each header's checksum is verified, so a damaged shard is reported as such instead of yielding
garbage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
KEY = "__key__"  # the WebDataset name of the sample key, added to each sample's members (as UTF-8 bytes)
REGULAR_FILE = (b"0", b"\0", b"7")  # regular, old-style regular, contiguous


class CorruptShardError(Exception):
    pass


def parse_header(header: bytes, where: str) -> tuple[str, int] | None:
    """(name, size) of a member header; None at the end-of-archive marker."""
    if len(header) < BLOCK:
        raise CorruptShardError(f"{where}: truncated tar header ({len(header)} bytes)")
    if header == b"\0" * BLOCK:
        return None
    stored = header[148:156].split(b"\0", 1)[0].strip()
    computed = sum(header[:148]) + sum(header[156:]) + 8 * 32
    try:
        if int(stored or b"-1", 8) != computed:
            raise CorruptShardError(f"{where}: tar header checksum mismatch")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise CorruptShardError(f"{where}: malformed tar header") from None
    name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    return (f"{prefix}/{name}" if prefix else name), size


def split_name(name: str) -> tuple[str, str]:
    """WebDataset convention: key up to the first dot of the basename, suffix after it."""
    base = name.rsplit("/", 1)[-1]
    key, _, suffix = base.partition(".")
    return key, suffix


def members_in_range(blob: bytes, where: str) -> dict[str, bytes]:
    """Members (suffix → bytes, and `__key__`) of one sample, from the bytes between its offsets in the index.

    Stops where the key changes: in tars written by others, rejected samples may lie inside the range. Entries
    other than regular files (pax or GNU extension headers, folders) are stepped over.
    """
    members, offset, key = {}, 0, None
    while offset < len(blob):
        header = blob[offset : offset + BLOCK]
        parsed = parse_header(header, where)
        if parsed is None:
            break
        name, size = parsed
        start, offset = offset + BLOCK, offset + BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
        if header[156:157] not in REGULAR_FILE:
            continue
        member_key, suffix = split_name(name)
        if key is not None and member_key != key:
            break
        data = blob[start : start + size]
        if len(data) != size:
            raise CorruptShardError(f"{where}: member {name} is truncated")
        key, members[suffix] = member_key, data
    if key is not None:
        members[KEY] = key.encode()
    return members


def read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def iter_samples(stream: BinaryIO, where: str) -> Iterator[dict[str, bytes]]:
    """Samples of a tar read front to back (for pipes): consecutive members sharing a key."""
    key, members = None, {}
    while True:
        try:
            parsed = parse_header(read_exact(stream, BLOCK), where)
        except CorruptShardError:
            if members:
                yield members  # complete or not, from_members checks it
            raise
        if parsed is None:
            break
        name, size = parsed
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        data = read_exact(stream, padded)
        if len(data) != padded:
            raise CorruptShardError(f"{where}: member {name} is truncated")
        member_key, suffix = split_name(name)
        if key is not None and member_key != key:
            yield members
            members = {}
        key = member_key
        members[suffix] = data[:size]
    if members:
        yield members
