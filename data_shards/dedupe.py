"""Exact duplicates and unique keys, decided over the whole dataset in input order.

An exact duplicate (same turns, label and image contents as an earlier sample, whatever its id) is
dropped as `duplicate_sample`, or kept and counted with `keep_duplicates`. Ids need not be unique:
LLaVA-derived sets reuse an image's id for every conversation about it. The first sample with an id
keeps it; each later one is renamed `{id}#{h}`, `h` the first 8 hex digits of its content identity
(`CheckedSample.identity`), with `-2`, `-3`, ... appended while that is taken (by a kept exact copy, or
by an id in the input spelt that way). Keys are a function of the input alone, never of the worker
count. Shard members are named by position (`{n}.json`), so a key may hold any character; the suffix
adds no '.' or '/', so a derived key stays a valid WebDataset key wherever an id was one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from data_shards.records import Reject
from data_shards.validate import CheckedSample

EXAMPLES = 5
HASH_DIGITS = 8


@dataclass
class Renamed:
    id: str
    key: str
    origin: str


@dataclass
class Deduped:
    kept: list[CheckedSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)
    kept_duplicates: int = 0

    def summary(self) -> dict[str, Any]:
        """The report's view: how many keys were derived, for how many ids, a few examples."""
        return {
            "renamed_keys": {
                "count": len(self.renamed),
                "repeated_ids": len({r.id for r in self.renamed}),
                "examples": [asdict(r) for r in self.renamed[:EXAMPLES]],
            },
            "kept_duplicates": self.kept_duplicates,
        }


class UniqueKeys:
    """Hands out each id once, then derived keys that collide with no id in the input and no earlier key."""

    def __init__(self, ids: Iterable[str]):
        self.reserved = set(ids)
        self.used: set[str] = set()

    def assign(self, sample_id: str, identity: str) -> str:
        base = sample_id if sample_id not in self.used else f"{sample_id}#{identity[:HASH_DIGITS]}"
        key, copy = base, 1
        while key in self.used or (key != sample_id and key in self.reserved):
            copy += 1
            key = f"{base}-{copy}"
        self.used.add(key)
        return key


def dedupe(checked: list[CheckedSample], keep_duplicates: bool = False) -> Deduped:
    """Drop (or keep and count) exact duplicates; give every kept sample a unique key."""
    keys = UniqueKeys(sample.raw.key for sample in checked)
    result = Deduped()
    first_key: dict[str, str] = {}
    for sample in checked:
        raw, identity = sample.raw, sample.identity()
        if identity in first_key and not keep_duplicates:
            detail = f"same content as {first_key[identity]!r}"
            result.rejects.append(Reject(raw.key, "duplicate_sample", detail, raw.origin))
            continue
        result.kept_duplicates += identity in first_key
        key = keys.assign(raw.key, identity)
        first_key.setdefault(identity, key)
        if key != raw.key:
            result.renamed.append(Renamed(raw.key, key, raw.origin))
            sample = CheckedSample(replace(raw, key=key), sample.images)
        result.kept.append(sample)
    return result
