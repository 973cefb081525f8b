"""LLaVA conversation JSON (a list) or JSONL: `id`, `image` (path or list), `conversations` human/gpt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_shards.records import RawSample, Reject
from data_shards.sources.common import SourceOptions, image_list, make_turn, read_json_records, record_key

NAME = "llava"


def detect(record: Any) -> bool:
    return isinstance(record, dict) and "conversations" in record


def default_image_root(path: Path) -> Path:
    return path.parent


def read(path: Path, image_root: Path, options: SourceOptions) -> Iterator[RawSample | Reject]:
    return read_json_records(path, parse_record)


def parse_record(record: Any, origin: str, fallback_key: str) -> RawSample:
    if not isinstance(record, dict):
        raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
    conversations = record.get("conversations")
    if not isinstance(conversations, list):
        raise ValueError("'conversations' must be a list")
    turns = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"conversations[{position}] needs 'from' and 'value'")
        turns.append(make_turn(turn["from"], turn["value"]))
    return RawSample(
        key=record_key(record, fallback_key),
        image_refs=image_list(record.get("image")),
        turns=turns,
        origin=origin,
        source=NAME,
    )
