"""A split's shard index: a small summary (`index.json`) and per-sample tables beside it.

`index.json` lists each shard (name, samples, bytes, sha256) and the split's header: its size grows with
the shards, not the samples. Each sample's byte offset is in `offsets.npy` (int64; shard k's `samples + 1`
offsets follow shard k − 1's), which readers memory-map, so a worker pages in only the shards it reads;
each sample's key is in `keys.jsonl` (one JSON list per shard), read by tools, never by the stream.
Shared by the writers (`data_shards.write`, `data_shards.foreign_index`) and the readers.
Indexes written before the split kept offsets and keys in `index.json`; they are still read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.sample import SCHEMA_VERSION

INDEX_NAME = "index.json"
OFFSETS_NAME = "offsets.npy"
KEYS_NAME = "keys.jsonl"
PER_SAMPLE = ("offsets", "keys")


def save_index(split_dir: Path, index: dict[str, Any]) -> Path:
    """Writes the per-sample tables, then the summary `index.json` (each through a `.tmp` file and a rename):
    a reader never finds a summary whose tables are missing."""
    shards = index["shards"]
    offsets = [np.asarray(shard["offsets"], dtype=np.int64) for shard in shards]
    replace_atomically(split_dir / OFFSETS_NAME, lambda tmp: save_offsets(tmp, offsets))
    keys = "".join(json.dumps(shard["keys"], ensure_ascii=False) + "\n" for shard in shards)
    replace_atomically(split_dir / KEYS_NAME, lambda tmp: tmp.write_text(keys, encoding="utf-8"))
    summary = {**index, "shards": [{k: v for k, v in s.items() if k not in PER_SAMPLE} for s in shards]}
    summary["tables"] = {"offsets": OFFSETS_NAME, "keys": KEYS_NAME}
    text = json.dumps(summary, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return replace_atomically(split_dir / INDEX_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_offsets(path: Path, offsets: list[np.ndarray]) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.concatenate(offsets) if offsets else np.empty(0, dtype=np.int64))


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def parse_index(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        index = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: corrupt shard index ({error.msg} at line {error.lineno})") from None
    if index.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema {index.get('schema_version')}, this code reads {SCHEMA_VERSION}")
    return index


def load_index(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no shard index (build the shards first)") from None
    return parse_index(text, str(path))


def has_tables(index: dict[str, Any]) -> bool:
    """Whether the per-sample tables are files beside the summary (else inline, as older indexes kept them)."""
    return "tables" in index


class OffsetTable:
    """Each sample's byte range in its shard, by shard name."""

    def __init__(self, values: np.ndarray, shards: list[dict[str, Any]], where: str):
        sizes = np.array([shard["samples"] + 1 for shard in shards], dtype=np.int64)
        if len(values) != int(sizes.sum()):
            raise ValueError(f"{where}: {len(values)} offsets, the index's shards need {int(sizes.sum())}")
        self.values = values
        self.first = dict(zip((shard["name"] for shard in shards), (np.cumsum(sizes) - sizes).tolist()))

    @classmethod
    def load(cls, index: dict[str, Any], offsets_file: Path | None, where: str) -> OffsetTable:
        """From the memory-mapped `offsets.npy` (`offsets_file`), or the older index's inline lists."""
        if not has_tables(index):
            inline = [np.asarray(shard["offsets"], dtype=np.int64) for shard in index["shards"]]
            return cls(np.concatenate(inline) if inline else np.empty(0, np.int64), index["shards"], where)
        try:
            values = np.load(offsets_file, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise ValueError(f"{offsets_file}: cannot read the sample offsets of {where} ({error})") from None
        return cls(values, index["shards"], where)

    def span(self, shard: str, sample: int) -> tuple[int, int]:
        row = self.first[shard] + sample
        return int(self.values[row]), int(self.values[row + 1])


def shard_keys(split_dir: Path) -> dict[str, list[str]]:
    """Every shard's sample keys, in order, by shard name."""
    index = load_index(Path(split_dir) / INDEX_NAME)
    if not has_tables(index):
        return {shard["name"]: shard["keys"] for shard in index["shards"]}
    lines = (Path(split_dir) / index["tables"]["keys"]).read_text(encoding="utf-8").splitlines()
    return {shard["name"]: json.loads(line) for shard, line in zip(index["shards"], lines)}
